"""The HTTP API: status, Prometheus metrics, events, and proposals, on 127.0.0.1.

It runs in a process of its own, started and stopped by `metasup run`. The supervisor binds the
listening socket itself (so `api.listen` port 0 resolves at once and the URL is in `state.json`
before the agent starts) and hands it to the child; the child serves from what the supervisor
writes anyway (`state.json`, `events.jsonl`) and writes proposals to the inbox, like `metasup
propose`. The HTTP stack (the wire, prometheus-client, jsonschema for proposals) therefore never
weighs on the supervisor, and an error in it cannot stop the loop: a child that dies is started
again on the same socket.

- `GET /supervisor/status`: the SPEC's status document.
- `GET /metrics`: the counters in the Prometheus text format.
- `GET /events?since=SEQ[&limit=N]`: the events after SEQ, oldest first.
- `POST /proposals` with `Authorization: Bearer <token>` (`<git-dir>/metasup/api-token`):
  202 `{"id"}`, 400 `{"errors"}`, 401 without the token, 413 past the size limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasup.decisions.mcp_restarts import GiveUp, RestartPolicy, after_failure
from metasup.effects.files.safeio import open_append, read_regular
from metasup.effects.process.spawn import Child, Reaper, SpawnError, python_module, spawn, stop_tree
from metasup.effects.records.journal import StateDir, public_status
from metasup.effects.records.statefile import clean_state
from metasup.facts.config import split_listen
from metasup.facts.faults import child_env

# The server child: restarted at once, given up on after its 4th death within a minute.
RESTARTS = RestartPolicy(initial=0.0, max=0.0, max_restarts=3, period=60.0)
IDLE_CONNECTION_S = 120.0


# --- the supervisor's side ------------------------------------------------------------------


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
        self.reaper = reaper
        self.report = report
        self.sock: socket.socket | None = None
        self.child: Child | None = None
        self.url: str | None = None
        self.stopping = False
        self.gave_up = False
        self._restarts: tuple[float, ...] = ()
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
        host, port = split_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=1024)
        bound = self.sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{bound}"
        write_token(self.token_path)
        self._spawn()
        return self.url

    def _spawn(self) -> None:
        assert self.sock is not None
        env = child_env()
        log = open_append(self.dirs.logs / "api.log")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.child = spawn(
                python_module(
                    "metasup.faces.api",
                    "--fd",
                    str(self.sock.fileno()),
                    "--git-dir",
                    str(self.dirs.root.parent),
                    "--workdir",
                    str(self.workdir),
                    "--config",
                    str(self.config_path),
                    "--control",
                    str(theirs.fileno()),
                ),
                cwd=self.dirs.root,  # outside the tree
                env=env,
                capture=False,
                stdin=True,  # its end of file tells the server the supervisor is gone
                stderr=log,
                pass_fds=(self.sock.fileno(), theirs.fileno()),
            )
        except SpawnError as e:
            self.report({"event": "api_failed", "error": str(e)})
            self.child = None
            mine.close()
        else:
            if self._control is not None:
                self._control.close()
            self._control = mine
            for name, sock in self.extra.items():
                self._hand(name, sock)
        finally:
            theirs.close()
            log.close()

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
        c = self.child
        if c is None or self.stopping:
            return False
        code = self.reaper.pop(c.pid)
        if code is None:
            return False
        self._close(c)
        self.child = None
        decision, self._restarts = after_failure(RESTARTS, self._restarts, time.monotonic())
        self.report({"event": "api_exited", "code": code})
        if isinstance(decision, GiveUp):
            self.gave_up = True
            self.report({"event": "api_failed", "error": "it keeps dying; see logs/api.log"})
            return True
        self._spawn()
        return True

    def stop(self) -> None:
        self.stopping = True
        c = self.child
        if c is not None:
            self._close(c)  # its stdin ends: it stops serving
            if self.reaper.wait(c.pid, 3.0) is None:
                stop_tree(c.pgid, c.token, signal.SIGTERM, 2.0, self.reaper)
                self.reaper.pop(c.pid)
            self.child = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for name in list(self.extra):
            self.unlisten(name)
        if self._control is not None:
            self._control.close()
            self._control = None

    @staticmethod
    def _close(c: Child) -> None:
        if c.popen.stdin is not None:
            with contextlib.suppress(OSError):
                c.popen.stdin.close()

    def trees(self) -> list[dict[str, Any]]:
        c = self.child
        return [{"pgid": c.pgid, "token": c.token}] if c is not None else []


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


# --- the server child ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_reply(status: int, doc: Any, **kw: Any) -> Reply:
    return Reply(status, (json.dumps(doc, separators=(",", ":")) + "\n").encode(), **kw)


class Api:
    """What each request gets; no sockets here, so it is tested directly too."""

    def __init__(self, git_dir: Path, workdir: Path, config: Path | None) -> None:
        self.dirs = StateDir.for_git_dir(git_dir)
        self.workdir = workdir
        self.config = config
        self._state: dict[str, Any] = {}
        self._state_key: tuple[int, int] | None = None
        self._policy: Any = None
        self._body = b""
        self._body_key: tuple[Any, int] | None = None
        self.max_body = 50 << 20

    def load_policy(self) -> Any:
        if self._policy is None:  # at start: the size limit is known before any body arrives
            from metasup.facts.policy import load_repo_policy

            self._policy = load_repo_policy(self.workdir, self.config)
            self.max_body = self._policy.limits.max_proposal_bytes
        return self._policy

    # --- status ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """state.json, read again only when it changed."""
        try:
            st = os.stat(self.dirs.state)
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != self._state_key:
            try:
                doc = json.loads(read_regular(self.dirs.state) or b"{}")
            except (OSError, ValueError):
                return self._state  # caught mid-replace is impossible, but a reader may race
            self._state, self._state_key = clean_state(doc), key
        return self._state

    def status(self) -> dict[str, Any]:
        return public_status(self.state(), time.time())

    # --- routes ---------------------------------------------------------------------------

    def status_body(self) -> bytes:
        """The status document, serialised once per state change and second of uptime: the
        path watchers poll."""
        doc = self.state()
        now = time.time()
        key = (self._state_key, int(now))
        if key != self._body_key:
            body = json.dumps(public_status(doc, now), separators=(",", ":"))
            self._body = (body + "\n").encode()
            self._body_key = key
        return self._body

    def get(self, path: str, query: dict[str, str]) -> Reply:
        if path == "/supervisor/status":
            return Reply(200, self.status_body())
        if path == "/metrics":
            from metasup.faces.api.metrics import render

            body, content_type = render(self.status())
            return Reply(200, body, content_type)
        if path == "/events":
            return self.events(query)
        return json_reply(404, {"error": f"no such path: {path}"})

    def events(self, query: dict[str, str]) -> Reply:
        from metasup.effects.records.journal import read_events, tail_events

        try:
            since = int(query.get("since", "0"))
            limit = int(query.get("limit", "1000"))
        except ValueError:
            return json_reply(400, {"error": "since and limit are whole numbers"})
        if since < 0 or not 1 <= limit <= 10000:
            return json_reply(400, {"error": "since >= 0, and 1 <= limit <= 10000"})
        recent = tail_events(self.dirs.events)
        if not recent or recent[0].get("seq", 0) > since + 1:
            recent = list(read_events(self.dirs.events))  # SEQ is older than the tail
        found = [e for e in recent if isinstance(e.get("seq"), int) and e["seq"] > since]
        return json_reply(200, found[:limit])

    def authorized(self, header: str | None) -> bool:
        try:
            token = (self.dirs.root / "api-token").read_text().strip()
        except OSError:
            return False
        if not header or not header.startswith("Bearer ") or not token:
            return False
        import hmac

        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)

    def propose(self, body: bytes) -> Reply:
        from metasup.pipelines import proposals
        from metasup.pipelines.intake import INBOX, ProposalStore

        _, errors = proposals.validate(body, self.load_policy(), self.workdir)
        if errors:
            return json_reply(400, {"ok": False, "errors": [e.as_dict() for e in errors]})
        store = ProposalStore(self.workdir / INBOX, self.dirs.root / "proposals")
        return json_reply(202, {"ok": True, "id": store.enqueue(body)})


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(prog="metasup.faces.api")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--git-dir", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--control", type=int, default=None)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    control = socket.socket(fileno=args.control) if args.control is not None else None
    api = Api(args.git_dir, args.workdir, args.config)
    api.load_policy()
    from metasup.faces.api.server import Server

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Server(api).run(sock, control))
    return 0
