"""What an archive takes from the working tree besides git's own changes, and how.

A rollback must leave nothing of the failed run behind, not even what git ignores: a planted
`json.py` excluded in `.git/info/exclude`, or a forged `.pyc` in `__pycache__/`, would survive a
plain reset and break the good commit again. So the archive also takes the ignored files created
or changed since the good state (their inode change time is later: the agent cannot set a ctime
back), and the reset removes them. Size is bounded: a file over `max_file_size`, or whatever
comes past `max_files`, is moved whole into a quarantine folder and listed, not hashed, so an
archive of gigabytes or of hundreds of thousands of files stays quick. Nothing is deleted that
was not archived or quarantined first. Paths kept by `rollback.preserve` are left alone.

This module walks and decides; `GitRepo.archive` hashes, moves and commits.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metasup.effects.files.safeio import kind_of

ARCHIVED = ".metasup/archived"  # in an archive commit's tree: ignored files and the manifest
_METASUP_OWN = ".metasup"  # the inbox and metasup's files in the tree: never swept


@dataclass(frozen=True)
class Sweep:
    """How an archive treats what git does not track."""

    since_ns: int | None  # ignored files changed after this (ctime) are taken; None: none
    keep: tuple[str, ...] = ()  # rollback.preserve
    max_file_size: int | None = 100 << 20
    max_files: int | None = 20_000


@dataclass(frozen=True)
class Unit:
    """One path the archive takes: a file to hash, or a file or folder to quarantine whole."""

    path: str
    files: int
    size: int


@dataclass
class Taken:
    """What one archive takes beyond git's changes."""

    hash_untracked: list[str] = field(default_factory=list)  # index.add from the tree
    hash_ignored: list[str] = field(default_factory=list)  # stored under ARCHIVED/ignored/
    quarantine: list[Unit] = field(default_factory=list)  # moved whole
    special: list[tuple[str, str]] = field(default_factory=list)  # (path, kind): removed

    def manifest(self, quarantine_folder: str) -> dict[str, object]:
        return {
            "quarantine": quarantine_folder,
            "quarantined": [
                {"path": u.path, "files": u.files, "bytes": u.size} for u in self.quarantine
            ],
            "ignored": list(self.hash_ignored),
            "removed": [{"path": p, "kind": k} for p, k in self.special],
        }

    @property
    def empty(self) -> bool:
        return not (self.hash_ignored or self.quarantine or self.special)


def kept(path: str, keep: Sequence[str]) -> bool:
    """`path` is, or is inside, or holds a preserved path."""
    for k in keep:
        k = k.strip("/")
        if path == k or path.startswith(k + "/") or k.startswith(path.rstrip("/") + "/"):
            return True
    return False


def _walk(workdir: Path, rel: str) -> Iterable[tuple[str, os.stat_result]]:
    """Every non-folder under `rel` (or `rel` itself), with its lstat; nested repositories
    (a `.git` inside) are left out: their history is their own."""
    full = workdir / rel
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield rel.rstrip("/"), st
        return
    for root, dirs, files in os.walk(full):
        if (".git" in dirs or ".git" in files) and Path(root) != full:
            dirs[:] = []  # a nested repository
            continue
        rel_root = Path(root).relative_to(workdir).as_posix()
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            try:
                yield f"{rel_root}/{name}", os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue


def plan(
    workdir: Path,
    untracked: Iterable[str],
    ignored: Iterable[str],
    sweep: Sweep,
) -> Taken:
    """Decide, for the untracked and ignored entries git's status reported (a folder ends in
    `/`), what to hash, what to quarantine and what to remove."""
    taken = Taken()
    budget = [sweep.max_files if sweep.max_files is not None else 1 << 62]
    limit = sweep.max_file_size

    def take(path: str, st: os.stat_result, into: list[str], movable: bool = True) -> None:
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            over = stat.S_ISREG(st.st_mode) and limit is not None and st.st_size > limit
            if over or budget[0] <= 0:
                if movable:  # a preserved path past the bounds stays where it is, unhashed
                    taken.quarantine.append(Unit(path, 1, st.st_size))
            else:
                budget[0] -= 1
                into.append(path)
        elif stat.S_ISDIR(st.st_mode):
            return  # an empty folder: nothing to keep
        elif movable:
            taken.special.append((path, kind_of(st.st_mode)))

    for entry in sorted(untracked):
        rel = entry.rstrip("/")
        if rel.split("/")[0] == _METASUP_OWN:
            continue
        if (workdir / rel / ".git").exists():
            continue  # a nested repository
        files = list(_walk(workdir, rel))
        if entry.endswith("/") and len(files) > budget[0] and not kept(rel, sweep.keep):
            # A folder past the bound goes whole: one rename, however many files.
            taken.quarantine.append(Unit(rel, len(files), sum(s.st_size for _, s in files)))
            continue
        for path, st in files:
            take(path, st, taken.hash_untracked, movable=not kept(path, sweep.keep))

    if sweep.since_ns is None:
        return taken
    for entry in sorted(ignored):
        rel = entry.rstrip("/")
        if rel.split("/")[0] in (_METASUP_OWN, ".git") or kept(rel, sweep.keep):
            continue
        files = list(_walk(workdir, rel))
        new = [(p, s) for p, s in files if s.st_ctime_ns > sweep.since_ns]
        if not new:
            continue
        if entry.endswith("/") and len(new) == len(files) and len(new) > budget[0]:
            taken.quarantine.append(Unit(rel, len(new), sum(s.st_size for _, s in new)))
            continue
        for path, st in new:
            if not kept(path, sweep.keep):
                take(path, st, taken.hash_ignored)
    return taken
