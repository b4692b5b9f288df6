from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.faces.api.wire import BadRequest, find_head, parse_head, response


def test_a_request_head() -> None:
    head = parse_head(
        b"GET /events?since=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-A:  b \r\n"
    )
    assert (head.method, head.target, head.version) == ("GET", "/events?since=3", "1.1")
    assert head.headers == {"host": "x", "content-length": "0", "x-a": "b"}
    assert head.keep_alive and head.content_length() == 0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"GARBAGE", 400),
        (b"GET / HTTP/2.0\r\nHost: x", 505),
        (b"GET / FTP/1.1\r\nHost: x", 400),
        (b"GET x HTTP/1.1\r\nHost: x", 400),
        (b"GET / HTTP/1.1", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded: y", 400),
        (b"G(T / HTTP/1.1\r\nHost: x", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A: b\r\n" * 101, 431),
    ],
)
def test_bad_heads_are_refused_with_a_status(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_head(raw)
    assert e.value.status == status


def test_bodies_need_a_content_length() -> None:
    chunked = parse_head(b"POST /proposals HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked")
    with pytest.raises(BadRequest) as e:
        chunked.content_length()
    assert e.value.status == 411
    bad = parse_head(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: -1")
    with pytest.raises(BadRequest):
        bad.content_length()


def test_http10_closes_unless_asked_and_11_keeps_alive_unless_told() -> None:
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close").keep_alive


def test_response_bytes() -> None:
    out = response(404, b"{}", extra=[("Allow", "POST")], close=True)
    assert out == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Allow: POST\r\nConnection: close\r\n\r\n{}"
    )


def test_find_head() -> None:
    assert find_head(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1
    assert find_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY") == len(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_bad_request(raw: bytes) -> None:
    try:
        head = parse_head(raw)
    except BadRequest as e:
        assert 400 <= e.status < 600
    else:
        assert head.target.startswith("/") and head.version in ("1.0", "1.1")
        with contextlib.suppress(BadRequest):
            assert head.content_length() >= 0


tokens = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8)


@settings(max_examples=300)
@given(
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.text("abc/?=&0123", max_size=12).map(lambda t: "/" + t),
    st.dictionaries(tokens, st.text("abc xyz:;=0", max_size=10).map(str.strip), max_size=5),
)
def test_well_formed_heads_round_trip(method: str, target: str, headers: dict[str, str]) -> None:
    headers = {**headers, "host": "h"}
    raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = parse_head(raw.encode())
    assert (head.method, head.target) == (method, target)
    assert head.headers == {k.lower(): v for k, v in headers.items()}
