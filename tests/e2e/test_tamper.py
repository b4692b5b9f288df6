"""The tamper watch: protected paths changed while the agent runs are put back at once."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from testing.fixtures import (
    agent_config,
    events,
    run_metasup,
    supervising,
    wait_for,
    write_config,
)

RULES = "protected: [/secrets]\n"
NO_JAIL = "  sandbox: {mode: off}\n"

# What each tampering agent starts with: a wait (bounded) to see metasup put a thing back,
# recorded in `seen`.
WATCHER = textwrap.dedent(
    """
    import json, os, socket, stat, sys, time
    from pathlib import Path
    RULES = Path("protected/safety_rules.yaml")
    GOOD = RULES.read_text()
    seen = {}

    def wait_until(test, what):
        deadline = time.monotonic() + 10
        while not test():
            if time.monotonic() > deadline:
                seen[what] = "not restored"
                return
            time.sleep(0.005)  # ok: the agent polls for metasup's restore, bounded
        seen[what] = "restored"
    """
)

# The agent tampers, then waits to see metasup put things back, and records it.
AGENT = WATCHER + textwrap.dedent(
    """

    if os.environ["METASUP_RUN"] == "1":
        # Busy: writes of its own all along, among the tampering.
        for i in range(20):
            Path(f"work/{i % 5}.txt").parent.mkdir(exist_ok=True)
            Path(f"work/{i % 5}.txt").write_text(f"step {i}\\n")
            RULES.write_text(f"protected: []  # {i}\\n")
            wait_until(lambda: RULES.read_text() == GOOD, f"overwrite {i}")
        RULES.unlink()
        wait_until(lambda: RULES.exists() and RULES.read_text() == GOOD, "delete")
        os.rename(RULES, "moved.yaml")
        wait_until(lambda: RULES.exists() and RULES.read_text() == GOOD, "rename out")
        os.chmod(RULES, 0o777)
        wait_until(lambda: RULES.stat().st_mode & 0o777 == 0o644, "chmod")
        Path("secrets").write_text("mine\\n")
        wait_until(lambda: not Path("secrets").exists(), "create")
        Path("seen.json").write_text(json.dumps(seen))
    time.sleep(float(os.environ.get("AGENT_SLEEP", "0.5")))  # ok: the run's length
    """
)


def setup(repo: Path, extra: str = "", **config: Any) -> None:
    """The jail would refuse every one of these writes (tests/e2e/test_jail.py): it is off here,
    as with `mode: off` or on a kernel without one, and the watch behind it is what is tested."""
    (repo / "protected").mkdir()
    (repo / "protected" / "safety_rules.yaml").write_text(RULES)
    (repo / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text("__pycache__/\nseen.json\nwork/\nmoved.yaml\n")
    write_config(repo, agent_config(extra=extra + NO_JAIL, **config))


def test_tampering_by_a_busy_agent_is_undone_while_it_runs(repo: Path) -> None:
    setup(repo, min_runtime="300ms")
    out = run_metasup(repo, "run", "--max-cycles", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads((repo / "seen.json").read_text())
    assert set(seen.values()) == {"restored"}, seen
    assert len(seen) == 24
    log = events(repo)
    watch = [e for e in log if e["event"] == "tamper_restored" and e.get("by") == "watch"]
    restored = {p for e in watch for p in e["paths"]}
    assert restored == {"protected/safety_rules.yaml", "secrets"}
    exit_seq = next(e["seq"] for e in log if e["event"] == "exit")
    assert all(e["seq"] < exit_seq for e in watch), "while the agent ran"
    assert (repo / "protected" / "safety_rules.yaml").read_text() == RULES
    assert (repo / "work" / "4.txt").read_text() == "step 19\n", "its own work is untouched"


def test_on_tamper_restore_and_restart(repo: Path) -> None:
    setup(repo, min_runtime="300ms", extra="  on_tamper: restore_and_restart\n")
    out = run_metasup(repo, "run", "--max-cycles", "2", timeout=120)
    assert out.returncode == 0, out.stderr
    log = events(repo)
    first = next(e["seq"] for e in log if e["event"] == "tamper_restored")
    launches = [e for e in log if e["event"] == "launch"]
    assert len(launches) == 2 and launches[1]["seq"] > first
    assert not any(e["event"] == "rollback" for e in log), "a restart, not a failure"


def test_on_tamper_stop(repo: Path) -> None:
    setup(repo, min_runtime="300ms", extra="  on_tamper: stop\n")
    out = run_metasup(repo, "run", "--max-cycles", "5", timeout=120)
    assert out.returncode == 0, out.stderr
    names = [e["event"] for e in events(repo)]
    assert names.count("launch") == 1 and "tamper_restored" in names
    assert names[-1] == "supervisor_stop"
    assert (repo / "protected" / "safety_rules.yaml").read_text() == RULES


SNEAKY = WATCHER + textwrap.dedent(
    """

    def regular_and_good():
        st = os.lstat(RULES)
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and RULES.read_text() == GOOD

    os.chmod(RULES, 0o400)  # no exec bit changed: only the attribute event says so
    wait_until(lambda: RULES.stat().st_mode & 0o777 == 0o644, "chmod")
    os.link(RULES, "mine.txt")  # a second name, unprotected
    wait_until(lambda: RULES.stat().st_nlink == 1, "hard link")
    Path("mine.txt").write_text("protected: []\\n")
    seen["write through the link"] = "kept out" if RULES.read_text() == GOOD else "went in"
    # Made aside and renamed over the file: metasup may restore it between an unlink and a
    # mkfifo, never in a rename.
    os.mkfifo("fifo.tmp")  # a reader or a writer of this waits for ever
    os.rename("fifo.tmp", RULES)
    wait_until(regular_and_good, "fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.tmp")
    os.rename("sock.tmp", RULES)
    wait_until(regular_and_good, "socket")
    Path("seen.json").write_text(json.dumps(seen))
    time.sleep(0.5)  # ok: the run's length
    """
)


def test_chmod_hard_links_fifos_and_sockets_at_protected_paths_are_undone(repo: Path) -> None:
    setup(repo, min_runtime="300ms")
    (repo / "agent.py").write_text(SNEAKY)
    (repo / ".gitignore").write_text("__pycache__/\nseen.json\nmine.txt\n")
    out = run_metasup(repo, "run", "--max-cycles", "1", timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads((repo / "seen.json").read_text())
    assert seen == {
        "chmod": "restored",
        "hard link": "restored",
        "write through the link": "kept out",
        "fifo": "restored",
        "socket": "restored",
    }
    rules = repo / "protected" / "safety_rules.yaml"
    assert rules.read_text() == RULES and rules.stat().st_nlink == 1


def _inotify_watches(pid: int) -> list[set[int]]:
    """The inodes each inotify descriptor of `pid` watches, from /proc's fdinfo."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        inodes = {int(m, 16) for m in re.findall(r"^inotify wd:\S+ ino:([0-9a-f]+)", text, re.M)}
        if inodes:
            found.append(inodes)
    return found


def test_the_watch_leaves_git_out_and_follows_new_folders(repo: Path) -> None:
    """git's own churn never reaches the watch; a folder made while the agent runs is watched
    from the start, what it already holds included."""
    (repo / "agent.py").write_text(
        "import time\n"
        "from pathlib import Path\n"
        "Path('made/later').mkdir(parents=True)\n"
        "Path('made/later/key.txt').write_text('mine')\n"
        "time.sleep(60)  # ok: stopped by the test\n"
    )
    (repo / "sub").mkdir()
    (repo / "sub" / "x.txt").write_text("x")
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(extra=NO_JAIL + "  protected_paths: [/made/later/key.txt]\n"))
    with supervising(repo) as proc:
        wait_for(
            lambda: any(e["event"] == "tamper_restored" for e in events(repo)),
            what="the new folder's file put back",
        )
        watches = _inotify_watches(proc.pid)
        tree = next(w for w in watches if os.stat(repo).st_ino in w)
    restored = [p for e in events(repo) if e["event"] == "tamper_restored" for p in e["paths"]]
    assert "made/later/key.txt" in restored and not (repo / "made/later/key.txt").exists()
    ino = lambda p: os.stat(repo / p).st_ino  # noqa: E731
    assert {ino("sub"), ino("made"), ino("made/later"), ino(".git/metasup")} <= tree
    git_dirs = {ino(Path(d).relative_to(repo)) for d, _, _ in os.walk(repo / ".git")}
    assert tree & git_dirs == {ino(".git/metasup")}, "only the lock's folder, of all of .git"
    assert ino(".metasup/inbox") not in tree
