"""`metasup demo`, as a user runs it: a summary with a rollback and a good mark."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from testing.fixtures import git, run_metasup


def test_demo_shows_a_rollback_and_a_good_mark(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    # As scripts/demo runs it: the venv's own `metasup`, its bin/ first on PATH for this
    # process only.
    bin_dir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bin_dir / "metasup"), "demo", "--dir", str(target)],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},  # not activated
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # Not a TTY: plain lines, no colour codes.
    assert "\x1b[" not in text
    assert "== summary" in text
    rollbacks = int(re.search(r"^rollbacks: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    marks = int(re.search(r"^good marks: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert rollbacks >= 1 and marks >= 1
    refs = git(target, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    archives = [r for r in refs if "/archive/exp-" not in r]  # the A/B's losers are archived too
    assert len(archives) == rollbacks
    for ref in archives:
        assert f"archived as {ref}" in text
    good = git(target, "rev-parse", "refs/metasup/good").strip()
    assert f"final good commit: {good[:12]}" in text
    assert "lesson kept in memory/" in text, "memory/ survived the rollback"
    assert "proposals applied: 1" in text and "proposals rejected: 1" in text
    # Jailed by default: the kernel refused the agent's edit of its config and its attempt to
    # erase the good ref; nothing was left for the tamper watch to restore.
    assert "jail (bwrap) refused the agent: write metasup.yaml, delete refs/metasup/good" in text
    assert "protected paths restored: -" in text
    assert (target / "notes" / "ideas.md").exists()
    assert "A/B winner: bold" in text and "merged" in text
    assert "  cautious: failed" in text and "  typo: failed check" in text
    assert "min(0.9, STEP_SCALE * 2)" in (target / "brain.py").read_text()
    assert git(target, "for-each-ref", "refs/heads/metasup") == ""
    assert "max_failures: 3" in (target / "metasup.yaml").read_text()
    assert "max_failures: 1000" not in git(target, "log", "-p", "--", "metasup.yaml")
    assert re.search(r"^MCP server notes: healthy throughout \(2 tools, last probe", text, re.M)
    assert "MCP notes.remember -> noted (1 notes)" in text, "the agent used it through metasup"
    assert "x reached" in (target / "memory" / "notes.md").read_text()
    assert f"cd {target}" in text and "git for-each-ref refs/metasup" in text
    # The command it gives for a second terminal works in a new shell, where no venv is active.
    watch = re.search(r"^Watch it from a second terminal: (.*) status --watch$", text, re.M)
    assert watch is not None
    fresh = subprocess.run(
        ["bash", "-c", watch.group(1) + " status"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.returncode == 1 and "status:   stopped" in fresh.stdout, fresh.stderr


def test_demo_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    out = run_metasup(tmp_path, "demo", "--dir", str(tmp_path))
    assert out.returncode == 2 and "is not empty" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
