"""`metasup approve`: the operator's way to change protected files on purpose.

With metasup stopped (the repository lock is taken), the protected files as the working tree has
them become the approved baseline. They are committed on the branch where they differ from HEAD,
and a new good commit (the good commit with them, on top of it) is made where they differ from
good, so the snapshot guard restores the approved content from then on, not the old one.
"""

from __future__ import annotations

from dataclasses import dataclass

from metasup import integrity
from metasup.events import Event
from metasup.gitrepo import GitRepo
from metasup.journal import StateDir, locked_journal
from metasup.policy import load_repo_policy


@dataclass
class Approval:
    differ: list[str]
    commit: str | None
    good: str | None
    files: int


def approve(repo: GitRepo, reason: str) -> Approval:
    dirs = StateDir.for_git_dir(repo.git_dir)
    policy = load_repo_policy(repo.workdir)

    def protect(path: str) -> bool:
        return policy.protecting_rule(path) is not None

    with locked_journal(dirs, str(repo.workdir)) as journal:
        current = repo.protected_in_worktree(protect)
        differ = integrity.differences(integrity.load(dirs.baseline) or {}, current)
        message = f"metasup: approve\n\n{reason or 'protected files changed by the operator'}\n"
        head = repo.head()
        at_head = repo.protected_in_commit(head, protect) if head else {}
        to_commit = integrity.differing(at_head, current)
        commit = repo.commit_paths(to_commit, message) if to_commit else None
        good = repo.good()
        at_good = repo.protected_in_commit(good, protect) if good else {}
        to_good = integrity.differing(at_good, current)
        new_good = repo.good_with(to_good, message) if to_good else good
        integrity.save(dirs.baseline, current, reason or "approved", commit=commit, good=new_good)
        journal.append(
            Event.APPROVED,
            reason=reason,
            changes=differ,
            files=len(current),
            commit=commit,
            good=new_good,
            by="operator",
        )
    return Approval(differ, commit, new_good, len(current))
