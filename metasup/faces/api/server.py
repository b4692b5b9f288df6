"""The API's HTTP server (in the API's own process): asyncio protocols over `httpwire`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any
from urllib.parse import parse_qsl

from metasup.faces.api.app import IDLE_CONNECTION_S, Api, Reply, json_reply
from metasup.faces.api.wire import MAX_HEAD, BadRequest, find_head, parse_head, response


class Server:
    """HTTP/1.1 with keep-alive, on asyncio protocols (see httpwire for why not h11)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def run(self, sock: socket.socket, control: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        server = await loop.create_server(lambda: _Connection(self.api), sock=sock)
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
            server = loop.create_server(lambda: _Connection(self.api), sock=sock)
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


class _Connection(asyncio.Protocol):
    """One client connection: heads parsed as they arrive, answered in order."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.buf = bytearray()
        self.transport: Any = None
        self.busy = False  # a proposal is being checked; later requests wait their turn
        self.loop = asyncio.get_running_loop()
        self.idle: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm_idle()
        self._process()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = self.loop.call_later(IDLE_CONNECTION_S, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _send(self, reply: Reply, keep_alive: bool = True) -> bool:
        """Write `reply`; False when the connection ends with it."""
        close = reply.close or not keep_alive
        self.transport.write(
            response(reply.status, reply.body, reply.content_type, reply.headers, close)
        )
        if close:
            self.transport.close()
        return not close

    def _process(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            end = find_head(self.buf)
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._send(json_reply(431, {"error": "the request head is too large"}), False)
                return
            try:
                head = parse_head(bytes(self.buf[: end - 4]))
                length = head.content_length()
            except BadRequest as e:
                self._send(json_reply(e.status, {"error": str(e)}), False)
                return
            early = self._refuse_early(head, length)
            if early is not None:
                self._send(early, False)
                return
            if len(self.buf) < end + length:
                return  # the body is still coming
            body = bytes(self.buf[end : end + length])
            del self.buf[: end + length]
            if head.method == "POST" and _path(head.target) == "/proposals":
                self.busy = True
                self.transport.pause_reading()
                task = self.loop.create_task(self._propose(head, body))
                task.add_done_callback(lambda _: None)
                return
            if not self._send(self._answer(head), head.keep_alive):
                return

    def _refuse_early(self, head: Any, length: int) -> Reply | None:
        """What is answered before a body is read: the token, and the size."""
        path = _path(head.target)
        if head.method == "POST" and path == "/proposals":
            if not self.api.authorized(head.headers.get("authorization")):
                return json_reply(
                    401,
                    {"error": "needs Authorization: Bearer <token from api-token>"},
                    headers=[("WWW-Authenticate", "Bearer")],
                    close=True,
                )
            limit = self.api.max_body
            if length > limit:
                return json_reply(413, {"error": f"the body is over {limit} bytes"}, close=True)
            return None
        if length > 1 << 16:
            return json_reply(413, {"error": "a request body is not expected here"}, close=True)
        return None

    def _answer(self, head: Any) -> Reply:
        path, _, query = head.target.partition("?")
        try:
            if head.method == "GET":
                if path == "/proposals":
                    return json_reply(
                        405, {"error": "POST a proposal"}, headers=[("Allow", "POST")]
                    )
                return self.api.get(path, dict(parse_qsl(query)))
            known = path in ("/supervisor/status", "/metrics", "/events", "/proposals")
            if known:
                return json_reply(405, {"error": f"{head.method} is not allowed here"})
            return json_reply(404, {"error": f"no such path: {path}"})
        except Exception as e:  # never a traceback to the client; the log has it
            return _internal(e)

    async def _propose(self, head: Any, body: bytes) -> None:
        try:
            reply = await asyncio.to_thread(self.api.propose, body)
        except Exception as e:
            reply = _internal(e)
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        if self._send(reply, head.keep_alive):
            self.transport.resume_reading()
            self._process()


def _path(target: str) -> str:
    return target.partition("?")[0]


def _internal(e: Exception) -> Reply:
    import traceback

    traceback.print_exc()
    return json_reply(500, {"error": f"internal error: {type(e).__name__}"}, close=True)
