"""The supervisor's helper children: the API server, the MCP fleet worker, the live view.

Each is one of metasup's own Python processes, in isolated mode and run from `<git-dir>/metasup`
(never from the tree, see `python_module`). Its stdin is a pipe from the supervisor and is its
lifeline: the helper ends when the pipe does, so a supervisor killed with -9 leaves none behind.
One that dies is started again under its restart policy (`decisions.restarts`), or given up on.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasup.decisions.restarts import GiveUp, Restart, RestartPolicy, after_failure
from metasup.effects.files.safeio import open_append
from metasup.effects.process.spawn import Child, Reaper, python_module, spawn
from metasup.effects.process.trees import stop_tree
from metasup.facts.events import Notice, Report
from metasup.facts.faults import child_env
from metasup.facts.settings import LISTEN_BACKLOG, split_listen

# A helper that dies is started again at once, and given up on after its 4th death in a minute.
HELPER_RESTARTS = RestartPolicy(initial=0.0, max=0.0, max_restarts=3, period=60.0)


class Helper:
    """One helper child: started, written to, watched for its exit, restarted, stopped."""

    def __init__(
        self,
        module: str,
        *,
        cwd: Path,
        reaper: Reaper,
        log: Path | None = None,
        capture: bool = False,
        restarts: RestartPolicy = HELPER_RESTARTS,
    ) -> None:
        self.module = module
        self.cwd = cwd
        self.reaper = reaper
        self.log = log
        self.capture = capture  # its stdout comes back as a pipe (a protocol, not a terminal)
        self.restarts = restarts
        self.child: Child | None = None
        self._history: tuple[float, ...] = ()

    def start(self, *args: str, pass_fds: Sequence[int] = ()) -> Child:
        """Spawn it; SpawnError when it cannot start at all."""
        log = open_append(self.log) if self.log is not None else None
        try:
            self.child = spawn(
                python_module(self.module, *args),
                cwd=self.cwd,
                env=child_env(),
                capture=self.capture,
                stdin=True,
                stderr=log,
                pass_fds=pass_fds,
            )
        finally:
            if log is not None:
                log.close()
        return self.child

    @property
    def stdout_fd(self) -> int:
        c = self.child
        return c.popen.stdout.fileno() if c is not None and c.popen.stdout is not None else -1

    def write(self, line: bytes) -> None:
        """A line to its stdin; nothing when it is gone (its exit is seen by `exited`)."""
        c = self.child
        if c is None or c.popen.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            c.popen.stdin.write(line)
            c.popen.stdin.flush()

    def exited(self) -> int | None:
        """After a SIGCHLD: its exit code when it died (it is then forgotten), else None."""
        c = self.child
        if c is None:
            return None
        code = self.reaper.pop(c.pid)
        if code is None:
            return None
        self._close(c)
        self.child = None
        return code

    def after_exit(self) -> Restart | GiveUp:
        """Whether a helper that died is started again, by its restart policy."""
        decision, self._history = after_failure(self.restarts, self._history, time.monotonic())
        return decision

    def restart_after(
        self, code: int, report: Report, exited: Notice, failed: Notice | None
    ) -> bool:
        """Its death (`code`, as `exited` gave it) reported as `exited`; True when it is to be
        started again, False when it keeps dying (reported as `failed`, naming its log)."""
        report({"event": exited, "code": code})
        if isinstance(self.after_exit(), GiveUp):
            if failed is not None:
                log = f"logs/{self.log.name}" if self.log is not None else "its log"
                report({"event": failed, "error": f"it keeps dying; see {log}"})
            return False
        return True

    def stop(self, grace: float, sig: int = signal.SIGTERM, timeout: float = 2.0) -> None:
        """End its stdin and give it `grace` seconds to end; then `sig` to its whole tree, and
        SIGKILL after `timeout`. Its pipes are closed."""
        c = self.child
        if c is None:
            return
        if c.popen.stdin is not None:
            with contextlib.suppress(OSError):
                c.popen.stdin.close()
        self.wait(grace)
        self.kill(sig, timeout)

    def wait(self, timeout: float) -> int | None:
        """Its exit code once it ends by itself, or None after `timeout` seconds."""
        c = self.child
        return self.reaper.wait(c.pid, timeout) if c is not None else None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 0.0) -> None:
        """Stop its tree (whatever it started too), reap it, close its pipes."""
        c = self.child
        if c is None:
            return
        stop_tree(c.pgid, c.token, sig, timeout, self.reaper)
        self.reaper.pop(c.pid)
        self._close(c)
        self.child = None

    def trees(self) -> list[dict[str, Any]]:
        """For `state.json`: what a supervisor killed with -9 must stop at its next start."""
        c = self.child
        return [{"pgid": c.pgid, "token": c.token}] if c is not None else []

    @staticmethod
    def _close(c: Child) -> None:
        for stream in (c.popen.stdin, c.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def bind_listen(listen: str) -> tuple[socket.socket, str]:
    """A listening socket at `listen` (host:port; port 0: any free one) and its URL: bound by
    the supervisor so the port is known at once, then handed to a helper. OSError when the
    address cannot be bound."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}"


def listener_args(sock: socket.socket, git_dir: Path, workdir: Path, config: Path) -> list[str]:
    """What a helper that serves on `sock` (the API, the front door) is told: the socket it
    inherits, where the repository and its tree are, and the config in use."""
    return [
        *("--fd", str(sock.fileno()), "--git-dir", str(git_dir)),
        *("--workdir", str(workdir), "--config", str(config)),
    ]


class ReportPipe:
    """A helper's report pipe (its stdout, non-blocking) in the supervisor's selector: read into
    whole lines, forgotten when it ends."""

    LINE_LIMIT = 1 << 20  # a partial line longer than this is not a helper's: dropped

    def __init__(self, selector: selectors.BaseSelector, key: str) -> None:
        self.selector = selector
        self.key = key  # what the selector hands back for it
        self.fd = -1
        self._buffer = b""

    def watch(self, fd: int) -> None:
        """A (new) helper's pipe; a line the last one left half written is dropped."""
        self.close()
        self._buffer = b""
        if fd >= 0:
            self.fd = fd
            self.selector.register(fd, selectors.EVENT_READ, self.key)

    def lines(self) -> list[bytes]:
        """The whole lines it holds now (the last ones too when it ended, then it is closed)."""
        if self.fd < 0:
            return []
        ended = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.LINE_LIMIT:
            self._buffer = b""
        if ended:
            self.close()
        return lines

    def close(self) -> None:
        """Out of the selector (the pipe itself is the helper's to close)."""
        if self.fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.fd)
            self.fd = -1
