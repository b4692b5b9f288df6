"""Bundle backups every rollback.backup_interval, the newest keep_commits kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testing.fixtures import agent_config, events, git, start_metasup, wait_for, write_config

AGENT = """
import os, time
from pathlib import Path
Path("work-%s.txt" % os.environ["METASUP_RUN"]).write_text("x")
time.sleep(0.3)  # ok: a short good run, then a restart
"""


def test_bundles_are_written_and_pruned(repo: Path) -> None:
    (repo / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(
        repo,
        agent_config(min_runtime="200ms")
        + "  rollback: {backup_interval: 300ms, keep_commits: 2}\n",
    )
    proc = start_metasup(repo)
    folder = repo / ".git" / "metasup" / "backups"
    try:
        wait_for(
            lambda: sum(e["event"] == "backup" for e in events(repo)) >= 4,
            timeout=30,
            what="four backups",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bundles = sorted(folder.glob("*.bundle"))
    assert len(bundles) == 2, bundles
    assert not list(folder.glob(".*.tmp"))
    newest = bundles[-1]
    verify = subprocess.run(
        ["git", "bundle", "verify", str(newest)], cwd=repo, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    heads = git(repo, "bundle", "list-heads", str(newest))
    assert "refs/heads/main" in heads and "refs/metasup/good" in heads
    clone = repo.parent / "restored"
    git(repo.parent, "clone", "-q", str(newest), str(clone))
    assert (clone / "agent.py").read_text() == AGENT
    backup = [e for e in events(repo) if e["event"] == "backup"][-1]
    assert backup["bytes"] > 0 and backup["kept"] == 2
