"""`metasup init [DIR]`: make a directory a supervised repository. Idempotent.

A git repository if there is none; `metasup.yaml` from the shipped default; the shipped policy in
`protected/`; the inbox excluded from git; the pre-commit hook (core.hooksPath honoured, an
existing hook chained). The files it creates are committed at once, by metasup: they are
protected, and the hook would refuse the operator's own commit of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from metasup.facts.config import CONFIG_CANDIDATES
from metasup.facts.errors import UserError
from metasup.facts.resources import config_examples_dir, protected_dir

HOOK_KINDS = ("auto", "git", "framework")


def init(target: Path, hook_kind: str = "auto") -> list[str]:
    """Set `target` up; what was done, one line each (nothing new: everything says "kept").

    `hook_kind`: `git` installs metasup's git hook; `framework` leaves the hook to the pre-commit
    framework (and says what to add to its config); `auto` is `framework` where the repository
    has a .pre-commit-config.yaml, since `pre-commit install` would otherwise run metasup's hook
    twice (once as its legacy hook)."""
    from metasup.effects.git.lookup import discover, init_repository
    from metasup.effects.git.repo import GitRepo
    from metasup.pipelines.intake import INBOX

    if hook_kind not in HOOK_KINDS:
        raise UserError(f"--hook must be one of {', '.join(HOOK_KINDS)}, not {hook_kind!r}")
    done: list[str] = []
    target = target.resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    found = discover(existing)
    if found is None:
        target.mkdir(parents=True, exist_ok=True)
        init_repository(target)
        done.append(f"made a git repository in {target}")
    else:
        git_dir, workdir = found
        if workdir is None or workdir != target:
            where = workdir or git_dir
            raise UserError(
                f"{target} is inside the repository at {where}; run `metasup init` at its top"
            )
    repo = GitRepo(target)
    created: list[str] = []
    if not any((target / name).is_file() for name in CONFIG_CANDIDATES):
        shutil.copy(config_examples_dir() / "metasup.yaml", target / "metasup.yaml")
        created.append("metasup.yaml")
        done.append("wrote metasup.yaml (set agent.command to start your agent)")
    else:
        done.append("kept the existing config")
    shipped = protected_dir()
    for src in sorted(p for p in shipped.rglob("*") if p.is_file()):
        rel = src.relative_to(shipped).as_posix()
        dest = target / "protected" / rel
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        created.append(f"protected/{rel}")
    policy_files = [c for c in created if c.startswith("protected/")]
    done.append(
        f"wrote the policy in protected/ ({len(policy_files)} files)"
        if policy_files
        else "kept the existing policy in protected/"
    )
    repo.ensure_excluded(f"/{INBOX}/")
    (target / INBOX).mkdir(parents=True, exist_ok=True)
    done.append(f"{INBOX}/ is excluded from git (.git/info/exclude)")
    if created:
        commit = repo.commit_paths(created, "metasup: init\n\nThe policy and the config.\n")
        done.append(f"committed {len(created)} new files as {commit[:12]} (metasup: init)")
    done += _hook(target, hook_kind)
    return done


def _hook(target: Path, kind: str) -> list[str]:
    from metasup.faces.hook import FRAMEWORK_CONFIG, FRAMEWORK_SNIPPET, drop_legacy, hooks, install

    found = hooks(target)
    if kind == "git" or (kind == "auto" and not found.framework_config):
        hook, chained = install(target)
        return [
            f"installed the pre-commit hook at {hook}"
            + (f", running {chained.name} after it" if chained else "")
        ]
    if not found.framework_names_metasup:
        return [
            f"found {FRAMEWORK_CONFIG}: metasup's hook is left to the pre-commit framework; add "
            "it to the `repos:` there, then run `pre-commit install` (or `metasup init --hook "
            "git` for a plain git hook instead):",
            FRAMEWORK_SNIPPET,
        ]
    if drop_legacy(target):
        return [
            f"the pre-commit framework runs metasup's hook ({FRAMEWORK_CONFIG}): removed the copy "
            "of metasup's git hook it also ran as its legacy hook, so a commit is checked once"
        ]
    if found.framework_installed:
        return [f"the pre-commit framework runs metasup's hook ({FRAMEWORK_CONFIG})"]
    if found.git_hook:
        return [
            f"{FRAMEWORK_CONFIG} declares metasup's hook and metasup's git hook is installed: "
            "after `pre-commit install`, run `metasup init` again to keep only the framework's"
        ]
    return [
        f"{FRAMEWORK_CONFIG} declares metasup's hook: run `pre-commit install` to put it in place"
    ]


NEXT_STEPS = """\
Next:
  1. edit metasup.yaml: agent.command starts your agent; min_runtime, max_failures
  2. metasup config                         # check it
  3. metasup approve --reason "my agent"    # it is protected: approve commits it
  4. metasup run                            # supervise; Ctrl-C stops everything
  5. metasup status --watch                 # from a second terminal
protected/ and metasup.yaml change only by an operator: stop metasup, edit, then
`metasup approve --reason WHY` (it commits them)."""
