"""The supervisor's side of the HTTP API (the server is `faces.api`, a helper child).

The supervisor binds the listening socket itself, so `api.listen` port 0 resolves at once and
the URL is in `state.json` before the agent starts, and hands it to the child with a control
socket for the listeners bound in jails without a network. A child that dies is started again on
the same socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from metasup.effects.process.spawn import Reaper, SpawnError
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Notice
from metasup.pipelines.supervisor.helper import Helper, bind_listen, listener_args


class ApiProcess:
    """Binds the socket, writes the token, runs the server child, and replaces it if it dies."""

    def __init__(
        self,
        listen: str,
        dirs: StateDir,
        workdir: Path,
        config_path: Path,
        reaper: Reaper,
        report: Any,
    ) -> None:
        self.listen = listen
        self.dirs = dirs
        self.workdir = workdir
        self.config_path = config_path
        self.report = report
        self.helper = Helper(
            "metasup.faces.api", cwd=dirs.root, reaper=reaper, log=dirs.logs / "api.log"
        )
        self.sock: socket.socket | None = None
        self.url: str | None = None
        self.stopping = False
        self.gave_up = False
        # Listeners bound inside jails without a network (see `listen_in`), by name; handed to
        # the server over a Unix socket, and again to a server that replaced a dead one.
        self.extra: dict[str, socket.socket] = {}
        self._control: socket.socket | None = None

    @property
    def token_path(self) -> Path:
        return self.dirs.root / "api-token"

    def start(self) -> str:
        """Bind, write a new token, start the server; the base URL. OSError when the address
        cannot be bound (in use, not local)."""
        self.sock, self.url = bind_listen(self.listen)
        write_token(self.token_path)
        self._spawn()
        return self.url

    def _spawn(self) -> None:
        assert self.sock is not None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = (
            *listener_args(self.sock, self.dirs.root.parent, self.workdir, self.config_path),
            *("--control", str(theirs.fileno())),
        )
        try:
            self.helper.start(*args, pass_fds=(self.sock.fileno(), theirs.fileno()))
        except SpawnError as e:
            self.report({"event": Notice.API_FAILED, "error": str(e)})
            mine.close()
        else:
            if self._control is not None:
                self._control.close()
            self._control = mine
            for name, sock in self.extra.items():
                self._hand(name, sock)
        finally:
            theirs.close()

    def listen_in(self, name: str, sock: socket.socket) -> None:
        """Serve on `sock` too: a listener bound in a jail's own network namespace, at the
        API's address, so `$METASUP_API` answers in a jail without a network."""
        self.extra[name] = sock
        self._hand(name, sock)

    def unlisten(self, name: str) -> None:
        sock = self.extra.pop(name, None)
        if sock is None:
            return
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send(b"drop:" + name.encode())
        sock.close()

    def _hand(self, name: str, sock: socket.socket) -> None:
        if self._control is None:
            return
        with contextlib.suppress(OSError):
            socket.send_fds(self._control, [b"add:" + name.encode()], [sock.fileno()])

    def check(self) -> bool:
        """After a SIGCHLD: restart a server that died (a few times a minute at most)."""
        if self.stopping:
            return False
        code = self.helper.exited()
        if code is None:
            return False
        if self.helper.restart_after(code, self.report, Notice.API_EXITED, Notice.API_FAILED):
            self._spawn()
        else:
            self.gave_up = True
        return True

    def stop(self) -> None:
        self.stopping = True
        self.helper.stop(grace=3.0)  # its stdin ends: it stops serving
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for name in list(self.extra):
            self.unlisten(name)
        if self._control is not None:
            self._control.close()
            self._control = None

    def trees(self) -> list[dict[str, Any]]:
        return self.helper.trees()


def write_token(path: Path) -> str:
    """A new bearer token, readable by this user only (0600 from the moment it exists)."""
    token = os.urandom(32).hex()  # not `secrets`: it loads hashlib, and OpenSSL with it
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token
