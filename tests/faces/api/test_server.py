"""The API's HTTP server with real clients on 127.0.0.1: the server runs in this process, on a
thread of its own, against a real repository (short timeouts, so a slow client is seen soon)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.faces.api.app import Api
from metasup.faces.api.server import MAX_HEAD, Server, Timeouts
from testing.fixtures import make_repo

TOKEN = "t0ken"
REQUEST_S = 0.5


class Served:
    """A Server on a thread's event loop, listening on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        repo = make_repo(root / "repo")
        (repo / ".git" / "metasup").mkdir()
        (repo / ".git" / "metasup" / "api-token").write_text(TOKEN + "\n")
        self.repo = repo
        api = Api(repo / ".git", repo, None)
        api.load_policy()
        api.max_body = 50_000  # above the head's limit: a body is not taken for a head
        self.server = Server(api, Timeouts(idle=30.0, request=REQUEST_S))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            await self.loop.create_server(self.server.protocol, sock=self.sock)
            started.set()

        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, serve: object) -> None:
        self.loop.run_until_complete(serve())  # type: ignore[operator]
        self.loop.run_forever()

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.stop()


def read_response(s: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from `s` (what came after it stays in `buf`)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    lines = bytes(buf[: end - 4]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(buf) < end + length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    body = bytes(buf[end : end + length])
    del buf[: end + length]
    return status, headers, body


def closed(s: socket.socket) -> bool:
    """True when the server ended the connection (after anything it still had to send)."""
    s.settimeout(10)
    while True:
        try:
            if not s.recv(65536):
                return True
        except ConnectionResetError:
            return True


def proposal(text: str = "hi\n") -> bytes:
    return json.dumps({"reason": "r", "changes": [{"file": "notes.txt", "content": text}]}).encode()


def post_head(length: int, token: str = TOKEN, expect: bool = True) -> bytes:
    return (
        f"POST /proposals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n"
    ).encode()


def test_expect_100_continue_is_answered_before_the_body(served: Served) -> None:
    body = proposal()
    with served.connect() as s:
        s.sendall(post_head(len(body)))
        buf = bytearray()
        status, _, _ = read_response(s, buf)
        assert status == 100, "the client waits for this before it sends the body"
        s.sendall(body)
        status, _, answer = read_response(s, buf)
        assert status == 202 and json.loads(answer)["ok"] is True
        # The connection goes on.
        s.sendall(b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[0] == 200


@pytest.mark.parametrize(
    ("head", "status"),
    [(post_head(10, token="wrong"), 401), (post_head(60_000), 413)],
    ids=["no token", "too large"],
)
def test_expect_100_continue_is_refused_without_asking_for_the_body(
    served: Served, head: bytes, status: int
) -> None:
    with served.connect() as s:
        s.sendall(head)
        buf = bytearray()
        got, headers, _ = read_response(s, buf)
        assert got == status, "the final answer comes first, no 100"
        assert headers.get("connection") == "close" and closed(s)


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(served: Served) -> None:
    with served.connect() as s:
        s.sendall(
            b"POST /proposals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"d000\r\n" + b"a" * 0xD000 + b"\r\n"
        )  # fmt: skip
        assert read_response(s, bytearray())[0] == 413 and closed(s)


def test_http10_keep_alive_keeps_the_connection_and_says_so(served: Served) -> None:
    with served.connect() as s:
        buf = bytearray()
        for _ in range(3):
            s.sendall(b"GET /supervisor/status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body = read_response(s, buf)
            assert status == 200 and headers["connection"].lower() == "keep-alive"
            assert int(headers["content-length"]) == len(body)
    with served.connect() as s:
        s.sendall(b"GET /supervisor/status HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(s, bytearray())
        assert status == 200 and headers["connection"] == "close" and closed(s)


@pytest.mark.parametrize("second", [b"7", b"6"], ids=["different", "same"])
def test_two_content_length_headers_are_a_bad_request(served: Served, second: bytes) -> None:
    with served.connect() as s:
        s.sendall(
            b"POST /proposals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 6\r\nContent-Length: " + second + b"\r\n\r\n{}{}{}"
        )  # fmt: skip
        status, _, body = read_response(s, bytearray())
        assert status == 400 and b"Content-Length" in body and closed(s)


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n",  # the head never ends
        post_head(100, expect=False) + b'{"reason":',  # the body never ends
    ],
    ids=["head", "body"],
)
def test_a_request_that_never_completes_is_answered_408_and_closed(
    served: Served, partial: bytes
) -> None:
    with served.connect() as s:
        s.sendall(partial)
        status, headers, _ = read_response(s, bytearray())  # waits past REQUEST_S
        assert status == 408 and headers["connection"] == "close" and closed(s)


def test_an_idle_kept_alive_connection_is_not_a_slow_request(served: Served) -> None:
    with served.connect() as s:
        buf = bytearray()
        s.sendall(b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[0] == 200
        s.settimeout(REQUEST_S * 3)
        with pytest.raises(TimeoutError):
            s.recv(1)  # nothing comes: between requests only the idle bound applies
        s.settimeout(10)
        s.sendall(b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[0] == 200


def test_pipelined_requests_are_answered_in_order_around_a_proposal(served: Served) -> None:
    body = proposal()
    with served.connect() as s:
        s.sendall(
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_head(len(body), expect=False) + body
            + b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
        )  # fmt: skip
        buf = bytearray()
        got = [read_response(s, buf)[0] for _ in range(4)]
        assert got == [404, 202, 200, 400] and closed(s)


def test_a_head_past_the_limit_is_refused(served: Served) -> None:
    with served.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 10))
        assert read_response(s, bytearray())[0] == 431 and closed(s)


def test_a_head_arriving_in_pieces_is_bounded_too(served: Served) -> None:
    with served.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(2 * MAX_HEAD // 1024):
                s.sendall(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while it was still sending: the answer was sent before the close
        assert read_response(s, bytearray())[0] == 431


def test_a_large_body_before_a_head_is_not_counted_as_the_head(served: Served) -> None:
    body = proposal("x" * 30_000)
    assert MAX_HEAD < len(body) < 50_000
    with served.connect() as s:
        s.sendall(post_head(len(body), expect=False) + body + b"GET /metrics HTTP/1.1\r\nHost: x")
        buf = bytearray()
        assert read_response(s, buf)[0] == 202
        s.sendall(b"\r\n\r\n")
        assert read_response(s, buf)[0] == 200


def test_the_end_of_input_still_gets_its_answers(served: Served) -> None:
    body = proposal("later\n")
    with served.connect() as s:
        s.sendall(post_head(len(body), expect=False) + body)
        s.shutdown(socket.SHUT_WR)
        assert read_response(s, bytearray())[0] == 202 and closed(s)


@pytest.fixture(scope="module")
def one_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("any"))
    yield s
    s.stop()


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400))
def test_any_bytes_get_a_clean_answer_or_none(one_server: Served, data: bytes) -> None:
    with one_server.connect() as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", out):
        assert 100 <= int(status) < 500 or int(status) == 505, out
    assert b"Traceback" not in out and b"internal error" not in out
