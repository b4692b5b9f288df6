"""The jail, attacked as a hostile agent would: each attack runs as the agent, in the default
configuration, and the assertions check that the guarantee it targets held (refs, fsck, files,
the supervisor alive, no process left)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from testing.fixtures import (
    agent_config,
    events,
    git,
    marked_pids,
    names,
    run_metasup,
    start_metasup,
    state,
    supervising,
    wait_for,
    write_config,
)

PY = json.dumps(sys.executable)

# Run 1 runs long enough to be marked good; run 2 fails at once (an archive and a rollback);
# run 3 attacks and records what each attack met, then waits to be stopped.
HOSTILE = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, sysconfig, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    if run == 1:
        time.sleep(0.6)  # ok: past min_runtime, then a clean exit
        sys.exit(0)
    if run == 2:
        Path("broken.txt").write_text("a bad state\\n")
        sys.exit(1)
    seen = {}

    def attempt(name, action):
        try:
            out = action()
            seen[name] = "done" if out in (None, 0) else f"refused: {out}"
        except OSError as e:
            seen[name] = f"refused: {e.strerror or e}"

    def git(*args):
        done = subprocess.run(["git", *args], capture_output=True, text=True)
        return done.returncode if done.returncode else None

    def write(path, text="x"):
        Path(path).write_text(text)

    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/metasup"],
                          capture_output=True, text=True).stdout.split()
    seen["refs seen"] = refs
    for ref in refs:
        attempt("delete " + ref.split("/")[2], lambda ref=ref: git("update-ref", "-d", ref))
    attempt("reflog expire", lambda: git("reflog", "expire", "--expire=now", "--all"))
    attempt("gc", lambda: git("gc", "--prune=now", "--quiet"))
    attempt("reset --hard HEAD~1", lambda: git("reset", "--hard", "HEAD~1"))
    attempt("config core.worktree", lambda: git("config", "core.worktree", "/elsewhere"))
    attempt("commit", lambda: git("commit", "--allow-empty", "-qm", "mine"))
    attempt("hooks", lambda: write(".git/hooks/post-checkout", "#!/bin/sh\\n"))
    attempt("git status", lambda: git("status", "--short"))
    attempt("git diff", lambda: git("diff", "--stat"))
    attempt("git log", lambda: git("log", "-1", "--oneline"))
    attempt("write the config", lambda: write("metasup.yaml", "supervisor: {}\\n"))
    # A second name for a tracked file: written through, the watch would see that name only.
    attempt("hard link", lambda: os.link("agent.py", "agent-link.py"))
    attempt("write the policy", lambda: write("protected/safety_rules.yaml", "protected: []\\n"))
    attempt("write .metasup", lambda: write(".metasup/state", "x"))
    attempt("read the journal key", lambda: open(".git/metasup/secret/journal.key", "rb").close())
    attempt("create a missing protected path", lambda: write("secrets/key.txt", "mine"))
    attempt("replace the inbox", lambda: os.rename(".metasup/inbox", ".metasup/gone"))
    probe = os.environ["METASUP_INBOX"] + "/.probe"
    attempt("write the inbox", lambda: write(probe) or os.unlink(probe))
    import metasup
    attempt("metasup's code", lambda: open(metasup.__file__, "ab").close())
    purelib = sysconfig.get_paths()["purelib"]
    attempt("site-packages", lambda: write(purelib + "/metasup_attack.pth", "import os\\n"))
    attempt("outside the tree", lambda: write("/var/tmp/metasup-attack", "x"))
    attempt("private tmp", lambda: write("/tmp/metasup-attack-" + os.environ["ATTACK_ID"]))
    attempt("dev shm", lambda: write("/dev/shm/metasup-attack", "x"))
    attempt("cgroup limit", lambda: write("/sys/fs/cgroup/pids/pids.max", "max"))
    sup = json.loads(Path(".git/metasup/state.json").read_text())["supervisor_pid"]
    attempt("kill the supervisor", lambda: os.kill(sup, signal.SIGKILL))
    attempt("stop the supervisor", lambda: os.kill(sup, signal.SIGSTOP))
    attempt("supervisor memory", lambda: open(f"/proc/{sup}/mem", "rb").close())
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    attempt("ptrace the supervisor", lambda: libc.ptrace(16, sup, 0, 0))  # PTRACE_ATTACH
    attempt("kill pid 1", lambda: os.kill(1, signal.SIGKILL))
    attempt("new user namespace", lambda: subprocess.run(
        ["unshare", "-U", "-r", "true"], capture_output=True).returncode or None)
    attempt("umount .git", lambda: subprocess.run(
        ["umount", ".git"], capture_output=True).returncode or None)
    seen["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    # A daemon with a cleared environment in a session of its own, meant to outlive everything.
    daemon = "import time; time.sleep(600)"  # ok: the daemon's whole life
    subprocess.Popen(["setsid", sys.executable, "-c", daemon, "escaped:" + os.getcwd()],
                     env={}, start_new_session=True)
    Path("seen.tmp").write_text(json.dumps(seen))
    os.replace("seen.tmp", "seen.json")  # whole, for the test reading it
    time.sleep(120)  # ok: until stopped
    """
)


def written(path: Path, what: str, timeout: float = 15.0) -> str:
    """The text a jailed process wrote to `path`, once there is some (JSON documents are
    written aside and renamed in: they are whole when seen)."""
    return str(wait_for(lambda: path.exists() and path.read_text(), timeout, what))


def hostile_repo(repo: Path, extra: str = "") -> Path:
    (repo / "protected").mkdir()
    (repo / "protected" / "safety_rules.yaml").write_text("protected: [/secrets/]\n")
    (repo / "agent.py").write_text(HOSTILE)
    (repo / ".gitignore").write_text("__pycache__/\nseen.json\nseen.tmp\n")
    write_config(repo, agent_config(min_runtime="400ms", extra=extra))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the agent")
    return repo


def test_a_hostile_agent_cannot_reach_what_is_not_its_own(repo: Path) -> None:
    hostile_repo(repo)
    attack_id = os.urandom(6).hex()
    config_before = (repo / "metasup.yaml").read_text()
    git_config_before = (repo / ".git" / "config").read_text()
    proc = start_metasup(repo, env={"ATTACK_ID": attack_id})
    try:
        seen = json.loads(written(repo / "seen.json", "the attacks", 30))
        archives = [r for r in seen["refs seen"] if "/archive/" in r]
        assert "refs/metasup/good" in seen["refs seen"] and archives, seen["refs seen"]
        refs_before = git(repo, "for-each-ref", "refs/metasup")
        sup = state(repo)["supervisor_pid"]
        # The supervisor saw nothing of it: alive, not stopped, still answering.
        status = json.loads(run_metasup(repo, "status", "--json").stdout)
        assert status["status"] == "running" and status["run"] == 3
        with open(f"/proc/{sup}/stat") as f:
            assert f.read().split(") ")[1].split()[0] in "RS", "the supervisor is not stopped"
        wait_for(lambda: marked_pids(f"escaped:{repo}"), what="the escaped daemon")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""

    refused = {k for k, v in seen.items() if isinstance(v, str) and v.startswith("refused")}
    for ref in seen["refs seen"]:
        assert "delete " + ref.split("/")[2] in refused
    expected = {
        "reflog expire",
        "gc",
        "reset --hard HEAD~1",
        "config core.worktree",
        "commit",
        "hooks",
        "write the config",
        "hard link",
        "write the policy",
        "write .metasup",
        "read the journal key",
        "create a missing protected path",
        "replace the inbox",
        "metasup's code",
        "site-packages",
        "outside the tree",
        "cgroup limit",
        "kill the supervisor",
        "stop the supervisor",
        "supervisor memory",
        "ptrace the supervisor",
        "new user namespace",
        "umount .git",
    }
    assert expected <= refused, {k: seen[k] for k in expected - refused}
    # What stays the agent's own works: reading git, the inbox, its private /tmp and /dev/shm.
    for own in ("git status", "git diff", "git log", "write the inbox", "private tmp", "dev shm"):
        assert seen[own] == "done", (own, seen[own])
    assert seen["commit"].startswith("refused") and "kill pid 1" in seen
    # The jail's pid namespace held the jail alone: bwrap as pid 1, the agent, its children.
    assert max(seen["processes"]) < 100 and 1 in seen["processes"]
    # Nothing was lost or moved: every ref as it was, fsck clean, the config untouched.
    assert git(repo, "for-each-ref", "refs/metasup") == refs_before
    assert git(repo, "fsck", "--no-progress", "--full", check=False) == ""
    assert (repo / "metasup.yaml").read_text() == config_before
    assert (repo / ".git" / "metasup" / "secret" / "journal.key").stat().st_size == 32
    assert (repo / ".git" / "config").read_text() == git_config_before
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()
    assert not Path(f"/tmp/metasup-attack-{attack_id}").exists(), "its /tmp was its own"
    assert not Path("/var/tmp/metasup-attack").exists()
    # The placeholder that held the missing protected folder is gone with the supervisor.
    assert not (repo / "secrets").exists()
    # The daemon it left in its own session, with a cleared environment, ended with the run.
    assert marked_pids(f"escaped:{repo}") == []
    launches = [e for e in events(repo) if e["event"] == "launch"]
    assert {e["sandbox"] for e in launches} == {"bwrap"}


def test_a_jailed_agent_dies_with_its_supervisor(repo: Path) -> None:
    (repo / "agent.py").write_text("import sys, time\ntime.sleep(60)  # ok: runs until stopped\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config().replace("agent.py]", f"agent.py, 'agent:{repo}']"))
    with supervising(repo) as proc:
        wait_for(lambda: marked_pids(f"agent:{repo}", jail=False), what="the agent")
        # The next run's jail, built ahead: its shell waits for the launch's line.
        wait_for(lambda: _launch_shells(f"agent:{repo}"), what="the jail built ahead")
        proc.kill()  # kill -9: no stop step runs
        proc.wait()
        wait_for(lambda: not marked_pids(f"agent:{repo}"), timeout=5, what="the agent gone")
    assert not _launch_shells(f"agent:{repo}"), "the jail built ahead outlived its supervisor"


def _launch_shells(marker: str) -> list[int]:
    """The shells waiting in jails built ahead for `marker`'s command."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        argv = proc.info["cmdline"] or []
        waiting = "metasup-launch" in argv[:4] and marker in argv
        if waiting and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def limited_repo(repo: Path, agent: str, sandbox: str, health: str = "") -> Path:
    (repo / "agent.py").write_text(textwrap.dedent(agent))
    (repo / ".gitignore").write_text("__pycache__/\nresult.txt\n")
    extra = f"  sandbox: {sandbox}\n" + (f"  health_checks: {health}\n" if health else "")
    write_config(repo, agent_config(min_runtime="5s", max_failures=1, extra=extra))
    return repo


@pytest.mark.parametrize(
    ("how", "agent", "limits"),
    [
        (
            "an anonymous allocation",
            "hog = bytearray(400 << 20)\nimport time\ntime.sleep(30)  # ok: holds it\n",
            "{limits: {memory: 128MiB}}",
        ),
        (
            "/dev/shm, which no RSS shows",
            """
            import time
            with open("/dev/shm/fill", "wb") as f:
                for _ in range(400):
                    f.write(b"x" * (1 << 20))
            time.sleep(30)  # ok: holds the pages
            """,
            "{limits: {memory: 128MiB}}",
        ),
    ],
)
def test_memory_over_the_limit_is_a_health_kill(
    repo: Path, how: str, agent: str, limits: str
) -> None:
    limited_repo(repo, agent, limits)
    out = run_metasup(repo, "run", timeout=60)
    assert out.returncode == 3, out.stderr  # one quick failure is an emergency stop here
    (kill,) = [e for e in events(repo) if e["event"] == "health_kill"]
    assert kill["reason"].startswith("memory"), (how, kill)
    assert "sandbox.limits.memory 128MiB" in kill["reason"]


def test_the_lower_of_the_two_memory_limits_applies(repo: Path) -> None:
    limited_repo(
        repo,
        "hog = bytearray(200 << 20)\nimport time\ntime.sleep(30)  # ok: holds it\n",
        "{limits: {memory: 1GiB}}",
        health="{max_memory_mb: 96}",
    )
    out = run_metasup(repo, "run", timeout=60)
    assert out.returncode == 3, out.stderr
    (kill,) = [e for e in events(repo) if e["event"] == "health_kill"]
    assert kill["reason"].startswith("memory") and "max_memory_mb 96" in kill["reason"]


def test_a_fork_bomb_is_capped_by_processes(repo: Path) -> None:
    limited_repo(
        repo,
        """
        import os, time
        from pathlib import Path
        made = 0
        try:
            while made < 500:
                if os.fork() == 0:
                    time.sleep(30)  # ok: a child that holds its slot
                    os._exit(0)
                made += 1
        except OSError as e:
            Path("result.txt").write_text(f"{made} {e.errno}")
        time.sleep(30)  # ok: until stopped
        """,
        "{limits: {processes: 40}}",
    )
    with supervising(repo):
        text = written(repo / "result.txt", "the bomb to hit the cap")
    made, errno = map(int, text.split())
    assert made < 40 and errno == 11  # EAGAIN from the pids cgroup


def test_file_size_is_capped(repo: Path) -> None:
    limited_repo(
        repo,
        """
        import signal, time
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            with open("big.bin", "wb") as f:
                f.write(b"x" * (3 << 20))
            outcome = "written"
        except OSError as e:
            outcome = f"refused {e.errno}"
        Path("result.txt").write_text(outcome)
        time.sleep(30)  # ok: until stopped
        """,
        "{limits: {file_size: 1MiB}}",
    )
    (repo / ".gitignore").write_text("__pycache__/\nresult.txt\nbig.bin\n")
    with supervising(repo):
        text = written(repo / "result.txt", "the write")
    assert text == "refused 27"  # EFBIG
    assert (repo / "big.bin").stat().st_size <= 1 << 20


CHANNELS = textwrap.dedent(
    """
    import json, os, socket, time, urllib.request
    from pathlib import Path
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    seen = {}
    doc = json.loads(urllib.request.urlopen(os.environ["METASUP_API"], timeout=5).read())
    seen["api"] = doc["status"]
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=1)
        seen["network"] = "reached"
    except OSError as e:
        seen["network"] = e.strerror or str(e)
    Path(os.environ["METASUP_HEARTBEAT"]).touch()

    async def call(args, tool, arguments):
        params = StdioServerParameters(command=%(py)s, args=["-m", "metasup", *args])
        async with stdio_client(params) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            result = await session.call_tool(tool, arguments)
            return result.content[0].text

    seen["mcp connect"] = anyio.run(call, ["mcp", "connect", "tools"], "echo", {"text": "hi"})
    seen["mcp serve"] = json.loads(anyio.run(call, ["mcp", "serve"], "status", {}))["status"]
    if os.environ["METASUP_RUN"] == "1":
        Path("seen.tmp").write_text(json.dumps(seen))
        os.replace("seen.tmp", "seen.json")  # whole, for the test reading it
        tmp = Path(os.environ["METASUP_INBOX"]) / ".p.tmp"
        tmp.write_text(json.dumps({"reason": "r", "changes": [{"file": "n.txt", "content": "x"}]}))
        tmp.rename(tmp.with_name("p.json"))
    while True:
        Path(os.environ["METASUP_HEARTBEAT"]).touch()
        time.sleep(0.2)  # ok: the agent's heartbeat pace
    """
)


def test_the_channels_work_in_a_jail_without_a_network(repo: Path) -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "mcp" / "healthy.py"
    (repo / "servers").mkdir()
    (repo / "servers" / "healthy.py").write_text(fixture.read_text())
    (repo / "agent.py").write_text(CHANNELS % {"py": PY})
    (repo / ".gitignore").write_text("__pycache__/\nseen.json\nseen.tmp\n")
    extra = (
        "  sandbox: {network: false}\n"
        '  api: {listen: "127.0.0.1:0"}\n'
        "  health_checks: {heartbeat_timeout: 3s}\n"
        f"  mcp_servers: [{{name: tools, command: {PY}, args: [servers/healthy.py]}}]\n"
    )
    write_config(repo, agent_config(extra=extra))
    with supervising(repo):
        seen = json.loads(written(repo / "seen.json", "the channels", 30))
        wait_for(lambda: "proposal_received" in names(repo), what="the proposal")
    assert seen["api"] == "running"
    assert seen["network"] == "Network is unreachable"
    assert seen["mcp connect"] == "hi"
    assert seen["mcp serve"] == "running"
    assert "health_kill" not in names(repo), "the heartbeat reached metasup"


def test_landlock_mode_keeps_writes_in_the_tree_and_signals_in_the_jail(repo: Path) -> None:
    (repo / "agent.py").write_text(
        textwrap.dedent(
            """
            import json, os, signal, time
            from pathlib import Path
            seen = {}
            for name, path in (("tree", "mine.txt"), ("outside", "/var/tmp/landlock-attack")):
                try:
                    Path(path).write_text("x")
                    seen[name] = "done"
                except OSError as e:
                    seen[name] = e.strerror
            try:
                os.link("mine.txt", "mine-link.txt")
                seen["link"] = "done"
            except OSError as e:
                seen["link"] = e.strerror
            sup = json.loads(Path(".git/metasup/state.json").read_text())["supervisor_pid"]
            try:
                os.kill(sup, signal.SIGSTOP)
                seen["signal"] = "done"
            except OSError as e:
                seen["signal"] = e.strerror
            Path("seen.tmp").write_text(json.dumps(seen))
            os.replace("seen.tmp", "seen.json")  # whole, for the test reading it
            time.sleep(30)  # ok: until stopped
            """
        )
    )
    (repo / ".gitignore").write_text("__pycache__/\nseen.json\nseen.tmp\nmine.txt\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: landlock}\n"))
    with supervising(repo):
        seen = json.loads(written(repo / "seen.json", "the attempts"))
    assert seen == {
        "tree": "done",
        "outside": "Permission denied",
        "link": "Invalid cross-device link",
        "signal": "Operation not permitted",
    }
    assert not Path("/var/tmp/landlock-attack").exists()
    assert {e["sandbox"] for e in events(repo) if e["event"] == "launch"} == {"landlock"}


def test_required_refuses_to_start_unless_every_guarantee_holds(repo: Path) -> None:
    (repo / "agent.py").write_text("pass\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: landlock, required: true}\n"))
    out = run_metasup(repo, "run")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("metasup: error: sandbox.required is true, but 1. not held:")
    assert "launch" not in names(repo)


def test_doctor_reports_every_guarantee_held_here(tmp_path: Path) -> None:
    repo = tmp_path / "agent"
    assert run_metasup(tmp_path, "init", str(repo)).returncode == 0
    out = run_metasup(repo, "doctor")
    assert out.returncode == 0, out.stdout
    assert "ok   sandbox    mode in force: bwrap" in out.stdout
    held = [line.split()[1] for line in out.stdout.splitlines() if line.strip().startswith("held")]
    assert held == ["1.", "2.", "3.", "4.", "5."]
    config = repo / "metasup.yaml"
    text = config.read_text()
    assert "    mode: auto " in text, "init writes the sandbox block"
    config.write_text(text.replace("    mode: auto ", "    mode: landlock "))
    out = run_metasup(repo, "doctor")
    assert "mode in force: landlock" in out.stdout
    assert "NOT HELD 1." in out.stdout and "NOT HELD 2." in out.stdout


# What an MCP server or an experiment's check tries, at its start: every write here is refused.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    seen = {}
    for name, path in (("git", ".git/probe"), ("config", "metasup.yaml"),
                       ("outside", "/var/tmp/metasup-probe"), ("main repo", sys.argv[1])):
        try:
            Path(path).write_text("x")
            seen[name] = "done"
        except OSError as e:
            seen[name] = e.strerror
    seen["pid"] = os.getpid()
    out = Path(sys.argv[2])
    out.with_suffix(".tmp").write_text(json.dumps(seen))
    os.replace(out.with_suffix(".tmp"), out)
    """
)


def test_mcp_servers_and_experiment_commands_are_jailed_too(repo: Path, tmp_path: Path) -> None:
    """The server writes its findings into its own tree; the check, into a folder the config
    makes writable for it. The main repository's .git is out of reach of both."""
    fixture = Path(__file__).parent.parent / "fixtures" / "mcp" / "healthy.py"
    (repo / "servers").mkdir()
    (repo / "servers" / "probe.py").write_text(
        PROBE + "\n" + fixture.read_text().replace("from __future__ import annotations", "")
    )
    (repo / "checks").mkdir()
    (repo / "checks" / "probe.py").write_text(PROBE)
    (repo / "agent.py").write_text(SLEEPER_AGENT)
    (repo / ".gitignore").write_text("__pycache__/\n*.json\n*.tmp\n")
    attack = str(repo / ".git" / "from-a-jail")
    report = tmp_path / "reports"
    report.mkdir()
    extra = (
        f"  sandbox: {{writable: [{json.dumps(str(report))}]}}\n"
        f"  mcp_servers: [{{name: probe, command: {PY}, "
        f"args: [servers/probe.py, {json.dumps(attack)}, mcp.json]}}]\n"
        "  experiments:\n"
        f"    checks: [[{PY}, checks/probe.py, {json.dumps(attack)}, "
        f"{json.dumps(str(report / 'check.json'))}]]\n"
    )
    write_config(repo, agent_config(extra=extra))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "probes")
    with supervising(repo):
        mcp = json.loads(written(repo / "mcp.json", "the server's findings"))
    change = {"reason": "r", "changes": [{"file": "n.txt", "content": "x"}]}
    (tmp_path / "p.json").write_text(json.dumps(change))
    out = run_metasup(repo, "experiment", str(tmp_path / "p.json"), "--json", "--dry-run")
    assert out.stdout, out.stderr
    check = json.loads((report / "check.json").read_text())
    for seen in (mcp, check):
        # A worktree's .git is a file: writing under it fails either way; its git dir is what
        # the "main repo" attempt writes into.
        assert seen["git"] in ("Read-only file system", "Not a directory"), seen
        assert seen["config"] == "Read-only file system", seen
        assert seen["outside"] == "Read-only file system", seen
        assert seen["main repo"] == "Read-only file system", seen
        assert seen["pid"] < 100, "a pid namespace of its own"
    assert not Path(attack).exists()


SLEEPER_AGENT = "import time\ntime.sleep(120)  # ok: a long-running agent\n"


def test_cpu_is_capped(repo: Path) -> None:
    limited_repo(
        repo,
        """
        import time
        from pathlib import Path
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        Path("result.txt").write_text(str(time.process_time()))
        time.sleep(30)  # ok: until stopped
        """,
        "{limits: {cpu: 0.2}}",
    )
    with supervising(repo):
        text = written(repo / "result.txt", "a second of busy wall time")
    assert float(text) < 0.5, "a fifth of a core: about 0.2 s of CPU in a second"
