"""The HTTP API against a running supervisor, with real HTTP clients on 127.0.0.1."""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import select
import socket
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from prometheus_client.parser import text_string_to_metric_families

from testing.fixtures import (
    SLEEPER,
    agent_config,
    events,
    run_metasup,
    state,
    supervising,
    wait_for,
    write_config,
)

ENV_AGENT = (
    "import json, os, time\n"
    "open('agent-env.json', 'w').write(json.dumps(dict(os.environ)))\n"
    "time.sleep(120)  # ok: a long-running agent\n"
)


def api_config(listen: str = "127.0.0.1:0", **config: Any) -> str:
    return agent_config(**config) + f'  api: {{listen: "{listen}"}}\n'


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(url: str, data: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_status_metrics_events_and_proposals(repo: Path) -> None:
    (repo / "agent.py").write_text(ENV_AGENT)
    (repo / ".gitignore").write_text("agent-env.json\n")
    write_config(repo, api_config(min_runtime="200ms"))
    with supervising(repo):
        url = wait_for(lambda: state(repo).get("api_url"), what="api_url in state.json")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        wait_for(lambda: state(repo).get("agent", {}).get("pid"), what="the agent's pid")
        token_file = repo / ".git" / "metasup" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()

        status, headers, body = request(url, "GET", "/supervisor/status")
        doc = json.loads(body)
        assert status == 200 and headers["content-type"] == "application/json"
        for key in ("status", "current_commit", "good_commit", "consecutive_failures", "uptime",
                    "uptime_s", "run", "agent", "mcp_servers", "experiments", "strategy",
                    "counters"):  # fmt: skip
            assert key in doc, key
        assert doc["status"] == "running" and doc["run"] == 1
        assert set(doc["agent"]) >= {"pid", "state", "rss_mb", "cpu_percent"}
        assert "token" not in doc["agent"] and "helper_trees" not in doc
        # Created, then written: wait for the whole document.
        written = repo / "agent-env.json"
        text = wait_for(lambda: written.exists() and written.read_text(), what="the agent's env")
        env = json.loads(text)
        assert env["METASUP_API"] == url + "/supervisor/status"

        status, headers, body = request(url, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["metasup_cycles"].samples[0].value == 1
        assert families["metasup_snapshots"].type == "counter"
        for name in ("metasup_rollbacks", "metasup_quick_failures", "metasup_emergency_stops",
                     "metasup_proposals_received", "metasup_proposals_rejected",
                     "metasup_proposals_applied", "metasup_experiments_passed",
                     "metasup_experiments_failed", "metasup_mcp_restarts",
                     "metasup_agent_rss_bytes", "metasup_agent_cpu_percent",
                     "metasup_last_crash_to_relaunch_seconds"):  # fmt: skip
            assert name in families, name
        running = [s for s in families["metasup_status"].samples if s.labels["status"] == "running"]
        assert running[0].value == 1

        proposal = json.dumps(
            {"reason": "notes", "changes": [{"file": "notes.txt", "content": "hi\n"}]}
        ).encode()
        assert request(url, "POST", "/proposals", proposal)[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert request(url, "POST", "/proposals", proposal, wrong)[0] == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, _, body = request(url, "POST", "/proposals", proposal, auth)
        assert status == 202
        pid = json.loads(body)["id"]
        wait_for(lambda: (repo / "notes.txt").exists(), what="the proposal applied")

        status, _, body = request(url, "POST", "/proposals", b"{not json", auth)
        assert status == 400 and json.loads(body)["errors"][0]["code"] == "schema"
        protected = json.dumps(
            {"reason": "x", "changes": [{"file": "metasup.yaml", "content": "x"}]}
        ).encode()
        status, _, body = request(url, "POST", "/proposals", protected, auth)
        assert status == 400 and json.loads(body)["errors"][0]["code"] == "path_protected"
        status, _, _ = request(
            url, "POST", "/proposals", b"{}", {**auth, "Content-Length": str(60 << 20)}
        )
        assert status == 413
        status, _, body = request(url, "GET", "/nope")
        assert status == 404 and json.loads(body) == {"error": "no such path: /nope"}
        assert request(url, "DELETE", "/supervisor/status")[0] == 405
        assert raw(url, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        pipelined = raw(
            url,
            b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /metrics HTTP/1.0\r\n\r\n",
        )
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", pipelined)
        assert statuses == [b"200", b"404", b"200"], "answered in order, each once"
        assert pipelined.count(b"HTTP/1.1 200 OK") == 2 and b"HTTP/1.1 404 Not Found" in pipelined
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (protected[:9], protected[9:]))
        chunked = raw(
            url,
            b"POST /proposals HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n" + chunks + b"0\r\n\r\n",
        )
        assert chunked.startswith(b"HTTP/1.1 400 ") and b"path_protected" in chunked, "read whole"
        assert b"Traceback" not in raw(url, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")

        seqs = [e["seq"] for e in events(repo)]
        status, _, body = request(url, "GET", f"/events?since={seqs[2]}")
        got = json.loads(body)
        assert status == 200 and [e["seq"] for e in got][:3] == seqs[3:6]
        assert any(e["event"] == "proposal_applied" and e["id"] == pid for e in got)
        assert request(url, "GET", "/events?since=x")[0] == 400
        assert request(url, "GET", "/events?since=0&limit=0")[0] == 400

        shown = run_metasup(repo, "status")
        assert f"api:      {url}" in shown.stdout
    # The API stops with the supervisor.
    try:
        request(url, "GET", "/supervisor/status")
        raise AssertionError("the API outlived the supervisor")
    except OSError:
        pass


def test_a_remote_listen_address_needs_allow_remote(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, api_config(listen="0.0.0.0:0"))
    out = run_metasup(repo, "run")
    assert out.returncode == 2
    assert "supervisor.api.listen: 0.0.0.0 is not a loopback address" in out.stderr


def test_a_port_in_use_is_a_clear_error(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        write_config(repo, api_config(listen=f"127.0.0.1:{port}"))
        out = run_metasup(repo, "run", timeout=30)
    assert out.returncode == 2
    assert f"cannot serve the API on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr and not os.path.exists(repo / "agent-ran")


def test_a_burst_of_clients_waits_in_the_listen_queue(repo: Path) -> None:
    """300 clients connect while the API cannot accept (stopped): the kernel queues them all,
    and each is answered once it runs again (asyncio's own backlog of 100 dropped the rest)."""
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, api_config())
    with supervising(repo) as proc:
        url = wait_for(lambda: state(repo).get("api_url"), what="the API's URL")
        parts = urlsplit(url)
        request(url, "GET", "/supervisor/status")  # serving
        (api,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "metasup.faces.api" in p.cmdline()
        ]
        api.suspend()
        clients = []
        try:
            for _ in range(300):
                s = socket.socket()
                s.setblocking(False)
                assert s.connect_ex((parts.hostname, parts.port)) in (0, errno.EINPROGRESS)
                clients.append(s)
            pending = set(clients)
            deadline = time.monotonic() + 5.0
            while pending and time.monotonic() < deadline:
                _, writable, _ = select.select([], list(pending), [], 0.1)
                pending -= set(writable)
            assert not pending, f"{len(pending)} of 300 connections not established"
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in clients)
        finally:
            api.resume()
        for s in clients:
            s.setblocking(True)
            s.settimeout(10)
            s.sendall(b"GET /supervisor/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for s in clients:
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            s.close()
            assert out.startswith(b"HTTP/1.1 200 OK")
