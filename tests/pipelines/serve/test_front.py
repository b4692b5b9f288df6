"""The front door on real sockets: stdlib HTTP servers as replicas, real clients (keep-alive,
streamed bodies), the proxy's own event loop on a thread."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from metasup.facts.settings import ServeConfig
from metasup.pipelines.serve.front import Replica
from testing.fixtures import wait_for
from tests.pipelines.serve.front_door import Proxy


class Upstream:
    """A replica: answers `/who` with its name, echoes `POST /echo`, streams `/big`, fails
    every request with 500 when `failing`; counts what reached it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = False
        self.seen: list[tuple[str, str, bytes]] = []
        self.release = threading.Event()
        self.release.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go as two writes

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Replica", outer.name)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.seen.append(("GET", self.path, b""))
                outer.release.wait(10)
                if outer.failing:
                    return self._answer(500, b"broken\n")
                if self.path == "/big":
                    return self._answer(200, b"x" * (3 << 20))
                self._answer(200, outer.name.encode())

            def do_HEAD(self) -> None:
                outer.seen.append(("HEAD", self.path, b""))
                self.send_response(200)
                self.send_header("Content-Length", "5")  # what a GET would carry
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append(("POST", self.path, body))
                self._answer(500 if outer.failing else 200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ups() -> Iterator[list[Upstream]]:
    made = [Upstream(n) for n in ("a", "b", "cand")]
    yield made
    for u in made:
        u.stop()


def _proxy(ups: list[Upstream], **cfg: Any) -> Proxy:
    proxy = Proxy(ServeConfig(**cfg))
    proxy.set(replicas=[Replica("a", ups[0].url), Replica("b", ups[1].url)])
    return proxy


def get(conn: http.client.HTTPConnection, path: str, **headers: str) -> tuple[int, bytes, str]:
    conn.request("GET", path, headers=headers)
    answer = conn.getresponse()
    return answer.status, answer.read(), answer.getheader("X-Replica") or ""


def test_requests_are_proxied_on_one_kept_connection_and_shared(ups: list[Upstream]) -> None:
    proxy = _proxy(ups)
    try:
        conn = proxy.client()
        names = [get(conn, "/who")[1] for _ in range(10)]
        assert set(names) == {b"a", b"b"}  # equal replicas take turns
        assert all(s == ("GET", "/who", b"") for u in ups[:2] for s in u.seen)
        conn.request("GET", "/who")
        answer = conn.getresponse()  # one Content-Length, whichever way the body went out
        assert answer.msg.get_all("Content-Length") == ["1"] and answer.read() in (b"a", b"b")
        conn.request("HEAD", "/who")
        answer = conn.getresponse()  # a HEAD's length is the GET's, with no body after it
        assert answer.status == 200 and answer.msg.get_all("Content-Length") == ["5"]
        assert answer.read() == b""
        status, body, _ = get(conn, "/big")  # a body of 3 MiB, streamed
        assert status == 200 and body == b"x" * (3 << 20)
        payload = bytes(range(256)) * 4000  # ~1 MB up
        conn.request("POST", "/echo?q=1", body=payload)
        echoed = conn.getresponse()
        assert echoed.status == 200 and echoed.read() == payload
        conn.request("POST", "/echo", body=b"later", headers={"Expect": "100-continue"})
        assert conn.getresponse().read() == b"later"  # the 100 is the proxy's to send
        assert conn.sock is not None  # still the one connection
        # counted once the answer is written: the client may read it a moment before
        wait_for(lambda: proxy.front.status()["arms"]["good"]["requests"] == 15, what="15")
    finally:
        proxy.stop()


def test_the_least_loaded_replica_takes_the_next_request(ups: list[Upstream]) -> None:
    proxy = _proxy(ups)
    try:
        ups[0].release.clear()  # `a` holds what it gets
        held = proxy.client()
        held.request("GET", "/who")  # the first request goes to the first replica
        wait_for(lambda: proxy.front.replicas[0].inflight == 1, what="a request held on a")
        conn = proxy.client()
        # while `a` has one in flight, every next request goes to `b`
        assert [get(conn, "/who")[1] for _ in range(5)] == [b"b"] * 5
        ups[0].release.set()
        assert held.getresponse().read() == b"a"
        wait_for(lambda: proxy.front.replicas[0].inflight == 0, what="a idle again")
        assert {get(conn, "/who")[1] for _ in range(4)} == {b"a", b"b"}
    finally:
        ups[0].release.set()
        proxy.stop()


def test_a_dead_replica_answers_502_and_the_others_serve(ups: list[Upstream]) -> None:
    proxy = _proxy(ups)
    try:
        ups[1].stop()
        codes = [get(proxy.client(), "/who")[0] for _ in range(6)]
        assert 502 in codes and 200 in codes
        proxy.set(replicas=[Replica("a", ups[0].url)])  # what the manager does at the death
        assert {get(proxy.client(), "/who")[0] for _ in range(6)} == {200}
        wait_for(lambda: proxy.front.status()["arms"]["good"]["requests"] == 12, what="12")
        assert proxy.front.status()["arms"]["good"]["errors"] == codes.count(502)
    finally:
        proxy.stop()


def test_mirrored_copies_reach_the_candidate_and_never_the_client(ups: list[Upstream]) -> None:
    proxy = _proxy(ups, mirror=0.5)
    try:
        proxy.set(
            replicas=[*proxy.front.replicas, Replica("cand", ups[2].url, arm="candidate")],
            stage="mirror",
        )
        ups[2].failing = True  # its answers are discarded: the clients never see them
        conn = proxy.client()
        answers = [get(conn, f"/who?n={i}")[1] for i in range(21)]  # copies: n = 1, 3 ... 19
        conn.request("POST", "/echo", body=b"posted")
        assert conn.getresponse().read() == b"posted"
        assert set(answers) <= {b"a", b"b"}
        wait_for(lambda: len(ups[2].seen) == 11, what="the copies")
        assert ("POST", "/echo", b"posted") in ups[2].seen
        mirror = proxy.front.status()["mirror"]
        wait_for(lambda: proxy.front.status()["mirror"]["requests"] == 11, what="counted")
        assert proxy.front.status()["mirror"]["errors"] == 11 and mirror["dropped"] == 0
    finally:
        proxy.stop()


def test_the_canary_share_goes_to_the_candidate_sticky_per_session(ups: list[Upstream]) -> None:
    proxy = _proxy(ups)
    try:
        proxy.set(
            replicas=[*proxy.front.replicas, Replica("cand", ups[2].url, arm="candidate")],
            stage="canary",
            share=0.25,
        )
        conn = proxy.client()
        plain = [get(conn, "/who")[1] for _ in range(40)]
        assert plain.count(b"cand") == 10  # exactly the share of requests without a session
        for i in range(30):
            first = get(conn, "/who", **{"X-Session-Id": f"user-{i}"})[1]
            again = {get(conn, "/who", Cookie=f"session=user-{i}")[1] for _ in range(3)}
            assert (first == b"cand") == (again == {b"cand"})  # a client stays on its arm
        wait_for(lambda: proxy.front.status()["arms"]["candidate"]["requests"] >= 10, what="10")
        assert proxy.front.status()["arms"]["candidate"]["share"] == 0.25
        doc = json.dumps(proxy.front.status())
        assert "p99_ms" in doc
    finally:
        proxy.stop()


def test_no_replica_is_a_503(ups: list[Upstream]) -> None:
    proxy = Proxy(ServeConfig())
    try:
        assert get(proxy.client(), "/who")[0] == 503
    finally:
        proxy.stop()
