"""Candidates for the experiments: a commit built in memory from a proposal, and the pooled
worktrees candidates and the baseline run in (moved between commits by a checkout that writes
only what differs, and emptied of what a run left).

Each pooled worktree is watched (`WatchedTree`) from its first use in a process on: a move then
looks only at the paths the last run changed and those that differ between the two commits.
The first move in a process, and any move after the watch lost events or the worktree's index
changed behind it, walks the whole worktree instead. Hard links, which would let a run write a
file under a name the watch does not report, fail in the jail (`nolinks`); with the jail off a
run can write anywhere anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

import pygit2
from pygit2.enums import FileStatus

from metasup.effects.files.watched import WatchedTree
from metasup.effects.git.files import clear_links, clear_special, index_as
from metasup.effects.git.protected import put_path
from metasup.effects.git.repo import POOL_BRANCH_PREFIX, FileChange, GitRepo, signature
from metasup.effects.git.treeedit import changed_between, edit_tree


def candidate_commit(git: GitRepo, base: str, changes: list[FileChange], message: str) -> str:
    """A commit of `base` with `changes` applied, built in memory: no worktree, no index
    file, nothing in the working tree. Validation happened before; paths are clean."""
    base_tree = git.repo[base].peel(pygit2.Commit).tree
    edits: dict[str, tuple[pygit2.Oid, int] | None] = {}
    for path, data, mode in changes:
        if data is None:
            edits[path] = None
            continue
        if mode is None:  # an edit keeps the file's mode; a new file is a plain one
            try:
                filemode = int(base_tree[path].filemode)
            except KeyError:
                filemode = pygit2.enums.FileMode.BLOB
        elif mode == "100755":
            filemode = pygit2.enums.FileMode.BLOB_EXECUTABLE
        else:
            filemode = pygit2.enums.FileMode.BLOB
        edits[path] = (git.repo.create_blob(data), filemode)
    tree = edit_tree(git.repo, base_tree, edits)
    oid = git.repo.create_commit(
        None, signature(), signature(), message, tree, [pygit2.Oid(hex=base)]
    )
    return str(oid)


def in_commit(git: GitRepo, commit: str) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """What `commit` has at a path, as a worktree holding it would show it (missing, link, dir,
    file, or other: a submodule), and the blob id of a file there: a proposal is checked
    against a commit without a worktree moved to it. Call under the lock that guards `git`."""
    tree = git.repo[commit].peel(pygit2.Commit).tree

    def kind(path: str) -> str:
        entry = _entry(tree, path)
        if entry is None:
            return "missing"
        if entry.filemode == pygit2.enums.FileMode.LINK:
            return "link"
        if isinstance(entry, pygit2.Tree):
            return "dir"
        return "file" if isinstance(entry, pygit2.Blob) else "other"

    return kind, lambda path: str(tree[path].id)


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
            forget(path)
            if slot in git.repo.list_worktrees():
                git.repo.lookup_worktree(slot).prune(True)
            if path.exists():
                shutil.rmtree(path)
            root.mkdir(parents=True, exist_ok=True)
            branch = git.repo.branches.local.create(
                POOL_BRANCH_PREFIX + slot, git.repo[commit].peel(pygit2.Commit), force=True
            )
            git.repo.add_worktree(slot, str(path), branch)
            tree_repo = repo_of(path)
            tree_repo.set_head(pygit2.Oid(hex=commit))
            branch.delete()
            watch = watched(path)
            if watch is not None:  # nothing but the checkout has written there
                watch.clean()
                watch.stamp = _index_stamp(tree_repo)
            return path
    move(path, commit)
    return path


# --- the watches over the pooled worktrees, one per worktree for the life of the process ------

_watches: OrderedDict[Path, WatchedTree] = OrderedDict()  # the least recently used first
_repos: dict[Path, pygit2.Repository] = {}
_watches_lock = threading.Lock()
# Each watch is an inotify instance and a thread (128 instances per user by default): beyond
# this many worktrees in use, the least recently used one is walked at its next move instead.
MAX_WATCHES = 16
BARRIERS = ".barriers"  # in the pool's folder, beside the worktrees


def watched(worktree: Path) -> WatchedTree | None:
    """The watch over `worktree`, started at the first call; None where it cannot be watched
    (no inotify, out of watches), and the callers walk the tree."""
    with _watches_lock:
        watch = _watches.get(worktree)
        if watch is not None and watch.watches(worktree):
            _watches.move_to_end(worktree)
            return watch
        for path, old in list(_watches.items()):  # gone, or made again: not watched any more
            if path == worktree or not old.watches(path):
                old.stop()
                del _watches[path]
        while len(_watches) >= MAX_WATCHES:
            _watches.popitem(last=False)[1].stop()
        watch = WatchedTree(worktree, worktree.parent / BARRIERS)
        if not watch.start():
            return None
        _watches[worktree] = watch
        return watch


def repo_of(worktree: Path) -> pygit2.Repository:
    """The worktree's repository object, kept: its index stays loaded between moves (reading
    it costs 3 ms at 10k files) and is read again only when the file changed. A worktree is used
    by one thread at a time."""
    with _watches_lock:
        found = _repos.get(worktree)
        if found is None:
            found = _repos[worktree] = pygit2.Repository(str(worktree))
        return found


def forget(worktree: Path) -> None:
    """Stop watching `worktree` (about to be removed, or made again)."""
    with _watches_lock:
        _repos.pop(worktree, None)
        watch = _watches.pop(worktree, None)
    if watch is not None:
        watch.stop()


def _index_stamp(tree_repo: pygit2.Repository) -> tuple[int, int, int] | None:
    """What the worktree's index file is now: a command that wrote it (staged, or refreshed
    it with `git status` where the jail is off) changed it, and the watch does not see it."""
    try:
        st = os.stat(os.path.join(tree_repo.path, "index"))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def changed_since_clean(worktree: Path, tree_repo: pygit2.Repository) -> frozenset[str] | None:
    """The paths of `worktree` written since a move last left it clean, `.git` aside; None
    when not known (the caller walks the tree)."""
    watch = watched(worktree)
    if watch is None:
        return None
    known = watch.changes.begin()
    if known is None or watch.stamp is None or watch.stamp != _index_stamp(tree_repo):
        return None
    return frozenset(p for p in known if p != ".git" and not p.startswith(".git/"))


def _entry(tree: pygit2.Tree, path: str) -> pygit2.Object | None:
    try:
        return tree[path]
    except (KeyError, TypeError, ValueError):
        return None


def files_under(tree: pygit2.Tree, prefix: str) -> list[str]:
    """The paths of the files (and links) `tree` holds, as `prefix/...`."""
    out = []
    for entry in tree:
        path = f"{prefix}/{entry.name}"
        if isinstance(entry, pygit2.Tree):
            out += files_under(entry, path)
        else:
            out.append(path)
    return out


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _clear_known(worktree: Path, tree: pygit2.Tree, known: Iterable[str]) -> list[str]:
    """Make way for `tree` at the paths a watch saw change: what `tree` does not have is
    removed (untracked and ignored files, new folders), what stands where it has a file or a
    folder of another kind goes; returns the paths to write from `tree`."""
    write: list[str] = []
    for rel in sorted(known):  # a folder before what it holds
        full = worktree / rel
        entry = _entry(tree, rel)
        if entry is None:
            if os.path.lexists(full):
                remove_path(full)
        elif isinstance(entry, pygit2.Tree):
            if os.path.lexists(full) and not _real_dir(full):
                remove_path(full)
            # The folder itself was made, moved or removed: it may be another one by now,
            # without the files the commit has there (those already right are not written).
            write += files_under(entry, rel)
        else:
            if _real_dir(full):
                shutil.rmtree(full, ignore_errors=True)
            write.append(rel)
    return write


def move(worktree: Path, commit: str, *, watch: bool = True) -> None:
    """Move a pooled worktree to `commit`, leaving nothing else in it: what commands left
    (untracked or ignored) is removed, special files where the index has a file are cleared,
    and only the paths that differ (from the commit, or from the index) are written. The paths
    to look at come from the worktree's watch, else from one walk of the tree.

    `watch=False`: walk, whatever the watch knows (the tests compare the two)."""
    tree_repo = repo_of(worktree)
    target = tree_repo[commit].peel(pygit2.Commit)
    known = changed_since_clean(worktree, tree_repo) if watch else None
    dirty: list[str] = []
    if known is not None:
        dirty = _clear_known(worktree, target.tree, known)
    else:
        for rel, flags in tree_repo.status(untracked_files="all", ignored=True).items():
            if flags & (FileStatus.WT_NEW | FileStatus.IGNORED):
                remove_path(worktree / rel.rstrip("/"))
            else:
                dirty.append(rel)
    head = tree_repo[tree_repo.head.target].peel(pygit2.Commit)
    paths = sorted(set(dirty) | changed_between(head.tree, target.tree))
    # A fifo where a file is to be written would make the write wait for a reader for ever
    # (status walks do not list special files, so each path to write is looked at).
    clear_special(worktree, paths)
    # A link planted where the commit has a file or a folder: a write would go through it,
    # out of the worktree.
    clear_links(worktree, paths)
    write_paths(tree_repo, worktree, target.tree, paths)
    tree_repo.set_head(target.id)
    if watch:
        _now_clean(worktree, tree_repo)


def write_paths(
    tree_repo: pygit2.Repository, worktree: Path, tree: pygit2.Tree, paths: Iterable[str]
) -> None:
    """`paths` made what `tree` has, in the worktree and its index: each file written unless it
    holds that already, each path `tree` lacks removed. Not libgit2's checkout: limited to a few
    paths, it still reads and writes the whole index (5 ms at 10k files), twice with the fix-up
    of the entries it leaves."""
    paths = list(paths)
    if not paths:
        return
    for path in paths:
        put_path(tree_repo, worktree, tree, path)
    index = tree_repo.index
    index.read(False)
    if index_as(index, tree, paths):
        index.write()


def _now_clean(worktree: Path, tree_repo: pygit2.Repository) -> None:
    found = watched(worktree)
    if found is not None:
        found.clean()
        found.stamp = _index_stamp(tree_repo)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()


def not_held(worktree: Path, commit: str, base: str) -> list[str]:
    """What keeps `worktree` from holding `commit`, judged where the candidate differs from
    `base` (the only paths a move or a mutator wrote): HEAD elsewhere, or each of those paths
    whose content is not the commit's. Empty when it holds it. Reads only the changed files."""
    tree_repo = repo_of(worktree)
    target = tree_repo[commit].peel(pygit2.Commit)
    if tree_repo.head.target != target.id:
        return [f"HEAD is {tree_repo.head.target}"]
    wrong = []
    for path in sorted(changed_between(tree_repo[base].peel(pygit2.Commit).tree, target.tree)):
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
    tree_repo = repo_of(worktree)
    target = tree_repo[commit].peel(pygit2.Commit)
    tree_repo.set_head(target.id)
    # Only the changed entries: the others keep their stat cache.
    write_paths(tree_repo, worktree, target.tree, paths)
    found = watched(worktree)
    if found is not None:  # the paths stay known: the next move looks at them again
        found.stamp = _index_stamp(tree_repo)


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
        changed = git.changed_paths(base, candidate)
    paths = sorted(p for p in changed if keep(p))
    if paths:
        tree_repo = repo_of(worktree)
        write_paths(tree_repo, worktree, tree_repo[base].peel(pygit2.Commit).tree, paths)
    return paths
