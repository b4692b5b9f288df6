"""The approved baseline: metasup refuses to start on unexplained protected changes, stops when
the good commit carries one, and `metasup approve` is the operator's way through."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testing.fixtures import (
    SLEEPER,
    agent_config,
    events,
    git,
    run_metasup,
    start_metasup,
    wait_for,
    write_config,
)


def setup(
    repo: Path, agent: str = "import time\ntime.sleep(0.3)  # ok: a short good run\n"
) -> None:
    (repo / "protected").mkdir()
    (repo / "protected" / "safety_rules.yaml").write_text("protected: [/secrets]\n")
    (repo / "agent.py").write_text(agent)
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(min_runtime="200ms"))


def test_an_operator_change_needs_approve_and_then_sticks(repo: Path) -> None:
    setup(repo)
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    approved = [e for e in events(repo) if e["event"] == "approved"]
    assert approved and approved[0]["by"] == "metasup", "the first start approves what it finds"

    (repo / "protected" / "safety_rules.yaml").write_text("protected: [/secrets, /keys]\n")
    refused = run_metasup(repo, "run", "--max-cycles", "1")
    assert refused.returncode == 2
    assert (
        "protected files differ from the approved baseline: changed protected/safety_rules.yaml"
        in (refused.stderr)
    )
    assert "metasup approve" in refused.stderr and "Traceback" not in refused.stderr

    ok = run_metasup(repo, "approve", "--reason", "also protect keys")
    assert ok.returncode == 0, ok.stderr
    assert "approved: changed protected/safety_rules.yaml" in ok.stdout
    assert git(repo, "status", "--porcelain", "--", "protected") == ""
    assert "also protect keys" in git(repo, "log", "-1", "--format=%B")
    good = git(repo, "rev-parse", "refs/metasup/good").strip()
    assert (
        git(repo, "show", f"{good}:protected/safety_rules.yaml") == "protected: [/secrets, /keys]\n"
    )

    again = run_metasup(repo, "run", "--max-cycles", "1")
    assert again.returncode == 0, again.stderr
    assert (
        repo / "protected" / "safety_rules.yaml"
    ).read_text() == "protected: [/secrets, /keys]\n"
    log = events(repo)
    assert [e["reason"] for e in log if e["event"] == "approved"][-1] == "also protect keys"
    assert not any(e["event"] == "tamper_restored" for e in log), "not put back: approved"


def test_approve_with_nothing_changed_and_while_running(repo: Path) -> None:
    setup(repo, SLEEPER)
    out = run_metasup(repo, "approve")
    assert out.returncode == 0 and "approved: added protected/safety_rules.yaml" in out.stdout
    again = run_metasup(repo, "approve")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    proc = start_metasup(repo)
    try:
        wait_for(lambda: any(e["event"] == "launch" for e in events(repo)), what="the launch")
        busy = run_metasup(repo, "approve")
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_good_ref_moved_to_a_forged_commit_is_put_back(repo: Path) -> None:
    # Runs end after min_runtime, so there is a cycle (and a check) every ~0.3 s.
    setup(repo)
    proc = start_metasup(repo)
    try:
        wait_for(lambda: any(e["event"] == "mark_good" for e in events(repo)), what="a good mark")
        # Someone forges a good commit whose policy protects nothing.
        tree = _tree_with(repo, "protected/safety_rules.yaml", "protected: []\n")
        good = git(repo, "rev-parse", "refs/metasup/good").strip()
        forged = git(repo, "commit-tree", tree, "-p", good, "-m", "forged").strip()
        git(repo, "update-ref", "refs/metasup/good", forged)
        restored = wait_for(
            lambda: [e for e in events(repo) if e["event"] == "refs_restored"],
            what="the good ref put back",
        )
        assert proc.poll() is None, "put back, and on it goes"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    assert restored[0]["refs"][0] == {"ref": "refs/metasup/good", "was": forged, "now": good}
    marked = [e["commit"] for e in events(repo) if e["event"] == "mark_good"]
    assert forged not in marked
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == marked[-1]


def test_a_good_commit_with_unapproved_protected_files_stops_metasup(repo: Path) -> None:
    """The ref and the journal forged together: the integrity check is the last line."""
    setup(repo)
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    tree = _tree_with(repo, "protected/safety_rules.yaml", "protected: []\n")
    good = git(repo, "rev-parse", "refs/metasup/good").strip()
    forged = git(repo, "commit-tree", tree, "-p", good, "-m", "forged").strip()
    git(repo, "update-ref", "refs/metasup/good", forged)
    _append_event(repo, {"event": "mark_good", "commit": forged})
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 2
    assert f"the good commit {forged[:12]} has protected files that differ" in out.stderr
    assert "changed protected/safety_rules.yaml" in out.stderr


def _append_event(repo: Path, fields: dict[str, object]) -> None:
    """A line chained to the journal as metasup would chain it (the agent can do as much
    without the jail)."""
    import hashlib
    import json

    path = repo / ".git" / "metasup" / "events.jsonl"
    last = path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record = {
        "ts": "2026-01-01T00:00:00.000000Z",
        "seq": json.loads(last)["seq"] + 1,
        "prev": hashlib.sha256(last).hexdigest(),
        **fields,
    }
    with path.open("ab") as f:
        f.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")


def _tree_with(repo: Path, path: str, content: str) -> str:
    index = repo / ".git" / "forge-index"
    env = {"GIT_INDEX_FILE": str(index)}
    subprocess.run(
        ["git", "read-tree", "refs/metasup/good"], cwd=repo, env={**_env(), **env}, check=True
    )
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=repo, input=content, text=True,
        capture_output=True, check=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        ["git", "update-index", "--cacheinfo", f"100644,{blob},{path}"],
        cwd=repo, env={**_env(), **env}, check=True,
    )  # fmt: skip
    return subprocess.run(
        ["git", "write-tree"], cwd=repo, env={**_env(), **env}, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
