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
    def __init__(self, workdir: Path, protect: Callable[[str], bool]) -> None:
        self.workdir = workdir
        self.protect = protect
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
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
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

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        watch._seen(os.fsdecode(raw), root)

        observer = Observer(timeout=60.0)  # the timeout bounds idle wakeups, not detection
        try:
            # Changes only: reads (open, access, close without a write) never reach inotify's
            # queue, so an agent reading its files all day costs nothing here.
            changes = [FileModifiedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                       FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent]  # fmt: skip
            observer.schedule(Handler(), root, recursive=True, event_filter=changes)
            observer.daemon = True
            observer.start()
        except OSError:
            return False
        self._observer = observer
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
