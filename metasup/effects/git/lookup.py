"""Read-only lookups in the repository around a path: for the pre-commit hook, init and the
CLI, which need one answer and no long-lived repository (that is `repo.GitRepo`'s)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from metasup.facts.errors import UserError
from metasup.facts.gitpaths import common_dir


@dataclass(frozen=True)
class Staged:
    """One change the next commit would make: the index against HEAD."""

    status: str  # added, modified, deleted, renamed, copied, typechange
    old_path: str | None
    new_path: str | None
    old_mode: int
    new_mode: int
    link_target: str | None = None  # what a staged symlink points at


_STATUS = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "typechange",
}


def staged_changes(start: Path) -> tuple[Path, list[Staged]]:
    """The working tree and the changes staged for commit there, renames paired.

    Read from `$GIT_INDEX_FILE` when git sets it (`git commit -a`, `git commit PATH`), and
    against the empty tree on an unborn branch. Works on a detached HEAD (a rebase).
    """
    found = pygit2.discover_repository(str(start))
    if found is None:
        raise UserError(f"{start} is not inside a git repository")
    repo = pygit2.Repository(found)
    if repo.workdir is None:
        raise UserError(f"{found} is a bare repository")
    index_file = os.environ.get("GIT_INDEX_FILE")
    index = pygit2.Index(str(Path(index_file).resolve())) if index_file else repo.index
    if repo.head_is_unborn:
        tree = repo[repo.TreeBuilder().write()]
    else:
        tree = repo.head.peel(pygit2.Commit).tree
    assert isinstance(tree, pygit2.Tree)
    diff = tree.diff_to_index(index)
    diff.find_similar()
    out = []
    for delta in diff.deltas:
        status = _STATUS.get(delta.status_char(), "modified")
        old = None if status == "added" else delta.old_file.path
        new = None if status == "deleted" else delta.new_file.path
        target = None
        if new is not None and delta.new_file.mode == pygit2.enums.FileMode.LINK:
            blob = repo.get(delta.new_file.id)
            if isinstance(blob, pygit2.Blob):
                target = bytes(blob.data).decode("utf-8", "surrogateescape")
        out.append(Staged(status, old, new, delta.old_file.mode, delta.new_file.mode, target))
    return Path(repo.workdir).resolve(), out


def head_blobs(workdir: Path, paths: Iterable[str]) -> dict[str, bytes] | None:
    """The content HEAD has for each of `paths` that it holds as a file; None on an unborn
    branch."""
    repo = pygit2.Repository(str(workdir))
    if repo.head_is_unborn:
        return None
    tree = repo.head.peel(pygit2.Commit).tree
    found = {}
    for rel in paths:
        try:
            blob = repo[tree[rel].id]
        except KeyError:
            continue
        if isinstance(blob, pygit2.Blob):
            found[rel] = bytes(blob.data)
    return found


def hooks_dir(workdir: Path) -> Path:
    """Where git looks for hooks: core.hooksPath (relative to the working tree), else the
    common git dir's hooks/."""
    repo = pygit2.Repository(str(workdir))
    config = repo.config  # pygit2's Config has `in` and [], not .get
    configured = config["core.hooksPath"] if "core.hooksPath" in config else None  # noqa: SIM401
    if configured:
        path = Path(os.path.expanduser(str(configured)))
        return path if path.is_absolute() else workdir / path
    return common_dir(Path(repo.path)) / "hooks"


def discover(start: Path) -> tuple[str, Path | None] | None:
    """The repository holding `start`: (its git dir, its working tree or None when bare);
    None when there is none."""
    found = pygit2.discover_repository(str(start))
    if found is None:
        return None
    workdir = pygit2.Repository(found).workdir
    return found, Path(workdir).resolve() if workdir else None


def init_repository(path: Path, branch: str = "main") -> None:
    """`git init -b BRANCH` for a new supervised repo."""
    pygit2.init_repository(str(path), initial_head=branch)
