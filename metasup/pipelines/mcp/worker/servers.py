"""One configured MCP server through its instances, inside the worker: start it (jailed as
the agent is), probe it over its one session, restart it under its policy or give up; route the
agents' sessions (one Unix socket a server) to it through `mux.Router`.

A stdio server speaks one protocol version and one set of client capabilities per process: the
ones its `initialize` named. metasup's own session sets them for the first process; a client
whose handshake differs (an older protocol version, sampling or roots declared) gets a process of
its own, one per distinct handshake and shared by the clients that send it, so it gets what the
server would give it directly. Such an extra instance is run like the first (probed, restarted
under the same policy, its handshake replayed after a restart) and stopped when its last client
leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio

from metasup.decisions import restarts
from metasup.effects.files.safeio import open_append
from metasup.effects.mcp.mux import PROBE, SERVER, UNAVAILABLE, Message, Out, Router
from metasup.effects.process.spawn import Child, SpawnError, spawn
from metasup.effects.process.trees import stop_tree
from metasup.pipelines.mcp.protocol import McpState

if TYPE_CHECKING:
    from metasup.pipelines.mcp.worker.worker import Worker

LOG_MAX_BYTES = 5 << 20
LINE_LIMIT = 64 << 20  # one JSON-RPC message; tool results can be large


def handshake_key(params: Any) -> str:
    """What makes two clients' `initialize` the same to a server: the protocol version and the
    capabilities declared (client names and versions aside)."""
    if not isinstance(params, dict):
        return "null"
    key = [params.get("protocolVersion"), params.get("capabilities")]
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


class Answered(Exception):
    """A JSON-RPC error answer to one of metasup's own raw requests: the server is alive."""


class RawSession:
    """metasup's side of an extra instance, in raw JSON-RPC through the router's PROBE
    connection: the client's own `initialize` replayed, then `tools/list` probes."""

    def __init__(self, params: dict[str, Any], send: Callable[[Message], None]) -> None:
        self.params = params
        self.send = send
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.next_id = 0

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            answer = await future
        finally:
            self.pending.pop(rid, None)
        error = answer.get("error")
        if error is not None:
            raise Answered(str(error.get("message") if isinstance(error, dict) else error))
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    def receive(self, msg: Message) -> None:
        future = self.pending.get(msg.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(msg)

    async def initialize(self) -> dict[str, Any]:
        result = await self._request("initialize", self.params)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def list_tools(self) -> Any:
        from types import SimpleNamespace

        result = await self._request("tools/list", {})
        tools = result.get("tools")
        return SimpleNamespace(tools=tools if isinstance(tools, list) else [])


class ServerRunner:
    """One configured server through its instances: start, probe, restart, give up. With a
    `handshake` (a client's `initialize` params), an extra instance for the clients that send
    it, under `parent`."""

    def __init__(
        self,
        spec: dict[str, Any],
        worker: Worker,
        handshake: dict[str, Any] | None = None,
        parent: ServerRunner | None = None,
    ) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.worker = worker
        self.handshake = handshake
        self.parent = parent
        self.version = str(handshake.get("protocolVersion")) if handshake else None
        self.extras: dict[str, ServerRunner] = {}  # handshake key -> its instance
        self._extra_tasks: list[asyncio.Task[None]] = []
        self.primary_key: str | None = None  # metasup's own handshake, once seen
        self.retired = False  # an extra whose last client left
        self._held: list[tuple[int, Message]] = []  # clients' messages before the first handshake
        self._raw: RawSession | None = None
        self._started = False  # an extra's first handshake is done (or given up)
        self.router = Router(self.name)
        self.policy = restarts.RestartPolicy(
            enabled=spec["restart_on_failure"],
            initial=spec["restart_backoff"]["initial"],
            max=spec["restart_backoff"]["max"],
            max_restarts=spec["max_restarts"],
            period=spec["restart_period"],
        )
        self.state: McpState = McpState.STARTING
        self.restarts = 0
        self.history: tuple[float, ...] = ()
        self.latency_ms: float | None = None
        self.tools: int | None = None
        self.reason: str | None = None
        self.child: Child | None = None
        self.exit_code: int | None = None
        self.conns: dict[int, asyncio.StreamWriter] = {}
        self._next_conn = 1
        self._wake = anyio.Event()
        self._why: str | None = None  # why the wake was set: exit, restart:<reason>, stop
        self._to_server: asyncio.WriteTransport | None = None
        self._to_probe: Any = None
        self._listener: asyncio.Server | None = None

    def describe(self) -> dict[str, Any]:
        c = self.child
        return {
            "state": self.state,
            "restarts": self.restarts,
            "latency_ms": self.latency_ms,
            "tools": self.tools,
            "pid": c.pid if c else None,
            "pgid": c.pgid if c else None,
            "token": c.token if c else None,
            "reason": self.reason,
            "transport": self.spec["transport"],
            "url": self.spec.get("url"),
            "clients": len(self.conns),
            "instances": [e.instance() for e in self.extras.values()],
        }

    def instance(self) -> dict[str, Any]:
        """An extra instance, for the status."""
        c = self.child
        return {
            "handshake": self.version,
            "state": self.state,
            "pid": c.pid if c else None,
            "pgid": c.pgid if c else None,
            "token": c.token if c else None,
            "clients": len(self.conns),
            "restarts": self.restarts,
        }

    def runners(self) -> list[ServerRunner]:
        """This one and its extra instances."""
        return [self, *self.extras.values()]

    def _event(self, event: str, **fields: Any) -> None:
        if self.version is not None:
            fields["handshake"] = self.version
        self.worker.event(event, **fields)

    def _ending(self) -> bool:
        return self.worker.stopping or self.retired

    def _set(self, state: McpState, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        self.worker.status()

    # --- signals from outside -----------------------------------------------------------------

    def interrupt(self, why: str) -> None:
        if self._why != "stop":
            self._why = why
        self._wake.set()
        if why == "stop":
            for extra in list(self.extras.values()):
                extra.interrupt("stop")

    def child_exited(self, pid: int, code: int) -> None:
        if self.child is not None and pid == self.child.pid and self.exit_code is None:
            self.exit_code = code
            self.interrupt("exit")

    def request_restart(self, reason: str) -> None:
        self.history = ()  # new code: a fresh start, whatever failed before
        self.state = McpState.STARTING  # in the status that acknowledges the command, not after
        self.interrupt("restart:" + reason)
        for extra in list(self.extras.values()):
            extra.request_restart(reason)

    # --- the life of one server ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            for extra in list(self.extras.values()):
                extra.retire()
            for task in self._extra_tasks:
                try:
                    await task  # each stops its own process
                except asyncio.CancelledError:
                    pass
                except Exception as e:  # one extra's fault is not the server's end
                    print(
                        f"metasup mcp: {self.name}: an extra instance failed: {e!r}",
                        file=sys.stderr,
                    )
            if self.parent is not None and self.parent.extras.get(self._key()) is self:
                del self.parent.extras[self._key()]
                self.worker.status()

    def _key(self) -> str:
        return handshake_key(self.handshake)

    async def _run(self) -> None:
        if self.spec.get("argv") is None and self.spec.get("url") is None:
            return
        if not self.spec.get("url") and self.handshake is None:
            await self._serve_socket()
        next_reason: str | None = None
        delay = 0.0
        while not self._ending():
            if delay:
                await self._sleep(delay)
                if self._ending():
                    break
            if next_reason is not None:
                self.restarts += 1
            outcome, failure = await self._instance(next_reason)
            if self._ending():
                break
            if not failure:  # restarted on purpose: at once, not counted against it
                next_reason, delay = outcome, 0.0
                continue
            self._event(
                "mcp_unhealthy",
                server=self.name,
                pid=self.child.pid if self.child else None,
                reason=outcome,
            )
            decision, self.history = restarts.after_failure(
                self.policy, self.history, time.monotonic()
            )
            if isinstance(decision, restarts.GiveUp):
                self._event(
                    "mcp_failed", server=self.name, reason=decision.reason, last_error=outcome
                )
                self._set(McpState.FAILED, f"{decision.reason}; last: {outcome}")
                self.router.down_reason = "failed: " + outcome
                self._flush_held()  # their answers: it is not available
                why = await self._idle()
                if why.startswith("restart:"):
                    next_reason, delay = why.removeprefix("restart:"), 0.0
                continue
            self._set(McpState.UNHEALTHY, outcome)
            next_reason, delay = f"after failure: {outcome}", decision.delay
        self._set(McpState.STOPPED)
        self.child = None

    async def _sleep(self, delay: float) -> None:
        with anyio.move_on_after(delay):
            await self._idle()

    async def _idle(self) -> str:
        """Wait for a command (a restart, or the stop); returns why the wait ended."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            why, self._why = self._why or "", None
            if why.startswith("restart:") or why == "stop" or self._ending():
                return why

    async def _instance(self, restart_reason: str | None) -> tuple[str, bool]:
        """Run one instance until it fails or is restarted: (why it ended, was it a failure)."""
        self._wake = anyio.Event()
        self._why = None
        self.exit_code = None
        self.latency_ms = None
        self._set(McpState.STARTING)
        argv = self.spec.get("argv")
        url = self.spec.get("url")
        self.child = None
        log = _open_log(self.worker.logs / f"mcp-{self.name}.log")
        try:
            if argv:
                try:
                    self.child = spawn(
                        argv,
                        cwd=Path(self.spec["cwd"]),
                        env=self.spec["env"],
                        stdin=url is None,
                        capture=url is None,
                        stderr=log,
                        jail=self.worker.jailed(Path(self.spec["cwd"])),
                    )
                except SpawnError as e:
                    return str(e), True
            if restart_reason is not None:
                self._event(
                    "mcp_restarted",
                    server=self.name,
                    pid=self.child.pid if self.child else None,
                    attempt=len(self.history),
                    reason=restart_reason,
                )
            if url:
                return await self._http_instance(url)
            return await self._stdio_instance(log)
        finally:
            await self._stop_child()
            log.close()

    async def _stop_child(self) -> None:
        c = self.child
        if c is None:
            return
        await anyio.to_thread.run_sync(
            stop_tree,
            c.pgid,
            c.token,
            signal.SIGTERM,
            self.spec["stop_timeout"],
            self.worker.reaper,
            False,
            c.jailed,
        )
        c.release()
        self.worker.reaper.pop(c.pid)
        self.worker.dispatch_exits()
        for stream in (c.popen.stdin, c.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # --- stdio --------------------------------------------------------------------------------

    async def _stdio_instance(self, log: IO[bytes]) -> tuple[str, bool]:
        c = self.child
        assert c is not None and c.popen.stdout is not None and c.popen.stdin is not None
        loop = asyncio.get_running_loop()

        def on_line(line: bytes) -> None:
            try:
                msg = json.loads(line)
            except ValueError:
                log.write(b"[metasup] not JSON-RPC on stdout: " + line[:200] + b"\n")
                log.flush()
                return
            self._deliver(self.router.from_server(msg))

        reader = _LineProtocol(on_line, lambda: None)
        read_transport, _ = await loop.connect_read_pipe(lambda: reader, c.popen.stdout)
        write_transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, c.popen.stdin)
        self._to_server = write_transport
        self.router.instance_started()
        self.router.connect(PROBE)
        try:
            if self.handshake is not None:
                self._raw = RawSession(
                    self.handshake, lambda m: self._deliver(self.router.from_client(PROBE, m))
                )
                return await self._serve(self._raw)
            return await self._sdk_session()
        finally:
            self._raw = None
            self._to_server = None
            self._to_probe = None
            self._deliver(self.router.instance_lost(self._lost_reason()))
            read_transport.close()
            write_transport.close()

    async def _sdk_session(self) -> tuple[str, bool]:
        """metasup's own session, by the SDK, over the router's PROBE connection."""
        from mcp.client.session import ClientSession

        to_session_send, to_session_recv = anyio.create_memory_object_stream[Any](1000)
        from_session_send, from_session_recv = anyio.create_memory_object_stream[Any](1000)
        self._to_probe = to_session_send

        async def pump() -> None:
            async for sm in from_session_recv:
                raw = sm.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                if raw.get("method") == "initialize":
                    self.primary_key = handshake_key(raw.get("params"))
                self._deliver(self.router.from_client(PROBE, raw))

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            async with ClientSession(to_session_recv, from_session_send) as session:
                ended = await self._serve(session)
            tg.cancel_scope.cancel()
        return ended

    def _lost_reason(self) -> str:
        if self.exit_code is not None:
            return f"exited with code {self.exit_code}"
        return "restarting"

    def _deliver(self, out: Out) -> None:
        for dest, msg in out:
            if dest == SERVER:
                if self._to_server is not None and not self._to_server.is_closing():
                    self._to_server.write(_line(msg))
            elif dest == PROBE:
                self._send_probe(msg)
            else:
                writer = self.conns.get(dest)
                if writer is not None and not writer.is_closing():
                    writer.write(_line(msg))

    def _send_probe(self, msg: Message) -> None:
        import mcp_types
        from mcp.shared.message import SessionMessage

        if self._raw is not None:
            self._raw.receive(msg)
            return
        if self._to_probe is None:
            return
        try:
            parsed = mcp_types.jsonrpc_message_adapter.validate_python(msg, by_name=False)
        except ValueError:
            return
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            self._to_probe.send_nowait(SessionMessage(parsed))

    # --- streamable HTTP ----------------------------------------------------------------------

    async def _http_instance(self, url: str) -> tuple[str, bool]:
        deadline = time.monotonic() + self.spec["start_timeout"]
        reached = await self._guard(lambda: _wait_for_port(url, deadline), None)
        if reached[0] != "ok":
            return self._ended(reached, "the URL did not accept connections")
        ended: tuple[str, bool] = ("interrupted", True)
        # The session's close waits on the server (the streams' tasks, a DELETE ending the
        # session): a frozen server would hold it, and the instance's end with it, until the HTTP
        # client's own read timeout (minutes). So the close is bounded: at once after a failure,
        # `stop_timeout` otherwise.
        with anyio.CancelScope() as scope:
            async with self._http_session(url) as session:
                ended = await self._serve(session)
                grace = 0.0 if ended[1] else self.spec["stop_timeout"]
                scope.deadline = anyio.current_time() + grace
        return ended

    @contextlib.asynccontextmanager
    async def _http_session(self, url: str) -> AsyncIterator[Any]:
        """A client session over streamable HTTP or SSE, with the configured headers."""
        from mcp.client.session import ClientSession

        headers = dict(self.spec.get("headers") or {})
        if self.spec["transport"] == "sse":
            from mcp.client.sse import sse_client

            async with (
                sse_client(url, headers=headers, timeout=self.spec["start_timeout"]) as streams,
                ClientSession(*streams) as session,
            ):
                yield session
            return
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with (
            create_mcp_http_client(headers=headers) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            yield session

    # --- the session: first contact, then a probe every interval ------------------------------

    async def _serve(self, session: Any) -> tuple[str, bool]:
        t0 = time.monotonic()
        first = await self._guard(session.initialize, self.spec["start_timeout"])
        if first[0] != "ok":
            return self._ended(first, "no answer to initialize")
        self._flush_held()  # the clients that came for this handshake: answered from its result
        left = max(0.05, self.spec["start_timeout"] - (time.monotonic() - t0))
        listed = await self._probe(session, left)
        if listed is not None:
            return listed
        self._event(
            "mcp_started",
            server=self.name,
            pid=self.child.pid if self.child else None,
            tools=self.tools,
            startup_ms=round((time.monotonic() - t0) * 1000, 3),
        )
        self._set(McpState.HEALTHY)
        while True:
            with anyio.move_on_after(self.spec["probe_interval"]):
                await self._wake.wait()
            if self._wake.is_set():
                return self._ended(("interrupted", None), "")
            listed = await self._probe(session, self.spec["probe_timeout"])
            if listed is not None:
                return listed
            self.worker.status()

    async def _probe(self, session: Any, timeout: float) -> tuple[str, bool] | None:
        """tools/list, bounded: None when the server answered."""
        from mcp.shared.exceptions import MCPError

        t = time.perf_counter()
        result = await self._guard(session.list_tools, timeout)
        if result[0] == "error" and isinstance(result[1], MCPError | Answered):
            self.tools = None  # it answered, with an error: alive, but serving no tools
        elif result[0] != "ok":
            return self._ended(result, f"no answer to tools/list within {timeout:g}s")
        else:
            self.tools = len(result[1].tools)
        self.latency_ms = round((time.perf_counter() - t) * 1000, 3)
        return None

    def _ended(self, result: tuple[str, Any], timeout_text: str) -> tuple[str, bool]:
        """Why an instance ends, from a guarded call's result."""
        why = self._why or ""
        if why == "stop":
            return "stopping", False
        if why.startswith("restart:"):
            return why.removeprefix("restart:"), False
        if self.exit_code is not None or why == "exit":
            return f"exited with code {self.exit_code}", True
        if result[0] == "timeout":
            return timeout_text, True
        if result[0] == "error":
            return f"{type(result[1]).__name__}: {result[1]}", True
        return "interrupted", True

    async def _guard(
        self, call: Callable[[], Awaitable[Any]], timeout: float | None
    ) -> tuple[str, Any]:
        """Run `call` until it returns, fails, times out, or the instance is interrupted (exit,
        restart, stop): ("ok", value), ("error", exc), ("timeout", None), ("interrupted", None)."""
        result: tuple[str, Any] = ("interrupted", None)
        wake = self._wake
        if wake.is_set():
            return result
        async with anyio.create_task_group() as tg:

            async def run_call() -> None:
                nonlocal result
                try:
                    with anyio.fail_after(timeout):
                        result = ("ok", await call())
                except TimeoutError:
                    result = ("timeout", None)
                except Exception as e:
                    result = ("error", e)
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await wake.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(run_call)
            tg.start_soon(watch)
        return result

    # --- the agents' way in -------------------------------------------------------------------

    async def _serve_socket(self) -> None:
        path = f"{self.name}.sock"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        self._listener = await asyncio.start_unix_server(self._client, sock=sock, limit=LINE_LIMIT)

    def close_socket(self) -> None:
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.name}.sock")
            self._listener = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._next_conn
        self._next_conn += 1
        target: ServerRunner | None = None  # decided by its first message: its handshake
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, ConnectionError):
                    break  # a line over the limit, or the peer reset
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    writer.write(_line(_parse_error()))
                    continue
                if target is None:
                    target = self._instance_for(msg)
                    if target is None:
                        writer.write(_line(_too_many(msg, self.spec["max_handshakes"])))
                        break
                    target.attach(conn, writer)
                target.take(conn, msg)
        finally:
            if target is not None:
                target.detach(conn)
            writer.close()

    def _instance_for(self, first: Any) -> ServerRunner | None:
        """The instance a client belongs to, by its `initialize`: this one when it shakes hands
        as metasup's own session did (or sends anything else first), else the extra instance
        for its handshake, started now when there is none. None when that would pass the
        server's `max_handshakes`: a client could otherwise make metasup start a process per
        invented capability set."""
        if not (isinstance(first, dict) and first.get("method") == "initialize"):
            return self
        params = first.get("params")
        key = handshake_key(params)
        if self.primary_key is None or key == self.primary_key or not isinstance(params, dict):
            return self
        extra = self.extras.get(key)
        if extra is None or extra.retired:
            live = [e for e in self.extras.values() if not e.retired]
            if len(live) >= self.spec["max_handshakes"]:
                return None
            extra = ServerRunner(self.spec, self.worker, handshake=dict(params), parent=self)
            self.extras[key] = extra
            self._extra_tasks = [t for t in self._extra_tasks if not t.done()]
            self._extra_tasks.append(asyncio.get_running_loop().create_task(extra.run()))
            self.worker.status()
        return extra

    def attach(self, conn: int, writer: asyncio.StreamWriter) -> None:
        self.conns[conn] = writer
        self.router.connect(conn)
        self.worker.status()

    def take(self, conn: int, msg: Any) -> None:
        """A client's message: held while an extra instance makes its first handshake."""
        if self.handshake is not None and not self._started:
            self._held.append((conn, msg))
            return
        self._deliver(self.router.from_client(conn, msg))

    def _flush_held(self) -> None:
        self._started = True
        held, self._held = self._held, []
        for conn, msg in held:
            if conn in self.conns:
                self._deliver(self.router.from_client(conn, msg))

    def detach(self, conn: int) -> None:
        self.conns.pop(conn, None)
        self._deliver(self.router.disconnect(conn))
        self._held = [(c, m) for c, m in self._held if c != conn]
        if self.parent is not None and not self.conns:
            self.retire()  # its clients are gone: so is the process kept for their handshake
        self.worker.status()

    def retire(self) -> None:
        self.retired = True
        self.interrupt("stop")


class _LineProtocol(asyncio.Protocol):
    def __init__(self, on_line: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self.on_line = on_line
        self.on_eof = on_eof
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if line.strip():
                self.on_line(line)
        if len(self.buf) > LINE_LIMIT:
            self.buf = b""

    def eof_received(self) -> bool:
        self.on_eof()
        return False


def _line(msg: Message) -> bytes:
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode()


def _too_many(msg: Any, limit: int) -> Message:
    msg_id = msg.get("id") if isinstance(msg, dict) else None
    text = (
        f"metasup runs at most {limit} more processes of this server for other client "
        "handshakes (max_handshakes), and that many are serving; connect with metasup's "
        "handshake or one of theirs, or later"
    )
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": UNAVAILABLE, "message": text}}


def _parse_error() -> Message:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}


def _open_log(path: Path) -> IO[bytes]:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, path.with_suffix(".1.log"))
    return open_append(path)


async def _wait_for_port(url: str, deadline: float) -> None:
    """Until the URL's host and port accept a TCP connection (a served command starting up)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            await asyncio.sleep(0.02)  # the server is still starting; bounded by the deadline
            continue
        writer.close()
        return
