"""The MCP servers as the supervised process (a config without `agent:`, SPEC).

metasup runs this in the agent's place, in the agent's jail and environment. It lives while the
servers do, and exits 1, naming the server and why, at the first `mcp_unhealthy` or `mcp_failed`
the journal records after this run's `launch`, or at once when a server is not `healthy` as it
starts. The loop then treats the servers as it treats an agent: a failure before `min_runtime`
is a quick failure, archived and rolled back to the good commit (whose server code the next
launch runs), `max_failures` of them in a row an emergency stop; a run past `min_runtime` marks
the commit good.

Light on purpose: the journal's reader and the standard library, the journal read from its
end, polled (it is append-only; 50 ms is well under any probe interval).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from metasup.effects.records.journal import events_since

POLL = 0.05  # seconds between looks at the journal
FAILURES = ("mcp_unhealthy", "mcp_failed")
WINDOW = 1 << 18  # bytes read back from the journal's end to find this run's launch


def main() -> int:
    folder = os.environ.get("METASUP_MCP_DIR")
    run = os.environ.get("METASUP_RUN")
    if not folder or not run:
        # Outside a supervisor's run (an experiment's shadow run): nothing to watch; it lives
        # until it is stopped, as a healthy agent would.
        signal.pause()
        return 0
    state_dir = Path(folder).parent
    events = state_dir / "events.jsonl"
    offset = _after_launch(events, int(run))
    ill = _not_healthy(state_dir / "state.json")
    if ill:
        print(f"metasup: MCP server {ill[0]} is {ill[1]} at launch", file=sys.stderr)
        return 1
    while True:
        records, offset = events_since(events, offset)
        for record in records:
            if record.get("event") in FAILURES:
                server = record.get("server")
                why = record.get("reason") or record.get("last_error") or "no reason given"
                print(f"metasup: MCP server {server} {record['event'][4:]}: {why}", file=sys.stderr)
                return 1
        time.sleep(POLL)  # the journal has no wake-up to offer a reader in a jail


def _after_launch(events: Path, run: int) -> int:
    """The journal offset just past this run's `launch` line (the end, when not found)."""
    try:
        with events.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - WINDOW)
            f.seek(start)
            data = f.read()
    except OSError:
        return 0
    end = len(data)
    while end > 0:
        begin = data.rfind(b"\n", 0, end - 1) + 1
        record = _record(data[begin:end])
        if record is not None and record.get("event") == "launch" and record.get("run") == run:
            return start + end
        end = begin
    return size


def _not_healthy(state: Path) -> tuple[str, str] | None:
    try:
        doc = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    servers = doc.get("mcp_servers") if isinstance(doc, dict) else None
    for name, st in sorted(servers.items()) if isinstance(servers, dict) else []:
        # Not up at launch is not up: a server still restarting after a failure may take longer
        # than min_runtime to fail again, and its commit would be marked good meanwhile.
        if st != "healthy":
            return str(name), str(st)
    return None


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


if __name__ == "__main__":
    raise SystemExit(main())
