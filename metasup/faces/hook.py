"""The pre-commit hook: refuse a commit that touches a protected path.

It reads the staged changes itself (the index against HEAD), because the pre-commit framework's
list of files leaves deletions out: additions, modifications, deletions, renames in and out of a
protected path, mode changes, and symlinks that point at a protected file. git's `--no-verify`
is the only way past it, and the supervisor's snapshot guard puts back whatever that lets through.

The policy is taken from the working tree and from HEAD together, so a commit cannot switch a
protection off by editing the rules it is checked against.
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metasup.effects.git.lookup import Staged, hooks_dir

if TYPE_CHECKING:
    from metasup.facts.policy import Policy

MARKER = "# metasup pre-commit hook"
CHAINED = "pre-commit.metasup-chained"


@dataclass(frozen=True)
class Finding:
    what: str  # "modified protected/safety_rules.yaml"
    rule: str


Protecting = Callable[[str], "str | None"]


def check(changes: list[Staged], rule_of: Protecting) -> list[Finding]:
    """Each staged change that touches a protected path, with the rule that protects it.
    `rule_of(path)` is the policy's question: the protecting rule, or None."""
    found: list[Finding] = []

    def flag(what: str, path: str | None) -> None:
        if path is None:
            return
        rule = rule_of(path)
        if rule is not None:
            found.append(Finding(f"{what} {path}", rule))

    for c in changes:
        if c.status == "renamed":
            flag("renamed away:", c.old_path)
            flag(f"renamed in (from {c.old_path}):", c.new_path)
        elif c.status == "copied":
            flag("copied in:", c.new_path)
        elif c.status == "added":
            flag("added", c.new_path)
        elif c.status == "deleted":
            flag("deleted", c.old_path)
        elif c.old_mode != c.new_mode and c.status != "typechange":
            flag(f"mode {c.old_mode:o} -> {c.new_mode:o}:", c.new_path)
        else:
            flag(c.status, c.new_path)
        if c.link_target is not None and c.new_path is not None:
            target = _link_target(c.new_path, c.link_target)
            if target is not None:
                rule = rule_of(target)
                if rule is not None:
                    found.append(Finding(f"symlink {c.new_path} -> {c.link_target}", rule))
    return found


def _link_target(link: str, target: str) -> str | None:
    """The repo-relative path a symlink points at, or None when it leaves the repository."""
    if posixpath.isabs(target):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    if joined == ".." or joined.startswith("../"):
        return None
    return joined


def policy_for_commit(workdir: Path) -> Protecting:
    """The union of the protections in the working tree and in HEAD, as one question."""
    from metasup.pipelines.integrity import load_repo_policy

    current = load_repo_policy(workdir)
    head = _head_policy(workdir)

    def protecting(path: str) -> str | None:
        for policy in (current, head):
            if policy is not None:
                rule = policy.protecting_rule(path)
                if rule is not None:
                    return rule
        return None

    return protecting


def _head_policy(workdir: Path) -> Policy | None:
    """The policy as HEAD has it: its rules and its config, read into a scratch folder."""
    from metasup.effects.git.lookup import head_blobs
    from metasup.facts.config import CONFIG_CANDIDATES
    from metasup.facts.errors import UserError
    from metasup.pipelines.integrity import load_repo_policy

    blobs = head_blobs(workdir, ("protected/safety_rules.yaml", *CONFIG_CANDIDATES))
    if blobs is None:
        return None
    with tempfile.TemporaryDirectory(prefix="metasup-hook-") as scratch:
        root = Path(scratch)
        for rel, data in blobs.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        try:
            return load_repo_policy(root)
        except UserError:
            return None  # a config HEAD cannot parse protects nothing more than the shipped rules


def run_pre_commit(start: Path) -> int:
    from metasup.effects.git.lookup import staged_changes

    workdir, changes = staged_changes(start)
    findings = check(changes, policy_for_commit(workdir))
    if not findings:
        return 0
    out = sys.stderr
    print(f"metasup: this commit touches {len(findings)} protected path(s):", file=out)
    for f in findings:
        print(f"  {f.what}  [protected by {f.rule}]", file=out)
    print(
        "Protected files change only by an operator: stop metasup, commit with --no-verify, "
        "then run `metasup approve`.",
        file=out,
    )
    return 1


# --- installing it --------------------------------------------------------------------------


def hook_script(python: str) -> str:
    return f"""#!/bin/sh
{MARKER}: refuses commits that touch protected paths (`metasup hook install` wrote it).
"{python}" -I -m metasup hook pre-commit || exit $?
chained="$(dirname "$0")/{CHAINED}"
if [ -x "$chained" ]; then
    exec "$chained" "$@"
fi
"""


def install(workdir: Path) -> tuple[Path, Path | None]:
    """Install (or refresh) the hook; an existing hook of someone else's is kept and chained.
    Returns the hook's path and the chained hook's, if any."""
    folder = hooks_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / "pre-commit"
    chained = folder / CHAINED
    if hook.exists() or hook.is_symlink():
        text = hook.read_text(encoding="utf-8", errors="replace") if hook.is_file() else ""
        if MARKER not in text:
            if chained.exists():
                raise _busy(hook, chained)
            os.replace(hook, chained)
    tmp = folder / ".pre-commit.metasup.tmp"
    tmp.write_text(hook_script(sys.executable), encoding="utf-8")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, hook)
    return hook, chained if chained.exists() else None


def _busy(hook: Path, chained: Path) -> Exception:
    from metasup.facts.errors import UserError

    return UserError(
        f"{hook} is not metasup's and {chained} exists already; move one of them aside"
    )


# --- the pre-commit framework ---------------------------------------------------------------

FRAMEWORK_CONFIG = ".pre-commit-config.yaml"
HOOK_ID = "metasup-protected-paths"
LEGACY = "pre-commit.legacy"  # where `pre-commit install` moves the hook it finds
FRAMEWORK_SNIPPET = f"""\
  - repo: local
    hooks:
      - id: {HOOK_ID}
        name: metasup protected paths
        entry: metasup hook pre-commit
        language: system
        pass_filenames: false
        always_run: true"""


@dataclass(frozen=True)
class Hooks:
    """Who runs metasup's check at a commit."""

    git_hook: bool  # metasup's own git hook is the pre-commit hook
    legacy: bool  # metasup's git hook, moved aside by `pre-commit install`, still run by it
    framework_config: bool  # the repository has a .pre-commit-config.yaml
    framework_names_metasup: bool  # ... and it declares metasup's hook
    framework_installed: bool  # the framework's own hook is the pre-commit hook

    @property
    def runs(self) -> int:
        """How many times one commit runs the check."""
        framework = self.framework_installed and self.framework_names_metasup
        return int(self.git_hook) + int(framework) + int(self.framework_installed and self.legacy)


def hooks(workdir: Path) -> Hooks:
    folder = hooks_dir(workdir)
    main = _text(folder / "pre-commit")
    config = workdir / FRAMEWORK_CONFIG
    return Hooks(
        git_hook=MARKER in main,
        legacy=MARKER in _text(folder / LEGACY),
        framework_config=config.is_file(),
        framework_names_metasup=names_metasup(_text(config)),
        # The script `pre-commit install` writes says so in its first lines.
        framework_installed="File generated by pre-commit" in main,
    )


def names_metasup(config_text: str) -> bool:
    """Whether a .pre-commit-config.yaml declares metasup's hook (by id, or by its entry)."""
    import yaml

    try:
        doc = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return False
    repos = doc.get("repos") if isinstance(doc, dict) else None
    for repo in repos if isinstance(repos, list) else []:
        declared = repo.get("hooks") if isinstance(repo, dict) else None
        for hook in declared if isinstance(declared, list) else []:
            if not isinstance(hook, dict):
                continue
            entry = hook.get("entry")
            if hook.get("id") == HOOK_ID or (
                isinstance(entry, str) and "metasup hook pre-commit" in entry
            ):
                return True
    return False


def drop_legacy(workdir: Path) -> bool:
    """Remove metasup's git hook that `pre-commit install` moved aside, when the framework runs
    metasup's hook itself: one check a commit, not two. False when there was nothing to drop."""
    found = hooks(workdir)
    if not (found.legacy and found.framework_installed and found.framework_names_metasup):
        return False
    (hooks_dir(workdir) / LEGACY).unlink()
    return True


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
