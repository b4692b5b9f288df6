"""Waking the supervisor's loop from another thread: a pipe its selector watches."""

from __future__ import annotations

import contextlib
import os
import threading


class WakePipe:
    """A pipe the selector watches; any thread may poke it, now or soon."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()

    def poke(self, now: bool = True) -> None:
        with self._lock, contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"!" if now else b"?")

    def drain(self) -> bool:
        """Empty the pipe; True when any poke asked for now."""
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 4096):
                data += chunk
        return b"!" in data

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
