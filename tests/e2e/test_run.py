"""Whole runs of `metasup run`: real repositories, real agents, real signals."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from testing.fixtures import (
    agent_config,
    events,
    git,
    marked_pids,
    names,
    run_metasup,
    start_metasup,
    supervising,
    wait_for,
    write_config,
)

# An agent whose behaviour per run is a table: run number -> what to do.
SCRIPTED = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    plan = json.loads(Path("plan.json").read_text()) if Path("plan.json").exists() else {}
    step = plan.get(str(run), plan.get("*", {"sleep": 0.6}))
    Path("env-%d.json" % run).write_text(json.dumps(
        {k: v for k, v in os.environ.items() if k.startswith("METASUP_")}))
    for name, content in step.get("write", {}).items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(content)
    if step.get("stderr"):
        print(step["stderr"], file=sys.stderr, flush=True)
    time.sleep(step.get("sleep", 0))  # ok: the agent's runtime is the behaviour under test
    sys.exit(step.get("code", 0))
    """
)


def scripted(repo: Path, plan: dict[str, Any], **config: Any) -> Path:
    (repo / "agent.py").write_text(SCRIPTED)
    (repo / ".gitignore").write_text("__pycache__/\nenv-*.json\n")
    (repo / "plan.json").write_text(json.dumps(plan))
    write_config(repo, agent_config(**config))
    return repo


def by_name(repo: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in events(repo) if e["event"] == name]


def test_quick_failure_archives_everything_and_rolls_back(repo: Path) -> None:
    scripted(
        repo,
        {
            "1": {"sleep": 0.6, "write": {"work.txt": "good work\n"}},
            "2": {
                "write": {"work.txt": "half-done\n", "new/untracked.txt": "fresh\n"},
                "stderr": "boom: something broke",
                "code": 4,
            },
            "3": {"sleep": 0.6},
        },
    )
    out = run_metasup(repo, "run", "--max-cycles", "3")
    assert out.returncode == 0, out.stderr
    seq = [n for n in names(repo) if n in ("launch", "exit", "archive", "rollback", "mark_good")]
    assert seq == [
        "mark_good",  # the first snapshot is the baseline
        "launch", "exit",
        "launch", "exit", "archive", "rollback",
        "launch", "exit",  # back on the good commit: nothing new to mark
    ]  # fmt: skip
    (rollback,) = by_name(repo, "rollback")
    (archive,) = by_name(repo, "archive")
    assert rollback["archive"] == archive["ref"] and rollback["duration_ms"] >= 0
    # Nothing lost: the failed run's edits, untracked file included, are in the archive.
    assert git(repo, "show", f"{archive['ref']}:new/untracked.txt") == "fresh\n"
    assert git(repo, "show", f"{archive['ref']}:work.txt") == "half-done\n"
    # The tree is back at the good commit, which run 1 ran on for its min_runtime.
    good = git(repo, "rev-parse", "refs/metasup/good").strip()
    assert rollback["to"] == good
    assert not (repo / "new" / "untracked.txt").exists()
    # Run 3 was told about the failure.
    env3 = json.loads((repo / "env-3.json").read_text())
    note = json.loads(Path(env3["METASUP_RECOVERY"]).read_text())
    assert note["exit_code"] == 4 and note["run"] == 2
    assert note["archive_ref"] == archive["ref"] and note["rolled_back_to"] == good
    assert "boom: something broke" in note["stderr_tail"]
    assert note["runtime_s"] < 0.3
    exits = by_name(repo, "exit")
    assert [e["code"] for e in exits] == [0, 4, 0]
    assert all(isinstance(e["pid"], int) and "runtime_s" in e for e in exits)


def test_emergency_stop_after_max_failures(repo: Path) -> None:
    scripted(repo, {"*": {"code": 1, "write": {"junk.txt": "x\n"}}}, max_failures=3)
    out = run_metasup(repo, "run")
    assert out.returncode == 3, out.stderr
    assert names(repo).count("rollback") == 3
    (stop,) = by_name(repo, "emergency_stop")
    assert stop["consecutive_failures"] == 3
    status = run_metasup(repo, "status", "--json")
    assert status.returncode == 1
    doc = json.loads(status.stdout)
    assert doc["status"] == "emergency_stop" and doc["consecutive_failures"] == 3
    # Every failed state is reachable from an archive ref.
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    assert len(refs) == 3
    assert all(git(repo, "show", f"{r}:junk.txt") == "x\n" for r in refs)


def test_failing_good_commit_restores_its_tree(repo: Path) -> None:
    scripted(repo, {"1": {"code": 2, "write": {"junk.txt": "left behind\n"}}, "2": {"sleep": 0.5}})
    out = run_metasup(repo, "run", "--max-cycles", "2")
    assert out.returncode == 0, out.stderr
    (rollback,) = by_name(repo, "rollback")
    baseline = by_name(repo, "mark_good")[0]
    assert baseline["baseline"] is True
    assert rollback["failed"] == rollback["to"] == baseline["commit"]
    assert git(repo, "show", f"{rollback['archive']}:junk.txt") == "left behind\n"
    assert not (repo / "junk.txt").exists()
    assert by_name(repo, "exit")[-1]["code"] == 0


def test_preserved_paths_survive_a_rollback_byte_for_byte(repo: Path) -> None:
    (repo / "data").mkdir()
    (repo / "data" / "tracked.bin").write_bytes(b"v1")
    agent = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        run = int(os.environ["METASUP_RUN"])
        if run == 2:
            Path("data/tracked.bin").write_bytes(bytes(range(256)) * 3)
            Path("data/deep").mkdir(exist_ok=True)
            Path("data/deep/memory.txt").write_text("learned something\\n")
            os.chmod("data/deep/memory.txt", 0o755)
            Path("code.py").write_text("broken\\n")
            sys.exit(1)
        time.sleep(0.5)  # ok: a healthy run lasts past min_runtime
        """
    )
    (repo / "agent.py").write_text(agent)
    (repo / "code.py").write_text("fine\n")
    write_config(repo, agent_config(extra="  rollback: {preserve: [data/]}\n"))
    out = run_metasup(repo, "run", "--max-cycles", "2")
    assert out.returncode == 0, out.stderr
    assert names(repo).count("rollback") == 1
    assert (repo / "code.py").read_text() == "fine\n"
    assert (repo / "data" / "tracked.bin").read_bytes() == bytes(range(256)) * 3
    memory = repo / "data" / "deep" / "memory.txt"
    assert memory.read_text() == "learned something\n"
    assert os.stat(memory).st_mode & 0o111
    assert not (repo / ".git" / "metasup" / "preserve" / "run-2").exists()


STRAGGLER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "Path('daemon-%s.started' % sys.argv[1]).write_text('1')\n"
    "while True:  # a straggler that keeps writing into the tree\n"
    "    Path('straggler.txt').write_text(str(time.time()))\n"
    "    time.sleep(0.01)  # ok: the straggler's own pace\n"
)

DAEMON_AGENT = textwrap.dedent(
    f"""
    import os, sys, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # found from outside by its arguments
            argv = [sys.executable, "-c", {STRAGGLER!r}, str(run), "daemon:" + os.getcwd()]
            os.execv(sys.executable, argv)
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 10
    while not Path("daemon-%d.started" % run).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # ok: polls for its daemon with a deadline
    Path("agent-%d.started" % run).write_text("1")
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)  # ok: the agent's runtime
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    """
)


def daemon_repo(repo: Path, sleep: float, code: int, sandbox: str = "auto") -> Path:
    (repo / "agent.py").write_text(DAEMON_AGENT)
    (repo / ".gitignore").write_text("*.started\n__pycache__/\n")
    # A failure well within min_runtime however slow the machine: its daemon takes two Python
    # starts before the agent exits.
    cfg = agent_config(min_runtime="5s", extra=f"  sandbox: {{mode: {sandbox}}}\n")
    write_config(repo, cfg.replace("agent.py]", f"agent.py, '{sleep}', '{code}', 'agent:{repo}']"))
    return repo


@pytest.mark.parametrize("sandbox", ["off", "auto"])
def test_stragglers_are_stopped_before_the_rollback(repo: Path, sandbox: str) -> None:
    daemon_repo(repo, sleep=0, code=1, sandbox=sandbox)
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 0, out.stderr
    assert f"sandbox mode={'bwrap' if sandbox == 'auto' else 'off'}" in out.stderr
    archive = by_name(repo, "archive")[0]["ref"]
    # Ignored, made by the failed run: the rollback took it into the archive.
    assert not (repo / "agent-1.started").exists()
    started = git(repo, "show", f"{archive}:.metasup/archived/ignored/agent-1.started")
    assert started == "1", "the daemon ran before the agent exited"
    assert marked_pids(f"daemon:{repo}") == []
    if sandbox == "off":  # metasup found and stopped it (in the jail it ends with the agent)
        assert "stragglers_stopped" in out.stderr
    # Had it survived the rollback, it would have written straggler.txt again.
    assert not (repo / "straggler.txt").exists()
    assert "straggler.txt" in git(repo, "ls-tree", "--name-only", archive)


def test_sigint_stops_the_whole_tree_and_exits_0(repo: Path) -> None:
    daemon_repo(repo, sleep=60, code=0)
    proc = start_metasup(repo)
    files = (repo / "agent-1.started", repo / "daemon-1.started")
    wait_for(lambda: all(f.exists() for f in files))
    marks = (f"agent:{repo}", f"daemon:{repo}")
    assert [len(marked_pids(m, jail=False)) for m in marks] == [1, 1], "the agent and its daemon"
    status = run_metasup(repo, "status", "--json")
    assert status.returncode == 0
    doc = json.loads(status.stdout)
    assert doc["status"] == "running" and doc["agent"]["pid"] > 0 and doc["run"] == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert [marked_pids(m) for m in marks] == [[], []]
    assert names(repo)[-1] == "supervisor_stop"
    assert "rollback" not in names(repo), "a requested stop is not a failure"
    after = run_metasup(repo, "status", "--json")
    assert after.returncode == 1 and json.loads(after.stdout)["status"] == "stopped"


def test_sigterm_also_stops_cleanly(agent_repo: Any) -> None:
    repo = agent_repo("import time\ntime.sleep(60)  # ok: a long-running agent\n")
    with supervising(repo) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    (exit_event,) = by_name(repo, "exit")
    assert exit_event["code"] == -signal.SIGTERM


def test_the_lock_refuses_a_second_supervisor_and_a_manual_rollback(agent_repo: Any) -> None:
    repo = agent_repo("import time\ntime.sleep(60)  # ok: a long-running agent\n")
    with supervising(repo):
        for command in ("run", "rollback"):
            out = run_metasup(repo, command)
            assert out.returncode == 2
            line = out.stderr.strip()
            assert line.startswith("metasup: error: another metasup (pid ")
            assert "already supervises" in line and "\n" not in line


def test_agent_environment(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 0.4}})
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    env = json.loads((repo / "env-1.json").read_text())
    launch = by_name(repo, "launch")[0]
    assert env["METASUP_RUN"] == "1"
    assert env["METASUP_COMMIT"] == launch["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert env["METASUP_INBOX"] == str((repo / ".metasup" / "inbox").resolve())
    assert env["METASUP_RECOVERY"].endswith("metasup/recovery.json")
    assert env["METASUP_STRATEGY"] == "hybrid"
    assert "METASUP_HEARTBEAT" not in env
    assert "/.metasup/inbox/" in (repo / ".git" / "info" / "exclude").read_text()


def test_plain_restarts_and_max_cycles(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 0.35, "code": 1}})
    out = run_metasup(repo, "run", "--max-cycles", "3")
    assert out.returncode == 0, out.stderr
    assert names(repo).count("launch") == 3
    assert "rollback" not in names(repo), "exits after min_runtime are normal, whatever the code"
    logs = sorted(p.name for p in (repo / ".git" / "metasup" / "logs").iterdir())
    assert len(logs) == 3 and logs[0].startswith("run-000001-")


def test_run_logs_past_keep_runs_go_as_runs_end(agent_repo: Any) -> None:
    """Logs from before this start and those of each run as it ends count alike."""
    repo = agent_repo(
        "import time\nprint('a run', flush=True)\n"
        "time.sleep(0.2)  # ok: a healthy run outlasts min_runtime\n",
        min_runtime="50ms",
        extra="  logs: {keep_runs: 2}\n",
    )
    logs = repo / ".git" / "metasup" / "logs"
    logs.mkdir(parents=True)
    (logs / "run-000000-earlier.log").write_text("a log of an earlier start\n")
    out = run_metasup(repo, "run", "--max-cycles", "4")
    assert out.returncode == 0, out.stderr
    left = sorted(p.name.split("-")[1] for p in logs.iterdir())
    assert left == ["000003", "000004"]


def test_memory_breach_is_a_health_kill_and_a_quick_failure(agent_repo: Any) -> None:
    repo = agent_repo(
        "import time\nblob = bytearray(300 * 1024 * 1024)\nfor i in range(0, len(blob), 4096):\n"
        "    blob[i] = 1\ntime.sleep(60)  # ok: holds the memory\n",
        min_runtime="20s",
        max_failures=1,
        extra="  health_checks: {interval: 100ms, max_memory_mb: 100}\n",
    )
    out = run_metasup(repo, "run")
    assert out.returncode == 3, out.stderr
    (kill,) = by_name(repo, "health_kill")
    assert kill["reason"].startswith("memory") and "max_memory_mb 100" in kill["reason"]
    assert by_name(repo, "exit")[0]["code"] == -signal.SIGKILL
    assert names(repo).count("rollback") == 1


def test_missing_heartbeat_after_min_runtime_is_a_normal_restart(agent_repo: Any) -> None:
    repo = agent_repo(
        "import time\ntime.sleep(60)  # ok: never touches its heartbeat\n",
        min_runtime="200ms",
        extra="  health_checks: {interval: 100ms, heartbeat_timeout: 400ms}\n",
    )
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 0, out.stderr
    (kill,) = by_name(repo, "health_kill")
    assert kill["reason"].startswith("no heartbeat")
    assert "rollback" not in names(repo)


def test_a_missing_command_counts_as_a_quick_failure(repo: Path) -> None:
    write_config(
        repo,
        "supervisor:\n  min_runtime: 1s\n  max_failures: 2\n  agent: {command: no-such-agent}\n",
    )
    (repo / "a").write_text("a\n")
    out = run_metasup(repo, "run")
    assert out.returncode == 3
    note = json.loads((repo / ".git" / "metasup" / "recovery.json").read_text())
    assert note["exit_code"] == 127
    assert any("cannot start 'no-such-agent'" in line for line in note["stderr_tail"])


def test_stale_index_lock_is_recovered_at_start(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 0.4}})
    (repo / ".git" / "index.lock").write_text("")
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 0, out.stderr
    assert not (repo / ".git" / "index.lock").exists()
    assert "stale_locks_removed" in out.stderr


def test_log_verify_and_json(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 0.4}})
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    ok = run_metasup(repo, "log", "--verify")
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    listed = json.loads(run_metasup(repo, "log", "--json").stdout)
    assert [e["event"] for e in listed] == names(repo)
    path = repo / ".git" / "metasup" / "events.jsonl"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"run":1' in line)
    assert 0 < at < len(lines) - 1
    lines[at] = lines[at].replace('"run":1', '"run":7')
    path.write_text("\n".join(lines) + "\n")
    broken = run_metasup(repo, "log", "--verify")
    assert broken.returncode == 1 and "prev does not match" in broken.stderr


def test_status_without_any_run(repo: Path) -> None:
    out = run_metasup(repo, "status")
    assert out.returncode == 1 and "no supervisor has run" in out.stdout


def test_run_outside_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    out = run_metasup(tmp_path, "run")
    assert out.returncode == 2
    assert out.stderr.startswith("metasup: error:") and "not inside a git repository" in out.stderr


def test_run_with_a_bad_config_changes_nothing(repo: Path) -> None:
    write_config(repo, "supervisor:\n  agent: {command: x}\n  max_failures: -1\n")
    out = run_metasup(repo, "run")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("metasup: error: metasup.yaml:3: supervisor.max_failures")
    assert not (repo / ".git" / "metasup").exists()
    assert git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""


def test_the_live_supervisor_reports_its_metrics(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 30}}, extra="  health_checks: {interval: 100ms}\n")
    with supervising(repo) as proc:

        def sampled() -> dict[str, Any] | None:
            out = run_metasup(repo, "status", "--json")
            doc: dict[str, Any] = json.loads(out.stdout)
            return doc if (doc.get("agent") or {}).get("rss_mb") else None

        doc = wait_for(sampled, what="a health sample in state.json")
        assert doc["agent"]["rss_mb"] > 1 and doc["agent"]["cpu_percent"] is not None
        assert doc["good_commit"] and doc["current_commit"] == doc["good_commit"]
        assert doc["counters"]["cycles"] == 1 and doc["strategy"] == "hybrid"
        assert doc["uptime_s"] >= 0 and doc["mcp_servers"] == {}
        text = run_metasup(repo, "status")
        assert text.returncode == 0 and "status:   running" in text.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_a_healthy_run_after_a_rollback_clears_the_failure_streak(repo: Path) -> None:
    """An alert on consecutive_failures must not fire while the run after a rollback is fine;
    and the agent's memory shows from its launch, not one health interval later."""
    scripted(
        repo, {"1": {"code": 1}, "*": {"sleep": 60}}, extra="  health_checks: {interval: 1h}\n"
    )
    with supervising(repo) as proc:
        # Run 2 holds the commit already good: no mark_good, the status is what tells.
        wait_for(lambda: by_name(repo, "rollback"), what="run 1's rollback")

        def settled() -> dict[str, Any] | None:
            doc: dict[str, Any] = json.loads(run_metasup(repo, "status", "--json").stdout)
            return doc if doc["run"] == 2 and doc["consecutive_failures"] == 0 else None

        doc = wait_for(settled, what="run 2 past min_runtime in the status")
        assert doc["agent"]["rss_mb"] > 1, "sampled at launch, not after the 1h interval"
        assert doc["counters"]["rollbacks"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_manual_rollback_archives_then_resets(repo: Path) -> None:
    scripted(repo, {"*": {"sleep": 0.4}}, extra="  rollback: {preserve: [notes.txt]}\n")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    good = git(repo, "rev-parse", "refs/metasup/good").strip()
    (repo / "plan.json").write_text("{}\n")
    (repo / "scratch.txt").write_text("operator's experiment\n")
    (repo / "notes.txt").write_text("keep me\n")
    out = run_metasup(repo, "rollback")
    assert out.returncode == 0, out.stderr
    (archive,) = by_name(repo, "archive")
    assert f"archived the current state as {archive['ref']}" in out.stdout
    assert git(repo, "show", f"{archive['ref']}:scratch.txt") == "operator's experiment\n"
    assert git(repo, "rev-parse", "HEAD").strip() == good
    assert not (repo / "scratch.txt").exists()
    assert (repo / "notes.txt").read_text() == "keep me\n"
    assert by_name(repo, "rollback")[-1]["reason"] == "manual"


def test_manual_rollback_mistakes_change_nothing(repo: Path) -> None:
    (repo / "a").write_text("a\n")
    git(repo, "add", "a")
    git(repo, "commit", "-qm", "one")
    (repo / "a").write_text("dirty\n")
    no_good = run_metasup(repo, "rollback")
    assert no_good.returncode == 2 and "no good commit yet" in no_good.stderr
    bogus = run_metasup(repo, "rollback", "--to", "nope")
    assert bogus.returncode == 2 and "'nope' is not a revision" in bogus.stderr
    assert (repo / "a").read_text() == "dirty\n"
    assert git(repo, "for-each-ref", "refs/metasup") == ""
    to_head = run_metasup(repo, "rollback", "--to", "HEAD")
    assert to_head.returncode == 0, to_head.stderr
    assert (repo / "a").read_text() == "a\n"


def test_archives_past_keep_archives_go_into_a_bundle_and_none_is_lost(
    repo: Path, tmp_path: Path
) -> None:
    plan: dict[str, Any] = {"1": {"sleep": 0.6}, "*": {"sleep": 60}}
    for run in range(2, 7):  # a flapping agent: five quick failures, each leaving a state
        plan[str(run)] = {"code": 1, "write": {f"state-{run}.txt": f"run {run}\n"}}
    scripted(repo, plan, max_failures=10, extra="  rollback: {keep_archives: {count: 2}}\n")
    with supervising(repo) as proc:
        wait_for(lambda: len(by_name(repo, "rollback")) == 5, timeout=30, what="five rollbacks")

        def settled() -> bool:
            pruned = [r for e in by_name(repo, "archives_pruned") for r in e["refs"]]
            return len(pruned) == 3

        wait_for(settled, what="three archives pruned")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    archived = {e["ref"]: e["commit"] for e in by_name(repo, "archive")}
    assert len(archived) == 5
    left = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    assert left == sorted(archived)[-2:], "the newest two stay as refs"
    # Every archived state is still there: in a ref, or in a bundle that restores alone.
    bundles = sorted((repo / ".git" / "metasup" / "backups" / "archives").glob("*.bundle"))
    assert bundles
    fresh = tmp_path / "fresh"
    git(tmp_path, "init", "-q", str(fresh))
    for b in bundles:
        git(fresh, "fetch", "-q", str(b), "refs/metasup/*:refs/metasup/*")
    for ref, commit in archived.items():
        holder = repo if ref in left else fresh
        assert git(holder, "rev-parse", ref).strip() == commit
        assert "state-" in git(holder, "show", "--stat", "--format=", commit)
    git(repo, "fsck", "--no-dangling")
    # The ref guard follows the journal: a restart does not bring the pruned refs back.
    with supervising(repo):
        pass
    assert by_name(repo, "refs_restored") == []
    again = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    assert again == left
