"""The agent's output: each run's log file (rotated), the tail of its stderr for the recovery
note, and the terminal when the supervisor echoes it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from pathlib import Path
from typing import IO

from metasup.effects.files.safeio import open_append
from metasup.effects.process.spawn import Child


class LaunchLog:
    """One launch's output: a log file split on line boundaries, the terminal, and a tail.

    The file is `run-<N>-<commit>.log`; past `max_bytes` it rotates to `.1.log`, `.2.log`, ...
    (keeping `backups`), cut only between lines. The last lines of stderr stay in memory for the
    recovery note, so rotation never loses the tail before a crash.
    """

    def __init__(
        self,
        directory: Path,
        run: int,
        commit: str | None,
        *,
        echo: bool = True,
        max_bytes: int = 5 << 20,
        backups: int = 3,
        tail_lines: int = 40,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"run-{run:06d}-{(commit or 'none')[:12]}.log"
        self.max_bytes = max_bytes
        self.backups = backups
        self.echo = echo
        self._file: IO[bytes] = open_append(self.path)
        self._size = self._file.tell()
        self._rotated = 0  # rotated files this run made (at most `backups` kept)
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.stderr_tail: deque[str] = deque(maxlen=tail_lines)
        self.stdout_tail: deque[str] = deque(maxlen=tail_lines)

    def feed(self, stream: str, data: bytes) -> None:
        if self.echo:
            target = sys.stderr if stream == "stderr" else sys.stdout
            with contextlib.suppress(OSError, ValueError):
                target.buffer.write(data)
                target.buffer.flush()
        buf = self._partial[stream] + data
        cut = buf.rfind(b"\n") + 1
        whole, self._partial[stream] = buf[:cut], buf[cut:]
        if len(self._partial[stream]) > 1 << 16:
            whole, self._partial[stream] = whole + self._partial[stream] + b"\n", b""
        if whole:
            self._write_lines(stream, whole)

    def _write_lines(self, stream: str, lines: bytes) -> None:
        tail = self.stderr_tail if stream == "stderr" else self.stdout_tail
        for line in lines.splitlines():
            tail.append(line.decode("utf-8", "replace"))
        if self._size and self._size + len(lines) > self.max_bytes:
            self._rotate()
        self._file.write(lines)
        self._file.flush()
        self._size += len(lines)

    def _rotate(self) -> None:
        self._file.close()
        stem = self.path.with_suffix("")
        for n in range(self.backups, 0, -1):
            src = self.path if n == 1 else Path(f"{stem}.{n - 1}.log")
            if src.exists():
                os.replace(src, f"{stem}.{n}.log")
        self._file = open_append(self.path)
        self._size = 0
        self._rotated = min(self.backups, self._rotated + 1)

    def files(self) -> list[Path]:
        """The files this log wrote: the current one and the rotated ones kept."""
        stem = self.path.with_suffix("")
        return [self.path, *(Path(f"{stem}.{n}.log") for n in range(1, self._rotated + 1))]

    def close(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._write_lines(stream, rest + b"\n")
                self._partial[stream] = b""
        self._file.close()


def drain(child: Child, log: LaunchLog) -> bool:
    """Read what the child's pipes hold now; True once both are at end of file."""
    done = True
    for name, stream in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr)):
        if stream is None or stream.closed:
            continue
        while True:
            try:
                data = os.read(stream.fileno(), 1 << 16)
            except BlockingIOError:
                done = False
                break
            if not data:
                stream.close()
                break
            log.feed(name, data)
    return done
