"""What metasup reads after the agent ran is not trusted: its state files, its refs, its lock, the
branch and its clock. Each test plays the agent with the jail off and checks the promise held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testing.fixtures import (
    SLEEPER,
    agent_config,
    events,
    git,
    jail_off,
    names,
    pid_alive,
    rechain,
    run_metasup,
    start_metasup,
    state,
    supervising,
    wait_for,
    write_config,
)


def test_a_run_that_outlived_min_runtime_while_the_supervisor_was_paused_is_no_quick_failure(
    repo: Path, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    jail_off(
        repo,
        textwrap.dedent(
            f"""
            import os, sys, time
            from pathlib import Path
            t0 = time.monotonic()
            Path({str(ready)!r}).write_text(str(os.getpid()))
            while not Path({str(go)!r}).exists() or time.monotonic() - t0 < 3.5:
                time.sleep(0.02)  # ok: waits for the test, then outlives min_runtime
            sys.exit(1)
            """
        ),
        min_runtime="3s",
    )
    proc = start_metasup(repo, "--max-cycles", "1")
    try:
        # Created, then written: wait for the pid itself.
        agent = int(wait_for(lambda: ready.exists() and ready.read_text(), what="the agent"))
        proc.send_signal(signal.SIGSTOP)  # the supervisor misses its min_runtime timer
        go.touch()

        wait_for(lambda: not pid_alive(agent), what="the agent to end, supervisor paused")
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    seen = names(repo)
    assert "exit" in seen
    assert "rollback" not in seen and "archive" not in seen, seen


def test_a_forged_state_file_is_read_as_untrusted_input(repo: Path) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    forged = {
        "status": "running",
        "run": "many",
        "agent": {"pid": 1, "pgid": 1, "token": ["x"], "rss_mb": "lots"},
        "helper_trees": "all of them",
        "mcp": {"x": "y"},
        "experiments": [1, 2],
        "last_exit": 7,
    }
    state_file = repo / ".git" / "metasup" / "state.json"
    state_file.parent.mkdir(parents=True)
    # `status` exits 1: no supervisor runs.
    for command, code in (
        (["status"], 1),
        (["status", "--json"], 1),
        (["run", "--max-cycles", "1"], 0),
        (["recover"], 0),
    ):
        state_file.write_text(json.dumps(forged))
        out = run_metasup(repo, *command)
        assert out.returncode == code, (command, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout, command
    assert "launch" in names(repo)


@pytest.mark.parametrize("forged", ["target", "staging"])
def test_a_forged_half_done_rollback_is_never_resumed(
    repo: Path, tmp_path: Path, forged: str
) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    good = git(repo, "rev-parse", "refs/metasup/good").strip()
    # The agent's move: a commit of its own, uncommitted work, a folder it wants gone, and an
    # intent that would reset the tree to that commit and delete the folder as "staging".
    tree = git(repo, "rev-parse", "HEAD^{tree}").strip()
    built = git(repo, "commit-tree", tree, "-p", good, "-m", "agent's own").strip()
    (repo / "work.txt").write_text("uncommitted work\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    intent = {
        "op": "rollback",
        "run": 9,
        "failed": None,
        "target": built if forged == "target" else good,
        "reason": "exit 1",
        "staging": str(victim if forged == "staging" else repo / ".git/metasup/preserve/run-9"),
        "step": "stashed",
    }
    state_dir = repo / ".git" / "metasup"
    (state_dir / "intent.json").write_text(json.dumps(intent))

    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 2, out.stderr
    assert "not resumed" in out.stderr and "Traceback" not in out.stderr
    assert (victim / "keep.txt").read_text() == "precious\n"
    assert (repo / "work.txt").read_text() == "uncommitted work\n"
    assert git(repo, "rev-parse", "HEAD").strip() != built
    archives = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive/").split()
    assert any("untrusted_intent" in a for a in archives)
    latest = [a for a in archives if "untrusted_intent" in a][-1]
    assert git(repo, "show", f"{latest}:work.txt") == "uncommitted work\n"
    assert not (state_dir / "intent.json").exists()
    assert list(state_dir.glob("intent.refused-*.json"))

    # The next start goes on from the current state; the agent's commit never runs.
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    launched = [e["commit"] for e in events(repo) if e["event"] == "launch"]
    assert built not in launched and len(launched) == 2
    assert git(repo, "fsck", "--no-dangling").strip() == ""


@pytest.mark.parametrize("how", ["unlinked", "replaced"])
def test_a_lock_file_taken_away_stops_the_supervisor_before_it_touches_git(
    repo: Path, how: str
) -> None:
    jail_off(repo, SLEEPER, min_runtime="0s")
    lock = repo / ".git" / "metasup" / "lock"
    with supervising(repo) as proc:
        agent = wait_for(lambda: state(repo).get("agent", {}).get("pid"), what="the agent")
        snapshots = names(repo).count("snapshot")
        if how == "unlinked":
            lock.unlink()
        else:
            (lock.parent / "lock.new").write_text("")
            os.replace(lock.parent / "lock.new", lock)
        assert proc.wait(timeout=20) == 2
        err = proc.stderr.read() if proc.stderr else ""
    assert "removed or replaced" in err, err
    assert not pid_alive(agent), "the agent is stopped with its supervisor"
    assert names(repo).count("snapshot") == snapshots
    # A second supervisor starts cleanly afterwards, with the lock file it finds.
    assert run_metasup(repo, "status").returncode == 1


def test_recover_stops_the_lock_holder_the_kernel_names_not_the_pid_written_in_the_file(
    repo: Path,
) -> None:
    jail_off(repo, SLEEPER, min_runtime="0s")
    lock = repo / ".git" / "metasup" / "lock"
    bystander = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        with supervising(repo) as proc:
            wait_for(lambda: state(repo).get("good_commit"), what="a good commit")
            with lock.open("r+") as f:  # the same file, another pid in it
                f.truncate(0)
                f.write(f"{bystander.pid}\n")
            out = run_metasup(repo, "recover")
            assert out.returncode == 0, out.stderr
            assert proc.wait(timeout=20) == 0
        assert bystander.poll() is None, "the pid written in the file was left alone"
        # No supervisor now: a pid in the file names nobody.
        lock.write_text(f"{bystander.pid}\n")
        assert run_metasup(repo, "recover").returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_deleted_baseline_is_no_first_start(repo: Path) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    # The agent's move: its own config, and the record that would have caught it gone.
    (repo / ".git" / "metasup" / "baseline.json").unlink()
    write_config(
        repo, agent_config(min_runtime="0s", max_failures=99, extra="  sandbox: {mode: off}\n")
    )
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 2, out.stderr
    assert "baseline" in out.stderr and "missing" in out.stderr and "metasup approve" in out.stderr
    assert names(repo).count("launch") == 1, "nothing ran on the edited config"
    assert run_metasup(repo, "approve", "--reason", "checked").returncode == 0
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0


def test_an_ignored_config_beside_the_approved_one_is_never_taken(repo: Path) -> None:
    (repo / "agent.py").write_text("print('ok')\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "config").mkdir()
    (repo / "config" / "metasup.yaml").write_text(
        agent_config(min_runtime="0s", extra="  sandbox: {mode: off}\n")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    # The agent writes its own config where metasup looks first, ignored by git.
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write("/metasup.yaml\n")
    write_config(
        repo, agent_config(min_runtime="0s", max_failures=99, extra="  sandbox: {mode: off}\n")
    )
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 2, out.stderr
    assert "added metasup.yaml (ignored by git)" in out.stderr, out.stderr
    out = run_metasup(repo, "run", "--config", "metasup.yaml", "--max-cycles", "1")
    assert out.returncode == 2
    assert "the approved one is config/metasup.yaml" in out.stderr, out.stderr
    assert names(repo).count("launch") == 1
    starts = [e["config"] for e in events(repo) if e["event"] == "supervisor_start"]
    assert starts[1].endswith("config/metasup.yaml"), "the pinned config, not the agent's"
    # Gone again, the approved config is the one in use.
    (repo / "metasup.yaml").unlink()
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0


REF_AGENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
    if run == 2:
        Path("broken.txt").write_text("broken\\n")
        sys.exit(1)
    if run == 4:
        # Everything metasup would roll back with, gone, and its archive moved or deleted.
        git("update-ref", "-d", "refs/metasup/good")
        archives = git("for-each-ref", "--format=%(refname)", "refs/metasup/archive/").split()
        git("update-ref", "-d", archives[0])
        Path("work.txt").write_text("uncommitted\\n")
        sys.exit(1)
    time.sleep(0.5)  # ok: a healthy run outlasts min_runtime
    """
)


def test_refs_deleted_behind_metasups_back_are_put_back_from_the_journal(repo: Path) -> None:
    jail_off(repo, REF_AGENT)
    out = run_metasup(repo, "run", "--max-cycles", "5")
    assert out.returncode == 0, out.stderr
    log = events(repo)
    seen = [e["event"] for e in log]
    assert seen.count("rollback") == 2 and "emergency_stop" not in seen
    restored = [e for e in log if e["event"] == "refs_restored"]
    assert restored, seen
    fixed = {r["ref"] for e in restored for r in e["refs"]}
    assert "refs/metasup/good" in fixed and any(
        r.startswith("refs/metasup/archive/") for r in fixed
    )
    # Every ref is where the journal says, and the failed run's work is in an archive.
    last_good = [e["commit"] for e in log if e["event"] == "mark_good"][-1]
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == last_good
    for e in log:
        if e["event"] == "archive":
            assert git(repo, "rev-parse", e["ref"]).strip() == e["commit"]
    rollbacks = [e for e in log if e["event"] == "rollback"]
    assert git(repo, "show", f"{rollbacks[-1]['archive']}:work.txt") == "uncommitted\n"


REWRITER = textwrap.dedent(
    """
    import os, subprocess, time
    from pathlib import Path
    run = int(os.environ["METASUP_RUN"])
    if run == 1:
        Path("notes.txt").write_text("worth keeping\\n")
    if run == 2:
        # The snapshot that holds the notes, dropped from the branch.
        subprocess.run(["git", "reset", "-q", "--hard", "HEAD~1"], check=True)
    time.sleep(0.5)  # ok: a healthy run outlasts min_runtime
    """
)


def test_commits_a_rewound_branch_no_longer_reaches_are_archived(repo: Path) -> None:
    jail_off(repo, REWRITER)
    out = run_metasup(repo, "run", "--max-cycles", "3")
    assert out.returncode == 0, out.stderr
    log = events(repo)
    second = [e["commit"] for e in log if e["event"] == "launch"][1]
    kept = [e for e in log if e["event"] == "archive" and e["reason"] == "history_rewritten"]
    assert len(kept) == 1 and kept[0]["commit"] == second, kept
    assert git(repo, "show", f"{kept[0]['ref']}:notes.txt") == "worth keeping\n"
    launches = [e["seq"] for e in log if e["event"] == "launch"]
    assert launches[1] < kept[0]["seq"] < launches[2], "archived at the next cycle's start"
    assert git(repo, "fsck", "--no-dangling").strip() == ""


@pytest.mark.parametrize("attack", ["edited", "dropped", "re-chained", "cut off"])
def test_log_verify_sees_every_kind_of_journal_forgery(repo: Path, attack: str) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    assert run_metasup(repo, "run", "--max-cycles", "2").returncode == 0
    assert run_metasup(repo, "log", "--verify").returncode == 0
    path = repo / ".git" / "metasup" / "events.jsonl"
    lines = path.read_bytes().splitlines()
    if attack == "edited":
        lines[3] = lines[3].replace(b'"run":1', b'"run":7')
    elif attack == "dropped":
        del lines[3]
    elif attack == "re-chained":
        del lines[3]
        lines = rechain(lines)
    else:
        lines = lines[:-2]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = run_metasup(repo, "log", "--verify", "--json")
    assert out.returncode == 1, out.stdout
    assert json.loads(out.stdout)["problems"]
    # The supervisor sees a cut-off tail as it starts, and records it.
    if attack == "cut off":
        assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
        (broken,) = [e for e in events(repo) if e["event"] == "journal_broken"]
        assert "events were cut off" in broken["problems"][0]


def test_the_pinned_config_holds_on_a_detached_head_too(repo: Path) -> None:
    """During a rebase HEAD is detached (the pre-commit hook runs then): the config in use is
    still the approved one, found from the git dir alone."""
    from metasup.pipelines.integrity import config_in_use

    (repo / "agent.py").write_text("print('ok')\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "config").mkdir()
    (repo / "config" / "metasup.yaml").write_text(
        agent_config(min_runtime="0s", extra="  sandbox: {mode: off}\n")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    assert run_metasup(repo, "approve").returncode == 0
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write("/metasup.yaml\n")
    write_config(repo, agent_config(min_runtime="0s"))  # the agent's, found first by name
    git(repo, "checkout", "-q", "--detach")
    assert config_in_use(repo) == repo / "config" / "metasup.yaml"
