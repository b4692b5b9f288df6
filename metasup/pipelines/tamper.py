"""The tamper watch: protected paths changed while the agent runs are noticed at once.

inotify watches the working tree, `.git/` and the inbox left out (`inotify.TreeWatch`); a
write, delete, rename, chmod or new hard link of a protected path queues the path and wakes
the supervisor's loop, which restores it from the good commit (on its own thread: a restore
never races a snapshot or a rollback). The snapshot guard stays behind it for whatever an event
could miss; a queue overflow asks for it at once. The supervisor's lock file is watched too: a
lock removed or replaced wakes the loop, which then stops.

The same watch keeps `changes`: every path of the tree written since git last held it clean
(`ChangedPaths`), so the git steps look at those only. Its barrier is a file with a name no
one else can guess, created and removed in the lock's folder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from metasup.effects.files.changed import ChangedPaths
from metasup.effects.files.inotify import TreeWatch
from metasup.effects.files.watched import Barriers
from metasup.effects.process.wake import WakePipe
from metasup.facts.gitpaths import in_git_dir
from metasup.pipelines.intake import INBOX

MODES = ("restore", "restore_and_restart", "stop")


class TamperWatch:
    """Watches the working tree (not `.git/`, not the inbox) and the supervisor's lock file."""

    def __init__(
        self, workdir: Path, protect: Callable[[str], bool], lock_path: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.protect = protect
        self.lock_path = lock_path
        self.wake = WakePipe()
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._overflowed = False
        # Without a folder of metasup's own to put a barrier in, the set is never trusted.
        self._barriers = Barriers(lock_path.parent) if lock_path is not None else None
        self.changes: ChangedPaths | None = (
            ChangedPaths(self._barriers.start) if self._barriers is not None else None
        )
        also = (lock_path.parent,) if lock_path is not None else ()
        self._watch = TreeWatch(workdir, _left_out, self._changed, self._overflow, also)

    @property
    def fd(self) -> int:
        return self.wake.read_fd

    def start(self) -> bool:
        """False where the tree cannot be watched (no inotify, too many folders)."""
        try:
            self._watch.start()
        except OSError:
            return False
        return True

    def watched(self) -> list[str]:
        return self._watch.watched()

    def _changed(self, path: str) -> None:
        if self.lock_path is not None and os.path.dirname(path) == str(self.lock_path.parent):
            if path == str(self.lock_path):
                self.wake.poke()  # the loop checks the lock at every wake-up
            elif self._barriers is not None:
                self._barriers.seen(path)
            return
        self._seen(path, str(self.workdir))

    def _overflow(self) -> None:
        with self._lock:
            self._overflowed = True
        if self.changes is not None:
            self.changes.lost()
        self.wake.poke()

    def take_overflow(self) -> bool:
        """Whether events were lost since the last call: the guard must look at everything."""
        with self._lock:
            lost, self._overflowed = self._overflowed, False
        return lost

    def _seen(self, path: str, root: str) -> None:
        if not path.startswith(root + os.sep):
            return
        rel = path[len(root) + 1 :].replace(os.sep, "/")
        if _left_out(rel) or rel.startswith(INBOX + "/"):
            return  # git's own files, and the agents' drop box
        if self.changes is not None:
            self.changes.add(rel)
        if not self.protect(rel):
            return
        with self._lock:
            self._queued.add(rel)
        self.wake.poke()

    def take(self) -> list[str]:
        """The protected paths touched since the last call."""
        self.wake.drain()
        with self._lock:
            queued, self._queued = self._queued, set()
        return sorted(queued)

    def stop(self) -> None:
        self._watch.stop()
        self.wake.close()


def _left_out(rel: str) -> bool:
    """Folders the watch leaves out: git's own (at the top, in any case) and the inbox."""
    return in_git_dir(rel) or rel == INBOX
