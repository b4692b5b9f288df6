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
        "  api: {listen: '127.0.0.1:0'}\n"
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
        # /metrics: per arm, from the same status
        from prometheus_client.parser import text_string_to_metric_families

        api = state(repo)["api_url"]
        families = {f.name: f for f in text_string_to_metric_families(_get(api, "/metrics")[1])}
        served = {s.labels["arm"]: s.value for s in families["metasup_serve_arm_requests"].samples}
        assert served["good"] >= 8 and served["candidate"] == 0
        p99 = {s.labels["arm"]: s.value for s in families["metasup_serve_arm_p99_seconds"].samples}
        assert 0 < p99["good"] < 1
        ready = {s.labels["arm"]: s.value for s in families["metasup_serve_replicas_ready"].samples}
        assert ready == {"good": 2.0, "candidate": 0.0}
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


def _marked(repo: Path, commit: object) -> list[dict[str, object]]:
    return [e for e in _named(repo, "mark_good") if e["commit"] == commit]


def _reverted_archives(repo: Path) -> list[dict[str, object]]:
    return [e for e in _named(repo, "archive") if "reverted" in str(e.get("ref"))]


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


CANARY_APP = APP.replace(
    "    def do_GET(self):\n",
    "    def do_GET(self):\n"
    "        if self.path != '/health' and open('mode.txt').read().strip() == 'fail':\n"
    "            self.send_response(500)\n"
    "            self.send_header('Content-Length', '0')\n"
    "            self.end_headers()\n"
    "            return\n",
)


def test_a_judged_winner_goes_on_live_traffic_reverted_or_promoted(
    repo: Path, tmp_path: Path
) -> None:
    """Experiment mode with serving: a proposal that passes its checks is not merged at once;
    its canary decides. One that fails on live traffic is reverted (archived, its proposal
    rejected, nothing merged); one that holds is promoted, then merged."""
    (repo / "app.py").write_text(CANARY_APP)
    (repo / "mode.txt").write_text("ok\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    marker = f"canary:{repo}"
    extra = (
        "  proposals: {mode: experiment}\n"
        "  experiments: {checks: [[python3, -c, pass]], timeout: 30s}\n"
        "  serve:\n    listen: '127.0.0.1:0'\n    replicas: {min: 1, max: 1}\n"
        "    mirror: 0.5\n"
        "    canary: {start: 0.25, steps: [0.5, 1.0], step_requests: 10, max_p99_ratio: 50}\n"
    )
    write_config(repo, agent_config(extra=extra).replace("agent.py]", f"app.py, '{marker}']"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the app")

    def propose(name: str, mode: str) -> None:
        doc = {"reason": name, "changes": [{"file": "mode.txt", "content": mode + "\n"}]}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        out = run_metasup(repo, "propose", str(path))
        assert out.returncode == 0, out.stderr

    def load_until(event: str) -> list[int]:
        url = state(repo)["serve_url"]
        codes: list[int] = []
        wait_for(lambda: codes.append(_get(url)[0]) or _named(repo, event), 60, event)
        return codes

    with supervising(repo):
        wait_for(lambda: len(_named(repo, "replica_started")) == 1, 30, "a replica")
        propose("broken", "fail")
        wait_for(lambda: _named(repo, "experiment_passed"), 30, "the offline judgement")
        codes = load_until("canary_reverted")
        assert set(codes) == {200}  # its mirrored answers gave it away: no client saw one
        reverted = _named(repo, "canary_reverted")[0]
        assert reverted["reason"].startswith("mirrored: error rate")
        archive = wait_for(lambda: _reverted_archives(repo), what="the archive")
        assert git(repo, "show", f"{archive[0]['ref']}:mode.txt").strip() == "fail"
        assert (repo / "mode.txt").read_text() == "ok\n"  # nothing merged
        propose("better", "ok2")
        wait_for(lambda: len(_named(repo, "experiment_passed")) == 2, 30, "the second judged")
        codes = load_until("canary_promoted")
        assert set(codes) == {200}
        steps = [e["share"] for e in _named(repo, "canary_step")]
        assert steps[-3:] == [0.25, 0.5, 1.0]
        merged = wait_for(lambda: _named(repo, "merged"), 30, "the merge")[0]
        assert git(repo, "show", "HEAD:mode.txt").strip() == "ok2"
        # A fast-forward to what served the traffic: good at once, not after min_runtime.
        good = wait_for(lambda: _marked(repo, merged["commit"]), 30, "mark_good")[0]
        assert good["reason"] == "canary promoted"
        assert git(repo, "rev-parse", "refs/metasup/good").strip() == merged["commit"]
    assert marked_pids(marker) == []


EVOLVED_APP = APP.replace(
    "    def do_GET(self):\n",
    "    def do_GET(self):\n"
    "        strict = os.path.exists(STRICT)\n"
    "        if self.path != '/health' and strict and open('gaps.txt').read() != START:\n"
    "            self.send_response(500)\n"
    "            self.send_header('Content-Length', '0')\n"
    "            self.end_headers()\n"
    "            return\n",
)


def _evolving_and_serving(path: Path) -> Path:
    """The evolution demo's repository with continuous rounds and a front door whose canary
    ends after 10 requests a step."""
    from tests.e2e.test_evolve import config, evolution_repo

    body = config(generations=1, repeats=1).replace(
        "  evolution:\n", "  evolution:\n    mode: continuous\n    trigger: {every: 200ms}\n"
    )
    body = body.replace("supervisor:\n", "supervisor:\n  min_runtime: 300ms\n") + (
        "  serve:\n    listen: '127.0.0.1:0'\n    replicas: {min: 1, max: 1}\n"
        "    mirror: 0.5\n"
        "    canary: {start: 0.25, steps: [1.0], step_requests: 10, max_p99_ratio: 50}\n"
    )
    return evolution_repo(path, body)


def test_an_evolution_rounds_winner_goes_on_live_traffic_before_its_merge(
    tmp_path: Path,
) -> None:
    """Continuous evolution with serving: a round's winner is merged only once its canary is
    promoted. While the app fails any gaps but the first (a file in the git dir says so), each
    winner is reverted: archived as evo-<id>-reverted, nothing merged. Without it, the next
    round's winner is promoted, merged and marked good."""
    repo = _evolving_and_serving(tmp_path / "r")
    strict = repo / ".git" / "strict"  # the git dir: the jail binds it, read-only
    strict.write_text("")
    start = (repo / "gaps.txt").read_text()
    app = f"STRICT = {str(strict)!r}\nSTART = {start!r}\n" + EVOLVED_APP
    (repo / "agent.py").write_text(app)
    git(repo, "commit", "-qam", "an app that serves")
    base = git(repo, "rev-parse", "HEAD").strip()

    def load_until(event: str, timeout: float) -> list[int]:
        url = state(repo)["serve_url"]
        codes: list[int] = []
        wait_for(lambda: codes.append(_get(url)[0]) or _named(repo, event), timeout, event)
        return codes

    with supervising(repo):
        wait_for(lambda: _named(repo, "replica_started"), 30, "a replica")
        codes = load_until("canary_reverted", 90)
        assert set(codes) == {200}  # its mirrored answers gave it away
        reverted = _named(repo, "canary_reverted")[0]
        finished = next(e for e in _named(repo, "evolution_finished") if e.get("promoted"))
        assert reverted["id"] == finished["best_id"]
        assert reverted["commit"] == finished["best_commit"]
        ref = f"evo-{reverted['id']}-reverted"
        archive = wait_for(
            lambda: [e for e in _reverted_archives(repo) if ref in str(e["ref"])], what=ref
        )[0]
        assert archive["commit"] == finished["best_commit"]
        assert _named(repo, "merged") == [] and git(repo, "rev-parse", "HEAD").strip() == base
        strict.unlink()
        codes = load_until("canary_promoted", 90)
        promoted = _named(repo, "canary_promoted")[0]
        assert set(codes) == {200}
        merged = wait_for(lambda: _named(repo, "merged"), 30, "the merge")[0]
        assert merged["candidate"] == promoted["commit"] and merged["id"] == promoted["id"]
        good = wait_for(lambda: _marked(repo, merged["commit"]), 30, "mark_good")[0]
        assert good["reason"] == "canary promoted"


def _front_doors(repo: Path) -> list[int]:
    """The front door processes serving `repo` (`--workdir` names it)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = " ".join(p.info["cmdline"] or [])
        if "metasup.pipelines.serve" in argv and str(repo) in argv:
            found.append(p.pid)
    return found


def test_a_killed_front_door_comes_back_on_the_same_address_without_its_old_replicas(
    repo: Path,
) -> None:
    """The front door's process killed with -9 (as an OOM killer would): its replicas go with
    it, a new one is started on the same socket and serves again."""
    (repo / "app.py").write_text(APP)
    (repo / ".gitignore").write_text("__pycache__/\n")
    marker = f"front:{repo}"
    extra = "  serve:\n    listen: '127.0.0.1:0'\n    replicas: {min: 1, max: 1}\n"
    write_config(repo, agent_config(extra=extra).replace("agent.py]", f"app.py, '{marker}']"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the app")
    with supervising(repo):
        url = wait_for(lambda: state(repo).get("serve_url"), what="serve_url")
        wait_for(lambda: _named(repo, "replica_started"), 30, "a replica")
        assert _get(url)[0] == 200
        (front,) = _front_doors(repo)
        first = [p for p in marked_pids(marker) if _is_replica(p)]
        assert first
        os.kill(front, signal.SIGKILL)
        wait_for(lambda: not [p for p in first if p in marked_pids(marker)], 15, "old replicas")
        wait_for(lambda: len(_named(repo, "replica_started")) >= 2, 30, "a new replica")
        status = wait_for(lambda: _try_get(url), 30, "the front door answering again")
        assert status == 200 and len(_front_doors(repo)) == 1
    assert marked_pids(marker) == []


def _try_get(url: str) -> int | None:
    try:
        return _get(url)[0]
    except OSError:
        return None


def test_a_front_door_that_keeps_dying_reverts_its_candidate_and_merges_nothing(
    repo: Path, tmp_path: Path
) -> None:
    """A candidate on the canary survives one death of the front door (offered again to the
    next); when the front door keeps dying, it is reverted, never merged unjudged."""
    (repo / "app.py").write_text(CANARY_APP)
    (repo / "mode.txt").write_text("ok\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    extra = (
        "  proposals: {mode: experiment}\n"
        "  experiments: {checks: [[python3, -c, pass]], timeout: 30s}\n"
        "  serve:\n    listen: '127.0.0.1:0'\n    replicas: {min: 1, max: 1}\n"
        "    mirror: 0.5\n    canary: {step_requests: 100000}\n"
    )
    write_config(repo, agent_config(extra=extra).replace("agent.py]", "app.py]"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the app")
    doc = {"reason": "ok2", "changes": [{"file": "mode.txt", "content": "ok2\n"}]}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with supervising(repo):
        wait_for(lambda: _named(repo, "replica_started"), 30, "a replica")
        assert run_metasup(repo, "propose", str(tmp_path / "p.json")).returncode == 0
        wait_for(lambda: _named(repo, "canary_step"), 30, "the candidate on the mirror")
        (front,) = _front_doors(repo)
        os.kill(front, signal.SIGKILL)
        # The next front door takes the candidate up again.
        wait_for(lambda: len(_named(repo, "canary_step")) >= 2, 30, "the canary again")
        assert _named(repo, "canary_reverted") == []
        for _ in range(3):  # three more deaths within the minute: given up on
            (front,) = wait_for(
                lambda old=front: [p for p in _front_doors(repo) if p != old], 30, "a front door"
            )
            os.kill(front, signal.SIGKILL)
        (reverted,) = wait_for(lambda: _named(repo, "canary_reverted"), 30, "the revert")
        assert reverted["reason"] == "the front door stopped before its canary ended"
        wait_for(lambda: _reverted_archives(repo), 30, "the archive")
        assert _named(repo, "merged") == []
        assert git(repo, "show", "HEAD:mode.txt").strip() == "ok"


def test_a_rounds_winner_on_the_canary_when_metasup_is_killed_goes_on_again_after(
    tmp_path: Path,
) -> None:
    """kill -9 of metasup while a round's winner is on the canary: the next start offers the
    same winner again (the journal says its canary never ended), and it is promoted and merged
    as if nothing happened; nothing was merged meanwhile."""
    repo = _evolving_and_serving(tmp_path / "r")
    (repo / "agent.py").write_text(APP)
    git(repo, "commit", "-qam", "an app that serves")
    with supervising(repo) as proc:
        # No traffic: the winner waits on the mirror stage for its copies.
        first = wait_for(lambda: _named(repo, "canary_step"), 90, "a winner on the canary")[0]
        proc.kill()
        proc.wait(timeout=20)
    assert _named(repo, "canary_promoted") == [] and _named(repo, "merged") == []
    with supervising(repo):
        again = wait_for(lambda: _named(repo, "canary_step")[1:], 30, "the winner offered again")
        assert again[0]["id"] == first["id"] and again[0]["commit"] == first["commit"]
        # serve_url read at each look: a new port (listen port 0) once the new state is written
        wait_for(
            lambda: _try_get(state(repo)["serve_url"]) == 200 and _named(repo, "canary_promoted"),
            60,
            "promoted",
        )
        merged = wait_for(lambda: _named(repo, "merged"), 30, "the merge")[0]
        assert merged["candidate"] == first["commit"] and merged["id"] == first["id"]
