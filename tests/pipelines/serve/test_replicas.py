"""Replicas of the good commit behind the front door, on a real repository, each in a pooled
worktree and a real jail: ready on their health path, replaced when one is killed, moved to a new
good commit, all gone when serving stops."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

from metasup.effects.git.repo import GitRepo
from metasup.effects.process.jail import Jail
from metasup.effects.process.spawn import Reaper
from metasup.effects.process.view import make_view
from metasup.facts.settings import SandboxConfig, ServeConfig
from metasup.pipelines.serve.replicas import ReplicaSet
from testing.fixtures import git, make_repo, marked_pids, wait_for
from tests.pipelines.serve.front_door import Proxy

APP = textwrap.dedent(
    """
    import os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    VERSION = "v1"
    FAILING = False
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def log_message(self, *a): pass
        def do_GET(self):
            if self.path == "/slow":
                time.sleep(0.3)  # ok: a request that takes its time, to build up load
            body = f"{VERSION} {os.environ['METASUP_REPLICA']}".encode()
            self.send_response(500 if FAILING and self.path != "/health" else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)


class Serving(Proxy):
    def __init__(
        self,
        repo: Path,
        marker: str,
        cfg: ServeConfig | None = None,
        sandbox: SandboxConfig | None = None,
    ) -> None:
        cfg = cfg or ServeConfig(min_replicas=2, max_replicas=2)
        super().__init__(cfg)
        sandbox = sandbox or SandboxConfig(writable=())
        self.reaper = Reaper()
        self.replicas = ReplicaSet(
            GitRepo(repo),
            repo / ".git" / "metasup" / "worktrees",
            ("python3", "app.py", marker),
            {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
            cfg,
            self.front,
            self.events.append,
            self.reaper,
            jail=Jail(sandbox, reaper=self.reaper),
            view=lambda here: make_view(here, sandbox=sandbox),
            quiet_s=0.5,
        )
        self.runner = asyncio.run_coroutine_threadsafe(self.replicas.run(), self.loop)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def get(self, path: str = "/") -> tuple[int, str]:
        conn = self.client()
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()

    def stop(self) -> None:
        self.call(self.replicas.stop(), 60)
        self.runner.result(10)
        super().stop()


def test_replicas_serve_are_replaced_follow_the_good_commit_and_go(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "app.py").write_text(APP)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    v1 = git(repo, "rev-parse", "HEAD").strip()
    (repo / "app.py").write_text(APP.replace('VERSION = "v1"', 'VERSION = "v2"'))
    git(repo, "commit", "-qam", "v2")
    v2 = git(repo, "rev-parse", "HEAD").strip()
    marker = f"replica:{tmp_path}"
    serving = Serving(repo, marker)
    try:
        serving.call(serving.replicas.follow(v1))
        wait_for(lambda: len(serving.named("replica_started")) == 2, what="two replicas ready")
        answers = {serving.get() for _ in range(8)}
        assert {status for status, _ in answers} == {200}
        assert {text.split()[0] for _, text in answers} == {"v1"}
        assert len({text for _, text in answers}) == 2  # both replicas take requests
        # A replica killed (the app inside its jail): taken out, reported, replaced.
        victim = marked_pids(marker, jail=False)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: serving.named("replica_stopped") or serving.runner.done(),
            what="the death reported",
        )
        assert not serving.runner.done(), serving.runner.exception()
        assert serving.named("replica_stopped")[0]["reason"] == "died"
        wait_for(lambda: len(serving.named("replica_started")) == 3, what="a replacement")
        assert {serving.get()[0] for _ in range(8)} == {200}
        # A new good commit: replicas on it first, then the old ones go.
        serving.call(serving.replicas.follow(v2))  # the loop rolls the replicas over
        wait_for(lambda: len(serving.named("replica_started")) == 5, what="two on v2")
        wait_for(lambda: len(serving.front.replicas) == 2, what="the old ones gone")
        assert {serving.get()[1].split()[0] for _ in range(8)} == {"v2"}
        # the old ones are out of the routing first, and reported once stopped
        wait_for(lambda: len(serving.named("replica_stopped")) == 3, what="three stopped")
        assert {e["commit"] for e in serving.named("replica_stopped")} == {v1}
    finally:
        serving.stop()
    assert marked_pids(marker) == []  # every replica's tree ended with the serving
    assert serving.front.replicas == []


def test_replicas_scale_up_under_load_and_down_after_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "app.py").write_text(APP)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    marker = f"replica:{tmp_path}"
    cfg = ServeConfig(min_replicas=1, max_replicas=3, target_inflight=1)
    serving = Serving(repo, marker, cfg)
    loading = threading.Event()
    codes: list[int] = []

    def client() -> None:
        while loading.is_set():
            codes.append(serving.get("/slow")[0])

    try:
        serving.call(serving.replicas.follow(git(repo, "rev-parse", "HEAD").strip()))
        wait_for(lambda: len(serving.named("replica_started")) == 1, what="one replica")
        loading.set()
        clients = [threading.Thread(target=client) for _ in range(3)]
        for t in clients:
            t.start()
        # three requests in flight on one replica, one wanted on each: up to three at once
        wait_for(lambda: serving.named("scaled"), what="a scale-up")
        assert serving.named("scaled")[0]["to"] > 1
        wait_for(lambda: sum(r.ready for r in serving.front.replicas) == 3, 30, "three ready")
        loading.clear()
        for t in clients:
            t.join(10)
        # quiet: one replica goes at a time, each after a quiet spell, down to the minimum
        wait_for(lambda: len(serving.front.replicas) == 1, 30, "back to one")
        downs = [e for e in serving.named("scaled") if e["to"] < e["from"]]
        assert [(e["from"], e["to"]) for e in downs] == [(3, 2), (2, 1)]
        # out of the routing first, then stopped: the event follows the stop
        wait_for(lambda: len(serving.named("replica_stopped")) == 2, what="two stopped")
        assert {e["reason"] for e in serving.named("replica_stopped")} == {"scaled down"}
        assert set(codes) == {200}  # no request failed while replicas came and went
    finally:
        loading.clear()
        serving.stop()
    assert marked_pids(marker) == []


def _two_commits(tmp_path: Path, failing: bool) -> tuple[Path, str, str]:
    repo = make_repo(tmp_path / "repo")
    (repo / "app.py").write_text(APP)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "good")
    good = git(repo, "rev-parse", "HEAD").strip()
    second = APP.replace('VERSION = "v1"', 'VERSION = "v2"')
    (repo / "app.py").write_text(second.replace("FAILING = False", f"FAILING = {failing}"))
    git(repo, "commit", "-qam", "candidate")
    return repo, good, git(repo, "rev-parse", "HEAD").strip()


def _load(serving: Serving, until: Any, limit: int = 3000) -> list[tuple[int, str]]:
    """Requests one after another (sessions of their own, no key) until `until()`."""
    seen = []
    while not until() and len(seen) < limit:
        seen.append(serving.get())
    return seen


def test_a_failing_candidate_is_reverted_by_its_mirrored_answers_before_a_client_sees_one(
    tmp_path: Path,
) -> None:
    repo, good, bad = _two_commits(tmp_path, failing=True)
    cfg = ServeConfig(min_replicas=1, max_replicas=1, mirror=0.5)
    serving = Serving(repo, f"replica:{tmp_path}", cfg)
    try:
        serving.call(serving.replicas.follow(good))
        wait_for(lambda: serving.named("replica_started"), what="a good replica")
        assert serving.replicas.offer(bad, "exp-1")
        seen = _load(serving, lambda: serving.named("canary_reverted"))
        reverted = serving.named("canary_reverted")[0]
        assert reverted["id"] == "exp-1" and reverted["commit"] == bad
        assert reverted["reason"].startswith("mirrored: error rate")
        assert [e["stage"] for e in serving.named("canary_step")] == ["mirror"]
        assert {status for status, _ in seen} == {200}  # every answer a client saw was good's
        assert {text.split()[0] for _, text in seen} == {"v1"}
        wait_for(lambda: not [r for r in serving.front.replicas if r.arm == "candidate"],
                 what="the candidate's replica gone")  # fmt: skip
    finally:
        serving.stop()


def test_a_failing_canary_is_reverted_at_the_first_breach_errors_bounded_by_its_share(
    tmp_path: Path,
) -> None:
    from metasup.facts.settings import CanaryConfig

    repo, good, bad = _two_commits(tmp_path, failing=True)
    canary = CanaryConfig(start=0.1, steps=(0.5, 1.0), step_requests=20)
    cfg = ServeConfig(min_replicas=1, max_replicas=1, mirror=0.0, canary=canary)
    serving = Serving(repo, f"replica:{tmp_path}", cfg)
    try:
        serving.call(serving.replicas.follow(good))
        wait_for(lambda: serving.named("replica_started"), what="a good replica")
        serving.replicas.offer(bad, "exp-2")
        wait_for(lambda: serving.named("canary_step"), what="the canary on")
        seen = _load(serving, lambda: serving.named("canary_reverted"))
        seen += [serving.get() for _ in range(20)]  # after the revert: good's alone
        errors = sum(status == 500 for status, _ in seen)
        assert 1 <= errors <= 0.1 * len(seen) + 2, (errors, len(seen))
        assert all(status == 200 for status, _ in seen[-20:])
        assert "error rate" in serving.named("canary_reverted")[0]["reason"]
        assert serving.named("canary_reverted")[0]["share"] == 0.1
    finally:
        serving.stop()


def test_a_healthy_candidate_steps_up_to_all_the_traffic_and_is_promoted(tmp_path: Path) -> None:
    from metasup.facts.settings import CanaryConfig

    repo, good, better = _two_commits(tmp_path, failing=False)
    canary = CanaryConfig(start=0.25, steps=(0.5, 1.0), step_requests=10, max_p99_ratio=50)
    cfg = ServeConfig(min_replicas=1, max_replicas=1, mirror=0.5, canary=canary)
    serving = Serving(repo, f"replica:{tmp_path}", cfg)
    try:
        serving.call(serving.replicas.follow(good))
        wait_for(lambda: serving.named("replica_started"), what="a good replica")
        serving.replicas.offer(better, "exp-3")
        seen = _load(serving, lambda: serving.named("canary_promoted"))
        assert serving.named("canary_promoted")[0] == {
            "event": "canary_promoted", "id": "exp-3", "commit": better,
        }  # fmt: skip
        steps = [(e["stage"], e["share"]) for e in serving.named("canary_step")]
        assert steps == [("mirror", 0.5), ("canary", 0.25), ("canary", 0.5), ("canary", 1.0)]
        assert {status for status, _ in seen} == {200}
        versions = [text.split()[0] for _, text in seen]
        assert "v2" in versions and not serving.named("canary_reverted")
    finally:
        serving.stop()


SQUATTED = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    # Never listens: says its port where another process (the test, playing the squatter
    # a candidate's replica could be) will bind it and answer for it.
    Path(sys.argv[1], "port").write_text(os.environ["PORT"])
    time.sleep(600)  # ok: it only has to stay alive
    """
)


def test_a_port_answered_by_another_process_never_takes_requests(tmp_path: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    repo = make_repo(tmp_path / "repo")
    (repo / "app.py").write_text(SQUATTED)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "squatted")
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = ServeConfig(min_replicas=1, max_replicas=1)
    # the folder is the replica's argument: where it writes, and how the test finds it
    serving = Serving(repo, str(shared), cfg, SandboxConfig(writable=(str(shared),)))
    squatters: list[ThreadingHTTPServer] = []

    class Impostor(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"impostor")

    try:
        serving.call(serving.replicas.follow(git(repo, "rev-parse", "HEAD").strip()))
        port = int(wait_for(lambda: (shared / "port").exists() and (shared / "port").read_text()))
        squatter = ThreadingHTTPServer(("127.0.0.1", port), Impostor)
        squatters.append(squatter)
        threading.Thread(target=squatter.serve_forever, args=(0.05,), daemon=True).start()
        stopped = wait_for(lambda: serving.named("replica_stopped"), 30, "the replica refused")
        assert stopped[0]["reason"] == "its port is answered by another process"
        assert not serving.named("replica_started")
        assert serving.get()[0] in (502, 503)  # never the impostor's answer
    finally:
        for squatter in squatters:
            squatter.shutdown()
            squatter.server_close()
        serving.stop()
    assert marked_pids(str(shared)) == []
