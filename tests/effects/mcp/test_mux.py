from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.effects.mcp.mux import PROBE, SERVER, Router

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s"}}


def req(msg_id: Any, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def ok(msg_id: Any, result: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result if result is not None else {}}


def started(*conns: int) -> Router:
    r = Router("s")
    r.instance_started()
    r.connect(PROBE)
    ((dest, sent),) = r.from_client(PROBE, req(0, "initialize"))
    assert dest == SERVER
    r.from_server(ok(sent["id"], INIT))
    for c in conns:
        r.connect(c)
    return r


def test_probe_initialize_goes_through_and_others_get_the_cached_result() -> None:
    r = Router("s")
    r.instance_started()
    r.connect(PROBE)
    r.connect(1)
    assert r.from_client(1, req("a", "initialize")) == []  # held until the server answered
    ((dest, sent),) = r.from_client(PROBE, req(7, "initialize"))
    assert dest == SERVER and sent["method"] == "initialize"
    out = r.from_server(ok(sent["id"], INIT))
    assert out == [(PROBE, ok(7, INIT)), (1, ok("a", INIT))]
    assert r.from_client(1, req(9, "initialize")) == [(1, ok(9, INIT))]
    assert r.from_client(1, {"jsonrpc": "2.0", "method": "notifications/initialized"}) == []


def test_ids_are_rewritten_and_restored() -> None:
    r = started(1, 2)
    ((_, a),) = r.from_client(1, req(1, "tools/list"))
    ((_, b),) = r.from_client(2, req(1, "tools/list"))
    assert a["id"] != b["id"]
    assert r.from_server(ok(b["id"], {"tools": []})) == [(2, ok(1, {"tools": []}))]
    assert r.from_server(ok(a["id"], {"tools": [1]})) == [(1, ok(1, {"tools": [1]}))]
    assert r.from_server(ok(a["id"])) == []  # answered once


def test_discover_is_refused_so_auto_clients_fall_back() -> None:
    r = started(1)
    ((dest, answer),) = r.from_client(1, req(3, "server/discover"))
    assert dest == 1 and answer["error"]["code"] == -32601


def test_cancel_and_progress_follow_the_request() -> None:
    r = started(1)
    ((_, sent),) = r.from_client(1, req("x", "tools/call", name="t", _meta={"progressToken": "p"}))
    token = sent["params"]["_meta"]["progressToken"]
    assert token != "p"
    progress = {"jsonrpc": "2.0", "method": "notifications/progress"}
    out = r.from_server({**progress, "params": {"progressToken": token, "progress": 1}})
    assert out == [(1, {**progress, "params": {"progressToken": "p", "progress": 1}})]
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
    ((dest, c),) = r.from_client(1, {**cancel, "params": {"requestId": "x"}})
    assert dest == SERVER and c["params"]["requestId"] == sent["id"]


def test_server_requests_go_to_the_last_active_client() -> None:
    r = started(1, 2)
    r.from_client(1, req(1, "ping"))
    r.from_client(2, req(1, "ping"))
    ((dest, sent),) = r.from_server(req(50, "roots/list"))
    assert dest == 2
    assert r.from_client(2, ok(sent["id"], {"roots": []})) == [(SERVER, ok(50, {"roots": []}))]
    assert r.from_client(1, ok(sent["id"])) == []  # not its request, and answered already


def test_without_clients_server_ping_is_answered_and_sampling_refused() -> None:
    r = started()
    assert r.from_server(req(5, "ping")) == [(SERVER, ok(5))]
    ((dest, answer),) = r.from_server(req(6, "sampling/createMessage"))
    assert dest == SERVER and answer["error"]["code"] == -32601


def test_notifications_are_broadcast_to_clients_not_the_probe() -> None:
    r = started(1, 2)
    note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    assert r.from_server(note) == [(1, note), (2, note)]


def test_instance_lost_fails_waiting_requests_and_refuses_new_ones() -> None:
    r = started(1)
    r.from_client(1, req(4, "tools/call", name="slow"))
    out = r.instance_lost("exited with code 1")
    assert [(d, m["id"], m["error"]["code"]) for d, m in out] == [(1, 4, -32000)]
    ((dest, answer),) = r.from_client(1, req(5, "tools/list"))
    assert dest == 1 and "exited with code 1" in answer["error"]["message"]
    r.instance_started()
    ((dest, _),) = r.from_client(1, req(6, "tools/list"))
    assert dest == SERVER


def test_disconnect_cancels_the_clients_requests() -> None:
    r = started(1)
    ((_, sent),) = r.from_client(1, req(4, "tools/call", name="slow"))
    ((_, server_req),) = r.from_server(req(70, "roots/list"))
    out = r.disconnect(1)
    assert (
        SERVER,
        {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": sent["id"], "reason": "client disconnected"},
        },
    ) in out
    assert any(d == SERVER and m.get("id") == 70 and "error" in m for d, m in out)
    assert r.from_server(ok(sent["id"])) == []
    assert r.in_flight() == 0 and server_req["id"] != 70


def test_garbage_from_a_client_is_answered_or_dropped() -> None:
    r = started(1)
    assert r.from_client(1, {"id": 3}) == [
        (
            1,
            {
                "jsonrpc": "2.0",
                "id": 3,
                "error": {"code": -32600, "message": "not a JSON-RPC 2.0 message"},
            },
        )
    ]
    assert r.from_client(1, [1, 2]) == []
    assert r.from_client(1, req([1], "x"))[0][1]["error"]["code"] == -32600


ids = st.one_of(st.integers(-3, 3), st.text(max_size=2))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 3), ids), max_size=12), st.randoms())
def test_every_answer_reaches_its_asker_once(requests: list[tuple[int, Any]], rnd: Any) -> None:
    r = started(1, 2, 3)
    sent: dict[int, tuple[int, Any]] = {}
    seen: set[tuple[int, Any]] = set()
    for conn, msg_id in requests:
        key = (conn, (type(msg_id).__name__, msg_id))
        if key in seen:
            continue  # a client does not reuse an id while it waits
        seen.add(key)
        ((dest, msg),) = r.from_client(conn, req(msg_id, "tools/list"))
        assert dest == SERVER and msg["id"] not in sent
        sent[msg["id"]] = (conn, msg_id)
    order = list(sent)
    rnd.shuffle(order)
    for sid in order:
        out = r.from_server(ok(sid, {"n": sid}))
        conn, msg_id = sent[sid]
        assert out == [(conn, ok(msg_id, {"n": sid}))]
    assert r.in_flight() == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0")},
        optional={
            "id": st.one_of(
                st.integers(-2, 5),
                st.text(max_size=2),
                st.none(),
                st.booleans(),
                st.lists(st.integers(), max_size=1),
            ),
            "method": st.sampled_from(
                [
                    "initialize",
                    "tools/list",
                    "ping",
                    "server/discover",
                    "notifications/cancelled",
                    "notifications/progress",
                    "notifications/initialized",
                    "roots/list",
                    3,
                ]
            ),
            "params": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "requestId": st.integers(0, 5),
                        "progressToken": st.integers(0, 5) | st.text(max_size=1),
                        "_meta": st.fixed_dictionaries({}, optional={"progressToken": json_values}),
                    },
                ),
            ),
            "result": json_values,
            "error": json_values,
        },
    ),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["client"]), st.integers(0, 3), messages),
        st.tuples(st.sampled_from(["server"]), st.just(0), messages),
        st.tuples(
            st.sampled_from(["connect", "disconnect", "lost", "started"]),
            st.integers(1, 3),
            st.none(),
        ),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_arbitrary_traffic_never_raises_and_goes_only_where_it_can(plan: list[Any]) -> None:
    r = Router("s")
    r.instance_started()
    r.connect(PROBE)
    for what, conn, msg in plan:
        if what == "client":
            out = r.from_client(conn, msg)
        elif what == "server":
            out = r.from_server(msg)
        elif what == "connect":
            r.connect(conn)
            out = []
        elif what == "disconnect":
            out = r.disconnect(conn)
        elif what == "lost":
            out = r.instance_lost("x")
        else:
            r.instance_started()
            out = []
        for dest, sent in out:
            assert isinstance(sent, dict) and sent.get("jsonrpc") == "2.0"
            if dest == SERVER and what in ("client", "disconnect"):
                assert r.up, "nothing is written to a server instance that is gone"
            elif what == "client":
                assert dest == conn, "a client's message is answered to it or sent to the server"
