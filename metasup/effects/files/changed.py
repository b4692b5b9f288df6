"""The paths of the working tree changed since git last held it clean, as a watch saw them.

Snapshot, archive and reset then look at those paths only, so a crash costs what the agent
changed, not the size of the tree. The set is only ever a shortcut: whenever it may be wrong
it says it does not know (None), and the caller scans everything. It does not know
- before the first full scan after the watch started (what changed while no watch ran),
- after the kernel dropped events (queue overflow) or a new folder could not be watched,
- when a barrier times out (the watch thread is behind: events may still be in the kernel),
- past `limit` paths (a scan is as cheap by then).

Every event before a `begin()` is in the set it returns: `begin()` first passes a barrier, a
file only this process can name created in a watched folder, and waits until the watch thread
has read that file's event; the kernel queues a descriptor's events in order, so everything
written before the barrier has been read by then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

LIMIT = 50_000  # past this, a full scan costs about what the list does
BARRIER_TIMEOUT_S = 1.0


class ChangedPaths:
    """Paths relative to the tree (`/`-separated); thread-safe: the watch thread adds."""

    def __init__(self, barrier: Callable[[], Callable[[float], bool]], limit: int = LIMIT) -> None:
        self._barrier = barrier  # starts a barrier; the returned wait(timeout) says it passed
        self._limit = limit
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._known = False  # nothing is known before a first full scan
        self._fresh: set[str] = set()  # since the last begin()
        self._fresh_lost = False
        self._since_good: set[str] = set()
        self._good_known = False
        self._good_epoch_ns = 0

    # --- the watch's side ----------------------------------------------------------------------

    def add(self, rel: str) -> None:
        with self._lock:
            for into in (self._paths, self._fresh, self._since_good):
                into.add(rel)
            if len(self._paths) > self._limit:
                self._lost_locked()
            if len(self._since_good) > self._limit:
                self._good_known = False
                self._since_good = set()

    def lost(self) -> None:
        """Events were dropped: nothing is known until the next full scan."""
        with self._lock:
            self._lost_locked()
            self._good_known = False
            self._since_good = set()

    def _lost_locked(self) -> None:
        self._known = False
        self._fresh_lost = True
        self._paths = set()
        self._fresh = set()

    # --- the git steps' side -------------------------------------------------------------------

    def begin(self) -> frozenset[str] | None:
        """The paths changed since the tree was last clean; None: unknown, scan everything.
        Changes from here on are kept apart, for `settle`."""
        passed = self._barrier()(BARRIER_TIMEOUT_S)
        with self._lock:
            if not passed:
                self._lost_locked()
            self._fresh = set()
            self._fresh_lost = False
            return frozenset(self._paths) if self._known else None

    def settle(self) -> None:
        """The tree was made clean (committed, or reset) as of the last `begin()`, whether it
        looked at the paths given or scanned everything: only what changed since is left."""
        with self._lock:
            self._paths = self._fresh
            self._fresh = set()
            self._known = not self._fresh_lost
            self._fresh_lost = False

    def good(self, now_ns: int | None = None) -> None:
        """The tree is in a good state now: count changes to ignored files from here."""
        with self._lock:
            self._since_good = set()
            self._good_known = True
            self._good_epoch_ns = now_ns if now_ns is not None else time.time_ns()

    def since(self, since_ns: int) -> frozenset[str] | None:
        """Every path changed after `since_ns` (and maybe some before); None: not known."""
        with self._lock:
            if not self._good_known or self._good_epoch_ns > since_ns:
                return None
            return frozenset(self._since_good)

    def verify(self, dirty: Iterable[str]) -> list[str]:
        """`dirty`: what a full status found changed. Those the set does not hold (nor a
        folder of theirs) were missed: a write through a hard link from outside the tree, or
        through a shared mapping, makes no event. Then nothing is known until the next full
        scan. Returns the missed paths (a path settled since the status was taken counts too:
        one full scan too many, never one too few)."""
        with self._lock:
            if not self._known:
                return []
            held = self._paths
            missed = [p for p in dirty if p not in held and not any(_folders(p) & held)]
            if missed:
                self._lost_locked()
        return sorted(missed)


def _folders(path: str) -> set[str]:
    """The folders `path` lies in: `a/b/c` -> {`a`, `a/b`}."""
    parts = path.split("/")
    return {"/".join(parts[:n]) for n in range(1, len(parts))}


def outermost(paths: Iterable[str]) -> list[str]:
    """`paths` without those inside another of them: a folder stands for what it holds."""
    given = set(paths)
    return [path for path in sorted(given) if not _folders(path) & given]
