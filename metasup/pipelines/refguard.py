"""metasup's refs, checked against its journal.

Without the jail the agent can delete or move `refs/metasup/good` and the archive refs like any
ref of its repository (`git update-ref -d`, `git gc` after that). The journal records every
value metasup gave them, so the refs it should find are known: `Expected` follows the journal,
`drift` says which refs differ from it (pure), and `put_back` makes them right again while
their commits still exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metasup.effects.git.repo import GOOD_REF, GitRepo

# The events that set `refs/metasup/good`, and the field naming the commit.
_GOOD_SETTERS = {"mark_good": "commit", "approved": "good", "recovered": "to"}
# The events after which metasup knows where the supervised branch is.
_HEAD_SETTERS = {
    "snapshot": "commit",
    "launch": "commit",
    "rollback": "to",
    "merged": "commit",
    "approved": "commit",
    "recovered": "to",
}
_SHA_LENGTHS = (40, 64)


def _sha(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) in _SHA_LENGTHS else None


@dataclass
class Expected:
    """The value of each of metasup's refs as its journal last recorded it."""

    good: str | None = None
    archives: dict[str, str] = field(default_factory=dict)
    head: str | None = None  # where metasup last left the supervised branch

    @classmethod
    def from_journal(cls, records: Iterable[dict[str, Any]]) -> Expected:
        expected = cls()
        for record in records:
            expected.observe(record)
        return expected

    def observe(self, record: dict[str, Any]) -> None:
        event = str(record.get("event"))
        if event in _HEAD_SETTERS:
            commit = _sha(record.get(_HEAD_SETTERS[event]))
            if commit is not None:
                self.head = commit
        if event in _GOOD_SETTERS:
            commit = _sha(record.get(_GOOD_SETTERS[event]))
            if commit is not None:
                self.good = commit
        elif event == "archive":
            ref, commit = record.get("ref"), _sha(record.get("commit"))
            if isinstance(ref, str) and ref.startswith("refs/metasup/") and commit:
                self.archives[ref] = commit
        elif event == "archives_pruned":  # into a bundle: no longer a ref to keep
            refs = record.get("refs")
            for ref in refs if isinstance(refs, list) else []:
                if isinstance(ref, str):
                    self.archives.pop(ref, None)


@dataclass(frozen=True)
class Drift:
    ref: str
    expected: str
    actual: str | None  # None: missing


def drift(expected: Expected, actual: dict[str, str | None]) -> list[Drift]:
    """The refs whose value differs from the journal's; `actual` maps each ref to its value."""
    wanted = dict(expected.archives)
    if expected.good is not None:
        wanted[GOOD_REF] = expected.good
    return [Drift(r, c, actual.get(r)) for r, c in sorted(wanted.items()) if actual.get(r) != c]


def put_back(
    repo: GitRepo, expected: Expected, archives: bool = True
) -> tuple[list[Drift], list[Drift]]:
    """Check the refs the journal knows (the good ref alone unless `archives`); put back those
    that drifted. Returns (restored, lost): lost ones name a commit that no longer exists
    (collected), which nothing can bring back."""
    names = [*(expected.archives if archives else ()), GOOD_REF]
    if not archives:
        expected = Expected(good=expected.good)
    found = drift(expected, {name: repo.ref_value(name) for name in names})
    restored, lost = [], []
    for d in found:
        if repo.commit_exists(d.expected):
            repo.set_ref(d.ref, d.expected)
            restored.append(d)
        else:
            lost.append(d)
    return restored, lost


def rewritten(repo: GitRepo, expected: Expected) -> tuple[str, str | None] | None:
    """(the head metasup left, the branch now) when the branch no longer reaches the head
    metasup left: rewound, amended, rebased or deleted behind its back. None otherwise, and
    when that commit is gone (nothing left to keep)."""
    left = expected.head
    if left is None:
        return None
    now = repo.head()
    if now == left or not repo.commit_exists(left):
        return None
    if now is not None and repo.reaches(now, left):
        return None  # commits added on top: the agent's own, kept by the next snapshot
    return left, now


def as_fields(items: list[Drift]) -> list[dict[str, str | None]]:
    return [{"ref": d.ref, "was": d.actual, "now": d.expected} for d in items]
