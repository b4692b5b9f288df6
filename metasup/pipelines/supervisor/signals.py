"""Signals as the loop's selector sees them: the handlers only exist, the kernel writes each
signal's number to a wakeup pipe (`signal.set_wakeup_fd`), and the loop reads the numbers. So a
SIGCHLD or a SIGTERM wakes the loop the moment it arrives, and no handler runs loop code."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalPipe:
    def __init__(self) -> None:
        self.read_fd = self._write_fd = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def install(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in (signal.SIGCHLD, *STOP_SIGNALS):
            self._old_handlers[sig] = signal.signal(sig, _noop_handler)
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def read(self) -> Iterable[int]:
        """The signals that arrived since the last read, in order."""
        try:
            return os.read(self.read_fd, 512)
        except BlockingIOError:
            return b""

    def restore(self) -> None:
        if self._write_fd < 0:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        os.close(self.read_fd)
        os.close(self._write_fd)
        self.read_fd = self._write_fd = -1


def _noop_handler(signum: int, frame: object) -> None:
    """Signals are read from the wakeup pipe; the handler only has to exist."""
