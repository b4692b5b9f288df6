"""One stdio MCP server, many clients: the routing of JSON-RPC messages between them.

A stdio server has one stdin and one stdout, and one MCP session. metasup owns that session
(it initializes the server and probes it), and the agent's own MCP clients reach the same
server through `metasup mcp connect NAME`. This module decides where each message goes; it
does no I/O, so every case is tested without a process.

- The probe's session (`PROBE`) is the server's one real session: its `initialize` goes through.
  Any other client's `initialize` is answered with the server's own result, kept from the
  probe's; its `notifications/initialized` is dropped. (The worker routes here only the clients
  whose handshake is the probe's; another handshake gets an instance, and a router, of its own,
  whose probe replays that handshake.) `server/discover` is refused, so a client
  in auto mode falls back to the handshake the server already speaks.
- Request ids are rewritten to ids unique on the server's side and written back on the way out;
  so are progress tokens. A client's `notifications/cancelled` follows its request.
- Requests from the server (sampling, roots, elicitation) go to the client heard from last; with
  none connected, `ping` is answered here and anything else refused.
- Other notifications from the server go to every connected client.
- When the server instance ends, every request waiting on it gets an error; clients stay
  connected, and their next requests go to the next instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVER = -1
PROBE = 0

Message = dict[str, Any]
Out = list[tuple[int, Message]]

# JSON-RPC error codes
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
UNAVAILABLE = -32000


def error(msg_id: Any, code: int, message: str) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def kind_of(msg: Any) -> str:
    """request, notification, response, or invalid."""
    if not isinstance(msg, dict):
        return "invalid"
    if isinstance(msg.get("method"), str):
        return "request" if "id" in msg else "notification"
    if "id" in msg and ("result" in msg or "error" in msg):
        return "response"
    return "invalid"


@dataclass
class _Pending:
    conn: int
    orig_id: Any
    method: str
    token: int | None = None  # the rewritten progress token


@dataclass
class Router:
    name: str
    up: bool = False  # an instance runs and takes messages
    down_reason: str = "not started"
    init_result: Message | None = None
    conns: set[int] = field(default_factory=set)
    last_active: int | None = None
    _next: int = 1
    _pending: dict[int, _Pending] = field(default_factory=dict)  # server-side id -> request
    _by_client: dict[tuple[int, Any], int] = field(default_factory=dict)
    _tokens: dict[int, tuple[int, Any]] = field(default_factory=dict)  # token -> (conn, orig)
    _waiting_init: list[tuple[int, Any]] = field(default_factory=list)
    _to_client: dict[int, tuple[int, Any]] = field(default_factory=dict)  # id -> (conn, srv id)

    def _new_id(self) -> int:
        n = self._next
        self._next += 1
        return n

    # --- instance lifecycle -------------------------------------------------------------------

    def instance_started(self) -> None:
        self.up = True
        self.init_result = None

    def instance_lost(self, reason: str) -> Out:
        """The server instance is gone: fail what waited on it."""
        out: Out = []
        text = f"MCP server {self.name!r} stopped ({reason}); the request was not completed"
        for p in self._pending.values():
            if p.conn != PROBE and p.conn in self.conns:
                out.append((p.conn, error(p.orig_id, UNAVAILABLE, text)))
        if self.init_result is None:
            for conn, msg_id in self._waiting_init:
                out.append((conn, error(msg_id, UNAVAILABLE, text)))
            self._waiting_init.clear()
        self._pending.clear()
        self._by_client.clear()
        self._tokens.clear()
        self._to_client.clear()
        self.up = False
        self.down_reason = reason
        return out

    # --- clients ------------------------------------------------------------------------------

    def connect(self, conn: int) -> None:
        self.conns.add(conn)

    def disconnect(self, conn: int) -> Out:
        """A client went away: cancel its requests, refuse the server's requests to it."""
        out: Out = []
        self.conns.discard(conn)
        self._waiting_init = [w for w in self._waiting_init if w[0] != conn]
        for sid, p in list(self._pending.items()):
            if p.conn == conn:
                self._forget(sid)
                if self.up:
                    out.append((SERVER, _cancelled(sid, "client disconnected")))
        for cid, (c, server_id) in list(self._to_client.items()):
            if c == conn:
                del self._to_client[cid]
                if self.up:
                    out.append((SERVER, error(server_id, UNAVAILABLE, "client disconnected")))
        if self.last_active == conn:
            self.last_active = max((c for c in self.conns if c != PROBE), default=None)
        return out

    def from_client(self, conn: int, msg: Any) -> Out:
        kind = kind_of(msg)
        if conn != PROBE:
            self.last_active = conn
        if kind == "request":
            return self._client_request(conn, msg)
        if kind == "notification":
            return self._client_notification(conn, msg)
        if kind == "response":
            cid = msg["id"]
            found = self._to_client.pop(cid, None) if _is_int(cid) else None
            if found is None or found[0] != conn or not self.up:
                return []
            return [(SERVER, {**msg, "id": found[1]})]
        if isinstance(msg, dict) and "id" in msg and _hashable(msg["id"]):
            return [(conn, error(msg["id"], INVALID_REQUEST, "not a JSON-RPC 2.0 message"))]
        return []

    def _client_request(self, conn: int, msg: Message) -> Out:
        method, msg_id = msg["method"], msg["id"]
        if not _hashable(msg_id):
            return [(conn, error(None, INVALID_REQUEST, "the id must be a string or a number"))]
        if conn != PROBE and method == "initialize":
            if self.init_result is not None:
                return [(conn, {"jsonrpc": "2.0", "id": msg_id, "result": self.init_result})]
            if self.up:
                self._waiting_init.append((conn, msg_id))
                return []
            return [(conn, error(msg_id, UNAVAILABLE, self._unavailable()))]
        if conn != PROBE and method == "server/discover":
            return [
                (
                    conn,
                    error(
                        msg_id,
                        METHOD_NOT_FOUND,
                        "metasup bridges this server over the initialize handshake",
                    ),
                )
            ]
        if not self.up:
            return [(conn, error(msg_id, UNAVAILABLE, self._unavailable()))]
        sid = self._new_id()
        pending = _Pending(conn, msg_id, method)
        out_msg = {**msg, "id": sid}
        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta and _hashable(meta["progressToken"]):
            token = self._new_id()
            self._tokens[token] = (conn, meta["progressToken"])
            pending.token = token
            assert isinstance(params, dict)
            out_msg["params"] = {**params, "_meta": {**meta, "progressToken": token}}
        self._pending[sid] = pending
        self._by_client[(conn, _key(msg_id))] = sid
        return [(SERVER, out_msg)]

    def _client_notification(self, conn: int, msg: Message) -> Out:
        method = msg["method"]
        if conn != PROBE and method == "notifications/initialized":
            return []
        if not self.up:
            return []
        if method == "notifications/cancelled":
            params = msg.get("params")
            rid = params.get("requestId") if isinstance(params, dict) else None
            if not _hashable(rid):
                return []
            sid = self._by_client.get((conn, _key(rid)))
            if sid is None:
                return []
            assert isinstance(params, dict)
            return [(SERVER, {**msg, "params": {**params, "requestId": sid}})]
        return [(SERVER, msg)]

    # --- the server ---------------------------------------------------------------------------

    def from_server(self, msg: Any) -> Out:
        kind = kind_of(msg)
        if kind == "response":
            sid = msg["id"]
            p = self._forget(sid) if _is_int(sid) else None
            if p is None:
                return []
            if p.conn == PROBE and p.method == "initialize" and isinstance(msg.get("result"), dict):
                self.init_result = msg["result"]
                waiting, self._waiting_init = self._waiting_init, []
                answers: Out = [
                    (c, {"jsonrpc": "2.0", "id": i, "result": self.init_result})
                    for c, i in waiting
                    if c in self.conns
                ]
                return [(PROBE, {**msg, "id": p.orig_id}), *answers]
            if p.conn != PROBE and p.conn not in self.conns:
                return []
            return [(p.conn, {**msg, "id": p.orig_id})]
        if kind == "request":
            return self._server_request(msg)
        if kind == "notification":
            return self._server_notification(msg)
        return []

    def _server_request(self, msg: Message) -> Out:
        target = self.last_active if self.last_active in self.conns else None
        if target is None:
            if msg["method"] == "ping":
                return [(SERVER, {"jsonrpc": "2.0", "id": msg["id"], "result": {}})]
            return [
                (
                    SERVER,
                    error(msg["id"], METHOD_NOT_FOUND, f"no client connected for {msg['method']}"),
                )
            ]
        cid = self._new_id()
        self._to_client[cid] = (target, msg["id"])
        return [(target, {**msg, "id": cid})]

    def _server_notification(self, msg: Message) -> Out:
        method = msg["method"]
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/progress":
            token = params.get("progressToken")
            found = self._tokens.get(token) if isinstance(token, int) else None
            if found is None:
                return []
            conn, orig = found
            return [(conn, {**msg, "params": {**params, "progressToken": orig}})]
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            for cid, (conn, server_id) in list(self._to_client.items()):
                if server_id == rid:
                    del self._to_client[cid]
                    return [(conn, {**msg, "params": {**params, "requestId": cid}})]
            return []
        return [(c, msg) for c in sorted(self.conns) if c != PROBE]

    # --- helpers ------------------------------------------------------------------------------

    def _forget(self, sid: int) -> _Pending | None:
        p = self._pending.pop(sid, None)
        if p is not None:
            self._by_client.pop((p.conn, _key(p.orig_id)), None)
            if p.token is not None:
                self._tokens.pop(p.token, None)
        return p

    def _unavailable(self) -> str:
        return f"MCP server {self.name!r} is not available ({self.down_reason})"

    def in_flight(self) -> int:
        return len(self._pending)


def _cancelled(sid: int, reason: str) -> Message:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": sid, "reason": reason},
    }


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key(value: Any) -> tuple[str, Any]:
    """Ids 1 and "1" are different ids."""
    return (type(value).__name__, value)
