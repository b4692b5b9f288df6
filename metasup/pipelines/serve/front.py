"""The front door: HTTP/1.1 in, proxied to the replicas, keep-alive and streamed bodies both
ways, with the good and candidate arms counted, mirrored copies sent off the user's path, and a
canary share routed to the candidate for real.

aiohttp's server and client: one maintained stack for both sides, with keep-alive pools to the
replicas, streaming in both directions, `Expect: 100-continue` handled, and the llhttp parser
(C) underneath. The decisions (which replica, which arm, which request is mirrored, where the
canary goes) are `decisions.serving`'s; this applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from metasup.decisions.serving import Latencies, least_inflight, picked, stick
from metasup.facts.settings import ServeConfig

# Hop-by-hop: about one connection, never passed on (RFC 9110 7.6.1); Host is the replica's.
HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection", "Host",
        # Answered here (aiohttp sends the 100 when the body is read); the replica gets the
        # body straight away.
        "Expect",
    )
)  # fmt: skip
SESSION_HEADER = "X-Session-Id"
SESSION_COOKIES = ("session", "sessionid", "session_id")
MIRROR_MAX_BODY = 1 << 20  # a request body larger than this is not mirrored (counted dropped)
MIRROR_QUEUE = 256
WHOLE_BODY = 64 << 10  # an answer up to this size (with a Content-Length) is sent in one piece


@dataclass
class Replica:
    """One upstream: a replica of the good commit, or the candidate's."""

    id: str
    url: str  # http://127.0.0.1:PORT
    arm: str = "good"  # good | candidate
    inflight: int = 0
    ready: bool = True


@dataclass
class Arms:
    good: Latencies = field(default_factory=Latencies)
    candidate: Latencies = field(default_factory=Latencies)
    mirrored: Latencies = field(default_factory=Latencies)  # the candidate's answers to copies
    mirror_dropped: int = 0


class Front:
    """The proxy. `stage`: None (good only), "mirror" (copies of `mirror` share to the
    candidate) or "canary" (`share` of clients to it for real)."""

    def __init__(self, cfg: ServeConfig, report: Callable[[dict[str, Any]], None]) -> None:
        self.cfg = cfg
        self.report = report
        self.replicas: list[Replica] = []
        self.stage: str | None = None
        self.share = 0.0
        self.arms = Arms()
        self._n = 0  # requests seen, for the even spreads
        self._turn = 0
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._mirror: asyncio.Queue[tuple[str, str, dict[str, str], bytes]] | None = None
        self._mirror_task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, sock: Any) -> None:
        """Serve on an already bound, listening socket."""
        self._session = ClientSession(
            connector=TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._mirror = asyncio.Queue(MIRROR_QUEUE)
        self._mirror_task = asyncio.create_task(self._mirror_loop())

    async def stop(self) -> None:
        if self._mirror_task is not None:
            self._mirror_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mirror_task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- routing -----------------------------------------------------------------------------

    def _pick(self, arm: str) -> Replica | None:
        ready = [r for r in self.replicas if r.ready and r.arm == arm]
        i = least_inflight([r.inflight for r in ready], self._turn)
        self._turn += 1
        return ready[i] if i is not None else None

    def _arm_for(self, request: web.Request, n: int) -> str:
        if self.stage != "canary" or not any(
            r.ready and r.arm == "candidate" for r in self.replicas
        ):
            return "good"
        key = request.headers.get(SESSION_HEADER) or next(
            (request.cookies[c] for c in SESSION_COOKIES if c in request.cookies), None
        )
        on = stick(key, self.share) if key else picked(n, self.share)
        return "candidate" if on else "good"

    # --- a request ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n, self._n = self._n, self._n + 1
        arm = self._arm_for(request, n)
        replica = self._pick(arm) or (self._pick("good") if arm == "candidate" else None)
        if replica is None:
            return web.Response(status=503, text="no replica is ready\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        body: Any = request.content if request.body_exists else None
        copy = self.stage == "mirror" and picked(n, self.cfg.mirror)
        if copy:
            data = await request.content.read(MIRROR_MAX_BODY + 1) if request.body_exists else b""
            if len(data) > MIRROR_MAX_BODY or not request.content.at_eof():
                self.arms.mirror_dropped += 1
                copy = False
                body = _chain(data, request.content)
            else:
                body = data
                self._enqueue(request.method, request.rel_url.raw_path_qs, headers, data)
        return await self._forward(request, replica, headers, body)

    async def _forward(
        self, request: web.Request, replica: Replica, headers: dict[str, str], body: Any
    ) -> web.StreamResponse:
        assert self._session is not None
        stats = self.arms.candidate if replica.arm == "candidate" else self.arms.good
        t0 = time.perf_counter()
        replica.inflight += 1
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                replica.url + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                size = upstream.content_length
                bodied = request.method != "HEAD" and upstream.status not in (204, 304)
                if bodied and size is not None and size <= WHOLE_BODY:
                    # A small answer goes out whole: head and body in one write to the client.
                    response = web.Response(
                        status=upstream.status, reason=upstream.reason, body=await upstream.read()
                    )
                else:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP:  # Content-Length stays: the body is passed whole
                        response.headers.add(k, v)
                if isinstance(response, web.Response):
                    stats.add(time.perf_counter() - t0, error=upstream.status >= 500)
                    return response
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                stats.add(time.perf_counter() - t0, error=upstream.status >= 500)
                return response
        except (TimeoutError, ClientError, ConnectionError) as e:
            stats.add(time.perf_counter() - t0, error=True)
            if response is not None and response.prepared:
                raise  # the answer had begun: the client sees the connection end
            return web.Response(status=502, text=f"the replica did not answer: {e}\n")
        finally:
            replica.inflight -= 1

    # --- mirroring ---------------------------------------------------------------------------

    def _enqueue(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        assert self._mirror is not None
        try:
            self._mirror.put_nowait((method, path, headers, body))
        except asyncio.QueueFull:
            self.arms.mirror_dropped += 1

    async def _mirror_loop(self) -> None:
        assert self._mirror is not None and self._session is not None
        while True:
            method, path, headers, body = await self._mirror.get()
            target = self._pick("candidate")
            if target is None:
                self.arms.mirror_dropped += 1
                continue
            t0 = time.perf_counter()
            target.inflight += 1
            try:
                async with self._session.request(
                    method, target.url + path, headers=headers, data=body, allow_redirects=False
                ) as answer:
                    await answer.read()  # discarded: only its status and time count
                    self.arms.mirrored.add(time.perf_counter() - t0, error=answer.status >= 500)
            except (TimeoutError, ClientError, ConnectionError):
                self.arms.mirrored.add(time.perf_counter() - t0, error=True)
            finally:
                target.inflight -= 1

    # --- what the status shows ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        share = self.share if self.stage == "canary" else 0.0
        return {
            "replicas": [
                {"id": r.id, "arm": r.arm, "inflight": r.inflight, "ready": r.ready}
                for r in self.replicas
            ],
            "stage": self.stage,
            "arms": {
                "good": self.arms.good.as_dict(1.0 - share),
                "candidate": self.arms.candidate.as_dict(share),
            },
            "mirror": {
                **self.arms.mirrored.as_dict(self.cfg.mirror if self.stage == "mirror" else 0.0),
                "dropped": self.arms.mirror_dropped,
            },
        }


async def _chain(first: bytes, rest: Any) -> Any:
    """A body whose start was read already: that part, then the rest as it comes."""
    yield first
    async for chunk in rest.iter_any():
        yield chunk
