"""The API's HTTP/1.1 server, in the API's own process: asyncio protocols over httptools.

httptools wraps llhttp, the parser of Node.js that uvicorn uses too: it parses at C speed (a
hand-written parser was kept before because h11 managed 6,900 requests a second) and gets right
what a small one misses: chunked bodies, duplicate Content-Length headers (refused), HTTP/1.0
keep-alive, line-folding and bare-LF tricks (refused). What a parser leaves to the server is here:
`Expect: 100-continue` (curl sends it for bodies over 1 MB), answered only once the token and the
size are known to pass; a bound on the head's size and on the time a request may take to arrive
(a client that sends half a request is answered 408 and closed, not kept for ever); requests
pipelined on one connection answered in order; the connection's end when the client asks or a
reply closes it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import httptools

from metasup.faces.api.app import Api, Reply, json_reply
from metasup.facts.settings import LISTEN_BACKLOG

MAX_HEAD = 16 << 10  # bytes of request line and headers
MAX_HEADERS = 100
IDLE_CONNECTION_S = 120.0  # a kept-alive connection with no request in it
REQUEST_TIMEOUT_S = 30.0  # from a request's first byte to its last
ROUTES = ("/supervisor/status", "/metrics", "/events", "/proposals")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Timeouts:
    idle: float = IDLE_CONNECTION_S
    request: float = REQUEST_TIMEOUT_S


class Server:
    """Serves `api` on a listening socket (and on the ones the supervisor hands over later),
    until SIGTERM, SIGINT, or the end of stdin (the supervisor is gone)."""

    def __init__(self, api: Api, timeouts: Timeouts | None = None) -> None:
        self.api = api
        self.timeouts = timeouts or Timeouts()

    def protocol(self) -> asyncio.Protocol:
        return Connection(self.api, self.timeouts)

    async def run(self, sock: socket.socket, control: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        # create_server listens again, with its own backlog of 100 unless told.
        server = await loop.create_server(self.protocol, sock=sock, backlog=LISTEN_BACKLOG)
        extra: dict[str, tuple[asyncio.Task[asyncio.Server], socket.socket]] = {}
        if control is not None:
            control.setblocking(False)
            loop.add_reader(control.fileno(), self._command, control, extra)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def parent_gone() -> None:
            await reader.read()  # end of file: the supervisor closed it, or died
            done.set()

        watcher = asyncio.ensure_future(parent_gone())
        await done.wait()
        watcher.cancel()
        server.close()
        for task, sock in extra.values():
            _stop_serving(task, sock)

    def _command(
        self,
        control: socket.socket,
        extra: dict[str, tuple[asyncio.Task[asyncio.Server], socket.socket]],
    ) -> None:
        """From the supervisor: `add:NAME` with a listening socket (bound in a jail's own
        network namespace) to serve as well, or `drop:NAME` when that jail has ended."""
        loop = asyncio.get_running_loop()
        try:
            msg, fds, _, _ = socket.recv_fds(control, 256, 4)
        except (BlockingIOError, InterruptedError):
            return
        if not msg:
            loop.remove_reader(control.fileno())
            return
        verb, _, name = msg.decode(errors="replace").partition(":")
        if verb == "add" and fds:
            sock = socket.socket(fileno=fds[0])
            for fd in fds[1:]:
                os.close(fd)
            server = loop.create_server(self.protocol, sock=sock, backlog=LISTEN_BACKLOG)
            extra[name] = (loop.create_task(server), sock)
        elif verb == "drop" and name in extra:
            _stop_serving(*extra.pop(name))
        else:
            for fd in fds:
                os.close(fd)


def _stop_serving(task: asyncio.Task[asyncio.Server], sock: socket.socket) -> None:
    if task.done() and not task.cancelled() and task.exception() is None:
        task.result().close()
    else:
        task.cancel()
    sock.close()


@dataclass
class Request:
    method: str = ""
    url: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    count: int = 0  # header lines, repeated names included
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True
    version: str = "1.1"
    path: str = ""
    query: str = ""


class Refused(Exception):
    """Raised in a parser callback: stop parsing, answer `reply` and close."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Connection(asyncio.Protocol):
    """One client connection: requests parsed as bytes arrive, answered in order."""

    def __init__(self, api: Api, timeouts: Timeouts) -> None:
        self.api = api
        self.timeouts = timeouts
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.request: Request | None = None  # the one arriving
        self.in_head = False
        self.head_bytes = 0  # of the head arriving, as the parser reports it
        self.head_seen = 0  # of the head arriving, as the chunks show it (an upper bound)
        self.parsed = 0  # bytes of this chunk the parser reported (lines, bodies)
        self.began_at = -1  # where in this chunk the request arriving began, about
        self.ready: deque[Request] = deque()  # arrived, not answered yet
        self.busy = False  # a proposal is being checked; later requests wait their turn
        self.refused: Reply | None = None  # answered last, then the connection ends
        self.end_after = False  # no request after the ones arrived (end of input, an Upgrade)
        self.continue_owed = False  # 100 Continue, once the requests before are answered
        self.timer: asyncio.TimerHandle | None = None

    # --- the transport ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._arm(self.timeouts.idle, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.transport = None

    def eof_received(self) -> bool:
        # The client sent all it will: what arrived complete is still answered, then it ends.
        self.end_after = True
        self._process()
        return True

    def data_received(self, data: bytes) -> None:
        self.parsed = 0
        self.began_at = -1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.end_after = True  # the rest is another protocol; answer what came, then end
        except httptools.HttpParserCallbackError as e:
            refusal = e.__context__
            reply = refusal.reply if isinstance(refusal, Refused) else _internal(e)
            self._refuse(reply)
            return
        except httptools.HttpParserError as e:
            self._refuse(_bad(400, _reason(e)))
            return
        if self.in_head:
            # A line still arriving is held inside the parser: bound it by the chunks it came in
            # (from where this head began, when it began in this one).
            self.head_seen += len(data) - max(self.began_at, 0)
            if self.head_seen > MAX_HEAD:
                self._refuse(_bad(431, "the request head is too large"))
                return
        self._process()

    # --- parser callbacks (httptools calls them by name) -------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request()
        self.in_head = True
        self.head_bytes = 0
        self.head_seen = 0
        self.began_at = self.parsed
        if not self.busy:
            self._arm(self.timeouts.request, self._too_slow)

    def on_url(self, url: bytes) -> None:
        assert self.request is not None
        self.request.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.request
        assert r is not None
        r.count += 1
        if r.count > MAX_HEADERS:
            raise Refused(_bad(431, "too many headers"))
        self._count_head(len(name) + len(value) + 4)
        r.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        r = self.request
        assert r is not None
        self.in_head = False
        r.method = self.parser.get_method().decode("ascii", "replace")
        r.version = self.parser.get_http_version()
        r.keep_alive = self.parser.should_keep_alive()
        if r.version not in ("1.0", "1.1"):
            raise Refused(_bad(505, "HTTP/1.1 only"))
        if r.version == "1.1" and "host" not in r.headers:
            raise Refused(_bad(400, "HTTP/1.1 needs a Host header"))
        try:
            url = httptools.parse_url(bytes(r.url))
        except httptools.HttpParserInvalidURLError:
            raise Refused(_bad(400, "bad request target")) from None
        r.path = (url.path or b"/").decode("latin-1")
        r.query = (url.query or b"").decode("latin-1")
        early = self._refuse_early(r)
        if early is not None:
            raise Refused(early)
        expect = r.headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise Refused(_bad(417, f"cannot meet Expect: {expect}"))
            if r.version == "1.1":
                self.continue_owed = True
                self._owe_continue()

    def on_body(self, body: bytes) -> None:
        r = self.request
        assert r is not None
        r.body += body
        self.parsed += len(body)
        if len(r.body) > self._limit(r):
            raise Refused(self._too_large(r))

    def on_message_complete(self) -> None:
        r = self.request
        assert r is not None
        self.request = None
        self.continue_owed = False
        self.ready.append(r)
        self._disarm()

    def _count_head(self, n: int) -> None:
        """The head's size from the lines the parser took."""
        self.head_bytes += n
        self.parsed += n
        if self.head_bytes > MAX_HEAD:
            raise Refused(_bad(431, "the request head is too large"))

    # --- answers -----------------------------------------------------------------------------

    def _limit(self, r: Request) -> int:
        return self.api.max_body if _is_proposal(r) else 1 << 16

    def _too_large(self, r: Request) -> Reply:
        if _is_proposal(r):
            return json_reply(413, {"error": f"the body is over {self.api.max_body} bytes"})
        return json_reply(413, {"error": "a request body is not expected here"})

    def _refuse_early(self, r: Request) -> Reply | None:
        """What is answered before a body is read: the token, and the size announced."""
        if _is_proposal(r) and not self.api.authorized(r.headers.get("authorization")):
            return json_reply(
                401,
                {"error": "needs Authorization: Bearer <token from api-token>"},
                headers=[("WWW-Authenticate", "Bearer")],
            )
        length = r.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limit(r):
            return self._too_large(r)
        return None

    def _process(self) -> None:
        while self.ready and not self.busy and self._open():
            r = self.ready.popleft()
            if _is_proposal(r):
                self.busy = True
                self._disarm()  # nothing is read meanwhile: no request can be late
                self.transport.pause_reading()
                self.loop.create_task(self._propose(r))
                return
            if not self._send(self._answer(r), r):
                return
        if self.busy or not self._open():
            return
        if self.refused is not None:
            self._send(self.refused, None)
            return
        if self.end_after:
            self._close()
            return
        self._owe_continue()
        if self.request is None:
            self._arm(self.timeouts.idle, self._close)
        elif self.timer is None:
            self._arm(self.timeouts.request, self._too_slow)

    def _owe_continue(self) -> None:
        """The client waits for a 100 before its body: send it once it is this request's turn."""
        if self.continue_owed and not self.ready and not self.busy and self._open():
            self.continue_owed = False
            self.transport.write(CONTINUE)

    def _answer(self, r: Request) -> Reply:
        try:
            if r.method == "GET":
                if r.path == "/proposals":
                    return json_reply(
                        405, {"error": "POST a proposal"}, headers=[("Allow", "POST")]
                    )
                return self.api.get(r.path, dict(parse_qsl(r.query)))
            if r.path in ROUTES:
                return json_reply(405, {"error": f"{r.method} is not allowed here"})
            return json_reply(404, {"error": f"no such path: {r.path}"})
        except Exception as e:  # never a traceback to the client; the log has it
            return _internal(e)

    async def _propose(self, r: Request) -> None:
        try:
            reply = await asyncio.to_thread(self.api.propose, bytes(r.body))
        except Exception as e:
            reply = _internal(e)
        self.busy = False
        if not self._open():
            return
        if self._send(reply, r):
            self.transport.resume_reading()
            self._process()

    def _send(self, reply: Reply, r: Request | None) -> bool:
        """Write `reply`; False when the connection ends with it."""
        keep = r is not None and r.keep_alive and not reply.close
        old_client = r is not None and r.version == "1.0"
        self.transport.write(response(reply, keep, old_client))
        if not keep:
            self._close()
        return keep

    def _refuse(self, reply: Reply) -> None:
        """A request that cannot be read on: answer the ones before it, then it, and close."""
        self.refused = reply
        if self._open():
            self.transport.pause_reading()
        self._process()

    def _too_slow(self) -> None:
        self.timer = None
        self._refuse(_bad(408, "the request did not arrive in time"))

    def _open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def _close(self) -> None:
        self._disarm()
        if self._open():
            self.transport.close()

    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def response(reply: Reply, keep_alive: bool, old_client: bool = False) -> bytes:
    """The bytes of `reply`. An HTTP/1.0 client keeps the connection only when told so."""
    head = [
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
    ]
    head += [f"{k}: {v}" for k, v in reply.headers]
    if not keep_alive:
        head.append("Connection: close")
    elif old_client:
        head.append("Connection: keep-alive")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


def _is_proposal(r: Request) -> bool:
    return r.method == "POST" and r.path == "/proposals"


def _bad(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message}, close=True)


def _reason(e: Exception) -> str:
    return f"a malformed request: {e}" if str(e) else "a malformed request"


def _internal(e: BaseException) -> Reply:
    import traceback

    traceback.print_exception(e)
    return json_reply(500, {"error": f"internal error: {type(e).__name__}"}, close=True)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import contextlib
    from pathlib import Path

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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Server(api).run(sock, control))
    return 0
