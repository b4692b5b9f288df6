"""`metasup recover`: back to the last good state after an emergency stop, with or without the
good ref."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testing.fixtures import agent_config, events, git, run_metasup, start_metasup, wait_for

# Run 1 is good; every later run fails at once: an emergency stop after max_failures.
AGENT = """
import os, sys, time
from pathlib import Path
if os.environ["METASUP_RUN"] == "1":
    Path("brain.txt").write_text("broken rewrite\\n")
    time.sleep(0.4)  # ok: a good run
    sys.exit(0)
if os.environ.get("SLEEP_FOREVER"):
    time.sleep(120)  # ok: a long run, for the running-supervisor case
sys.exit(1)
"""


def crashed(repo: Path) -> str:
    (repo / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "metasup.yaml").write_text(agent_config(min_runtime="300ms", max_failures=2))
    out = run_metasup(repo, "run", timeout=60)
    assert out.returncode == 3, out.stderr
    return git(repo, "rev-parse", "refs/metasup/good").strip()


def test_recover_after_an_emergency_stop(repo: Path) -> None:
    good = crashed(repo)
    (repo / "junk.txt").write_text("left behind\n")
    out = run_metasup(repo, "recover")
    assert out.returncode == 0, out.stderr
    assert f"recovered to {good[:12]} (from the good ref)" in out.stdout
    assert git(repo, "rev-parse", "HEAD").strip() == good
    assert not (repo / "junk.txt").exists()
    archive = out.stdout.split("archived the current state as ")[1].split()[0]
    assert git(repo, "show", f"{archive}:junk.txt") == "left behind\n", "nothing is lost"
    (recovered,) = [e for e in events(repo) if e["event"] == "recovered"]
    assert recovered["to"] == good and recovered["source"] == "good ref"
    state = json.loads((repo / ".git" / "metasup" / "state.json").read_text())
    assert state["status"] == "stopped" and state["consecutive_failures"] == 0
    assert run_metasup(repo, "log", "--verify").returncode == 0


def test_recover_with_the_good_ref_deleted_or_broken(repo: Path) -> None:
    good = crashed(repo)
    git(repo, "update-ref", "-d", "refs/metasup/good")
    out = run_metasup(repo, "recover")
    assert out.returncode == 0, out.stderr
    assert f"recovered to {good[:12]} (from the journal (mark_good #" in out.stdout
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == good
    # A good ref naming an object the repository does not have.
    (repo / ".git" / "refs" / "metasup" / "good").write_text("1" * 40 + "\n")
    again = run_metasup(repo, "recover")
    assert again.returncode == 0, again.stderr
    assert "from the journal" in again.stdout
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == good


def test_recover_stops_a_running_supervisor_first(repo: Path) -> None:
    good = crashed(repo)
    assert run_metasup(repo, "recover").returncode == 0
    proc = start_metasup(repo, env={"SLEEP_FOREVER": "1"})
    try:
        wait_for(lambda: sum(e["event"] == "launch" for e in events(repo)) >= 4, what="a launch")
        out = run_metasup(repo, "recover")
        assert out.returncode == 0, out.stderr
        assert "stopped 1 process(es)" in out.stdout  # the supervisor; it stopped its agent
        assert proc.wait(timeout=30) == 0
        assert git(repo, "rev-parse", "HEAD").strip() == good
    finally:
        if proc.poll() is None:
            proc.kill()


def test_nothing_to_recover_to(repo: Path) -> None:
    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a")
    out = run_metasup(repo, "recover")
    assert out.returncode == 1 and "no good state to recover to" in out.stderr
    assert "Traceback" not in out.stderr


def test_recover_takes_an_ignored_plant_out_of_the_tree(repo: Path) -> None:
    """A `json.py` excluded from git, left after the emergency stop, would break the good
    commit at the next start: recover archives it and takes it out."""
    good = crashed(repo)
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write("json.py\n")
    (repo / "json.py").write_text("raise SystemExit('planted')\n")
    # The metasup command, as a user runs it: `python -m metasup` in the tree would import it.
    metasup = str(Path(sys.executable).with_name("metasup"))
    out = subprocess.run([metasup, "recover"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert git(repo, "rev-parse", "HEAD").strip() == good
    assert not (repo / "json.py").exists()
    (archived,) = [e for e in events(repo) if e["event"] == "archive" and e["reason"] == "recover"]
    assert archived["ignored"] == 1
    stored = git(repo, "show", f"{archived['ref']}:.metasup/archived/ignored/json.py")
    assert stored == "raise SystemExit('planted')\n"
