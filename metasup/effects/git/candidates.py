"""Candidates for the experiments: a commit built in memory from a proposal, and the pooled
worktrees candidates and the baseline run in (moved between commits by a checkout that writes
only what differs, and emptied of what a run left)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pygit2
from pygit2.enums import CheckoutStrategy, FileStatus

from metasup.effects.git.files import clear_links, clear_special, index_as
from metasup.effects.git.repo import POOL_BRANCH_PREFIX, FileChange, GitRepo, signature


def candidate_commit(git: GitRepo, base: str, changes: list[FileChange], message: str) -> str:
    """A commit of `base` with `changes` applied, built in memory: no worktree, no index
    file, nothing in the working tree. Validation happened before; paths are clean."""
    index = pygit2.Index()
    index.read_tree(git.repo[base].peel(pygit2.Commit).tree)
    for path, data, mode in changes:
        if data is None:
            index.remove(path)
            continue
        if mode is None:  # an edit keeps the file's mode; a new file is a plain one
            try:
                filemode = index[path].mode
            except KeyError:
                filemode = pygit2.enums.FileMode.BLOB
        elif mode == "100755":
            filemode = pygit2.enums.FileMode.BLOB_EXECUTABLE
        else:
            filemode = pygit2.enums.FileMode.BLOB
        index.add(pygit2.IndexEntry(path, git.repo.create_blob(data), filemode))
    tree = index.write_tree(git.repo)
    oid = git.repo.create_commit(
        None, signature(), signature(), message, tree, [pygit2.Oid(hex=base)]
    )
    return str(oid)


def worktree_at(
    git: GitRepo,
    slot: str,
    root: Path,
    commit: str,
    lock: AbstractContextManager[object] | None = None,
) -> Path:
    """A worktree of this repository at `commit` (detached HEAD), in `root/slot`.

    A slot is made once, then reused: moving it to another commit writes only the files
    that differ, and leaves no branch checked out anywhere. Files that commands left in it
    (untracked or ignored) are removed, so every use starts from the commit alone.

    `lock` guards the repository object `git` shares between threads: held only to make a
    slot; moving one works on the slot's own repository object, so slots move in parallel.
    """
    path = root / slot
    with lock or contextlib.nullcontext():
        if slot not in git.repo.list_worktrees() or not path.is_dir():
            if slot in git.repo.list_worktrees():
                git.repo.lookup_worktree(slot).prune(True)
            if path.exists():
                shutil.rmtree(path)
            root.mkdir(parents=True, exist_ok=True)
            branch = git.repo.branches.local.create(
                POOL_BRANCH_PREFIX + slot, git.repo[commit].peel(pygit2.Commit), force=True
            )
            git.repo.add_worktree(slot, str(path), branch)
            pygit2.Repository(str(path)).set_head(pygit2.Oid(hex=commit))
            branch.delete()
            return path
    move(path, commit)
    return path


def move(worktree: Path, commit: str) -> None:
    """Move a pooled worktree to `commit`, leaving nothing else in it, in one walk of the tree:
    what commands left (untracked or ignored) is removed, special files where the index has a
    file are cleared, and only the paths that differ (from the commit, or from the index) are
    written."""
    tree_repo = pygit2.Repository(str(worktree))
    target = tree_repo[commit].peel(pygit2.Commit)
    dirty: list[str] = []
    for rel, flags in tree_repo.status(untracked_files="all", ignored=True).items():
        if flags & (FileStatus.WT_NEW | FileStatus.IGNORED):
            _remove(worktree / rel.rstrip("/"))
        else:
            dirty.append(rel)
    head = tree_repo[tree_repo.head.target].peel(pygit2.Commit)
    moved = head.tree.diff_to_tree(target.tree)
    paths = sorted(
        set(dirty) | {p for d in moved.deltas for p in (d.old_file.path, d.new_file.path)}
    )
    # A fifo where the checkout writes would make it wait for a reader for ever (status walks
    # do not list special files, so each path to write is looked at).
    clear_special(worktree, paths)
    # A link planted where the commit has a file or a folder: the checkout would write
    # through it, out of the worktree.
    clear_links(worktree, paths)
    if paths:
        tree_repo.checkout_tree(  # type: ignore[no-untyped-call]
            target.tree,
            paths=paths,
            strategy=CheckoutStrategy.FORCE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH,
        )
        # What a run staged (`git add`) and then undid in the tree: the checkout leaves it.
        index = tree_repo.index
        index.read(False)
        if index_as(index, target.tree, paths):
            index.write()
    tree_repo.set_head(target.id)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()


def not_held(worktree: Path, commit: str, base: str) -> list[str]:
    """What keeps `worktree` from holding `commit`, judged where the candidate differs from
    `base` (the only paths a move or a mutator wrote): HEAD elsewhere, or each of those paths
    whose content is not the commit's. Empty when it holds it. Reads only the changed files."""
    tree_repo = pygit2.Repository(str(worktree))
    target = tree_repo[commit].peel(pygit2.Commit)
    if tree_repo.head.target != target.id:
        return [f"HEAD is {tree_repo.head.target}"]
    wrong = []
    changed = tree_repo[base].peel(pygit2.Commit).tree.diff_to_tree(target.tree)
    for path in sorted({d.new_file.path for d in changed.deltas}):
        try:
            entry = target.tree[path]
        except KeyError:
            entry = None
        file = worktree / path
        if entry is None:
            if os.path.lexists(file):
                wrong.append(path)
            continue
        try:
            data = os.readlink(file).encode() if file.is_symlink() else file.read_bytes()
        except OSError:
            wrong.append(path)
            continue
        if pygit2.hash(data) != entry.id:
            wrong.append(path)
    return wrong


def hold(worktree: Path, commit: str, paths: list[str]) -> None:
    """Make `worktree`, which differs from `commit` at most in `paths`, hold `commit`: those
    paths written as it has them, HEAD and the index moved to it (no walk of the tree)."""
    tree_repo = pygit2.Repository(str(worktree))
    target = tree_repo[commit].peel(pygit2.Commit)
    if paths:
        tree_repo.checkout_tree(  # type: ignore[no-untyped-call]
            target.tree,
            paths=paths,
            strategy=CheckoutStrategy.FORCE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH,
        )
        for path in paths:  # deleted in the commit: checkout leaves an untracked file be
            try:
                target.tree[path]
            except KeyError:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    (worktree / path).unlink()
    tree_repo.set_head(target.id)
    index = tree_repo.index  # only the changed entries: the others keep their stat cache
    for path in paths:
        if (worktree / path).is_file():
            index.add(path)
        else:
            with contextlib.suppress(OSError, KeyError):
                index.remove(path)
    index.write()


def restore_in_worktree(
    git: GitRepo,
    worktree: Path,
    base: str,
    candidate: str,
    keep: Callable[[str], bool],
    lock: AbstractContextManager[object] | None = None,
) -> list[str]:
    """In `worktree` (at `candidate`), put every path `keep` selects that the candidate
    changed back as `base` has it; a file the candidate added there is removed."""
    with lock or contextlib.nullcontext():
        diff = git.repo.diff(base, candidate)
        deltas = list(diff.deltas)
    paths = sorted({p for d in deltas for p in (d.old_file.path, d.new_file.path) if keep(p)})
    if paths:
        tree_repo = pygit2.Repository(str(worktree))
        tree_repo.checkout_tree(  # type: ignore[no-untyped-call]
            tree_repo[base].peel(pygit2.Commit).tree,
            paths=paths,
            strategy=CheckoutStrategy.FORCE,
        )
    return paths
