"""The tamper watch: protected paths changed while the agent runs are noticed at once.

watchdog (inotify) watches the working tree; a write, delete, rename or chmod of a protected
path queues the path and wakes the supervisor's loop, which restores it from the good commit
(on its own thread: a restore never races a snapshot or a rollback). The snapshot guard stays
behind it for whatever an event could miss.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasup.intake import INBOX, WakePipe

MODES = ("restore", "restore_and_restart", "stop")


class TamperWatch:
    """Watches the working tree, and the supervisor's lock file.

    One recursive watch covers the tree, `.git/` included: watchdog cannot leave a folder out,
    and a watch per folder at the top costs two threads each (a hundred on a tree of fifty
    folders). Events under `.git/` are dropped as they arrive."""

    def __init__(
        self, workdir: Path, protect: Callable[[str], bool], lock_path: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.protect = protect
        self.lock_path = lock_path
        self.wake = WakePipe()
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._observer: Any = None

    @property
    def fd(self) -> int:
        return self.wake.read_fd

    def start(self) -> bool:
        """False where the tree cannot be watched (no inotify, too many folders)."""
        from watchdog.events import (
            DirAttribEvent,
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileAttribEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        # watchdog warns when a folder comes back at a path it watched before (the jail's
        # placeholders do): harmless, and not the operator's to read.
        warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning)

        watch = self
        root = str(self.workdir)
        # Changes only: reads (open, access, close without a write) never reach inotify's
        # queue, so an agent reading its files all day costs nothing here. Attribute events
        # carry chmod, and a new hard link (its target's link count changes).
        changes = [FileModifiedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                   FileMovedEvent, FileAttribEvent, DirCreatedEvent, DirDeletedEvent,
                   DirMovedEvent, DirAttribEvent]  # fmt: skip

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        watch._seen(os.fsdecode(raw), root)

        class LockHandler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                names = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", ""))}
                if str(watch.lock_path) in names:
                    watch.wake.poke()  # the loop checks the lock at every wake-up

        observer = Observer(timeout=60.0)  # the timeout bounds idle wakeups, not detection
        self._observer = observer
        try:
            observer.schedule(Handler(), root, recursive=True, event_filter=changes)
            if self.lock_path is not None:
                observer.schedule(
                    LockHandler(),
                    str(self.lock_path.parent),
                    recursive=False,
                    event_filter=[FileDeletedEvent, FileMovedEvent, FileCreatedEvent],
                )
            observer.daemon = True
            observer.start()
        except OSError:
            self._observer = None
            return False
        return True

    def _seen(self, path: str, root: str) -> None:
        if not path.startswith(root + os.sep):
            return
        rel = path[len(root) + 1 :].replace(os.sep, "/")
        if rel.split("/")[0].lower() == ".git" or rel == INBOX or rel.startswith(INBOX + "/"):
            return  # git's own files, and the agents' drop box
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
        if self._observer is not None:
            self._observer.stop()
            with contextlib.suppress(RuntimeError):
                self._observer.join(timeout=5)
            self._observer = None
        self.wake.close()
