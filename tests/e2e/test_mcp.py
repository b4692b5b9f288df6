"""MCP servers under `metasup run`: real SDK servers, real probes, a real client session."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from testing.fixtures import (
    ROOT,
    SLEEPER,
    agent_config,
    events,
    git,
    marked_pids,
    pid_alive,
    run_metasup,
    start_metasup,
    state,
    supervising,
    wait_for,
    write_config,
)

FIXTURES = ROOT / "tests" / "fixtures" / "mcp"


def server(name: str, script: str, **extra: Any) -> str:
    fields = {
        "name": name,
        "command": sys.executable,
        "args": [str(FIXTURES / script)],
        "probe_interval": "200ms",
        "probe_timeout": "500ms",
        "start_timeout": "8s",
        "stop_timeout": "2s",
        "restart_backoff": {"initial": "50ms", "max": "200ms"},
        **extra,
    }
    return "    - " + json.dumps(fields) + "\n"


def mcp_config(*servers: str, **config: Any) -> str:
    return agent_config(**config) + "  mcp_servers:\n" + "".join(servers)


def mcp_events(repo: Path, server_name: str, event: str) -> list[dict[str, Any]]:
    return [e for e in events(repo) if e["event"] == event and e.get("server") == server_name]


def server_state(repo: Path, name: str) -> str | None:
    return state(repo).get("mcp_servers", {}).get(name)


def test_the_four_fixture_servers_behave_as_described(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(
        repo,
        mcp_config(
            server("healthy", "healthy.py"),
            # Two restarts each: enough to see them come back, not a churn of server starts
            # eating the CPU the rest of the test waits on.
            server("crashy", "crashy.py", env={"CRASH_AFTER": "3"}, max_restarts=2),
            server("hanging", "hanging.py", max_restarts=2),
            server("broken", "broken.py", max_restarts=2, restart_period="1m"),
            server("once", "crashy.py", env={"CRASH_AFTER": "1"}, restart_on_failure=False),
        ),
    )
    with supervising(repo) as proc:
        # Every server was started (or given up on) before the agent.
        launch = next(e for e in events(repo) if e["event"] == "launch")
        started = mcp_events(repo, "healthy", "mcp_started")
        assert started and started[0]["seq"] < launch["seq"] and started[0]["tools"] == 2

        # Fails at start every time: restarted with backoff, then failed; metasup goes on.
        wait_for(lambda: mcp_events(repo, "broken", "mcp_failed"), what="broken to fail")
        assert len(mcp_events(repo, "broken", "mcp_restarted")) == 2
        assert "exited with code 2" in mcp_events(repo, "broken", "mcp_unhealthy")[0]["reason"]

        # restart_on_failure: false: its first failure is final.
        wait_for(lambda: mcp_events(repo, "once", "mcp_failed"), what="once to fail")
        assert mcp_events(repo, "once", "mcp_failed")[0]["reason"] == "restart_on_failure is off"
        assert mcp_events(repo, "once", "mcp_restarted") == []

        # Crashes after a while: unhealthy (its exit), restarted, healthy again.
        wait_for(
            lambda: len(mcp_events(repo, "crashy", "mcp_started")) >= 2,
            what="crashy to come back",
        )
        crash = mcp_events(repo, "crashy", "mcp_unhealthy")[0]
        assert crash["reason"] == "exited with code 7"

        # Hangs on the probe: unhealthy by the protocol while its pid lives on, then restarted.
        wait_for(lambda: mcp_events(repo, "hanging", "mcp_restarted"), what="hanging restarted")
        hang = mcp_events(repo, "hanging", "mcp_unhealthy")[0]
        assert hang["reason"] == "no answer to tools/list within 0.5s"

        # The worker's status follows its events: wait for the one that has seen them.
        doc = wait_for(
            lambda: (
                (s := state(repo)).get("mcp", {}).get("healthy", {}).get("latency_ms")
                and s["agent"]["pid"]
                and s.get("mcp_servers", {}).get("broken") == "failed"
                and s
            )
        )
        assert doc["mcp_servers"]["healthy"] == "healthy"
        assert doc["mcp_servers"]["broken"] == "failed"
        healthy = doc["mcp"]["healthy"]
        assert healthy["tools"] == 2 and healthy["restarts"] == 0 and healthy["latency_ms"] > 0
        assert doc["mcp"]["crashy"]["restarts"] >= 1
        assert doc["agent"]["pid"] and pid_alive(doc["agent"]["pid"])
        shown = run_metasup(repo, "status").stdout
        assert re.search(
            r"^mcp:      healthy: healthy, 2 tools, probe [0-9.]+ ms, 0 restarts", shown, re.M
        )
        assert "mcp:      broken: failed, 2 restarts" in shown
        pids = [d["pid"] for d in doc["mcp"].values() if d.get("pid")]
        worker = [t["pgid"] for t in doc["helper_trees"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # Nothing started survives metasup run.
    for pid in pids + worker:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=5, what=f"pid {pid} to be gone")
    final = state(repo)
    assert set(final["mcp_servers"].values()) == {"stopped"}
    assert not (repo / ".git" / "metasup" / "mcp" / "healthy.sock").exists()


@asynccontextmanager
async def bridged(repo: Path, name: str) -> AsyncIterator[Any]:
    """The agent's path: an SDK client session over `metasup mcp connect NAME`."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup", "mcp", "connect", name], cwd=str(repo)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def whoami(session: Any) -> str:
    result = await session.call_tool("whoami", {})
    assert not result.is_error, result
    return str(result.content[0].text)


def test_the_agent_reaches_the_supervised_server_and_keeps_its_session(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, mcp_config(server("tools", "healthy.py", probe_interval="100ms")))
    with supervising(repo):
        first_pid = state(repo)["mcp"]["tools"]["pid"]

        async def scenario() -> tuple[str, str, list[str]]:
            async with bridged(repo, "tools") as session:
                listed = [t.name for t in (await session.list_tools()).tools]
                before = await whoami(session)
                os.kill(first_pid, signal.SIGKILL)
                await anyio.to_thread.run_sync(
                    lambda: wait_for(
                        lambda: len(mcp_events(repo, "tools", "mcp_started")) >= 2,
                        what="the server back",
                    )
                )
                after = await whoami(session)  # same session, new server process
                return before, after, listed

        before, after, listed = anyio.run(scenario)
        assert sorted(listed) == ["echo", "whoami"]
        # The SDK's client shakes hands as metasup's own session does: no process of its own.
        assert state(repo)["mcp"]["tools"]["instances"] == []
        second_pid = state(repo)["mcp"]["tools"]["pid"]
        assert before.split()[0] != after.split()[0], "another instance answered"
        assert second_pid != first_pid
        assert mcp_events(repo, "tools", "mcp_unhealthy")[0]["reason"] == "exited with code -9"


def test_connect_names_what_is_missing(repo: Path) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "metasup", "mcp", "connect", "nope", "--wait", "0"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "MCP server 'nope' is not served" in out.stderr and "Traceback" not in out.stderr


VERSIONED = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from mcp.server.mcpserver import MCPServer

    VERSION = (Path(__file__).parent / "version.txt").read_text().strip()
    app = MCPServer("versioned")

    @app.tool()
    def whoami() -> str:
        \"\"\"pid and code version\"\"\"
        return f"{os.getpid()} {VERSION}"

    app.run()
    """
)

PLAN_AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    if run == 1:
        Path("servers/version.txt").write_text("v2\\n")
        time.sleep(0.6)  # ok: past min_runtime, a good run
        sys.exit(0)
    if run == 2:
        sys.exit(1)  # a quick failure on the code with v2
    time.sleep(120)  # ok: a long-running agent
    """
)


def test_servers_restart_on_the_code_of_each_commit(repo: Path) -> None:
    (repo / "servers").mkdir()
    (repo / "servers" / "tool.py").write_text(VERSIONED)
    (repo / "servers" / "version.txt").write_text("v1\n")
    (repo / "agent.py").write_text(PLAN_AGENT)
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(
        repo,
        mcp_config(
            server("versioned", "unused", args=["servers/tool.py"]),
            min_runtime="400ms",
        ),
    )
    proc = start_metasup(repo)
    try:
        wait_for(
            lambda: any(e["event"] == "launch" and e["run"] == 3 for e in events(repo)),
            timeout=30,
            what="the third launch",
        )

        async def ask() -> str:
            async with bridged(repo, "versioned") as session:
                return await whoami(session)

        answer = anyio.run(ask)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    restarts = mcp_events(repo, "versioned", "mcp_restarted")
    assert [r["reason"] for r in restarts] == ["its files changed", "its files changed"]
    seq = {e["seq"]: e for e in events(repo)}
    launches = [e for e in seq.values() if e["event"] == "launch"]
    rollback = next(e for e in seq.values() if e["event"] == "rollback")
    # v2 before run 2 (snapshot of run 1's edit), v1 again after the rollback, before run 3.
    assert launches[0]["seq"] < restarts[0]["seq"] < launches[1]["seq"]
    assert rollback["seq"] < restarts[1]["seq"] < launches[2]["seq"]
    assert answer.endswith(" v1")
    assert git(repo, "show", "HEAD:servers/version.txt").strip() == "v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_server(repo: Path, **extra: Any) -> int:
    """An agent that sleeps, and `web`: a command serving streamable HTTP on a free port."""
    port = free_port()
    (repo / "agent.py").write_text(SLEEPER)
    http = str(FIXTURES / "http_server.py")
    url = f"http://127.0.0.1:{port}/mcp"
    write_config(repo, mcp_config(server("web", "", args=[http, str(port)], url=url, **extra)))
    return port


def test_a_command_serving_streamable_http_is_probed_over_http(repo: Path) -> None:
    web_server(repo)
    with supervising(repo):
        doc = wait_for(
            lambda: (s := state(repo)).get("mcp", {}).get("web", {}).get("latency_ms") and s
        )
        assert doc["mcp_servers"]["web"] == "healthy" and doc["mcp"]["web"]["tools"] == 1
        assert doc["mcp"]["web"]["transport"] == "http"
        assert "socket" not in doc["mcp"]["web"]


def test_a_killed_worker_is_replaced_and_its_servers_do_not_linger(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, mcp_config(server("tools", "healthy.py")))
    with supervising(repo):
        doc = wait_for(lambda: (s := state(repo)).get("agent", {}).get("pid") and s)
        old_server = doc["mcp"]["tools"]["pid"]
        (worker,) = [t["pgid"] for t in doc["helper_trees"] if t["pgid"] != old_server]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: len(mcp_events(repo, "tools", "mcp_started")) >= 2, what="a new worker")
        wait_for(lambda: not pid_alive(old_server), timeout=5, what="the old server gone")
        new = wait_for(
            lambda: (m := state(repo)["mcp"]["tools"])["state"] == "healthy" and m["pid"] and m
        )
        assert new["pid"] != old_server
        assert doc["agent"]["pid"] == state(repo)["agent"]["pid"], "the agent runs on"


def test_servers_end_with_a_supervisor_killed_by_sigkill(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, mcp_config(server("tools", "healthy.py")))
    proc = start_metasup(repo)
    try:
        wait_for(lambda: "launch" in [e["event"] for e in events(repo)], what="the launch")
        doc = state(repo)
        server_pid = doc["mcp"]["tools"]["pid"]
        proc.kill()
        proc.wait(timeout=10)
        # The worker sees its stdin close and stops its servers.
        wait_for(lambda: not pid_alive(server_pid), timeout=10, what="the server to stop")
        for tree in doc["helper_trees"]:
            wait_for(lambda t=tree: not pid_alive(t["pgid"]), timeout=10, what="the worker")
    finally:
        if proc.poll() is None:
            proc.kill()
        if doc_agent := state(repo).get("agent", {}).get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(doc_agent, signal.SIGKILL)


def test_a_frozen_http_server_is_unhealthy_within_its_probe_timeout(repo: Path) -> None:
    """SIGSTOP leaves the port open and the connection accepted: only a bounded request tells."""
    port = web_server(repo, max_restarts=50)
    with supervising(repo):
        wait_for(lambda: mcp_events(repo, "web", "mcp_started"), what="the server up")
        (frozen,) = marked_pids(str(port), jail=False)  # the server itself, not its jail's bwrap
        os.kill(frozen, signal.SIGSTOP)
        try:
            # probe_interval 200ms + probe_timeout 500ms, and the stop of the frozen instance
            # (SIGKILL after stop_timeout 2s): well within 8 s; before, it stayed healthy for
            # minutes, until the HTTP client's own read timeout.
            wait_for(lambda: mcp_events(repo, "web", "mcp_unhealthy"), timeout=8, what="unhealthy")
            unhealthy = mcp_events(repo, "web", "mcp_unhealthy")[0]
            assert unhealthy["reason"] == "no answer to tools/list within 0.5s"
            wait_for(
                lambda: len(mcp_events(repo, "web", "mcp_started")) >= 2,
                timeout=15,
                what="a new instance healthy",
            )
            assert not pid_alive(frozen), "the frozen instance was stopped"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)


def test_http_servers_as_mcp_clients_configure_them(repo: Path) -> None:
    """`type: sse`, `headers` with `${VAR}` from metasup's environment, `disabled`: the entries
    a config copied from an MCP client's holds, probed over their own transports."""
    sse_port, guarded_port = free_port(), free_port()
    (repo / "agent.py").write_text(SLEEPER)
    http = str(FIXTURES / "http_server.py")
    write_config(
        repo,
        mcp_config(
            server("old", "", args=[http, str(sse_port), "sse"],
                   type="sse", url=f"http://127.0.0.1:{sse_port}/sse"),
            server("guarded", "", args=[http, str(guarded_port)],
                   url=f"http://127.0.0.1:{guarded_port}/mcp",
                   env={"REQUIRED_TOKEN": "${TEST_TOKEN}"},
                   headers={"Authorization": "Bearer ${TEST_TOKEN}"}),
            server("off", "broken.py", disabled=True),
        ),
    )  # fmt: skip
    with supervising(repo, env={"TEST_TOKEN": "t0ken"}):
        wait_for(
            lambda: (
                mcp_events(repo, "old", "mcp_started")
                and mcp_events(repo, "guarded", "mcp_started")
            ),
            what="both servers started",
        )
        doc = wait_for(lambda: (s := state(repo))["mcp"].get("guarded", {}).get("latency_ms") and s)
        assert doc["mcp"]["old"]["transport"] == "sse" and doc["mcp"]["old"]["tools"] == 1
        assert doc["mcp"]["guarded"]["tools"] == 1, "the header reached the server"
        assert "off" not in doc["mcp_servers"], "a disabled server is not run"
    assert mcp_events(repo, "guarded", "mcp_unhealthy") == []


def test_mcp_config_runs_the_servers_an_mcp_clients_file_names(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    (repo / ".mcp.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "tools": {"command": sys.executable, "args": [str(FIXTURES / "healthy.py")]},
                    "later": {"command": "not-installed-yet", "disabled": True},
                }
            },
            indent=2,
        )
    )
    write_config(repo, agent_config() + "  mcp_config: .mcp.json\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an agent with an MCP client's config")
    with supervising(repo):
        wait_for(lambda: mcp_events(repo, "tools", "mcp_started"), what="the server from .mcp.json")
        assert set(state(repo)["mcp_servers"]) == {"tools"}
    # It configures what metasup runs: protected like the config itself.
    (repo / ".mcp.json").write_text('{"mcpServers": {}}\n')
    git(repo, "add", ".mcp.json")
    hook = run_metasup(repo, "hook", "pre-commit")
    assert hook.returncode == 1 and "modified .mcp.json" in hook.stderr


def test_mcp_list_and_restart_bring_a_failed_server_back(repo: Path) -> None:
    flag = repo / ".git" / "fail-flag"  # read-only in the jail, and seen there as it changes
    flag.write_text("fail\n")
    (repo / "agent.py").write_text(SLEEPER)
    write_config(
        repo,
        mcp_config(
            server("gated", "gated.py", env={"FAIL_WHILE": str(flag)}, max_restarts=1),
            server("tools", "healthy.py"),
        ),
    )
    with supervising(repo):
        wait_for(lambda: mcp_events(repo, "gated", "mcp_failed"), what="gated to fail")
        listed = run_metasup(repo, "mcp", "list")
        assert listed.returncode == 0
        assert re.search(r"^gated: failed, stdio, .*1 restarts", listed.stdout, re.M), listed.stdout
        as_json = json.loads(run_metasup(repo, "mcp", "list", "--json").stdout)
        assert as_json["running"] and as_json["servers"]["gated"]["state"] == "failed"

        # Failed stays failed until its code changes; the operator brings it back at once.
        flag.unlink()
        back = run_metasup(repo, "mcp", "restart", "gated")
        assert back.returncode == 0, back.stdout + back.stderr
        assert "gated: restarting (was failed)" in back.stdout
        assert "gated: healthy, 1 tools" in back.stdout
        restarted = mcp_events(repo, "gated", "mcp_restarted")[-1]
        assert restarted["reason"] == "requested by the operator (metasup mcp restart)"

        unknown = run_metasup(repo, "mcp", "restart", "nope")
        assert unknown.returncode == 1
        assert "no MCP server named 'nope' (configured: gated, tools)" in unknown.stderr

        # An unknown name fails at once, not after the wait for a socket to appear.
        t0 = time.monotonic()
        out = run_metasup(repo, "mcp", "connect", "nope", "--wait", "30")
        assert out.returncode == 2 and "serving: gated, tools" in out.stderr
        assert time.monotonic() - t0 < 20, "it waited for a server that will never come"
    stopped = run_metasup(repo, "mcp", "list")
    assert stopped.returncode == 0 and "metasup is not running" in stopped.stdout
    assert re.search(r"^gated: stopped", stopped.stdout, re.M)
    gone = run_metasup(repo, "mcp", "restart", "gated")
    assert gone.returncode == 1 and "metasup is not running" in gone.stderr


def test_a_server_on_its_way_up_is_starting_never_stopped(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, mcp_config(server("slow", "gated.py", env={"START_DELAY": "2"})))
    proc = start_metasup(repo)
    seen: list[str] = []
    try:

        def up() -> bool:
            st = server_state(repo, "slow")
            if st is not None:
                seen.append(st)
            return bool(mcp_events(repo, "slow", "mcp_started"))

        wait_for(up, what="the slow server up")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    before = seen[: seen.index("healthy")] if "healthy" in seen else seen
    assert "starting" in before, seen
    assert "stopped" not in before, f"a server on its way up showed stopped: {seen}"


CRASHABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mcp.server.mcpserver import MCPServer

    if (Path(__file__).parent / "broken").exists():
        print("tool: broken at start", file=sys.stderr)
        sys.exit(3)
    app = MCPServer("tool")

    @app.tool()
    def ping() -> str:
        \"\"\"pong\"\"\"
        return "pong"

    app.run()
    """
)


def test_without_an_agent_the_servers_are_the_supervised_process(repo: Path) -> None:
    """The Meta-Supervisor design's own config: no `agent:`. A server broken by an edit fails
    before min_runtime: archived, rolled back to the good code, and healthy again."""
    (repo / "servers").mkdir()
    (repo / "servers" / "tool.py").write_text(CRASHABLE)
    (repo / ".gitignore").write_text("__pycache__/\n")
    config = "supervisor:\n  min_runtime: 1s\n  max_failures: 3\n  mcp_servers:\n" + server(
        "tool", "unused", args=["servers/tool.py"], max_restarts=50
    )
    write_config(repo, config)
    shown = json.loads(run_metasup(repo, "config", "--json").stdout)
    assert shown["supervisor"]["agent"] is None
    assert shown["supervisor"]["supervised"] == "mcp_servers"
    with supervising(repo):
        # Run 1's commit is the baseline good commit; run 1 itself must outlive min_runtime.
        wait_for(
            lambda: (s := state(repo))["run"] == 1 and s["agent"]["state"] == "good",
            what="run 1 past min_runtime",
        )
        # The edit an agent (or the server itself) makes; then the server dies.
        (repo / "servers" / "broken").write_text("x\n")
        os.kill(state(repo)["mcp"]["tool"]["pid"], signal.SIGKILL)  # its process (or jail)
        rollback = wait_for(
            lambda: next((e for e in events(repo) if e["event"] == "rollback"), None),
            timeout=30,
            what="a rollback of the broken server code",
        )
        wait_for(
            lambda: (
                server_state(repo, "tool") == "healthy"
                and any(e["event"] == "launch" and e["seq"] > rollback["seq"] for e in events(repo))
            ),
            timeout=30,
            what="the server healthy on the good code",
        )
    archive = next(e for e in events(repo) if e["event"] == "archive")
    assert "servers/broken" in git(repo, "show", "--stat", "--format=", archive["commit"])
    assert not (repo / "servers" / "broken").exists(), "the good tree is back"
    exits = [e for e in events(repo) if e["event"] == "exit" and e["code"] == 1]
    assert exits, "the servers' failure ended the run"
    note = json.loads((repo / ".git" / "metasup" / "recovery.json").read_text())
    assert note["stderr_tail"][-1].startswith("metasup: MCP server tool "), note


def test_a_config_with_neither_agent_nor_servers_names_what_is_missing(repo: Path) -> None:
    write_config(repo, "supervisor:\n  min_runtime: 1s\n")
    out = run_metasup(repo, "config")
    assert out.returncode == 2
    assert "nothing to supervise: give `agent:`" in out.stderr and "Traceback" not in out.stderr


def test_servers_that_never_come_up_end_in_an_emergency_stop(repo: Path) -> None:
    (repo / "servers").mkdir()
    (repo / "servers" / "tool.py").write_text(CRASHABLE)
    (repo / "servers" / "broken").write_text("from the start\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    config = "supervisor:\n  min_runtime: 2s\n  max_failures: 2\n  mcp_servers:\n" + server(
        "tool", "unused", args=["servers/tool.py"], max_restarts=50
    )
    write_config(repo, config)
    out = run_metasup(repo, "run", timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert [e["event"] for e in events(repo)].count("rollback") == 2
    assert state(repo)["status"] == "emergency_stop"


class RawClient:
    """A hand-written MCP client over `metasup mcp connect NAME` (or any stdio command): the
    handshake exactly as given, as an older or differently capable client sends it."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.next_id = 0

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the connection closed before the answer to {method}"
            answer = json.loads(line)
            if answer.get("id") == self.next_id:
                return dict(answer)

    def notify(self, method: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.proc.stdin.flush()

    def handshake(self, version: str, capabilities: dict[str, Any]) -> dict[str, Any]:
        params = {
            "protocolVersion": version,
            "capabilities": capabilities,
            "clientInfo": {"name": "hand-written", "version": "1.12.0"},
        }
        result = self.request("initialize", params)["result"]
        self.notify("notifications/initialized")
        return dict(result)

    def tools(self) -> list[str]:
        return sorted(t["name"] for t in self.request("tools/list", {})["result"]["tools"])

    def whoami(self) -> str:
        answer = self.request("tools/call", {"name": "whoami", "arguments": {}})
        return str(answer["result"]["content"][0]["text"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


OLD = ("2025-06-18", {})
CAPABLE = ("2025-11-25", {"sampling": {}, "roots": {"listChanged": True}})


def test_each_client_gets_the_handshake_it_would_get_from_the_server_directly(
    repo: Path,
) -> None:
    capable = str(FIXTURES / "capable.py")
    direct = {}
    for label, (version, caps) in {"old": OLD, "capable": CAPABLE}.items():
        c = RawClient([sys.executable, capable], repo)
        direct[label] = (c.handshake(version, caps)["protocolVersion"], c.tools())
        c.close()
    assert direct["old"] == ("2025-06-18", ["whoami"])
    assert direct["capable"] == ("2025-11-25", ["roots", "sample", "whoami"])

    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, mcp_config(server("capable", "capable.py", max_handshakes=2)))
    connect = [sys.executable, "-m", "metasup", "mcp", "connect", "capable"]
    with supervising(repo):
        wait_for(lambda: mcp_events(repo, "capable", "mcp_started"), what="the server up")
        primary = state(repo)["mcp"]["capable"]["pid"]
        old1, old2, rich = (
            RawClient(connect, repo),
            RawClient(connect, repo),
            RawClient(connect, repo),
        )
        try:
            for label, client in (("old", old1), ("old", old2), ("capable", rich)):
                version, caps = OLD if label == "old" else CAPABLE
                got = (client.handshake(version, caps)["protocolVersion"], client.tools())
                assert got == direct[label], f"{label} through metasup: {got}"
            # One process per distinct handshake, shared by the clients that send it.
            assert old1.whoami() == old2.whoami() != rich.whoami()
            instances = wait_for(
                lambda: len(i := state(repo)["mcp"]["capable"]["instances"]) == 2 and i,
                what="the two extra instances in the status",
            )
            by_version = {i["handshake"]: i for i in instances}
            assert by_version["2025-06-18"]["clients"] == 2
            assert by_version["2025-11-25"]["clients"] == 1
            extra = by_version["2025-06-18"]["pid"]
            assert extra != primary and pid_alive(extra)
            # A third distinct handshake passes max_handshakes: refused, not a third process.
            third = RawClient(connect, repo)
            refused = third.request(
                "initialize",
                {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "x"}},
            )
            assert "max_handshakes" in refused["error"]["message"]
            third.close()
            assert len(state(repo)["mcp"]["capable"]["instances"]) == 2
            before = old1.whoami()

            # Supervised like the first: killed, it is restarted under the clients' sessions.
            os.kill(extra, signal.SIGKILL)
            wait_for(
                lambda: any(
                    e.get("handshake") == "2025-06-18"
                    for e in mcp_events(repo, "capable", "mcp_restarted")
                ),
                what="the old clients' instance restarted",
            )
            wait_for(
                lambda: len(
                    [e for e in mcp_events(repo, "capable", "mcp_started")
                     if e.get("handshake") == "2025-06-18"]
                ) >= 2,
                what="the old clients' instance back",
            )  # fmt: skip
            again = old1.whoami()
            assert again != before and old2.whoami() == again
            assert old1.tools() == ["whoami"], "the same handshake was replayed"
            # metasup's own session (the SDK's) still runs on the first process.
            assert state(repo)["mcp"]["capable"]["pid"] == primary
            last = {i["handshake"]: i["pid"] for i in state(repo)["mcp"]["capable"]["instances"]}
        finally:
            old1.close()
            old2.close()
            rich.close()
        # The last client of a handshake gone, its process goes.
        for pid in last.values():
            wait_for(lambda pid=pid: not pid_alive(pid), what=f"instance {pid} stopped")
        # The worker's status follows the exit: wait for the state that has seen it.
        wait_for(
            lambda: state(repo)["mcp"]["capable"]["instances"] == [],
            what="no instance left in the status",
        )


PEEKING_AGENT = textwrap.dedent(
    """
    import json, os, socket, time
    from pathlib import Path
    path = Path(os.environ["METASUP_MCP_DIR"]).parent / "secret" / "mcp-control.sock"
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(json.dumps({"restart": "tools"}).encode() + b"\\n")
        outcome = "answered: " + s.recv(4096).decode()
    except OSError as e:
        outcome = "refused: " + type(e).__name__
    Path("peeked").write_text(outcome)
    time.sleep(120)  # ok: a long-running agent
    """
)


def test_the_agent_cannot_reach_the_operators_control_socket(repo: Path) -> None:
    """`metasup mcp restart` is the operator's: from the jail, its socket is not there."""
    (repo / "agent.py").write_text(PEEKING_AGENT)
    (repo / ".gitignore").write_text("peeked\n")
    write_config(repo, mcp_config(server("tools", "healthy.py")))
    with supervising(repo):
        outcome = wait_for(
            lambda: (repo / "peeked").exists() and (repo / "peeked").read_text(),
            what="the agent's attempt",
        )
        assert outcome.startswith("refused: "), outcome
        assert (repo / ".git" / "metasup" / "secret" / "mcp-control.sock").exists()
        # The operator, outside the jail, does reach it.
        assert run_metasup(repo, "mcp", "restart", "tools").returncode == 0
    reasons = [e["reason"] for e in mcp_events(repo, "tools", "mcp_restarted")]
    assert reasons == ["requested by the operator (metasup mcp restart)"]
