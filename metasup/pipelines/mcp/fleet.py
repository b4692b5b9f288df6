"""The supervisor's side of the MCP servers: the fleet worker, its reports, the commit it runs.

The servers run in a worker process (`metasup.pipelines.mcp.worker`) that the supervisor
starts before the first agent launch and stops after the last. This side never imports the `mcp`
SDK: it writes commands to the worker's stdin, reads its report lines from a pipe the
supervisor's selector watches (both in `protocol`), journals the events and keeps each
server's status for `state.json`.

Servers are tied to the commit: before each launch, the servers whose watched paths differ
between the commit they run and the one about to run are restarted on the new code, and the
agent starts once they answer again (or their start timeout passes).
"""

from __future__ import annotations

import selectors
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasup.decisions import mcp_watch
from metasup.effects.process.spawn import Reaper, SpawnError
from metasup.effects.process.trees import stop_tree
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.facts.faults import child_env
from metasup.facts.settings import McpServerConfig
from metasup.pipelines.mcp import protocol
from metasup.pipelines.mcp.protocol import McpState
from metasup.pipelines.supervisor.helper import Helper, ReportPipe

EVENTS = {
    e.value: e
    for e in (Event.MCP_STARTED, Event.MCP_UNHEALTHY, Event.MCP_RESTARTED, Event.MCP_FAILED)
}


def _blank(server: McpServerConfig, state: McpState) -> dict[str, Any]:
    return {
        "state": state,
        "restarts": 0,
        "latency_ms": None,
        "tools": None,
        "pid": None,
        "pgid": None,
        "token": None,
        "reason": None,
        "transport": server.transport,
        "url": server.url,
        "clients": 0,
        "instances": [],
    }


class Fleet:
    def __init__(
        self,
        servers: tuple[McpServerConfig, ...],
        workdir: Path,
        dirs: StateDir,
        reaper: Reaper,
        selector: selectors.BaseSelector,
        emit: Emit,
        report: Report,
        jail: dict[str, Any] | None = None,
    ) -> None:
        self.servers = {s.name: s for s in servers}
        self.jail = jail  # {"sandbox", "view"} for the worker to jail the servers in
        self.workdir = workdir
        self.dirs = dirs
        self.reaper = reaper
        self.emit = emit
        self.report = report
        self.watch = {s.name: self._watch(s) for s in servers}
        self.status: dict[str, dict[str, Any]] = {
            # Configured, so on its way: `stopped` would read as a server that ended.
            n: _blank(s, McpState.STARTING)
            for n, s in self.servers.items()
        }
        self.commits: dict[str, str] = {}
        self.worker = Helper(
            "metasup.pipelines.mcp.worker",
            cwd=dirs.root,  # outside the tree
            reaper=reaper,
            log=dirs.logs / "mcp-worker.log",
            capture=True,  # its report lines
        )
        self.seq = 0  # the last command sent
        self.acked = 0  # the last command the worker reported on
        self.stopping = False
        self.pipe = ReportPipe(selector, "mcp")
        self.gave_up = False

    def __bool__(self) -> bool:
        return bool(self.servers)

    def _watch(self, s: McpServerConfig) -> tuple[str, ...]:
        if s.watch is not None:
            return s.watch

        def kind(rel: str) -> str | None:
            p = self.workdir / rel
            return "file" if p.is_file() else ("dir" if p.is_dir() else None)

        return mcp_watch.default_watch(s.command, s.args, s.cwd, str(self.workdir), kind)

    # --- the worker ---------------------------------------------------------------------------

    def start(self, commit: str) -> None:
        """Start the worker and every server, on `commit`."""
        self.stopping = False
        try:
            self.worker.start()
        except SpawnError as e:
            self.report({"event": Notice.MCP_WORKER_FAILED, "error": str(e)})
            self._all(McpState.FAILED, reason=str(e))
            return
        servers = [self._spec(s) for s in self.servers.values()]
        start = protocol.Start(
            self.seq, str(self.dirs.mcp), str(self.dirs.logs), servers, self.jail
        )
        self.worker.write(protocol.encode(start))
        self.pipe.watch(self.worker.stdout_fd)
        self.acked = self.seq
        self._all(McpState.STARTING)
        for name in self.servers:
            self.commits[name] = commit

    def _spec(self, s: McpServerConfig) -> dict[str, Any]:
        env = child_env()
        env.update(s.env)
        env["METASUP_MCP_SERVER"] = s.name
        cwd = (self.workdir / s.cwd) if s.cwd else self.workdir
        return {
            **s.to_dict(),
            "argv": [s.command, *s.args] if s.command else None,
            "headers": dict(s.headers),
            "cwd": str(cwd),
            "env": env,
        }

    def _all(self, state: McpState, reason: str | None = None) -> None:
        for name, s in self.servers.items():
            self.status[name] = {**_blank(s, state), "restarts": self.status[name]["restarts"]}
            self.status[name]["reason"] = reason

    def read(self) -> bool:
        """Take what the worker reported; True when anything changed."""
        changed = False
        for line in self.pipe.lines():
            reply = protocol.decode_reply(line)
            if reply is not None:
                changed |= self._take(reply)
        return changed

    def _take(self, reply: protocol.Reply) -> bool:
        match reply:
            case protocol.Report(event=event, fields=fields) if event in EVENTS:
                self.emit(EVENTS[event], **fields)
            case protocol.Status(seq=seq, servers=servers):
                self.acked = max(self.acked, seq)
                if seq < self.seq:
                    return False  # from before the last command: the restarts it asked for
                for name, st in servers.items():
                    if name in self.status:
                        self.status[name] = st
                return True
        return False

    def check_worker(self) -> bool:
        """After a SIGCHLD: when the worker died, stop what it left and start it again (at most
        3 times a minute, as any helper). True when it had died."""
        if self.worker.child is None:
            return False
        self.read()  # its last reports, before its exit is taken and its pipe closed
        code = self.worker.exited()
        if code is None:
            return False
        self.pipe.close()
        self._stop_leftovers()
        if self.stopping:
            return True
        if not self.worker.restart_after(code, self.report, Notice.MCP_WORKER_EXITED, None):
            self.gave_up = True
            for name in self.servers:
                self.emit(
                    Event.MCP_FAILED, server=name, reason="the MCP worker keeps dying; see its log"
                )
            self._all(McpState.FAILED, reason="the MCP worker keeps dying")
            return True
        commits = dict(self.commits)
        self.start(next(iter(commits.values())) if commits else "")
        self.commits = commits
        return True

    def _server_trees(self) -> list[dict[str, Any]]:
        """The process group and marker of each server process, extra instances too."""
        trees = []
        for st in self.status.values():
            for one in [st, *(st.get("instances") or [])]:
                if isinstance(one, dict) and one.get("pgid") and one.get("token"):
                    trees.append({"pgid": one["pgid"], "token": one["token"]})
        return trees

    def _stop_leftovers(self) -> None:
        """Servers of a worker that died: stop them by their group and marker."""
        for tree in self._server_trees():
            stop_tree(int(tree["pgid"]), str(tree["token"]), signal.SIGKILL, 0.0, self.reaper)

    def stop(self) -> None:
        """Stop every server, then the worker (servers get their stop_timeout each)."""
        self.stopping = True
        if self.worker.child is None:
            return
        self.worker.write(protocol.encode(protocol.Stop()))
        budget = max((s.stop_timeout for s in self.servers.values()), default=0.0) + 5.0
        self.worker.wait(budget)  # the worker stops its servers, reports, and exits
        self.read()
        self.pipe.close()
        self.worker.kill()
        self._stop_leftovers()
        for st in self.status.values():  # the last probe's figures stay, for the record
            st.update(
                state=McpState.STOPPED, pid=None, pgid=None, token=None, clients=0, instances=[]
            )

    # --- commands -----------------------------------------------------------------------------

    def restart(self, names: list[str], reason: str) -> None:
        if not names or self.worker.child is None:
            return
        self.seq += 1
        for name in names:
            self.status[name]["state"] = McpState.STARTING
        self.worker.write(protocol.encode(protocol.Restart(names, reason, self.seq)))

    def sync(self, commit: str, changed: Callable[[str, str], set[str]]) -> list[str]:
        """Before a launch on `commit`: restart the servers whose files differ. Returns them."""
        if not self.servers:
            return []
        if self.worker.child is None and not self.gave_up:
            self.start(commit)
            return list(self.servers)
        names = []
        for name, was in self.commits.items():
            if was != commit and was and mcp_watch.touched(self.watch[name], changed(was, commit)):
                names.append(name)
            self.commits[name] = commit
        self.restart(names, "its files changed")
        return names

    def waiting_for(self, names: list[str]) -> bool:
        """True while one of `names` is still starting, as far as the worker has reported."""
        if self.worker.child is None:
            return False
        if self.acked < self.seq:
            return True
        return any(self.status[n]["state"] == McpState.STARTING for n in names if n in self.status)

    def start_timeout(self, names: list[str]) -> float:
        return max((self.servers[n].start_timeout for n in names if n in self.servers), default=0)

    # --- for state.json -----------------------------------------------------------------------

    def states(self) -> dict[str, str]:
        return {n: str(st["state"]) for n, st in self.status.items()}

    def details(self) -> dict[str, dict[str, Any]]:
        keep = ("state", "restarts", "latency_ms", "tools", "pid", "transport", "url", "clients",
                "instances")  # fmt: skip
        out = {n: {k: st.get(k) for k in keep} for n, st in self.status.items()}
        for n, st in out.items():
            st["reason"] = self.status[n].get("reason")
            st["commit"] = self.commits.get(n)
            if self.servers[n].transport == "stdio":
                st["socket"] = str(self.dirs.mcp / f"{n}.sock")
        return out

    def trees(self) -> list[dict[str, Any]]:
        """Every process tree the fleet has running: for a supervisor after a kill -9."""
        return [*self.worker.trees(), *self._server_trees()]
