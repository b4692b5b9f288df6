"""A front door on an event loop of its own, on a thread: the tests drive it from theirs."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from typing import Any

from metasup.facts.settings import ServeConfig
from metasup.pipelines.serve.front import Front


class Proxy:
    def __init__(self, cfg: ServeConfig) -> None:
        self.events: list[dict[str, Any]] = []
        self.front = Front(cfg, self.events.append)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call(self.front.start(self.sock))

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set(self, **changes: Any) -> None:
        async def apply() -> None:
            for key, value in changes.items():
                setattr(self.front, key, value)

        self.call(apply())

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def stop(self) -> None:
        self.call(self.front.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.sock.close()
