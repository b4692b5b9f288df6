"""`metasup init`: a new directory, an existing repository with its own hook, again."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testing.fixtures import git, make_repo, run_metasup


def test_init_a_new_directory(tmp_path: Path) -> None:
    target = tmp_path / "agent"
    out = run_metasup(tmp_path, "init", str(target))
    assert out.returncode == 0, out.stderr
    assert "made a git repository" in out.stdout and "Next:" in out.stdout
    assert (target / "metasup.yaml").is_file()
    assert (target / "protected" / "safety_rules.yaml").is_file()
    assert (target / "protected" / "schemas" / "proposal.schema.json").is_file()
    assert "/.metasup/inbox/" in (target / ".git" / "info" / "exclude").read_text()
    assert git(target, "log", "--format=%s").strip() == "metasup: init"
    assert git(target, "status", "--porcelain") == ""
    assert "metasup pre-commit hook" in (target / ".git" / "hooks" / "pre-commit").read_text()
    assert run_metasup(target, "config").returncode == 0
    # The hook guards what init committed.
    (target / "protected" / "safety_rules.yaml").write_text("protected: []\n")
    refused = subprocess.run(
        ["git", "commit", "-qam", "loosen"], cwd=target, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "modified protected/safety_rules.yaml" in refused.stderr


def test_init_is_idempotent_and_keeps_what_exists(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "metasup.yaml").write_text("supervisor:\n  agent: {command: [./mine]}\n")
    theirs = repo / ".git" / "hooks" / "pre-commit"
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_text("#!/bin/sh\nexit 0\n")
    theirs.chmod(0o755)
    first = run_metasup(repo, "init")
    assert first.returncode == 0, first.stderr
    assert "kept the existing config" in first.stdout
    assert "running pre-commit.metasup-chained after it" in first.stdout
    assert (repo / "metasup.yaml").read_text() == "supervisor:\n  agent: {command: [./mine]}\n"
    log = git(repo, "log", "--format=%s")
    second = run_metasup(repo, "init")
    assert second.returncode == 0 and "kept the existing policy" in second.stdout
    assert git(repo, "log", "--format=%s") == log, "nothing new to commit the second time"
    assert (repo / ".git" / "hooks" / "pre-commit.metasup-chained").read_text() == (
        "#!/bin/sh\nexit 0\n"
    )
    exclude = (repo / ".git" / "info" / "exclude").read_text()
    assert exclude.count("/.metasup/inbox/") == 1


def test_init_inside_another_repository_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = run_metasup(repo, "init", str(repo / "sub"))
    assert out.returncode == 2 and "is inside the repository at" in out.stderr
    assert not (repo / "sub").exists(), "nothing made"
