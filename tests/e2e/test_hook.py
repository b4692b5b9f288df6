"""The pre-commit hook through real `git commit`s, each kind of staged change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fixtures import ROOT, git, make_repo, run_metasup


def commit(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "commit", "-q", "-m", "change", *args], cwd=repo, capture_output=True, text=True
    )


@pytest.fixture
def hooked(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo")
    (repo / "protected").mkdir()
    (repo / "protected" / "safety_rules.yaml").write_text("protected: []\n")
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  agent: {command: x}\n  protected_paths: [secrets/]\n"
    )
    (repo / "secrets").mkdir()
    (repo / "secrets" / "key.txt").write_text("k\n")
    (repo / "agent.py").write_text("print('hi')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    out = run_metasup(repo, "hook", "install")
    assert out.returncode == 0, out.stderr
    return repo


def refused(out: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert out.returncode != 0, "the commit went through"
    for line in lines:
        assert line in out.stderr, out.stderr
    assert "metasup approve" in out.stderr and "Traceback" not in out.stderr


def test_an_ordinary_commit_passes(hooked: Path) -> None:
    (hooked / "agent.py").write_text("print('bye')\n")
    git(hooked, "add", "agent.py")
    assert commit(hooked).returncode == 0


def test_modify_add_delete(hooked: Path) -> None:
    (hooked / "protected" / "safety_rules.yaml").write_text("protected: [x]\n")
    (hooked / "protected" / "new.json").write_text("{}")
    git(hooked, "add", "-A")
    git(hooked, "rm", "-q", "secrets/key.txt")
    refused(
        commit(hooked),
        "modified protected/safety_rules.yaml",
        "added protected/new.json",
        "deleted secrets/key.txt",
        "'secrets/' (protected_paths)",
    )
    assert git(hooked, "log", "--format=%s").split() == ["start"]


def test_renames_in_and_out(hooked: Path) -> None:
    git(hooked, "mv", "secrets/key.txt", "key.txt")
    refused(commit(hooked), "renamed away: secrets/key.txt")
    git(hooked, "reset", "-q", "--hard")
    git(hooked, "mv", "agent.py", "protected/agent.py")
    refused(commit(hooked), "renamed in (from agent.py): protected/agent.py")


def test_mode_change(hooked: Path) -> None:
    path = hooked / "protected" / "safety_rules.yaml"
    path.chmod(0o755)
    git(hooked, "add", "protected/safety_rules.yaml")
    refused(commit(hooked), "mode 100644 -> 100755: protected/safety_rules.yaml")


def test_a_symlink_to_a_protected_file(hooked: Path) -> None:
    os.symlink("protected/safety_rules.yaml", hooked / "rules-link")
    git(hooked, "add", "rules-link")
    refused(commit(hooked), "symlink rules-link -> protected/safety_rules.yaml")


def test_commit_all_reads_gits_own_index(hooked: Path) -> None:
    (hooked / "metasup.yaml").write_text("supervisor:\n  agent: {command: y}\n")
    refused(commit(hooked, "-a"), "modified metasup.yaml", "(config in use)")


def test_the_rules_being_committed_do_not_judge_their_own_commit(hooked: Path) -> None:
    # The working tree's config no longer protects secrets/ (that edit is not committed):
    # the config HEAD has still does.
    (hooked / "metasup.yaml").write_text("supervisor:\n  agent: {command: x}\n")
    (hooked / "secrets" / "key.txt").write_text("stolen\n")
    git(hooked, "add", "secrets/key.txt")
    out = commit(hooked)
    refused(out, "modified secrets/key.txt")
    assert "metasup.yaml" not in out.stderr


def test_no_verify_is_the_only_bypass(hooked: Path) -> None:
    (hooked / "protected" / "safety_rules.yaml").write_text("protected: [x]\n")
    assert commit(hooked, "-a", "--no-verify").returncode == 0


def test_install_keeps_and_chains_an_existing_hook_and_honours_hooks_path(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    hooks = repo / "my-hooks"
    hooks.mkdir()
    git(repo, "config", "core.hooksPath", "my-hooks")
    theirs = hooks / "pre-commit"
    theirs.write_text("#!/bin/sh\necho their hook ran >> their.log\nexit 0\n")
    theirs.chmod(0o755)
    (repo / "agent.py").write_text("x\n")
    git(repo, "add", "-A")
    for _ in range(2):  # idempotent
        out = run_metasup(repo, "hook", "install")
        assert out.returncode == 0 and "then runs pre-commit.metasup-chained" in out.stdout
    assert "metasup pre-commit hook" in (hooks / "pre-commit").read_text()
    assert "their hook ran" in (hooks / "pre-commit.metasup-chained").read_text()
    assert commit(repo).returncode == 0
    assert (repo / "their.log").read_text() == "their hook ran\n"
    (repo / "protected").mkdir()
    (repo / "protected" / "x").write_text("x")
    git(repo, "add", "-A")
    refused(commit(repo), "added protected/x")
    assert (repo / "their.log").read_text() == "their hook ran\n", "not run after a refusal"


def test_the_pre_commit_framework_declaration() -> None:
    import yaml

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "metasup-protected-paths" and hook["language"] == "python"
    assert hook["pass_filenames"] is False and hook["always_run"] is True
    assert hook["entry"] == "metasup hook pre-commit"


def test_the_hook_runs_on_an_unborn_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "protected").mkdir()
    (repo / "protected" / "a").write_text("a")
    git(repo, "add", "-A")
    out = subprocess.run(
        [sys.executable, "-m", "metasup", "hook", "pre-commit"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "added protected/a" in out.stderr


def _as_a_user_names_it(tmp: Path) -> tuple[str, str]:
    """This repository as a user's `.pre-commit-config.yaml` names it, a path and a rev: its
    HEAD, or with uncommitted changes a clone holding them committed (as `pre-commit try-repo`
    makes one)."""
    head = git(ROOT, "rev-parse", "HEAD").strip()
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--binary"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    if not diff:
        return str(ROOT), head
    shadow = tmp / "shadow"
    git(tmp, "clone", "-q", str(ROOT), str(shadow))
    subprocess.run(["git", "apply"], cwd=shadow, input=diff, check=True)
    git(shadow, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "working tree")
    return str(shadow), git(shadow, "rev-parse", "HEAD").strip()


def test_through_the_pre_commit_framework(tmp_path: Path) -> None:
    """The hook the way users get it: a `.pre-commit-config.yaml` naming this repository, from
    which pre-commit builds the hook's venv (from the package registry), then runs it on a
    clean and a refused staged change. One store: the venv is built once (`try-repo` would
    build it for each run)."""
    repo = make_repo(tmp_path / "repo")
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "-A")
    where, rev = _as_a_user_names_it(tmp_path)
    config = tmp_path / "pre-commit-config.yaml"  # outside the repository: nothing to stage
    config.write_text(
        f"repos:\n- repo: {where}\n  rev: {rev}\n  hooks: [{{id: metasup-protected-paths}}]\n"
    )
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    pre_commit = str(Path(sys.executable).parent / "pre-commit")

    def run_hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [pre_commit, "run", "--config", str(config)],
            cwd=repo, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    clean = run_hook()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "metasup protected paths" in clean.stdout and "Passed" in clean.stdout
    (repo / "protected").mkdir()
    (repo / "protected" / "a").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "rm", "-q", "--cached", "b.txt")
    refused = run_hook()
    assert refused.returncode == 1
    assert "added protected/a" in refused.stdout and "Failed" in refused.stdout
    assert len(list((tmp_path / "pre-commit-home").glob("repo*/py_env-*"))) == 1
