"""inotify over a folder tree, with folders left out, on one thread.

watchdog watches every folder of a tree or none: the tamper watch would then watch `.git/`,
whose objects and refs change with every snapshot and rollback (and watchdog warns about the
watches it reuses there), or schedule one watch per folder at the top, two threads each. This
is the small part of it the tamper watch needs: one inotify descriptor, a watch per folder but
those `skip` names, new folders watched (and what they already hold reported) as they appear,
a queue overflow reported as such.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import struct
import threading
from collections.abc import Callable
from pathlib import Path

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_EXCL_UNLINK = 0x4000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Changes only: opening and reading files is never reported, so an agent reading its own
# files all day costs nothing here. IN_ATTRIB carries chmod and a new hard link (the target's
# link count changes).
CHANGES = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
    | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)  # fmt: skip
_MASK = CHANGES | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len

_libc = ctypes.CDLL(None, use_errno=True)


class TreeWatch:
    """Calls `changed(path)` for each change under `root` (absolute paths), `overflow()` when
    the kernel dropped events; `also` are folders watched without their subfolders."""

    def __init__(
        self,
        root: Path,
        skip: Callable[[str], bool],
        changed: Callable[[str], None],
        overflow: Callable[[], None],
        also: tuple[Path, ...] = (),
    ) -> None:
        self.root = str(root)
        self.skip = skip  # relative path of a folder -> leave it (and what it holds) out
        self.changed = changed
        self.overflow = overflow
        self.also = tuple(str(p) for p in also)
        self._fd = -1
        self._paths: dict[int, str] = {}
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """OSError where inotify is missing or out of watches (`fs.inotify.max_user_watches`)."""
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd
        try:
            self._watch_tree(self.root)
            for folder in self.also:
                self._watch(folder)
        except OSError:
            self.stop()
            raise
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="metasup-tamper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1

    def watched(self) -> list[str]:
        return sorted(self._paths.values())

    def _watch(self, path: str) -> None:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                return  # gone again, or not a folder: nothing to watch there
            raise OSError(err, f"cannot watch {path}: {os.strerror(err)}")
        self._paths[wd] = path

    def _rel(self, path: str) -> str | None:
        if path == self.root:
            return ""
        if path.startswith(self.root + os.sep):
            return path[len(self.root) + 1 :]
        return None

    def _watch_tree(self, top: str) -> list[str]:
        """Watch `top` and every folder under it but those skipped; the paths found. Each
        folder is watched before it is listed: what is made in it meanwhile is either listed
        or reported by the watch (listed first, a file made between the two would be neither)."""
        found = []
        pending = [top]
        while pending:
            folder = pending.pop()
            rel = self._rel(folder)
            if rel is None:
                continue
            self._watch(folder)
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # gone again, or not a folder
            prefix = f"{rel}/" if rel else ""
            for entry in entries:
                path = os.path.join(folder, entry.name)
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir and self.skip(prefix + entry.name):
                    continue
                found.append(path)
                if is_dir:
                    pending.append(path)
        return found

    def _unwatch_under(self, path: str) -> None:
        for wd, watched in list(self._paths.items()):
            if watched == path or watched.startswith(path + os.sep):
                _libc.inotify_rm_watch(self._fd, wd)
                self._paths.pop(wd, None)

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select()}
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                self._events(data)

    def _events(self, data: bytes) -> None:
        at = 0
        while at + _EVENT.size <= len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + size].rstrip(b"\0")
            at += _EVENT.size + size
            if mask & IN_Q_OVERFLOW:
                self.overflow()
                continue
            if mask & IN_IGNORED:
                self._paths.pop(wd, None)
                continue
            base = self._paths.get(wd)
            if base is None:
                continue
            path = os.path.join(base, os.fsdecode(name)) if name else base
            self.changed(path)
            if mask & IN_ISDIR and mask & IN_MOVED_FROM:
                self._unwatch_under(path)
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and base not in self.also:
                rel = self._rel(path)
                if rel is not None and not self.skip(rel):
                    # Filled before its watch existed, or moved in whole: report what is there.
                    try:
                        for inner in self._watch_tree(path):
                            self.changed(inner)
                    except OSError:
                        self.overflow()  # out of watches: what it holds goes unseen
