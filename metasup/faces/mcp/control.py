"""`metasup mcp list` and `metasup mcp restart NAME`: the operator's view of the supervised MCP
servers, and a restart now (from `failed` too) through the worker's control socket.

The list is read from the status document, so it also shows the last recorded state when no
supervisor runs; a restart needs the running worker, and reports how the new instance came up
by the events it journals.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasup.effects.records.journal import StateDir, current_status, events_since
from metasup.faces.mcp.connect import connect_unix
from metasup.facts.errors import Refused, UserError

OUTCOMES = ("mcp_started", "mcp_unhealthy", "mcp_failed")


def servers(dirs: StateDir, configured: list[str]) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each server's details (state, transport, tools, ...), and whether a supervisor runs.
    Servers the config names that no status records are `stopped`."""
    doc, running = current_status(dirs)
    details: dict[str, dict[str, Any]] = {}
    recorded: dict[str, Any] = doc["mcp"] if isinstance(doc.get("mcp"), dict) else {}
    states: dict[str, Any] = doc["mcp_servers"] if isinstance(doc.get("mcp_servers"), dict) else {}
    for name in sorted({*configured, *states}):
        d: dict[str, Any] = recorded[name] if isinstance(recorded.get(name), dict) else {}
        state = states.get(name, "stopped") if running else "stopped"
        details[name] = {**d, "state": state}
    return details, running


def lines(details: dict[str, dict[str, Any]], running: bool) -> list[str]:
    if not details:
        return ["no MCP servers are configured"]
    out = [] if running else ["metasup is not running; the last recorded state:"]
    for name, d in details.items():
        parts = [str(d.get("state"))]
        if d.get("transport"):
            parts.append(str(d["transport"]) + (f" {d['url']}" if d.get("url") else ""))
        if d.get("tools") is not None:
            parts.append(f"{d['tools']} tools")
        if d.get("latency_ms") is not None:
            parts.append(f"probe {d['latency_ms']} ms")
        if d.get("restarts") is not None:
            parts.append(f"{d['restarts']} restarts")
        if running and d.get("pid"):
            parts.append(f"pid {d['pid']}")
        extra = d.get("instances") or []
        if extra:
            shakes = ", ".join(sorted({str(i.get("handshake")) for i in extra}))
            parts.append(f"+{len(extra)} for other client handshakes ({shakes})")
        if d.get("reason") and d.get("state") != "healthy":
            parts.append(f"({d['reason']})")
        out.append(f"{name}: " + ", ".join(parts))
    return out


def ask(path: Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to the worker's control socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            connect_unix(sock, path)
        except OSError:
            raise Refused(
                "the MCP servers are not running (is `metasup run` running with mcp_servers?)"
            ) from None
        sock.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise UserError("the MCP worker did not answer") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise UserError("the MCP worker gave no answer") from None
    return answer if isinstance(answer, dict) else {"error": "the MCP worker's answer is not JSON"}


def restart(dirs: StateDir, name: str, wait: float, say: Callable[[str], None]) -> int:
    """Restart NAME now; wait up to `wait` seconds for how it came up. 0 healthy, 1 not."""
    _, running = current_status(dirs)
    if not running:
        raise Refused("metasup is not running in this repository: nothing to restart")
    _, offset = events_since(dirs.events)  # what the journal holds before the request
    answer = ask(dirs.mcp_control, {"restart": name})
    if "error" in answer:
        raise Refused(str(answer["error"]))
    say(f"{name}: restarting (was {answer.get('was')})")
    if wait <= 0:
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        events, offset = events_since(dirs.events, offset)
        for e in events:
            if e.get("server") == name and e.get("event") in OUTCOMES:
                return _outcome(e, say)
        time.sleep(0.1)  # polling the journal: bounded by --wait
    say(f"{name}: still starting after {wait:g}s (see `metasup mcp list`)")
    return 1


def _outcome(e: dict[str, Any], say: Callable[[str], None]) -> int:
    name = e["server"]
    if e["event"] == "mcp_started":
        say(f"{name}: healthy, {e.get('tools')} tools, started in {e.get('startup_ms')} ms")
        return 0
    say(f"{name}: {e['event'].removeprefix('mcp_')}: {e.get('reason')}")
    return 1
