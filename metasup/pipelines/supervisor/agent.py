"""The agent's runs, as the loop starts, watches and ends them.

A run starts in the jail built ahead while the run before it ran (or in a new one, or in none),
with its output pipes on the loop's selector and its cgroup's OOM events too; it is sampled for
health, killed for a breach, and stopped (stop signal, then SIGKILL, stragglers included) before
any git step. The loop decides when; this does.

The jail built ahead is whole: namespaces, cgroup, mounts and environment, with a shell of ours
as its command, waiting to read the three variables only a launch knows (the run, its commit,
the strategy) on its stdin; it then execs the agent with /dev/null as stdin. A launch writes one
line. It is used only when the launch would build the same jail (same view on the same files,
same environment but those three); otherwise it is killed and a new one made at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from metasup.decisions import health
from metasup.effects.process.jail import Jail, Prepared
from metasup.effects.process.launchlog import LaunchLog, drain
from metasup.effects.process.spawn import (
    Child,
    Reaper,
    SpawnError,
    findable,
    listen_in_netns,
    spawn,
)
from metasup.effects.process.trees import (
    TREE_VAR,
    TreeSampler,
    signal_tree,
    stop_tree,
    tree_members,
)
from metasup.effects.process.view import View, marks
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.facts.faults import child_env
from metasup.facts.settings import Config
from metasup.facts.units import format_size
from metasup.pipelines.supervisor.retention import RunLogs
from metasup.pipelines.supervisor.status import AgentStatus

if TYPE_CHECKING:
    from metasup.pipelines.supervisor.api_child import ApiProcess


# Set by the shell in the jail built ahead, from the line a launch writes.
LATE_VARS = ("METASUP_RUN", "METASUP_COMMIT", "METASUP_STRATEGY")
_LATE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SHELL = "/bin/sh"
_LATE_SCRIPT = (
    "read -r METASUP_RUN METASUP_COMMIT METASUP_STRATEGY || exit 111\n"
    "export METASUP_RUN METASUP_COMMIT METASUP_STRATEGY\n"
    'exec "$@" </dev/null\n'
)


@dataclass
class Built:
    """What a jail built ahead was built with: a launch that would build another one kills it.
    Its options are written on a thread of their own (they wait for its move into its cgroup,
    which can take the kernel ~10 ms, beside the run just launched)."""

    view: View
    env: dict[str, str]  # without the late variables
    marks: tuple[tuple[int, int] | None, ...]
    filling: threading.Thread | None = None
    failed: OSError | None = None

    def fill(self, prepared: Prepared, options: list[str]) -> None:
        def write() -> None:
            try:
                prepared.fill(options)
            except OSError as e:
                self.failed = e

        self.filling = threading.Thread(target=write, name="metasup-jail-fill", daemon=True)
        self.filling.start()

    def filled(self) -> bool:
        if self.filling is not None:
            self.filling.join()
        return self.failed is None


def _static(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in LATE_VARS}


@dataclass
class Running:
    """The agent launch in progress."""

    child: Child
    run: int
    commit: str
    log: LaunchLog
    launched_wall: float
    sampler: TreeSampler = field(default_factory=TreeSampler)
    cpu_history: deque[float] = field(default_factory=lambda: deque(maxlen=16))
    rss_mb: float = 0.0
    cpu_percent: float = 0.0
    shown: tuple[float, float] | None = None  # the figures state.json has
    oom_kills: int = 0  # the kernel's OOM kills in the jail's cgroup, already reported


class Agent:
    """Starts, samples, kills and stops the agent's runs; one at a time."""

    def __init__(
        self,
        config: Config,
        workdir: Path,
        dirs: StateDir,
        reaper: Reaper,
        selector: selectors.BaseSelector,
        jail: Jail | None,
        jail_view: Callable[[Path, tuple[Path, ...]], View],
        emit: Emit,
        report: Report,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.dirs = dirs
        self.reaper = reaper
        self.selector = selector
        self.jail = jail
        self.jail_view = jail_view
        self.emit = emit
        self.report = report
        self.limits = health.Limits(
            max_memory_mb=config.health.max_memory_mb,
            max_cpu_percent=config.health.max_cpu_percent,
            heartbeat_timeout=config.health.heartbeat_timeout,
        )
        self.api: ApiProcess | None = None
        self.running: Running | None = None
        self.last_stderr_tail: list[str] = []
        self._pipe_fds: dict[str, int] = {}
        self.run_logs = RunLogs(dirs.logs, config.logs)
        self._ahead: Child | None = None  # the next run's jail, made ahead
        self._built: Built | None = None  # how it was built, when it was built whole

    @property
    def mode(self) -> str:
        return self.jail.mode if self.jail is not None else "off"

    # --- a launch ---------------------------------------------------------------------------

    def launch(self, run: int, commit: str, env: dict[str, str], echo: bool) -> str | None:
        """Start run `run` on `commit`; the error when it cannot start at all (journalled)."""
        log = LaunchLog(self.dirs.logs, run, commit, echo=echo)
        holes: tuple[Path, ...] = ()
        if self.limits.heartbeat_timeout is not None:
            # It must exist to be bound into the jail; an old touch counts as none (the age is
            # taken from the launch at the latest).
            self.dirs.heartbeat.touch()
            os.utime(self.dirs.heartbeat, (0, 0))
            holes = (self.dirs.heartbeat,)
            env = {**env, "METASUP_HEARTBEAT": str(self.dirs.heartbeat)}
        try:
            child = self._start(env, holes)
        except SpawnError as e:
            log.feed("stderr", f"metasup: {e}\n".encode())
            log.close()
            self.emit(
                Event.LAUNCH, pid=None, run=run, commit=commit, error=str(e), sandbox=self.mode
            )
            self.last_stderr_tail = list(log.stderr_tail)
            return str(e)
        jailed = child.jail
        if jailed is not None and jailed.hold:
            self._bridge_api(jailed, run)
        self.running = Running(
            child=child, run=run, commit=commit, log=log, launched_wall=time.time()
        )
        for name, stream in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr)):
            if stream is not None:
                self.selector.register(stream.fileno(), selectors.EVENT_READ, name)
                self._pipe_fds[name] = stream.fileno()
        cgroup = jailed.cgroup if jailed is not None else None
        if cgroup is not None and cgroup.oom_fd >= 0:
            self.selector.register(cgroup.oom_fd, selectors.EVENT_READ, "oom")
        self.emit(
            Event.LAUNCH,
            pid=child.pid,
            run=run,
            commit=commit,
            log=log.path.name,
            sandbox=self.mode if jailed is not None else "off",
        )
        self._spawn_ahead(env, holes)
        return None

    def _start(self, env: dict[str, str], holes: tuple[Path, ...]) -> Child:
        """The agent, started: in the jail made ahead when there is one, else in a new one
        (or none). SpawnError when it cannot start."""
        command = self.config.agent.command
        if self.jail is None or not self.config.sandbox.applies("agent"):
            return spawn(command, cwd=self.workdir, env=env)
        view = self.jail_view(self.workdir, holes)
        built, self._built = self._built, None
        child = self._take_ahead()
        if child is not None and child.jail is not None and built is not None:
            if self._fits(built, view, env) and self._go(child, env):
                child.started = time.monotonic()
                return child
            self.drop(child)  # built for another launch, or it died meanwhile: a new jail below
        elif child is not None and child.jail is not None:
            if findable(command[0], self.workdir, env):
                try:
                    self.jail.launch(child.jail, view, {**env, TREE_VAR: child.token})
                except OSError:
                    self.drop(child)  # it died meanwhile: a new jail below
                else:
                    child.started = time.monotonic()
                    return child
            else:
                self.drop(child)  # a spawn below says the command is missing
        # Without a network, $METASUP_API is bound into the jail before the agent starts.
        hold = not self.config.sandbox.network and self.api is not None
        jailed = self.jail.prepare(view, hold=hold)
        return spawn(command, cwd=self.workdir, env=env, jail=jailed)

    def _fits(self, built: Built, view: View, env: dict[str, str]) -> bool:
        """Whether this launch would build the jail `built` describes, on the same files."""
        return (
            built.filled()
            and built.view == view
            and built.env == _static(env)
            and all(_LATE_VALUE.fullmatch(env.get(k, "")) for k in LATE_VARS)
            and findable(self.config.agent.command[0], self.workdir, env)
            and built.marks == marks(view)
        )

    @staticmethod
    def _go(child: Child, env: dict[str, str]) -> bool:
        """Give the waiting shell its line: it execs the agent. False when it is gone."""
        stdin = child.popen.stdin
        if stdin is None:
            return False
        line = " ".join(env[k] for k in LATE_VARS) + "\n"
        try:
            stdin.write(line.encode())
            stdin.close()
        except OSError:
            return False
        return True

    def _spawn_ahead(self, env: dict[str, str], holes: tuple[Path, ...]) -> None:
        """The next run's jail, made now while this one runs (see `Jail.ahead`): built whole
        for a launch like this one's, else (no shell to wait in) left to read its options at
        the launch. Not without a network: its launch waits for the API to be bound in it."""
        if self.jail is None or not self.config.sandbox.applies("agent"):
            return
        if not self.config.sandbox.network or self._ahead is not None:
            return
        prepared = self.jail.ahead()
        if prepared is None:
            return
        command = list(self.config.agent.command)
        whole = os.access(_SHELL, os.X_OK)
        argv = [_SHELL, "-c", _LATE_SCRIPT, "metasup-launch", *command] if whole else command
        try:
            self._ahead = spawn(argv, cwd=self.workdir, env=child_env(), jail=prepared, stdin=whole)
        except SpawnError:
            self._ahead = None  # the launch makes its jail then, and says what went wrong
            return
        if not whole:
            return
        view = self.jail_view(self.workdir, holes)
        static = _static(env)
        self._built = Built(view, static, marks(view))
        self._built.fill(prepared, self.jail.options(view, {**static, TREE_VAR: self._ahead.token}))

    def _take_ahead(self) -> Child | None:
        """The jail made ahead, if it still waits (someone may have killed it)."""
        child, self._ahead = self._ahead, None
        if child is None:
            return None
        self.reaper.reap()
        if child.pid in self.reaper.statuses:
            self.reaper.pop(child.pid)
            child.release()
            return None
        return child

    def drop(self, child: Child | None = None) -> None:
        """A jail made ahead and not launched goes (by default the one waiting): killed while
        bwrap still waits for its options (it has forked nothing yet), then its pipes and
        cgroup."""
        if child is None:
            child, self._ahead = self._ahead, None
            built, self._built = self._built, None
            if built is not None:
                built.filled()  # its thread is done with the jail's pipes before they close
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        self.reaper.wait(child.pid, 5.0)
        child.release()
        for stream in (child.popen.stdout, child.popen.stderr):
            if stream is not None:
                stream.close()

    def _bridge_api(self, jailed: Prepared, run: int) -> None:
        """Listen at the API's address inside the agent's jail (its own network namespace,
        loopback only), served by the API process; then let the agent start."""
        assert self.api is not None and self.api.sock is not None
        try:
            pid = jailed.jail_pid()
            if pid is None:
                raise OSError("bwrap said nothing of its namespaces")
            host, port = self.api.sock.getsockname()[:2]
            sock = listen_in_netns(pid, host, port, self.reaper)
            self.api.listen_in(f"run-{run}", sock)
        except OSError as e:
            self.report({"event": Notice.API_BRIDGE_FAILED, "run": run, "error": str(e)})
        finally:
            jailed.open_gate()

    # --- while it runs ------------------------------------------------------------------------

    def pump(self) -> None:
        """Its output, to its log (and the terminal)."""
        if self.running is not None:
            drain(self.running.child, self.running.log)
            self._unwatch_closed_pipes()

    def exit_code(self) -> int | None:
        """Its exit code, once reaped (by SIGCHLD, or while its tree is stopped)."""
        r = self.running
        if r is None:
            return None
        self.reaper.reap()
        code = self.reaper.pop(r.child.pid)
        if code is None:
            return None
        code = r.child.exit_code(code)
        r.child.popen.returncode = code
        drain(r.child, r.log)
        return code

    def oom_kills(self) -> bool:
        """True when the kernel killed something in its jail for memory since last asked."""
        r = self.running
        cgroup = r.child.jail.cgroup if r is not None and r.child.jail is not None else None
        if r is None or cgroup is None:
            return False
        cgroup.drain_oom()
        kills = cgroup.oom_kills()
        if kills <= r.oom_kills:
            return False
        r.oom_kills = kills
        return True

    def oom_reason(self) -> str:
        assert self.jail is not None and self.jail.memory is not None
        limit = self.jail.memory
        mb = self.config.health.max_memory_mb
        named = (
            f"max_memory_mb {mb:g}"
            if mb is not None and int(mb * (1 << 20)) == limit
            else f"sandbox.limits.memory {format_size(limit)}"
        )
        return f"memory: the jail went over {named} (tmpfs and /dev/shm counted)"

    def sample(self) -> tuple[str | None, bool]:
        """Sample its tree and judge it: the breach (or None), and whether the figures shown
        in the status changed."""
        r = self.running
        if r is None:
            return None, False
        sample = r.sampler.sample(tree_members(r.child.pgid, r.child.token, True))
        r.rss_mb, r.cpu_percent = sample.rss_mb, sample.cpu_percent
        r.cpu_history.append(sample.cpu_percent)
        heartbeat_age = None
        if self.limits.heartbeat_timeout is not None:
            try:
                last = self.dirs.heartbeat.stat().st_mtime
            except FileNotFoundError:
                last = r.launched_wall
            heartbeat_age = time.time() - max(last, r.launched_wall)
        shown = (round(r.rss_mb, 1), round(r.cpu_percent, 1))
        changed = shown != r.shown  # an idle agent's figures do not change: nothing to rewrite
        r.shown = shown
        breach = health.judge(self.limits, sample.rss_mb, list(r.cpu_history), heartbeat_age)
        return breach, changed

    def kill(self, reason: str, health: bool) -> None:
        r = self.running
        if r is None:
            return
        if health:
            self.emit(
                Event.HEALTH_KILL,
                pid=r.child.pid,
                run=r.run,
                reason=reason,
                rss_mb=round(r.rss_mb, 1),
                cpu_percent=round(r.cpu_percent, 1),
            )
        signal_tree(
            r.child.pgid,
            tree_members(r.child.pgid, r.child.token, True),
            signal.SIGKILL,
            r.child.jailed,
        )

    # --- its end ------------------------------------------------------------------------------

    def stop_tree(self) -> int:
        """Stop its tree (stop signal, then SIGKILL); how many processes were left."""
        r = self.running
        if r is None:
            return 0
        return stop_tree(
            r.child.pgid,
            r.child.token,
            self.config.agent.stop_signal,
            self.config.agent.stop_timeout,
            self.reaper,
            adopt_unmarked=True,
            jailed=r.child.jailed,
        )

    def cleanup(self) -> None:
        """What is left of the exited run's tree is stopped before any git step."""
        r = self.running
        if r is None:
            return
        left = self.stop_tree()
        if left:
            self.report({"event": Notice.STRAGGLERS_STOPPED, "run": r.run, "processes": left})
        self.finish()

    def finish(self) -> None:
        r = self.running
        if r is None:
            return
        drain(r.child, r.log)
        self._unwatch_closed_pipes(everything=True)
        for stream in (r.child.popen.stdout, r.child.popen.stderr):
            if stream is not None and not stream.closed:
                stream.close()  # a straggler we could not stop still holds it; read no more
        r.log.close()
        self.last_stderr_tail = list(r.log.stderr_tail)
        if self.api is not None:
            self.api.unlisten(f"run-{r.run}")
        cgroup = r.child.jail.cgroup if r.child.jail is not None else None
        if cgroup is not None and cgroup.oom_fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(cgroup.oom_fd)
        r.child.release()
        self.running = None
        self.run_logs.closed(r.run, r.log.files())
        self.run_logs.prune()

    def _unwatch_closed_pipes(self, everything: bool = False) -> None:
        """Stop watching pipes that reached end of file (all of them with `everything`)."""
        r = self.running
        for name, fd in list(self._pipe_fds.items()):
            stream = getattr(r.child.popen, name) if r else None
            if everything or stream is None or stream.closed:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)
                del self._pipe_fds[name]

    def status(self, phase: str, supervising: bool) -> AgentStatus:
        """The `agent` part of the status document."""
        r = self.running
        return {
            "pid": r.child.pid if r else None,
            "pgid": r.child.pgid if r else None,
            "token": r.child.token if r else None,
            "state": phase if r or supervising else "stopped",
            "rss_mb": round(r.rss_mb, 1) if r else None,
            "cpu_percent": round(r.cpu_percent, 1) if r else None,
            "started_at": r.launched_wall if r else None,
            "log": str(r.log.path) if r else None,
        }
