"""The protected files, in the working tree and in commits: listed for the integrity check
(`mode:blob id`, never opening a fifo or following a link), and put back as the good commit has
them (written through `files`, never through what the agent planted). Functions over a GitRepo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pygit2

from metasup.effects.files.safeio import read_regular
from metasup.effects.git.files import make_dirs, same_file, write_file
from metasup.facts.gitpaths import in_git_dir, is_git_dir_name

if TYPE_CHECKING:
    from metasup.effects.git.repo import GitRepo


def blob_ids(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for entry in tree:
        name = f"{prefix}{entry.name}"
        if entry.type_str == "tree":
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            out += blob_ids(repo, sub, name + "/")
        elif entry.type_str == "blob":
            out.append((name, f"{entry.filemode:o}:{entry.id}"))
    return out


def guard_protected(git: GitRepo, protect: Callable[[str], bool]) -> tuple[str, ...]:
    """The snapshot guard without the snapshot: protected paths that differ from the good
    commit are put back (for a supervisor that stops with the agent's last writes in)."""
    return restore_changed(git, git.repo.status(untracked_files="all"), protect)


def restore_changed(
    git: GitRepo, status: dict[str, int], protect: Callable[[str], bool]
) -> tuple[str, ...]:
    good = git.good()
    if good is None:
        return ()  # the baseline is the operator's own state
    candidates = {p.rstrip("/") for p in status}
    head = git.head()
    if head is not None:
        candidates.update(git.changed_paths(good, head))
    tree = git.repo[good].peel(pygit2.Commit).tree
    restored = [
        path
        for path in sorted(p for p in candidates if protect(p))
        if restore_path(git, tree, path)
    ]
    return tuple(restored)


def restore_protected(
    git: GitRepo, paths: Iterable[str], protect: Callable[[str], bool]
) -> tuple[str, ...]:
    """Put the protected ones among `paths` back as the good commit has them; a folder
    stands for everything under it, in the good commit and in the working tree. Returns
    the paths that had to be restored (none when the good commit is missing)."""
    good = git.good()
    if good is None:
        return ()
    tree = git.repo[good].peel(pygit2.Commit).tree
    candidates: set[str] = set()
    for path in paths:
        path = path.strip("/")
        if not path or in_git_dir(path):
            continue
        candidates.add(path)
        try:
            entry = tree[path]
        except KeyError:
            entry = None
        if isinstance(entry, pygit2.Tree):
            candidates.update(f"{path}/{p}" for p, _ in blob_ids(git.repo, entry))
        full = git.workdir / path
        if full.is_dir() and not full.is_symlink():
            for root, dirs, files in os.walk(full):
                rel = Path(root).relative_to(git.workdir).as_posix()
                candidates.update(f"{rel}/{name}" for name in (*files, *dirs))
    restored = []
    for path in sorted(candidates):
        if not protect(path):
            continue
        full = git.workdir / path
        if full.is_dir() and not full.is_symlink() and not _is_blob(git, tree, path):
            continue  # a folder: what is under it was listed on its own (and may be free)
        if restore_path(git, tree, path):
            restored.append(path)
    return tuple(restored)


def _is_blob(git: GitRepo, tree: pygit2.Tree, path: str) -> bool:
    try:
        return isinstance(git.repo[tree[path].id], pygit2.Blob)
    except KeyError:
        return False


def restore_path(git: GitRepo, tree: pygit2.Tree, path: str) -> bool:
    """Make `path` in the working tree what it is in `tree`; False when it already was."""
    return put_path(git.repo, git.workdir, tree, path)


def put_path(repo: pygit2.Repository, workdir: Path, tree: pygit2.Tree, path: str) -> bool:
    """Make `path` under `workdir` what it is in `tree` (of `repo`): its file written, or
    whatever stands there removed where `tree` has nothing; a folder of `tree` is only cleared
    the way to. Never follows a link. False when it already was."""
    try:
        entry: pygit2.Object | None = tree[path]
    except KeyError:
        entry = None
    target = workdir / path
    present = target.exists() or target.is_symlink()
    blob = repo.get(entry.id) if entry is not None else None  # a submodule's commit: absent
    if isinstance(blob, pygit2.Blob):
        assert entry is not None
        mode = entry.filemode
        if same_file(target, blob.data, mode):
            return False
    else:
        blob = None  # nothing there in the good commit, or a directory: clear the way only
        if entry is None and not present:
            return False
        if entry is not None and target.is_dir() and not target.is_symlink():
            return False
    make_dirs(workdir, path)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    if blob is None:
        if target.is_symlink() or target.exists():
            target.unlink()
        return True
    if mode == pygit2.enums.FileMode.LINK:
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(blob.data.decode("utf-8", "surrogateescape"), target)
        return True
    if target.is_symlink():
        target.unlink()  # never write through a link
    write_file(target, blob.data, mode == pygit2.enums.FileMode.BLOB_EXECUTABLE)
    return True


def protected_files(
    git: GitRepo, protect: Callable[[str], bool]
) -> tuple[dict[str, str], dict[str, str]]:
    """The protected files of the working tree: those git would track, and those it
    ignores (an ignored `metasup.yaml` beside the config in use is one), as `mode:blob id`.
    Fifos, sockets and devices are never opened, and not listed: they hold no content."""
    tracked: dict[str, str] = {}
    ignored: dict[str, str] = {}
    for root, dirs, files in os.walk(git.workdir):
        rel_root = Path(root).relative_to(git.workdir).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [
            d
            for d in dirs
            if not (rel_root == "" and is_git_dir_name(d)) and f"{rel_root}{d}" != ".metasup/inbox"
        ]
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = rel_root + name
            if not protect(rel):
                continue
            found = ignored if git.repo.path_is_ignored(rel) else tracked
            full = git.workdir / rel
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                found[rel] = f"120000:{pygit2.hash(os.fsencode(os.readlink(full)))}"
            elif stat.S_ISREG(st.st_mode):
                mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
                with contextlib.suppress(OSError):  # swapped for a fifo since: not listed
                    found[rel] = f"{mode}:{pygit2.hash(read_regular(full) or b'')}"
    return tracked, ignored


def entries_at(git: GitRepo, commit: str, paths: Iterable[str]) -> dict[str, str]:
    """`mode:blob id` of each of `paths` that is a file in `commit`'s tree."""
    tree = git.repo[commit].peel(pygit2.Commit).tree
    found = {}
    for path in paths:
        try:
            entry = tree[path]
        except KeyError:
            continue
        if entry.type_str == "blob":
            found[path] = f"{entry.filemode:o}:{entry.id}"
    return found


def protected_in_commit(
    git: GitRepo, commit: str, protect: Callable[[str], bool]
) -> dict[str, str]:
    """Each protected file of a commit's tree, as `mode:blob id`."""
    tree = git.repo[commit].peel(pygit2.Commit).tree
    return {path: oid for path, oid in blob_ids(git.repo, tree) if protect(path)}
