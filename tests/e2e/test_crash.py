"""kill -9 the supervisor in the middle of a step, start it again, check nothing is lost."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from testing.fixtures import (
    agent_config,
    git,
    metasup_cmd,
    names,
    pid_alive,
    run_metasup,
    wait_for,
    write_config,
)

FILES = 40

AGENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    if run == 2:
        for n in range(FILES):
            Path(f"src/f{n:02d}.py").write_text(f"broken {n}\\n")
        Path("untracked.txt").write_text("fresh work\\n")
        Path("data").mkdir(exist_ok=True)
        Path("data/memory.txt").write_text("remember run 2\\n")
        sys.exit(1)
    time.sleep(0.5)  # ok: a healthy run outlasts min_runtime
    """
).replace("FILES", str(FILES))


def crash_repo(repo: Path) -> Path:
    (repo / "src").mkdir()
    for n in range(FILES):
        (repo / "src" / f"f{n:02d}.py").write_text(f"good {n}\n")
    (repo / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(extra="  rollback: {preserve: [data/]}\n"))
    return repo


def tree(repo: Path, rev: str) -> str:
    return git(repo, "rev-parse", f"{rev}^{{tree}}").strip()


def reachable_untracked(repo: Path) -> bool:
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    return any(git(repo, "show", f"{r}:untracked.txt", check=False) == "fresh work\n" for r in refs)


POINTS = [
    "snapshot:after-commit",
    "rollback:after-archive",
    "rollback:after-stash",
    "reset:mid-checkout",
    "rollback:after-reset",
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_restart_loses_nothing(repo: Path, point: str) -> None:
    crash_repo(repo)
    crashed = run_metasup(repo, "run", "--max-cycles", "3", env={"METASUP_CRASHPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert run_fsck(repo) == 0

    if point != "snapshot:after-commit":
        # The failed state is committed before anything is reset, and the ref outlives the kill.
        assert reachable_untracked(repo)
        failed = [e for e in events_of(repo) if e["event"] == "exit"][-1]["commit"]
        good = git(repo, "rev-parse", "refs/metasup/good").strip()
        # HEAD's tree is the state before the step or after it, never a third one.
        assert tree(repo, "HEAD") in (tree(repo, failed), tree(repo, good))

    again = run_metasup(repo, "run", "--max-cycles", "1")
    assert again.returncode == 0, again.stderr
    assert "already supervises" not in again.stderr
    assert run_fsck(repo) == 0
    assert not (repo / ".git" / "index.lock").exists()
    # The code is the good code again, and every file of it is intact.
    for n in range(FILES):
        assert (repo / "src" / f"f{n:02d}.py").read_text() == f"good {n}\n"
    if point != "snapshot:after-commit":
        assert reachable_untracked(repo)
        assert not (repo / "untracked.txt").exists()
        # The preserved path came through the interrupted rollback.
        assert (repo / "data" / "memory.txt").read_text() == "remember run 2\n"
        assert "rollback" in names(repo)
        assert not (repo / ".git" / "metasup" / "intent.json").exists()
    # Runs are numbered on from the crashed supervisor's.
    launches = [e["run"] for e in events_of(repo) if e["event"] == "launch"]
    assert launches == sorted(launches) and len(set(launches)) == len(launches)
    ok = run_metasup(repo, "log", "--verify")
    assert ok.returncode == 0, ok.stderr


def run_fsck(repo: Path) -> int:
    return subprocess.run(
        ["git", "fsck", "--no-progress", "--full"], cwd=repo, capture_output=True
    ).returncode


def events_of(repo: Path) -> list[dict[str, object]]:
    path = repo / ".git" / "metasup" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kill_9_while_the_agent_runs_leaves_no_agent_behind(repo: Path) -> None:
    """Without the jail the agent outlives a supervisor killed with -9, and the next start
    stops it (the jailed case is in test_jail.py: there it dies with its supervisor)."""
    (repo / "agent.py").write_text(
        "import os, time\nfrom pathlib import Path\n"
        "if os.environ['METASUP_RUN'] == '1':\n"
        "    Path('agent.pid').write_text(str(os.getpid()))\n"
        "    time.sleep(60)  # ok: runs until stopped\n"
        "time.sleep(0.5)  # ok: a healthy run\n"
    )
    (repo / ".gitignore").write_text("agent.pid\n__pycache__/\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: off}\n"))
    proc = subprocess.Popen(
        metasup_cmd("run"), cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pid_file = repo / "agent.pid"
    # The file exists a moment before its content does: wait for the pid itself.
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() and "launch" in names(repo))
    agent = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    assert pid_alive(agent), "the orphan outlives its killed supervisor"
    again = run_metasup(repo, "run", "--max-cycles", "1", timeout=60)
    assert again.returncode == 0, again.stderr
    assert not pid_alive(agent)
    assert "leftovers_stopped" in again.stderr
