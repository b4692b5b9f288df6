"""Work the supervisor's loop hands to a thread: a rollback, an experiment, a backup.

Each is long (an archive of a big tree, evaluation runs, a bundle of every ref) and must not
hold the loop, which keeps answering signals and writing the status meanwhile. The job's end
pokes a pipe the loop's selector watches; the loop then takes the result on its own thread, where
an exception raised by the work is raised again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from metasup.effects.process.wake import WakePipe

T = TypeVar("T")


class Job(Generic[T]):
    """One kind of background work, one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.wake = WakePipe()
        self._thread: threading.Thread | None = None
        self._result: T | BaseException | None = None

    @property
    def fd(self) -> int:
        """Readable when the work is done."""
        return self.wake.read_fd

    @property
    def running(self) -> bool:
        """Started and its result not taken yet."""
        return self._thread is not None

    @property
    def alive(self) -> bool:
        """Its thread still works."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[], T]) -> None:
        assert self._thread is None, f"a {self.name} is under way already"

        def run() -> None:
            try:
                self._result = work()
            except BaseException as e:  # raised again on the loop's thread
                self._result = e
            self.wake.poke()

        self._thread = threading.Thread(target=run, name=f"metasup-{self.name}", daemon=True)
        self._thread.start()

    def result(self) -> T:
        """Once `fd` is readable: what the work returned (or raised, raised here)."""
        assert self._thread is not None
        self.wake.drain()
        self._thread.join()
        self._thread = None
        done, self._result = self._result, None
        if isinstance(done, BaseException):
            raise done
        return done  # type: ignore[return-value]

    def join(self, timeout: float) -> None:
        """At shutdown: let work under way end (or give up waiting after `timeout`)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.wake.close()
