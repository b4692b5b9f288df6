"""Reading and opening paths the agent may have replaced, without trusting what is there.

A symlink is not followed and a fifo, socket or device is never read: opening a fifo for reading
blocks until a writer comes, which is how an agent could freeze the supervisor for ever. Every
open here is `O_NOFOLLOW | O_NONBLOCK`, and the kind of file is checked on the open descriptor,
so a swap between a check and the open changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import IO, Any

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = _READ | os.O_DIRECTORY


class NotRegular(OSError):
    """A path that should be a regular file (or a folder) is something else."""

    def __init__(self, path: Path, kind: str, expected: str = "a regular file") -> None:
        super().__init__(errno.EINVAL, f"{path} is {kind}, not {expected}")
        self.path = path
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file of this mode is, for an error message."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a regular file"


def is_special(mode: int) -> bool:
    """A fifo, socket or device: something that may block or answer, never content."""
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def open_regular(path: Path) -> int:
    """A read descriptor on `path`, a regular file reached without a symlink at its last step.

    FileNotFoundError when missing; NotRegular for anything else."""
    return _open_checked(path, _READ)


def _open_checked(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` with O_NOFOLLOW | O_NONBLOCK in `flags`, then blocking again, where what
    was opened is a regular file; NotRegular otherwise (the descriptor closed)."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegular(path, "a symbolic link") from None
        if e.errno == errno.ENXIO:  # a fifo with no reader, or a socket, opened for writing
            raise NotRegular(path, "a fifo or a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(path, kind_of(mode))
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int = 1 << 30) -> bytes | None:
    """The bytes of a regular file (at most `limit`); None when it is missing.
    NotRegular when it is a symlink, a fifo, a socket, a device or a folder."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_at(folder: int, name: str, limit: int = 1 << 30) -> bytes | None:
    """`read_regular` of `name` in the open folder `folder`."""
    try:
        fd = os.open(name, _READ, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegular(Path(name), "a symbolic link") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(Path(name), kind_of(mode))
        os.set_blocking(fd, True)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def open_folder(root: Path, rel: str, create: bool = False) -> int:
    """A descriptor on `root/rel`, each step of `rel` a real folder: a symlink anywhere on the
    way is refused (NotRegular), never followed. `create` makes missing steps."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = root
    try:
        for part in rel.split("/"):
            here = here / part
            nfd = _step(fd, part, here, create)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _step(fd: int, part: str, here: Path, create: bool) -> int:
    for _ in range(2):
        try:
            return os.open(part, _DIR, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            raise NotRegular(here, kind_of(mode), "a folder") from None
    return os.open(part, _DIR, dir_fd=fd)


def open_append(path: Path) -> IO[bytes]:
    """A log file in metasup's own folder, opened for appending: created when missing. A
    symlink, fifo or socket found at its name (planted there) is removed and a file made in its
    place: metasup never writes through a link, and never waits on a fifo."""
    try:
        return _open_append(path)
    except NotRegular as e:
        if e.kind == "a folder":
            raise
        os.unlink(path)
        return _open_append(path)


def _open_append(path: Path) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    return os.fdopen(_open_checked(path, flags), "ab")


def read_json(path: Path) -> Any:
    """The document at `path`; None when it is missing, not JSON, or no regular file."""
    try:
        data = read_regular(path)
    except OSError:
        return None
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd`: a write may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def move(src: Path, dst: Path) -> None:
    """Move a file or a folder by rename, which copies nothing and is atomic; copied only
    where `dst` is on another filesystem. The parents of `dst` are made."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))


def real_folder(path: Path) -> bool:
    """`path` is a folder and no symlink: True; missing: False; anything else: NotRegular."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise NotRegular(path, kind_of(st.st_mode), "a folder")
    return True
