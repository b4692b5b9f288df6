"""Serving through `metasup run`: the front door at `serve_url`, replicas of the good commit in
their jails answering through it, a killed replica replaced, all gone when metasup stops."""

from __future__ import annotations

import http.client
import json
import os
import signal
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

from testing.fixtures import (
    agent_config,
    events,
    git,
    marked_pids,
    run_metasup,
    state,
    supervising,
    wait_for,
    write_config,
)

APP = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def log_message(self, *a): pass
        def do_GET(self):
            body = f"v1 {os.environ.get('METASUP_REPLICA', 'main')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    # The main agent runs too (its own port); replicas get theirs in PORT.
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), H).serve_forever()
    """
)


def _get(url: str, path: str = "/") -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def test_replicas_serve_through_the_front_door_and_are_replaced(repo: Path) -> None:
    (repo / "app.py").write_text(APP)
    (repo / ".gitignore").write_text("__pycache__/\n")
    marker = f"served:{repo}"
    cfg = agent_config(
        extra="  serve:\n    listen: '127.0.0.1:0'\n    replicas: {min: 2, max: 2}\n"
    ).replace("agent.py]", f"app.py, '{marker}']")
    write_config(repo, cfg)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the app")
    with supervising(repo):
        url = wait_for(lambda: state(repo).get("serve_url"), what="serve_url")
        wait_for(lambda: len(_named(repo, "replica_started")) == 2, 30, "two replicas")
        answers = [_get(url) for _ in range(8)]
        assert {status for status, _ in answers} == {200}
        assert {text for _, text in answers} <= {"v1 0", "v1 1"} and len(set(answers)) == 2
        # The front door's status reaches state.json within a second or so.
        serve = wait_for(lambda: _served(repo) >= 8 and state(repo)["serve"], what="8 counted")
        assert serve["url"] == url and serve["arms"]["good"]["p99_ms"] is not None
        shown = json.loads(run_metasup(repo, "status", "--json").stdout)
        assert shown["serve_url"] == url and shown["serve"]["arms"]["good"]["requests"] >= 8
        assert len(shown["serve"]["replicas"]) == 2
        good = state(repo)["good_commit"]
        assert {e["commit"] for e in _named(repo, "replica_started")} == {good}
        # One replica's app killed inside its jail: reported, and another takes its place.
        replicas = [p for p in marked_pids(marker, jail=False) if _is_replica(p)]
        assert len(replicas) == 2
        os.kill(replicas[0], signal.SIGKILL)
        wait_for(lambda: _named(repo, "replica_stopped"), what="the death journalled")
        wait_for(lambda: len(_named(repo, "replica_started")) == 3, 30, "a replacement")
        assert {_get(url)[0] for _ in range(6)} == {200}
    assert marked_pids(marker) == []  # the agent, the replicas and their jails: all gone
    assert next(e["reason"] for e in _named(repo, "replica_stopped")) == "died"


def _named(repo: Path, name: str) -> list[dict[str, object]]:
    return [e for e in events(repo) if e["event"] == name]


def _served(repo: Path) -> int:
    serve = state(repo).get("serve") or {}
    return int(serve.get("arms", {}).get("good", {}).get("requests", 0))


def _is_replica(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"METASUP_REPLICA=" in f.read()
    except OSError:
        return False


def test_a_front_door_address_in_use_is_a_clear_error(repo: Path) -> None:
    import socket

    (repo / "app.py").write_text(APP)
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    write_config(
        repo,
        agent_config(extra=f"  serve: {{listen: '127.0.0.1:{port}'}}\n").replace(
            "agent.py]", "app.py]"
        ),
    )
    out = run_metasup(repo, "run", "--max-cycles", "1")
    taken.close()
    assert out.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
