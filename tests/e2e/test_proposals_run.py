"""Proposals reaching a running `metasup run`, and the tamper guard."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from testing.fixtures import (
    agent_config,
    events,
    git,
    json_written,
    names,
    run_metasup,
    supervising,
    wait_for,
    write_config,
)

AGENT = textwrap.dedent(
    """
    import json, os, time
    from pathlib import Path
    run = os.environ["METASUP_RUN"]
    Path("seen-%s.json" % run).write_text(json.dumps({
        "commit": os.environ["METASUP_COMMIT"],
        "version": Path("version.txt").read_text(),
    }))
    time.sleep(60)  # ok: a long-running agent, stopped by metasup
    """
)


def agent_repo_with_version(repo: Path) -> Path:
    (repo / "agent.py").write_text(AGENT)
    (repo / "version.txt").write_text("v1\n")
    (repo / ".gitignore").write_text("__pycache__/\nseen-*.json\n")
    write_config(repo, agent_config())
    return repo


def by_name(repo: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in events(repo) if e["event"] == name]


def proposal(*changes: dict[str, Any]) -> str:
    return json.dumps({"reason": "test", "changes": list(changes)})


def test_a_proposal_is_applied_and_the_agent_relaunches_on_it(repo: Path) -> None:
    agent_repo_with_version(repo)
    with supervising(repo):
        wait_for(lambda: json_written(repo / "seen-1.json"))
        out = run_metasup(
            repo, "propose", "-", input=proposal({"file": "version.txt", "content": "v2\n"})
        )
        assert out.returncode == 0, out.stderr
        pid = out.stdout.strip()
        seen = wait_for(
            lambda: json_written(repo / "seen-2.json"),
            what="the relaunch on the new code",
        )
    assert seen["version"] == "v2\n"
    assert git(repo, "show", f"{seen['commit']}:version.txt") == "v2\n"
    order = [n for n in names(repo) if n.startswith("proposal") or n in ("launch", "snapshot")]
    assert order[-4:] == ["proposal_received", "proposal_applied", "snapshot", "launch"]
    (applied,) = by_name(repo, "proposal_applied")
    assert applied["id"] == pid and applied["files"] == ["version.txt"]
    assert (repo / ".git" / "metasup" / "proposals" / "applied" / f"{pid}.json").exists()
    assert "rollback" not in names(repo), "stopping for a proposal is not a failure"
    assert next(e["code"] for e in by_name(repo, "exit")) < 0


def test_a_proposal_dropped_by_the_agent_into_the_inbox(repo: Path) -> None:
    agent_repo_with_version(repo)
    with supervising(repo):
        wait_for(lambda: json_written(repo / "seen-1.json"))
        inbox = repo / ".metasup" / "inbox"
        (inbox / ".writing").write_text(proposal({"file": "version.txt", "content": "v3\n"}))
        (inbox / ".writing").rename(inbox / "from-agent.json")
        wait_for(lambda: json_written(repo / "seen-2.json"))
    assert json.loads((repo / "seen-2.json").read_text())["version"] == "v3\n"
    assert git(repo, "status", "--porcelain") == "", "the inbox is not part of snapshots"


def test_a_rejected_proposal_goes_to_rejected_with_its_errors(repo: Path) -> None:
    agent_repo_with_version(repo)
    with supervising(repo):
        wait_for(lambda: json_written(repo / "seen-1.json"))
        inbox = repo / ".metasup" / "inbox"
        (inbox / "bad.json").write_text(
            proposal({"file": "protected/safety_rules.yaml", "content": "protected: []\n"})
        )
        rejected = wait_for(lambda: by_name(repo, "proposal_rejected"), what="the rejection")
    (event,) = rejected
    assert event["codes"] == ["path_protected"]
    folder = repo / ".git" / "metasup" / "proposals" / "rejected"
    errors = json.loads((folder / f"{event['id']}.errors.json").read_text())
    assert errors[0]["code"] == "path_protected" and errors[0]["index"] == 0
    assert (folder / f"{event['id']}.json").exists()
    assert not (repo / "protected").exists()
    assert names(repo).count("launch") == 1, "a rejected proposal does not restart the agent"


def test_a_claim_left_by_a_dead_supervisor_is_taken_again(repo: Path) -> None:
    agent_repo_with_version(repo)
    claimed = repo / ".git" / "metasup" / "proposals" / "claimed"
    claimed.mkdir(parents=True)
    (claimed / "20261121T000000000000Z-abcdef.json").write_text(
        proposal({"file": "version.txt", "content": "from before the crash\n"})
    )
    with supervising(repo):
        wait_for(lambda: json_written(repo / "seen-1.json"))
    assert json.loads((repo / "seen-1.json").read_text())["version"] == "from before the crash\n"
    (received,) = by_name(repo, "proposal_received")
    assert received["retaken"] is True and received["id"] == "20261121T000000000000Z-abcdef"
    assert list(claimed.iterdir()) == []


def test_a_direct_write_to_a_protected_path_is_restored(repo: Path) -> None:
    (repo / "protected").mkdir()
    (repo / "protected" / "safety_rules.yaml").write_text("protected: [/secrets]\n")
    (repo / "agent.py").write_text(
        textwrap.dedent(
            """
            import os, time
            from pathlib import Path
            if os.environ["METASUP_RUN"] == "1":
                Path("protected/safety_rules.yaml").write_text("protected: []\\n")
                Path("metasup.yaml").write_text("supervisor: {agent: {command: evil}}\\n")
                Path("secrets").write_text("mine now\\n")
                Path("work.txt").write_text("honest work\\n")
            time.sleep(0.4)  # ok: a healthy run
            """
        )
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    # The jail refuses these writes outright (test_jail.py); off, the watch behind it acts.
    write_config(repo, agent_config(extra="  sandbox: {mode: off}\n"))
    config_before = (repo / "metasup.yaml").read_text()
    out = run_metasup(repo, "run", "--max-cycles", "2")
    assert out.returncode == 0, out.stderr
    # The tamper watch puts each back as it happens (the snapshot guard would otherwise).
    restored = [p for e in by_name(repo, "tamper_restored") for p in e["paths"]]
    assert sorted(set(restored)) == ["metasup.yaml", "protected/safety_rules.yaml", "secrets"]
    assert (repo / "protected" / "safety_rules.yaml").read_text() == "protected: [/secrets]\n"
    assert (repo / "metasup.yaml").read_text() == config_before
    assert not (repo / "secrets").exists()
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "show", f"{head}:work.txt") == "honest work\n", "honest work is kept"
    log = git(repo, "log", "--format=%H", "-p", "--", "protected", "metasup.yaml", "secrets")
    assert "protected: []" not in log and "mine now" not in log, "never committed"
