"""Files written in the working tree as git would, and never through what the agent planted.

A protected file put back, a path checked out: every write is a no-follow open of a regular
file with one name, or a new file renamed over whatever stood there (a hard link, a fifo, a
socket, a device); parent folders are made real folders, never followed through a link.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import pygit2

from metasup.effects.files.safeio import is_special, read_regular, write_all

# Bits a protected file must not carry: set-id and sticky. Group and other bits stay the
# operator's (a umask of 077 is theirs to keep).
ODD_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def same_file(path: Path, data: bytes, filemode: int) -> bool:
    """`path` is exactly this blob: same content, git's exec bit, owner read-write, no odd
    bits, and no second name (a hard link would let the agent write it under another)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if filemode == pygit2.enums.FileMode.LINK:
        return stat.S_ISLNK(st.st_mode) and os.readlink(path).encode() == data
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return False
    executable = bool(st.st_mode & stat.S_IXUSR)
    if executable != (filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE):
        return False
    owner_rw = stat.S_IRUSR | stat.S_IWUSR
    if st.st_mode & owner_rw != owner_rw or st.st_mode & ODD_BITS:
        return False
    try:
        return read_regular(path, limit=len(data) + 1) == data
    except OSError:
        return False  # swapped for a fifo or a link since the lstat


def write_file(target: Path, data: bytes, executable: bool) -> None:
    """`target` as a regular file holding `data`, one name only, never blocking.

    Rewritten in place where it is a plain file (the path never goes missing under a reader);
    a hard link, a fifo, a socket or a device is replaced by a new file renamed over it, so no
    other name shares what is written and no open can wait for a peer."""
    perm = 0o755 if executable else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, perm)
    except OSError:
        fd = -1  # a fifo with no reader (ENXIO), a socket: replaced below
    if fd >= 0:
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.ftruncate(fd, 0)
                write_all(fd, data)
                os.fchmod(fd, perm)
                return
        finally:
            os.close(fd)
    tmp = target.with_name(f".{target.name}.metasup-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
    try:
        write_all(fd, data)
        os.fchmod(fd, perm)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def clear_special(workdir: Path, paths: Iterable[str]) -> list[str]:
    """Remove fifos, sockets and devices standing at `paths`: a checkout that meets one opens
    it for writing and waits for a reader for ever. Returns the ones removed."""
    removed = []
    for rel in paths:
        full = workdir / rel
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if is_special(st.st_mode):
            os.unlink(full)
            removed.append(rel)
    return removed


def clear_links(workdir: Path, paths: Iterable[str]) -> list[str]:
    """Remove symbolic links standing at `paths` or at a folder on their way: a checkout
    limited to some paths writes through them (to wherever they point) instead of replacing
    them. Returns the ones removed."""
    removed = []
    seen: set[str] = set()
    for rel in paths:
        parts = rel.rstrip("/").split("/")
        for n in range(1, len(parts) + 1):
            here = "/".join(parts[:n])
            if here in seen:
                continue
            seen.add(here)
            try:
                st = os.lstat(workdir / here)
            except (FileNotFoundError, NotADirectoryError):
                break
            if stat.S_ISLNK(st.st_mode):
                os.unlink(workdir / here)
                removed.append(here)
                break
            if not stat.S_ISDIR(st.st_mode):
                break
    return removed


def index_as(index: pygit2.Index, tree: pygit2.Tree, paths: Iterable[str]) -> bool:
    """The index entries of `paths` made what `tree` has (absent ones removed); a path-limited
    checkout leaves some behind: a file a run staged and deleted, a mode it staged and put
    back, a link it stood in for. Entries are written without stat data, so the next status
    hashes those few files once. True when the index changed (the caller writes it)."""
    changed = False
    for path in paths:
        try:
            entry: pygit2.Object | None = tree[path]
        except KeyError:
            entry = None
        if isinstance(entry, pygit2.Tree):
            continue  # a folder: its files are listed themselves
        current = index[path] if path in index else None  # noqa: SIM401 (Index has no get)
        if entry is None:
            if current is not None:
                index.remove(path)
                changed = True
        elif current is None or current.id != entry.id or current.mode != entry.filemode:
            index.add(pygit2.IndexEntry(path, entry.id, entry.filemode))
            changed = True
    return changed


def make_dirs(workdir: Path, path: str) -> None:
    """The parent directories of `path`, as real directories: whatever stands in their way
    (a file, a symbolic link pointing anywhere) is removed, never followed."""
    here = workdir
    for part in path.split("/")[:-1]:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(here)
            os.mkdir(here)
