"""The HTTP API: status, Prometheus metrics, events, and proposals, on 127.0.0.1.

It runs in a process of its own, started and stopped by `metasup run`. The supervisor binds the
listening socket itself (so `api.listen` port 0 resolves at once and the URL is in `state.json`
before the agent starts) and hands it to the child; the child serves from what the supervisor
writes anyway (`state.json`, `events.jsonl`) and writes proposals to the inbox, like `metasup
propose`. The HTTP stack (the wire, prometheus-client, jsonschema for proposals) therefore never
weighs on the supervisor, and an error in it cannot stop the loop: a child that dies is started
again on the same socket.

- `GET /supervisor/status`: the SPEC's status document.
- `GET /metrics`: the counters in the Prometheus text format.
- `GET /events?since=SEQ[&limit=N]`: the events after SEQ, oldest first.
- `POST /proposals` with `Authorization: Bearer <token>` (`<git-dir>/metasup/api-token`):
  202 `{"id"}`, 400 `{"errors"}`, 401 without the token, 413 past the size limit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import read_regular
from metasup.effects.records.journal import StateDir, public_status
from metasup.effects.records.statefile import clean_state


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_reply(status: int, doc: Any, **kw: Any) -> Reply:
    return Reply(status, (json.dumps(doc, separators=(",", ":")) + "\n").encode(), **kw)


class Api:
    """What each request gets; no sockets here, so it is tested directly too."""

    def __init__(self, git_dir: Path, workdir: Path, config: Path | None) -> None:
        self.dirs = StateDir.for_git_dir(git_dir)
        self.workdir = workdir
        self.config = config
        self._state: dict[str, Any] = {}
        self._state_key: tuple[int, int] | None = None
        self._policy: Any = None
        self._body = b""
        self._body_key: tuple[Any, int] | None = None
        self.max_body = 50 << 20

    def load_policy(self) -> Any:
        if self._policy is None:  # at start: the size limit is known before any body arrives
            from metasup.pipelines.integrity import load_repo_policy

            self._policy = load_repo_policy(self.workdir, self.config)
            self.max_body = self._policy.limits.max_proposal_bytes
        return self._policy

    # --- status ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """state.json, read again only when it changed."""
        try:
            st = os.stat(self.dirs.state)
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != self._state_key:
            try:
                doc = json.loads(read_regular(self.dirs.state) or b"{}")
            except (OSError, ValueError):
                return self._state  # caught mid-replace is impossible, but a reader may race
            self._state, self._state_key = clean_state(doc), key
        return self._state

    def status(self) -> dict[str, Any]:
        return public_status(self.state(), time.time())

    # --- routes ---------------------------------------------------------------------------

    def status_body(self) -> bytes:
        """The status document, serialised once per state change and second of uptime: the
        path watchers poll."""
        doc = self.state()
        now = time.time()
        key = (self._state_key, int(now))
        if key != self._body_key:
            body = json.dumps(public_status(doc, now), separators=(",", ":"))
            self._body = (body + "\n").encode()
            self._body_key = key
        return self._body

    def get(self, path: str, query: dict[str, str]) -> Reply:
        if path == "/supervisor/status":
            return Reply(200, self.status_body())
        if path == "/metrics":
            from metasup.faces.api.metrics import render

            body, content_type = render(self.status())
            return Reply(200, body, content_type)
        if path == "/events":
            return self.events(query)
        return json_reply(404, {"error": f"no such path: {path}"})

    def events(self, query: dict[str, str]) -> Reply:
        from metasup.effects.records.journal import read_events, tail_events

        try:
            since = int(query.get("since", "0"))
            limit = int(query.get("limit", "1000"))
        except ValueError:
            return json_reply(400, {"error": "since and limit are whole numbers"})
        if since < 0 or not 1 <= limit <= 10000:
            return json_reply(400, {"error": "since >= 0, and 1 <= limit <= 10000"})
        recent = tail_events(self.dirs.events)
        if not recent or recent[0].get("seq", 0) > since + 1:
            recent = list(read_events(self.dirs.events))  # SEQ is older than the tail
        found = [e for e in recent if isinstance(e.get("seq"), int) and e["seq"] > since]
        return json_reply(200, found[:limit])

    def authorized(self, header: str | None) -> bool:
        try:
            token = (self.dirs.root / "api-token").read_text().strip()
        except OSError:
            return False
        if not header or not header.startswith("Bearer ") or not token:
            return False
        import hmac

        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)

    def propose(self, body: bytes) -> Reply:
        from metasup.pipelines import proposals
        from metasup.pipelines.intake import INBOX, ProposalStore

        _, errors = proposals.validate(body, self.load_policy(), self.workdir)
        if errors:
            return json_reply(400, {"ok": False, "errors": [e.as_dict() for e in errors]})
        store = ProposalStore(self.workdir / INBOX, self.dirs.root / "proposals")
        return json_reply(202, {"ok": True, "id": store.enqueue(body)})
