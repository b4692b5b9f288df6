"""`metasup approve`: the operator's way to change protected files on purpose.

With metasup stopped (the repository lock is taken), the protected files as the working tree has
them become the approved baseline. They are committed on the branch where they differ from HEAD,
and a new good commit (the good commit with them, on top of it) is made where they differ from
good, so the snapshot guard restores the approved content from then on, not the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metasup.effects.git import protected
from metasup.effects.git.repo import GitRepo
from metasup.effects.records.journal import StateDir, locked_journal
from metasup.facts.errors import IntegrityError
from metasup.facts.events import Event
from metasup.pipelines import integrity
from metasup.pipelines.integrity import load_repo_policy


@dataclass
class Approval:
    differ: list[str]
    commit: str | None
    good: str | None
    files: int


def approve(repo: GitRepo, reason: str, config: Path | None = None) -> Approval:
    """Approve the protected files as they are, and pin the config file in use (`config`, or
    the one found as `metasup run` finds it)."""
    dirs = StateDir.for_git_dir(repo.git_dir)
    config_path = integrity.config_in_use(repo.workdir, config)
    policy = load_repo_policy(repo.workdir, config_path)

    def protect(path: str) -> bool:
        return policy.protecting_rule(path) is not None

    with locked_journal(dirs, str(repo.workdir)) as journal:
        tracked, ignored = protected.protected_files(repo, protect)
        try:
            old = integrity.load(dirs.baseline)
        except IntegrityError:
            old = None  # a malformed one: replaced by what the operator approves now
        was = old or integrity.Baseline({})
        differ = integrity.differences(was.files, tracked) + [
            f"{line} (ignored by git)" for line in integrity.differences(was.ignored, ignored)
        ]
        key = integrity.config_key(repo.workdir, config_path)
        if was.config is not None and was.config != key:
            differ.append(f"config {was.config} -> {key}")
        message = f"metasup: approve\n\n{reason or 'protected files changed by the operator'}\n"
        head = repo.head()
        at_head = protected.protected_in_commit(repo, head, protect) if head else {}
        to_commit = integrity.differing(at_head, tracked)
        commit = repo.commit_paths(to_commit, message) if to_commit else None
        good = repo.good()
        at_good = protected.protected_in_commit(repo, good, protect) if good else {}
        to_good = integrity.differing(at_good, tracked)
        new_good = repo.good_with(to_good, message) if to_good else good
        integrity.save(
            dirs.baseline,
            integrity.Baseline(tracked, ignored, key),
            reason or "approved",
            commit=commit,
            good=new_good,
        )
        journal.append(
            Event.APPROVED,
            reason=reason,
            changes=differ,
            files=len(tracked),
            commit=commit,
            good=new_good,
            config=key,
            by="operator",
        )
    return Approval(differ, commit, new_good, len(tracked))
