"""`metasup init`: a new directory, an existing repository with its own hook, again."""

from __future__ import annotations

import os
import subprocess
import sys
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


def framework_env(tmp_path: Path) -> dict[str, str]:
    """The pre-commit framework from this venv, its cache in the test's folder, and `metasup`
    on PATH for the `language: system` hook, as an installed metasup would be."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def run(repo: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def protected_commit(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (repo / "protected" / "extra.yaml").write_text("x: 1\n")
    git(repo, "add", "-A")
    return run(repo, env, "git", "commit", "-q", "-m", "sneak")


def test_init_leaves_the_hook_to_the_pre_commit_framework_it_finds(tmp_path: Path) -> None:
    env = framework_env(tmp_path)
    repo = make_repo(tmp_path / "repo")
    (repo / ".pre-commit-config.yaml").write_text("repos: []\n")
    offered = run_metasup(repo, "init")
    assert offered.returncode == 0, offered.stderr
    assert "found .pre-commit-config.yaml" in offered.stdout
    assert not (repo / ".git" / "hooks" / "pre-commit").exists(), "no git hook beside it"
    # What init offers is a working config: pasted in, installed, it refuses exactly once.
    after = offered.stdout.split("for a plain git hook instead):\n", 1)[1]
    block = after.split("\nNext:", 1)[0]
    (repo / ".pre-commit-config.yaml").write_text("repos:\n" + block + "\n")
    git(repo, "add", ".pre-commit-config.yaml")
    git(repo, "commit", "-q", "-m", "framework")
    assert run(repo, env, sys.executable, "-m", "pre_commit", "install").returncode == 0
    refused = protected_commit(repo, env)
    assert refused.returncode != 0, "the commit went through"
    said = refused.stdout + refused.stderr
    assert said.count("added protected/extra.yaml") == 1, said
    doctor = run_metasup(repo, "doctor")
    assert "run by the pre-commit framework, from its config" in doctor.stdout, doctor.stdout


def test_init_again_removes_the_second_run_pre_commit_install_made(tmp_path: Path) -> None:
    from metasup.faces.hook import FRAMEWORK_SNIPPET

    env = framework_env(tmp_path)
    repo = make_repo(tmp_path / "repo")
    assert run_metasup(repo, "init").returncode == 0
    assert "metasup pre-commit hook" in (repo / ".git" / "hooks" / "pre-commit").read_text()
    # The user adopts the framework afterwards: it keeps metasup's hook as its legacy hook.
    (repo / ".pre-commit-config.yaml").write_text("repos:\n" + FRAMEWORK_SNIPPET + "\n")
    git(repo, "add", ".pre-commit-config.yaml")
    git(repo, "commit", "-q", "-m", "framework")
    assert run(repo, env, sys.executable, "-m", "pre_commit", "install").returncode == 0
    twice = protected_commit(repo, env)
    assert (twice.stdout + twice.stderr).count("added protected/extra.yaml") == 2
    doctor = run_metasup(repo, "doctor")
    assert doctor.returncode == 1 and "runs metasup's hook twice" in doctor.stdout
    again = run_metasup(repo, "init")
    assert again.returncode == 0 and "removed the copy of metasup's git hook" in again.stdout
    once = protected_commit(repo, env)
    assert once.returncode != 0
    assert (once.stdout + once.stderr).count("added protected/extra.yaml") == 1
    assert "runs metasup's hook twice" not in run_metasup(repo, "doctor").stdout


def test_init_hook_git_keeps_the_git_hook_and_a_bad_kind_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".pre-commit-config.yaml").write_text("repos: []\n")
    bad = run_metasup(repo, "init", "--hook", "both")
    assert bad.returncode == 2 and "--hook must be one of auto, git, framework" in bad.stderr
    assert not (repo / "metasup.yaml").exists(), "a bad option changes nothing"
    out = run_metasup(repo, "init", "--hook", "git")
    assert out.returncode == 0 and "installed the pre-commit hook" in out.stdout
