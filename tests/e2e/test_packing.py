"""Loose objects are packed in the background once git's `gc.auto` is passed, and nothing is
pruned: an object no ref reaches is still there after the packing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testing.fixtures import agent_config, git, run_metasup, write_config


def _counts(repo: Path) -> dict[str, int]:
    lines = git(repo, "count-objects", "-v").splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in lines) if v.isdigit()}


def test_loose_objects_are_packed_and_nothing_is_pruned(repo: Path) -> None:
    (repo / "data").mkdir()
    for n in range(3000):
        (repo / "data" / f"f{n:04d}.txt").write_text(f"file {n}\n")
    # A healthy run outlasts min_runtime: the packing starts then.
    (repo / "agent.py").write_text("import time\ntime.sleep(0.5)  # ok: a healthy run\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "many files, all loose")
    git(repo, "config", "gc.auto", "500")
    orphan = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=repo, input="reached by no ref\n", capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    before = _counts(repo)
    assert before["count"] > 3000 and before["packs"] == 0
    write_config(repo, agent_config())
    out = run_metasup(repo, "run", "--max-cycles", "2", timeout=120)
    assert out.returncode == 0, out.stderr
    after = _counts(repo)
    assert after["packs"] >= 1 and after["count"] < 200, after
    assert git(repo, "cat-file", "-p", orphan) == "reached by no ref\n"
    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=repo, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "objects_packed" in out.stdout + out.stderr
