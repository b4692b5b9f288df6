"""The HTTP/1.1 wire for the API: request heads in, response bytes out. Pure functions.

Deliberately small: the API answers a handful of GETs and one POST with a Content-Length body.
h11 did this before, correctly and at about 6,900 requests a second; status polled by 200
clients at once needs more than 10,000 for answers within 20 ms, and parsing one request line
and a few headers by hand is most of the difference. Anything outside that subset is refused
plainly: chunked bodies (411), obsolete line folding, bare LF line ends, and malformed lines
(400), heads over the size limit (431).
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD = 16 << 10
MAX_HEADERS = 100
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "1.0":
            return "keep-alive" in conn
        return "close" not in conn

    def content_length(self) -> int:
        if "transfer-encoding" in self.headers:
            raise BadRequest(411, "send the body with a Content-Length, not chunked")
        raw = self.headers.get("content-length")
        if raw is None:
            return 0
        if not raw.isdigit() or len(raw) > 18:
            raise BadRequest(400, "Content-Length is not a number")
        return int(raw)


def find_head(buf: bytes | bytearray) -> int:
    """Where the head ends (the index after its blank line), or -1 while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(raw: bytes) -> Head:
    """A request line and its headers (without the final blank line); BadRequest otherwise."""
    if len(raw) > MAX_HEAD:
        raise BadRequest(431, "the request head is too large")
    lines = raw.split(b"\r\n")
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "the request line is not METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN:
        raise BadRequest(400, "bad method")
    if not target.startswith(b"/") or any(c < 0x21 or c == 0x7F for c in target):
        raise BadRequest(400, "bad request target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "HTTP/1.1 only")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN:
            raise BadRequest(400, "a malformed header line")
        if b"\n" in value or b"\r" in value or b"\x00" in value:
            raise BadRequest(400, "a malformed header value")
        headers[name.decode("ascii").lower()] = value.strip(b" \t").decode("latin-1")
    if version == b"HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 needs a Host header")
    return Head(method.decode("ascii"), target.decode("ascii"), version[5:].decode(), headers)


def response(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: list[tuple[str, str]] | None = None,
    close: bool = False,
) -> bytes:
    phrase = HTTPStatus(status).phrase
    head = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {content_type}"]
    head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in extra or ()]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
