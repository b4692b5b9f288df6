"""The replicas behind the front door: copies of the good commit's agent, each in a pooled
worktree of its own and its own jail, given a free port in `port_env`, ready once `health_path`
answers 200, replaced when they die, scaled between `min` and `max` on the requests in flight.

Runs in the front door's process, on its event loop; the git steps (a worktree moved to the
commit) go to a thread. A replica that dies is taken out of the routing at once (its requests in
flight were answered 502 by the proxy), reported, and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from metasup.decisions.serving import SCALE_DOWN_AFTER_S, scale
from metasup.effects.git import candidates
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.jail import Jail
from metasup.effects.process.sockets import listens_on
from metasup.effects.process.spawn import Child, Reaper, SpawnError, spawn
from metasup.effects.process.trees import stop_tree, subtree
from metasup.effects.process.view import View
from metasup.facts.settings import ServeConfig
from metasup.pipelines.serve.canary import CanaryRun
from metasup.pipelines.serve.front import Front, Replica

READY_TIMEOUT_S = 30.0  # a replica not answering its health path by then is stopped, replaced
TICK_S = 0.05
STOP_GRACE_S = 5.0


@dataclass
class Running:
    replica: Replica
    child: Child
    commit: str
    slot: str
    started: float


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def free_port() -> int:
    """A port nothing listens on now (the replica binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReplicaSet:
    def __init__(
        self,
        git: GitRepo,
        pool: Path,
        command: tuple[str, ...],
        env: Mapping[str, str],
        cfg: ServeConfig,
        front: Front,
        report: Callable[[dict[str, Any]], None],
        reaper: Reaper,
        jail: Jail | None = None,
        view: Callable[[Path], View] | None = None,
        log: IO[bytes] | None = None,
        quiet_s: float = SCALE_DOWN_AFTER_S,
    ) -> None:
        self.git = git
        self.pool = pool
        self.command = command
        self.env = dict(env)
        self.cfg = cfg
        self.front = front
        self.report = report
        self.reaper = reaper
        self.jail = jail
        self.view = view
        # The replicas' stdout and stderr, all of them: never ours (the supervisor reads it).
        self.log = log if log is not None else open(os.devnull, "wb")  # noqa: SIM115
        self.commit: str | None = None
        self.running: dict[str, Running] = {}
        self.wanted = cfg.min_replicas
        self.quiet_s = quiet_s  # low load this long before a replica goes
        self.canary: CanaryRun | None = None
        self._low_since: float | None = None
        self._next = 0
        self._session: ClientSession | None = None
        self._stopping = False

    # --- the commit the replicas run -----------------------------------------------------------

    async def follow(self, commit: str) -> None:
        """Run `commit` from now on. The loop starts replicas on it, and once as many are
        ready as are wanted, stops the ones on the commit before (each after its requests in
        flight). Everything happens on the loop: no two steps race."""
        self.commit = commit

    def offer(self, commit: str, candidate: str) -> bool:
        """Put a candidate (its commit passed its offline judgement) on live traffic: a replica
        of its own, then mirror and canary (`canary.CanaryRun`). False while another is on."""
        if self.canary is not None:
            return False
        self.canary = CanaryRun(self.cfg, self.front, candidate, commit, self.report)
        return True

    async def _candidate(self) -> None:
        """Start the candidate's replica; once the canary has its verdict, stop it."""
        run = self.canary
        if run is None:
            return
        mine = [r for r in self.running.values() if r.replica.arm == "candidate"]
        verdict = run.tick() if any(r.replica.ready for r in mine) or run.verdict else None
        if verdict is not None:
            for r in mine:
                await self._stop(r, "promoted" if verdict.promoted else "reverted")
            self.canary = None
            return
        if not mine and run.started:
            run.fail("the candidate's replica did not start or stopped")
        elif not mine:
            run.started = True
            await self._start(run.commit, arm="candidate")

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch, replace, roll, scale: until `stop`."""
        self._session = ClientSession(timeout=ClientTimeout(total=2))
        try:
            while not self._stopping:
                await self._tick()
                await asyncio.sleep(TICK_S)
        finally:
            await self._session.close()

    async def _tick(self) -> None:
        self.reaper.reap()
        for r in list(self.running.values()):
            code = self.reaper.pop(r.child.pid)
            if code is not None:
                self._remove(r)
                r.child.release()
                self.report(
                    {
                        "event": "replica_stopped",
                        "replica": r.replica.id,
                        "commit": r.commit,
                        "code": r.child.exit_code(code),
                        "reason": "died",
                    }
                )
                if r.replica.arm == "candidate" and self.canary is not None:
                    self.canary.fail("the candidate's replica died")
            elif not r.replica.ready:
                await self._probe(r)
        if self.commit is None or self._stopping:
            return
        await self._candidate()
        good = [r for r in self.running.values() if r.replica.arm == "good"]
        current = [r for r in good if r.commit == self.commit]
        ready = [r for r in current if r.replica.ready]
        inflight = sum(r.replica.inflight for r in self.running.values() if r.replica.ready)
        decided = scale(
            self.cfg, max(len(ready), 1), inflight, self._low_since, time.monotonic(), self.quiet_s
        )
        self._low_since = decided.low_since
        if decided.target != self.wanted and len(ready) == len(current):
            self.report({"event": "scaled", "from": self.wanted, "to": decided.target,
                         "inflight": inflight})  # fmt: skip
            self.wanted = decided.target
        for _ in range(self.wanted - len(current)):  # a start that fails is tried next tick
            await self._start(self.commit)
        if len(ready) >= self.wanted:  # the commit before goes once this one is ready
            for r in [r for r in good if r.commit != self.commit]:
                await self._stop(r, "replaced by the commit " + self.commit[:12])
        extra = len(current) - self.wanted
        for r in sorted(ready, key=lambda r: r.replica.inflight)[: max(extra, 0)]:
            await self._stop(r, "scaled down")

    async def _probe(self, r: Running) -> None:
        assert self._session is not None
        try:
            async with self._session.get(r.replica.url + self.cfg.health_path) as answer:
                ok = answer.status == 200
        except (ClientError, TimeoutError, ConnectionError):
            ok = False
        if ok and listens_on(subtree(r.child.pid), _port(r.replica.url)) is False:
            # Answered, but not by the replica: another process holds its port (a candidate's
            # replica on the same loopback could). Never routed to; a new one gets a new port.
            await self._stop(r, "its port is answered by another process")
            return
        if ok:
            r.replica.ready = True
            self.report(
                {
                    "event": "replica_started",
                    "replica": r.replica.id,
                    "commit": r.commit,
                    "arm": r.replica.arm,
                    "url": r.replica.url,
                    "ready_ms": round((time.monotonic() - r.started) * 1000, 1),
                }
            )
            if r.replica.arm == "candidate" and self.canary is not None:
                self.canary.begin()
        elif time.monotonic() - r.started > READY_TIMEOUT_S:
            await self._stop(r, f"not ready after {READY_TIMEOUT_S:g}s")

    # --- one replica ---------------------------------------------------------------------------

    async def _start(self, commit: str, arm: str = "good") -> None:
        n, self._next = self._next, self._next + 1
        slot = self._free_slot()
        # The git step on a thread: the proxy goes on answering meanwhile. Only the loop's
        # tick starts replicas, one at a time, so the repository object has one user.
        here = await asyncio.to_thread(candidates.worktree_at, self.git, slot, self.pool, commit)
        port = free_port()
        env = {**self.env, self.cfg.port_env: str(port), "METASUP_COMMIT": commit,
               "METASUP_REPLICA": str(n)}  # fmt: skip
        prepared = self.jail.prepare(self.view(here)) if self.jail and self.view else None
        try:
            child = spawn(
                self.command, cwd=here, env=env, capture=False, jail=prepared, output=self.log,
            )  # fmt: skip
        except SpawnError as e:
            self.report({"event": "replica_stopped", "replica": f"r{n}", "commit": commit,
                         "code": None, "reason": str(e)})  # fmt: skip
            return
        replica = Replica(f"r{n}", f"http://127.0.0.1:{port}", arm=arm, ready=False)
        self.running[slot] = Running(replica, child, commit, slot, time.monotonic())
        self.front.replicas = [*self.front.replicas, replica]

    def _free_slot(self) -> str:
        n = 0
        while f"serve-{n}" in self.running:
            n += 1
        return f"serve-{n}"

    def _remove(self, r: Running) -> None:
        self.running.pop(r.slot, None)
        self.front.replicas = [x for x in self.front.replicas if x is not r.replica]

    async def _stop(self, r: Running, reason: str) -> None:
        """Out of the routing first; its requests in flight finish (up to the grace), then
        its whole tree is stopped."""
        r.replica.ready = False
        deadline = time.monotonic() + STOP_GRACE_S
        while r.replica.inflight and time.monotonic() < deadline:
            await asyncio.sleep(TICK_S)
        self._remove(r)
        await asyncio.to_thread(
            stop_tree, r.child.pgid, r.child.token, signal.SIGTERM, STOP_GRACE_S, self.reaper,
            jailed=r.child.jailed,
        )  # fmt: skip
        code = self.reaper.wait(r.child.pid, STOP_GRACE_S)
        r.child.release()
        self.report({"event": "replica_stopped", "replica": r.replica.id, "commit": r.commit,
                     "code": None if code is None else r.child.exit_code(code),
                     "reason": reason})  # fmt: skip

    async def stop(self) -> None:
        self._stopping = True
        for r in list(self.running.values()):
            with contextlib.suppress(Exception):
                await self._stop(r, "stopping")
