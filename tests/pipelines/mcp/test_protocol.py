"""The supervisor <-> MCP worker protocol: every message survives the wire, and any other line
is skipped, never raised on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metasup.pipelines.mcp import protocol

NAMES = st.text(min_size=1, max_size=8)
VALUES = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
OBJECTS = st.dictionaries(st.text(max_size=6), VALUES, max_size=4)
SERVERS = st.lists(st.builds(lambda n, d: {**d, "name": n}, NAMES, OBJECTS), max_size=3)
SEQ = st.integers(0, 2**40)

COMMANDS = st.one_of(
    st.builds(
        protocol.Start,
        SEQ,
        st.text(max_size=20),
        st.text(max_size=20),
        SERVERS,
        st.none() | st.builds(lambda a, b: {"sandbox": a, "view": b}, OBJECTS, OBJECTS),
    ),
    st.builds(protocol.Restart, st.lists(NAMES, max_size=3), st.text(max_size=20), SEQ),
    st.just(protocol.Stop()),
)
REPLIES = st.one_of(
    st.builds(
        protocol.Report,
        NAMES,
        OBJECTS.map(lambda d: {k: v for k, v in d.items() if k not in ("type", "event")}),
    ),
    st.builds(protocol.Status, SEQ, st.dictionaries(NAMES, OBJECTS, max_size=3)),
)


@given(COMMANDS)
def test_a_command_round_trips(msg: protocol.Command) -> None:
    line = protocol.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1, "one line each"
    assert protocol.decode_command(line) == msg


@given(REPLIES)
def test_a_reply_round_trips(msg: protocol.Reply) -> None:
    line = protocol.encode(msg)
    assert line.count(b"\n") == 1
    assert protocol.decode_reply(line) == msg


@given(st.binary(max_size=200))
def test_any_other_line_decodes_as_nothing_or_a_message(line: bytes) -> None:
    command, reply = protocol.decode_command(line), protocol.decode_reply(line)
    assert command is None or isinstance(command, protocol.Start | protocol.Restart | protocol.Stop)
    assert reply is None or isinstance(reply, protocol.Report | protocol.Status)


def test_malformed_messages_are_skipped() -> None:
    for line in (
        b'{"op": "restart", "names": "a", "seq": 1}',
        b'{"op": "restart", "names": ["a"], "seq": -1}',
        b'{"op": "start", "seq": 0, "sockets": "s", "logs": "l", "servers": [{"no": "name"}]}',
        b'{"op": "launch"}',
        b"[1, 2]",
        b"not json",
    ):
        assert protocol.decode_command(line) is None, line
    for line in (b'{"type": "status", "seq": true, "servers": {}}', b'{"type": "event"}'):
        assert protocol.decode_reply(line) is None, line
    status = protocol.decode_reply(b'{"type": "status", "seq": 2, "servers": {"a": 1, "b": {}}}')
    assert status == protocol.Status(2, {"b": {}}), "a server's status that is no object goes"
