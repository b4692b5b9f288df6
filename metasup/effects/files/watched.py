"""A tree whose changed paths are known without a walk: inotify over it (`TreeWatch`) feeding a
`ChangedPaths`, whose barrier is a file created in a folder of metasup's own beside it.

The tamper watch keeps one over the agent's tree (with more to do on each event); each pooled
experiment worktree has its own (`WatchedTree`), so moving a worktree from one candidate to the
next looks at what the last run there changed, not at every file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from metasup.effects.files.changed import ChangedPaths
from metasup.effects.files.inotify import TreeWatch

_BARRIER = ".metasup-barrier-"


class Barriers:
    """Barrier files in `folder`, which the watch that passes them must watch too: created and
    removed at once, with a name no one else can guess; `seen` is told every event there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._waiting: dict[str, threading.Event] = {}

    def start(self) -> Callable[[float], bool]:
        """Start a barrier; the returned wait(timeout) is True once the watch read past it."""
        name = _BARRIER + os.urandom(8).hex()  # not `secrets`: it loads _hashlib
        passed = threading.Event()
        with self._lock:
            self._waiting[name] = passed
        path = self.folder / name
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            os.unlink(path)
        except OSError:
            with self._lock:
                self._waiting.pop(name, None)

            def never(timeout: float) -> bool:
                return False

            return never

        def wait(timeout: float) -> bool:
            try:
                return passed.wait(timeout)
            finally:
                with self._lock:
                    self._waiting.pop(name, None)

        return wait

    def seen(self, path: str) -> None:
        with self._lock:
            passed = self._waiting.get(os.path.basename(path))
        if passed is not None:
            passed.set()


class WatchedTree:
    """The paths of `root` changed since it was last clean (`changes`); barriers in `barriers`
    (made if missing; it must not be inside `root`)."""

    def __init__(self, root: Path, barriers: Path) -> None:
        self.root = root
        self._barriers = Barriers(barriers)
        self.changes = ChangedPaths(self._barriers.start)
        self._root_id: tuple[int, int] | None = None
        self._watch = TreeWatch(root, _nothing, self._changed, self.changes.lost, (barriers,))
        self.stamp: object = None  # the caller's: what it last left in the tree's git files

    def start(self) -> bool:
        """False where the tree cannot be watched (no inotify, out of watches)."""
        try:
            self._barriers.folder.mkdir(parents=True, exist_ok=True)
            st = os.stat(self.root)
            self._root_id = (st.st_dev, st.st_ino)
            self._watch.start()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self._watch.stop()

    def watches(self, root: Path) -> bool:
        """Whether this watch is still on `root` (not on a folder since removed and made again)."""
        try:
            st = os.stat(root)
        except OSError:
            return False
        return root == self.root and (st.st_dev, st.st_ino) == self._root_id

    def clean(self) -> None:
        """The tree holds its commit and nothing else now (the caller just made it so)."""
        self.changes.begin()
        self.changes.settle()

    def _changed(self, path: str) -> None:
        if os.path.dirname(path) == str(self._barriers.folder):
            self._barriers.seen(path)
            return
        root = str(self.root)
        if path.startswith(root + os.sep):
            self.changes.add(path[len(root) + 1 :].replace(os.sep, "/"))


def _nothing(rel: str) -> bool:
    return False
