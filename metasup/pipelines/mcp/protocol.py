"""The supervisor <-> MCP worker protocol: one JSON object a line, each way.

To the worker (its stdin): `Start` first (the servers, the folders for sockets and logs, the
jail), then `Restart` and `Stop`. End of file (the supervisor died) stops it too.
From the worker (its stdout): `Report` (an event for the journal) and `Status` (every server's
state, after the command numbered `seq` was taken: a status older than the last command does not
show the restarts it asked for).

Both sides encode and decode here, so the shape of a message is written once. A line that is
not one of these decodes as None and is skipped: the worker's stdout is fed by a process that
also runs the SDK, and a stray line must not stop the supervisor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class McpState(StrEnum):
    """A server's state, as the worker reports it and the status shows it."""

    STARTING = "starting"  # started (or restarted), not answering its probe yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # a probe failed; it is being restarted
    FAILED = "failed"  # given up on (restart policy), until its code changes
    STOPPED = "stopped"


@dataclass(frozen=True)
class Start:
    seq: int
    sockets: str
    logs: str
    servers: list[dict[str, Any]]  # McpServerConfig.to_dict() with argv, cwd and env resolved
    jail: dict[str, Any] | None = None  # {"sandbox", "view"}: jail the servers as the agent


@dataclass(frozen=True)
class Restart:
    names: list[str]
    reason: str
    seq: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Report:
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    seq: int
    servers: dict[str, dict[str, Any]]


Command = Start | Restart | Stop
Reply = Report | Status


def encode(msg: Command | Reply) -> bytes:
    match msg:
        case Start():
            doc: dict[str, Any] = {"op": "start", **msg.__dict__}
        case Restart():
            doc = {"op": "restart", "names": msg.names, "reason": msg.reason, "seq": msg.seq}
        case Stop():
            doc = {"op": "stop"}
        case Report():
            doc = {**msg.fields, "type": "event", "event": msg.event}
        case Status():
            doc = {"type": "status", "seq": msg.seq, "servers": msg.servers}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def _object(line: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _nat(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def decode_command(line: bytes) -> Command | None:
    doc = _object(line)
    if doc is None:
        return None
    op = doc.get("op")
    if op == "stop":
        return Stop()
    if op == "restart":
        names, seq = doc.get("names"), _nat(doc.get("seq"))
        if not isinstance(names, list) or seq is None:
            return None
        reason = doc.get("reason")
        return Restart([str(n) for n in names], reason if isinstance(reason, str) else "", seq)
    if op == "start":
        servers, seq = doc.get("servers"), _nat(doc.get("seq"))
        sockets, logs, jail = doc.get("sockets"), doc.get("logs"), doc.get("jail")
        if not isinstance(servers, list) or seq is None:
            return None
        if not isinstance(sockets, str) or not isinstance(logs, str):
            return None
        if not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in servers):
            return None
        return Start(seq, sockets, logs, servers, jail if isinstance(jail, dict) else None)
    return None


def decode_reply(line: bytes) -> Reply | None:
    doc = _object(line)
    if doc is None:
        return None
    kind = doc.pop("type", None)
    if kind == "event" and isinstance(doc.get("event"), str):
        event = doc.pop("event")
        return Report(event, doc)
    if kind == "status":
        seq, servers = _nat(doc.get("seq")), doc.get("servers")
        if seq is None or not isinstance(servers, dict):
            return None
        return Status(seq, {str(k): v for k, v in servers.items() if isinstance(v, dict)})
    return None
