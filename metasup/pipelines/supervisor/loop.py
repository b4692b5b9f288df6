"""The outer loop's driver: observe, ask `lifecycle.decide`, perform the actions.

One thread and one selector. The selector watches the agent's output pipes and a wakeup pipe fed
by signals (SIGCHLD for exits, SIGINT/SIGTERM/SIGHUP for a stop), and its timeout is the nearest
timer (min_runtime, backoff, health tick). An exit is therefore seen the moment the kernel
reports it; nothing polls.
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasup.decisions import health, lifecycle
from metasup.decisions.counters import Counters, tally
from metasup.decisions.lifecycle import LOOP_TIMERS, OnTamper, Phase, Timer
from metasup.effects.files.safeio import open_append
from metasup.effects.git.repo import ARCHIVE_PREFIX, GitRepo, RollbackRefused, archive_ref_name
from metasup.effects.process.jail import (
    Jail,
    Prepared,
    View,
    make_view,
    sandbox_to_json,
    view_to_json,
)
from metasup.effects.process.spawn import (
    TREE_VAR,
    Child,
    LaunchLog,
    Reaper,
    SpawnError,
    TreeSampler,
    become_subreaper,
    drain,
    findable,
    kill_descendants,
    listen_in_netns,
    prune_logs,
    signal_tree,
    spawn,
    stop_leftover_tree,
    stop_tree,
    tree_members,
)
from metasup.effects.records.journal import (
    HEADER_FIELDS,
    Journal,
    RepoLock,
    StateDir,
    human_duration,
    read_events,
    recorded_trees,
    tail_events,
    utc_now,
    write_json_atomic,
)
from metasup.effects.records.statefile import read_state
from metasup.facts.config import Config, format_size
from metasup.facts.errors import IntegrityError, UserError
from metasup.facts.events import Event
from metasup.facts.faults import child_env, crashpoint
from metasup.facts.gitpaths import ms_since
from metasup.facts.policy import Policy, load_policy
from metasup.pipelines import refguard, rollback
from metasup.pipelines.experiments import Experimenter, Outcome
from metasup.pipelines.intake import INBOX, Intake, ProposalStore, WakePipe
from metasup.pipelines.supervisor.helper import Helper

if TYPE_CHECKING:
    from metasup.pipelines.mcp.fleet import Fleet
    from metasup.pipelines.supervisor.api_child import ApiProcess
    from metasup.pipelines.tamper import TamperWatch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KEEP_RUN_LOGS = 200
ARCHIVE_CHECK_S = 10.0  # the archive refs are compared with the journal at least this often
# Actions that write to git: each waits until the repository lock is known to be still ours.
GIT_ACTIONS = (lifecycle.Snapshot, lifecycle.MarkGood, lifecycle.QuickFailure)
INBOX_GRACE_S = 0.25  # after a bare creation in the inbox, before claiming it
TAMPER_RECHECK_S = 0.02  # after a restore, a look again for a write that raced it

Reporter = Callable[[dict[str, Any]], None]


def plain_reporter(stream: Any = None) -> Reporter:
    """One line per event, for a terminal or a pipe."""

    def report(record: dict[str, Any]) -> None:
        out = stream or sys.stderr
        detail = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in HEADER_FIELDS)
        with contextlib.suppress(OSError, ValueError):
            out.write(f"metasup: {record['event']} {detail}\n")
            out.flush()

    return report


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, list):
        return f"[{len(value)} lines]"
    return str(value)


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


class Supervisor:
    def __init__(
        self,
        repo: GitRepo,
        config: Config,
        *,
        max_cycles: int | None = None,
        echo: bool = True,
        reporter: Reporter | None = None,
        live_view: bool = False,
    ) -> None:
        self.repo = repo
        self.config = config
        self.dirs = StateDir.for_git_dir(repo.git_dir)
        self.settings = lifecycle.Settings(
            min_runtime=config.min_runtime,
            max_failures=config.max_failures,
            backoff_initial=config.agent.backoff.initial,
            backoff_max=config.agent.backoff.max,
            rollback_enabled=config.rollback.enabled,
            max_cycles=max_cycles,
            health_interval=config.health.interval,
            on_tamper=OnTamper(config.on_tamper),
        )
        self.limits = health.Limits(
            max_memory_mb=config.health.max_memory_mb,
            max_cpu_percent=config.health.max_cpu_percent,
            heartbeat_timeout=config.health.heartbeat_timeout,
        )
        self.echo = echo
        self.live_view = live_view
        self.view: Helper | None = None
        self.report = reporter or plain_reporter()
        self.state = lifecycle.LoopState()
        self.counters = Counters()
        self.running: Running | None = None
        self.timers: dict[Timer, float] = {}
        self.reaper = Reaper()
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.last_archive: str | None = None
        self.last_exit: dict[str, Any] | None = None
        self.last_stderr_tail: list[str] = []
        self._pipe_fds: dict[str, int] = {}
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1
        self.journal: Journal | None = None
        self.expected = refguard.Expected()  # metasup's refs as the journal has them
        # When the tree was last known good: ignored files changed later go with a rollback.
        # The start is such a moment (the tree passed the integrity check).
        self._good_since_ns = time.time_ns()
        self.lock = RepoLock(self.dirs.lock, str(repo.workdir))
        self.policy: Policy = load_policy(repo.workdir, config.path, config.protected_paths)
        self.jail: Jail | None = None
        self._ahead: Child | None = None  # the next run's jail, made ahead
        self.intake: Intake | None = None
        self.experimenter: Experimenter | None = None
        self._exp_thread: threading.Thread | None = None
        self._exp_wake: WakePipe | None = None
        self._exp_done: Outcome | BaseException | None = None
        self._exp_ready: Outcome | None = None  # judged, with a winner to merge between cycles
        self._exp_items: list[Any] = []  # the claims the running experiment is about
        self.fleet: Fleet | None = None
        self.tamper: TamperWatch | None = None
        self._tamper_recent: set[str] = set()
        self._baseline: dict[str, str] = {}
        self._verified_good: str | None = None
        self._good_forged = False  # the good commit failed the integrity check: restore nothing
        self._backup_wake: WakePipe | None = None
        self._backup_thread: threading.Thread | None = None
        self._backup_done: Path | BaseException | None = None
        self._backup_started = 0.0
        self.api: ApiProcess | None = None
        self._exit_mono = 0.0  # when the last exit was seen
        self._crashed_at: float | None = None  # the exit of a quick failure, until relaunch
        self.last_crash_to_relaunch_s: float | None = None
        self._deferred: list[lifecycle.Observation] = []  # seen while waiting for the fleet
        self._rb_thread: threading.Thread | None = None  # a rollback in progress
        self._rb_done: dict[str, Any] | BaseException | None = None
        self._rb_wake: WakePipe | None = None
        self._refs_stamp: tuple[int, ...] = ()  # the archive refs' folder and packed-refs
        self._refs_checked = 0.0
        self._deferred_tamper = False  # tamper events and proposals seen during a rollback
        self._deferred_inbox = False
        self.recent_gains: deque[float] = deque(maxlen=5)
        self.recent_experiments: deque[dict[str, Any]] = deque(maxlen=10)

    # --- lifecycle of the supervisor itself ----------------------------------------------------

    def run(self) -> int:
        self.dirs.create()
        lock = self.lock
        lock.acquire()
        try:
            # Before anything binds, reads or writes it: the inbox must be a real folder.
            ProposalStore(self.repo.workdir / INBOX, self.dirs.root / "proposals").create()
            self._install_signals()
            become_subreaper()
            self._start_jail()  # before the journal: a refusal changes nothing
            self.journal = Journal(self.dirs.events, self.dirs.secret)
            if self.journal.breaks:
                self._emit(Event.JOURNAL_BROKEN, problems=self.journal.breaks)
            self.expected = refguard.Expected.from_journal(read_events(self.dirs.events))
            if self.config.api_listen:
                self._start_api(self.config.api_listen)
            if self.config.mcp_servers:
                from metasup.pipelines.mcp.fleet import Fleet  # only where there are servers to run

                assert self._selector is not None
                self.fleet = Fleet(
                    self.config.mcp_servers,
                    self.repo.workdir,
                    self.dirs,
                    self.reaper,
                    self._selector,
                    self._emit,
                    self.report,
                    jail=self._fleet_jail(),
                )
            self.repo.ensure_excluded(f"/{INBOX}/")
            if self.live_view:
                self._start_view()
            self._emit(
                Event.SUPERVISOR_START,
                pid=os.getpid(),
                repo=str(self.repo.workdir),
                branch=self.repo.branch,
                config=str(self.config.path),
            )
            previous = read_state(self.dirs.state)
            # Run numbers go on from the last supervisor's: logs and notes stay unambiguous.
            self.state = lifecycle.LoopState(run=int(previous.get("run") or 0))
            self._stop_leftovers(previous)
            removed = self.repo.clear_stale_locks()
            if removed:
                names = [str(p.relative_to(self.repo.git_dir)) for p in removed]
                self.report({"event": "stale_locks_removed", "locks": ", ".join(names)})
            self._resume_intent()
            self._check_refs()
            self._check_integrity_at_start()
            self._start_intake()
            self._start_tamper_watch()
            self._start_backups()
            if self.config.proposals_mode == "experiment":
                self._start_experiments()
            return self._loop()
        finally:
            self._shutdown()
            lock.release()

    def _start_jail(self) -> None:
        """Probe the machine and settle the jail; refuse to start where the config asks for
        more than it offers (a named mode it lacks, or `required` with a guarantee not held)."""
        self.jail = Jail(self.config.sandbox, self.config.health.max_memory_mb, self.reaper)
        refusal = self.jail.refusal()
        if refusal is not None:
            raise UserError(refusal)
        plan = self.jail.plan
        self.report({"event": "sandbox", "mode": plan.mode, "detail": self.jail.describe()})
        if plan.mode == "bwrap":
            # Held from now until the stop, for the agent and its servers alike.
            self.jail.hold_placeholders(self.jail_view(self.repo.workdir))

    def _fleet_jail(self) -> dict[str, Any] | None:
        """What the MCP worker needs to jail the servers as the agent is jailed."""
        if self.jail is None or not self.config.sandbox.applies("mcp_servers"):
            return None
        view = self.jail_view(self.repo.workdir)
        return {"sandbox": sandbox_to_json(self.config.sandbox), "view": view_to_json(view)}

    def jail_view(self, tree: Path, holes: tuple[Path, ...] = ()) -> View:
        """What a jailed run in `tree` (the working tree or an experiment's worktree) sees."""
        return make_view(
            tree,
            protected_patterns=[p for p, _ in self.policy.patterns],
            config_path=self.config.path,
            sandbox=self.config.sandbox,
            holes=holes,
        )

    def _start_view(self) -> None:
        """On a terminal, the live view draws it (a child, so the supervisor never loads rich);
        the agent's output then goes to its log only, and report lines to logs/supervisor.log."""
        view = Helper("metasup.faces.view", cwd=self.dirs.root, reaper=self.reaper)
        try:
            view.start("--git-dir", str(self.repo.git_dir))
        except SpawnError as e:
            self.report({"event": "view_failed", "error": str(e)})
            return
        self.view = view
        self.echo = False
        log = io.TextIOWrapper(open_append(self.dirs.logs / "supervisor.log"), encoding="utf-8")
        self.report = plain_reporter(log)

    def _stop_view(self) -> None:
        if self.view is not None:
            self.view.stop(grace=2.0, timeout=1.0)  # its stdin ends: it draws a last frame
            self.view = None

    def _start_api(self, listen: str) -> None:
        from metasup.pipelines.supervisor.api_child import ApiProcess

        self.api = ApiProcess(
            listen, self.dirs, self.repo.workdir, self.config.path, self.reaper, self.report
        )
        try:
            url = self.api.start()
        except OSError as e:
            self.api = None
            raise UserError(f"cannot serve the API on {listen}: {e.strerror or e}") from None
        self.report({"event": "api_listening", "url": url})

    def _stop_leftovers(self, previous: dict[str, Any]) -> None:
        """A supervisor killed with -9 could not stop its agent (or its MCP servers, should
        their worker have missed its end): do it before any git step."""
        found = 0
        for tree in recorded_trees(previous):
            found += stop_leftover_tree(
                tree.get("pgid"),
                str(tree["token"]),
                self.config.agent.stop_signal,
                self.config.agent.stop_timeout,
            )
        if found:
            self.report({"event": "leftovers_stopped", "processes": found})

    def _shutdown(self) -> None:
        if self._rb_thread is not None:
            # Let it finish (its intent would resume it at the next start otherwise).
            self._rb_thread.join(timeout=120)
        if self.tamper is not None:
            self.tamper.stop()
        if self.intake is not None:
            self.intake.stop()
        if self.running is not None:
            self._stop_running()
        if (
            self.tamper is not None
            and self.journal is not None
            and not self._good_forged
            and self.lock.held()
        ):
            # What the agent wrote to protected paths as it was stopped goes back now, or the
            # next start would refuse the tree it left.
            restored = self.repo.guard_protected(self._is_protected)
            if restored:
                self._emit(Event.TAMPER_RESTORED, paths=list(restored), by="stop")
        if self._exp_thread is not None and self._exp_thread.is_alive():
            # Its claims stay claimed and its branch stays: both are taken up at the next start.
            kill_descendants(self.reaper)
            self._exp_thread.join(timeout=30)
        if self._exp_wake is not None:
            self._exp_wake.close()
        if self._backup_thread is not None:
            self._backup_thread.join(timeout=30)  # the bundle is written aside, then renamed
        if self._backup_wake is not None:
            self._backup_wake.close()
        if self.fleet is not None:
            self.fleet.stop()  # after the agent: its servers outlive it
        status = "emergency_stop" if self.state.phase is Phase.EMERGENCY_STOP else "stopped"
        if self.journal is not None:
            self._emit(Event.SUPERVISOR_STOP, status=status, exit_code=self.state.exit_code)
            self._write_state(status)
            self.journal.close()
        if self.api is not None:
            self.api.stop()  # last: a watcher reads the final state through it
        self._stop_view()
        self._drop(self._ahead)
        self._ahead = None
        if self.jail is not None:
            self.jail.close()
        self._restore_signals()

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "signals")
        self._rb_wake = WakePipe()
        self._selector.register(self._rb_wake.read_fd, selectors.EVENT_READ, "rollback")
        for sig in (signal.SIGCHLD, *STOP_SIGNALS):
            self._old_handlers[sig] = signal.signal(sig, _noop_handler)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _restore_signals(self) -> None:
        if self._wake_w < 0:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self._selector is not None:
            self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1
        if self._rb_wake is not None:
            self._rb_wake.close()
            self._rb_wake = None

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> int:
        good = self.repo.good()
        pending: deque[lifecycle.Observation] = deque([lifecycle.Started(good=good)])
        pending.extend(self._take_proposals())
        while True:
            while pending:
                self.state, actions = lifecycle.decide(self.settings, self.state, pending.popleft())
                for action in actions:
                    follow = self._perform(action)
                    if follow is not None:
                        pending.append(follow)
                if self.state.phase in lifecycle.FINAL:
                    return self.state.exit_code or 0
                self._write_state()
            pending.extend(self._wait())

    def _wait(self) -> list[lifecycle.Observation]:
        """Block until something happens; return what was observed."""
        if self._deferred:
            observed, self._deferred = self._deferred, []
            return observed
        observed = []
        assert self._selector is not None
        exited = self._agent_exit()
        if exited is not None:
            return [exited]
        timeout = None
        if self.timers:
            timeout = max(0.0, min(self.timers.values()) - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.data == "signals":
                observed += self._read_signals()
            elif key.data == "tamper":
                if self._rb_thread is not None:  # the reset is the tree's writer now
                    assert self.tamper is not None
                    self.tamper.wake.drain()
                    self._deferred_tamper = True
                else:
                    observed += self._tamper_restore()
            elif key.data == "rollback":
                observed += self._rollback_finished()
            elif key.data == "backup":
                self._backup_finished()
            elif key.data == "mcp":
                assert self.fleet is not None
                if self.fleet.read():
                    self._write_state()
            elif key.data == "inbox":
                assert self.intake is not None
                if self._rb_thread is not None:
                    self.intake.wake.drain()
                    self._deferred_inbox = True
                elif not self.intake.wake.drain():
                    # Only created, maybe still being written: look once the writer is done.
                    self.timers.setdefault(Timer.INBOX, time.monotonic() + INBOX_GRACE_S)
                else:
                    observed += self._take_proposals()
            elif key.data == "experiment":
                observed += self._experiment_finished()
            elif key.data == "oom":
                observed += self._oom_seen()
            else:
                self._pump(key.data)
        exited = self._agent_exit()
        if exited is not None:
            observed.append(exited)
        self.lock.check()  # one lstat a wake-up: a lost lock stops us before the next git step
        now = time.monotonic()
        for name, due in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if due > now:
                continue
            del self.timers[name]
            if name is Timer.MIN_RUNTIME:
                self._good_since_ns = time.time_ns()  # the same commit, proven good again
                observed.append(lifecycle.MinRuntimeReached(run=self.state.run))
            elif name is Timer.BACKOFF:
                observed.append(lifecycle.BackoffElapsed())
            elif name is Timer.HEALTH:
                observed.append(lifecycle.HealthDue())
            elif name is Timer.INBOX and self._rb_thread is not None:
                self._deferred_inbox = True
            elif name is Timer.TAMPER and self._rb_thread is not None:
                self._deferred_tamper = True
            elif name is Timer.INBOX:
                observed += self._take_proposals()
            elif name is Timer.TAMPER:
                observed += self._tamper_restore(recheck=True)
            elif name is Timer.BACKUP:
                self._start_backup()
        return observed

    def _read_signals(self) -> list[lifecycle.Observation]:
        observed: list[lifecycle.Observation] = []
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return observed
        for signum in data:
            if signum == signal.SIGCHLD:
                self.reaper.reap()
                if self.fleet is not None and self.fleet.check_worker():
                    self._write_state()
                if self.api is not None:
                    self.api.check()
            elif signum in STOP_SIGNALS:
                self.report({"event": "stop_requested", "signal": signal.Signals(signum).name})
                observed.append(lifecycle.StopRequested())
        return observed

    def _pump(self, stream: str) -> None:
        if self.running is not None:
            drain(self.running.child, self.running.log)
            self._unwatch_closed_pipes()

    def _agent_exit(self) -> lifecycle.Exited | None:
        """The agent's exit, once reaped (by SIGCHLD, or while stopping its tree)."""
        if self.running is None:
            return None
        self.reaper.reap()
        code = self.reaper.pop(self.running.child.pid)
        if code is None:
            return None
        r = self.running
        code = r.child.exit_code(code)
        r.child.popen.returncode = code
        drain(r.child, r.log)
        # The kernel killed it for memory: recorded as ours would be (once: a health tick may
        # have seen the breach first).
        if self._oom_seen() and self.state.kill_reason is None:
            self._kill(self._oom_reason(), health=True)
        return self._exited(r.child.pid, r.run, r.commit, code, time.monotonic() - r.child.started)

    def _exited(
        self, pid: int | None, run: int, commit: str, code: int, runtime: float
    ) -> lifecycle.Exited:
        """Record an exit (state and journal) and observe it."""
        self._exit_mono = time.monotonic()
        self.last_exit = {"run": run, "code": code, "runtime_s": round(runtime, 3)}
        self._emit(
            Event.EXIT, pid=pid, code=code, runtime_s=round(runtime, 3), run=run, commit=commit
        )
        return lifecycle.Exited(code=code, runtime=runtime)

    # --- actions -------------------------------------------------------------------------------

    def _perform(self, action: lifecycle.Action) -> lifecycle.Observation | None:
        if isinstance(action, GIT_ACTIONS):
            self.lock.check()  # a second supervisor may run beside us: touch nothing
        match action:
            case lifecycle.Snapshot(run=run):
                return self._snapshot(run)
            case lifecycle.MarkGood(commit=commit, baseline=baseline):
                self._good_since_ns = time.time_ns()
                self.repo.set_good(commit)
                self._emit(Event.MARK_GOOD, commit=commit, run=self.state.run, baseline=baseline)
            case lifecycle.Launch(run=run, commit=commit):
                return self._launch(run, commit)
            case lifecycle.ArmTimer(name=name, delay=delay):
                self.timers[name] = time.monotonic() + delay
            case lifecycle.SampleHealth():
                return self._health_tick()
            case lifecycle.CancelTimers():
                for name in LOOP_TIMERS:  # the inbox's grace timer is not the loop's to cancel
                    self.timers.pop(name, None)
            case lifecycle.Cleanup():
                self._cleanup_exited()
            case lifecycle.StopAgent():
                self._stop_tree()  # the exit is observed by the loop, like any other
            case lifecycle.KillAgent(reason=reason, health=health):
                self._kill(reason, health)
            case lifecycle.QuickFailure():
                return self._quick_failure(action)
            case lifecycle.EmergencyStop(reason=reason):
                self._emit(
                    Event.EMERGENCY_STOP,
                    reason=reason,
                    consecutive_failures=self.state.consecutive_failures,
                    good=self.state.good,
                )
            case lifecycle.Finish():
                pass
        return None

    def _snapshot(self, run: int) -> lifecycle.Observation:
        self._check_refs(everything=False)
        self._keep_rewritten()
        self._verify_good()
        if self.intake is not None and self.experimenter is None:
            self.intake.apply_queued()  # direct mode; in experiment mode the queue waits its turn
        t0 = time.perf_counter()
        snap = self.repo.snapshot(run, protect=self._is_protected)
        crashpoint("snapshot:after-commit")
        if snap.restored:
            self._emit(Event.TAMPER_RESTORED, paths=list(snap.restored), run=run)
        if snap.commit is not None:
            self._emit(
                Event.SNAPSHOT,
                commit=snap.commit,
                run=run,
                files=snap.changed,
                duration_ms=ms_since(t0),
            )
        assert snap.head is not None
        head = snap.head
        if self._exp_ready is not None:
            head = self._merge_ready(run) or head
        return lifecycle.Snapshotted(commit=head)

    def _agent_env(self, run: int, commit: str) -> dict[str, str]:
        env = child_env()
        env.update(self.config.agent.env)
        env.update(
            {
                "METASUP_RUN": str(run),
                "METASUP_COMMIT": commit,
                "METASUP_INBOX": str(self.repo.workdir / INBOX),
                "METASUP_RECOVERY": str(self.dirs.recovery),
                "METASUP_STRATEGY": self._strategy(),
            }
        )
        if self.fleet:
            env["METASUP_MCP_DIR"] = str(self.dirs.mcp)
        if self.api is not None and self.api.url:
            env["METASUP_API"] = self.api.url + "/supervisor/status"
        if self.limits.heartbeat_timeout is not None:
            env["METASUP_HEARTBEAT"] = str(self.dirs.heartbeat)
        return env

    def _sync_fleet(self, commit: str) -> None:
        """The MCP servers run `commit`'s code before the agent does: start them, or restart
        the ones whose files changed, and wait until they answer (or their start timeout)."""
        fleet = self.fleet
        if fleet is None:
            return
        names = fleet.sync(commit, self.repo.changed_paths)
        if not names:
            return
        deadline = time.monotonic() + fleet.start_timeout(names) + 1.0
        while fleet.waiting_for(names):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Only the fleet and the signals: the inbox and the rest wait for the loop.
            with selectors.DefaultSelector() as sel:
                sel.register(self._wake_r, selectors.EVENT_READ, "signals")
                if fleet.fd >= 0:
                    sel.register(fleet.fd, selectors.EVENT_READ, "mcp")
                for key, _ in sel.select(left):
                    if key.data == "mcp":
                        fleet.read()
                    else:
                        seen = self._read_signals()
                        self._deferred += seen
                        if any(isinstance(o, lifecycle.StopRequested) for o in seen):
                            return
        self._write_state()

    def _launch(self, run: int, commit: str) -> lifecycle.Observation | None:
        self._sync_fleet(commit)
        log = LaunchLog(self.dirs.logs, run, commit, echo=self.echo)
        holes: tuple[Path, ...] = ()
        if self.limits.heartbeat_timeout is not None:
            # It must exist to be bound into the jail; an old touch counts as none (the age is
            # taken from the launch at the latest).
            self.dirs.heartbeat.touch()
            os.utime(self.dirs.heartbeat, (0, 0))
            holes = (self.dirs.heartbeat,)
        try:
            child = self._start_agent(self._agent_env(run, commit), holes)
        except SpawnError as e:
            log.feed("stderr", f"metasup: {e}\n".encode())
            log.close()
            self._emit(
                Event.LAUNCH, pid=None, run=run, commit=commit, error=str(e), sandbox=self._mode
            )
            self.last_stderr_tail = list(log.stderr_tail)
            self._exited(None, run, commit, 127, 0.0)  # the record: it ended before it began
            return lifecycle.LaunchFailed(str(e))
        jailed = child.jail
        if jailed is not None and jailed.hold:
            self._bridge_api(jailed, run)
        self.running = Running(
            child=child, run=run, commit=commit, log=log, launched_wall=time.time()
        )
        if self._crashed_at is not None:
            self.last_crash_to_relaunch_s = round(time.monotonic() - self._crashed_at, 6)
            self._crashed_at = None
        assert self._selector is not None
        for name, stream in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr)):
            if stream is not None:
                self._selector.register(stream.fileno(), selectors.EVENT_READ, name)
                self._pipe_fds[name] = stream.fileno()
        cgroup = jailed.cgroup if jailed is not None else None
        if cgroup is not None and cgroup.oom_fd >= 0:
            self._selector.register(cgroup.oom_fd, selectors.EVENT_READ, "oom")
        self._emit(
            Event.LAUNCH,
            pid=child.pid,
            run=run,
            commit=commit,
            log=log.path.name,
            sandbox=self._mode if jailed is not None else "off",
        )
        self._spawn_ahead()
        return None

    def _start_agent(self, env: dict[str, str], holes: tuple[Path, ...]) -> Child:
        """The agent, started: in the jail made ahead when there is one, else in a new one
        (or none). SpawnError when it cannot start."""
        command = self.config.agent.command
        if self.jail is None or not self.config.sandbox.applies("agent"):
            return spawn(command, cwd=self.repo.workdir, env=env)
        view = self.jail_view(self.repo.workdir, holes)
        child = self._take_ahead()
        if child is not None and child.jail is not None:
            if findable(command[0], self.repo.workdir, env):
                try:
                    self.jail.launch(child.jail, view, {**env, TREE_VAR: child.token})
                except OSError:
                    self._drop(child)  # it died meanwhile: a new jail below
                else:
                    child.started = time.monotonic()
                    return child
            else:
                self._drop(child)  # a spawn below says the command is missing
        # Without a network, $METASUP_API is bound into the jail before the agent starts.
        hold = not self.config.sandbox.network and self.api is not None
        jailed = self.jail.prepare(view, hold=hold)
        return spawn(command, cwd=self.repo.workdir, env=env, jail=jailed)

    def _spawn_ahead(self) -> None:
        """The next run's jail, made now while this one runs (see `Jail.ahead`). Not without a
        network: its launch waits for the API to be bound in it."""
        if self.jail is None or not self.config.sandbox.applies("agent"):
            return
        if not self.config.sandbox.network or self._ahead is not None:
            return
        prepared = self.jail.ahead()
        if prepared is None:
            return
        try:
            self._ahead = spawn(
                self.config.agent.command, cwd=self.repo.workdir, env=child_env(), jail=prepared
            )
        except SpawnError:
            self._ahead = None  # the launch makes its jail then, and says what went wrong

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

    def _drop(self, child: Child | None) -> None:
        """A jail made ahead and not launched goes: killed while bwrap still waits for its
        options (it has forked nothing yet), then its pipes and cgroup."""
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
            self.report({"event": "api_bridge_failed", "run": run, "error": str(e)})
        finally:
            jailed.open_gate()

    @property
    def _mode(self) -> str:
        return self.jail.mode if self.jail is not None else "off"

    def _oom_seen(self) -> list[lifecycle.Observation]:
        """A kernel OOM kill in the agent's jail is a health breach (reason: memory), once."""
        r = self.running
        cgroup = r.child.jail.cgroup if r is not None and r.child.jail is not None else None
        if r is None or cgroup is None:
            return []
        cgroup.drain_oom()
        kills = cgroup.oom_kills()
        if kills <= r.oom_kills:
            return []
        r.oom_kills = kills
        return [lifecycle.HealthBreach(self._oom_reason())]

    def _oom_reason(self) -> str:
        assert self.jail is not None and self.jail.memory is not None
        limit = self.jail.memory
        mb = self.config.health.max_memory_mb
        named = (
            f"max_memory_mb {mb:g}"
            if mb is not None and int(mb * (1 << 20)) == limit
            else f"sandbox.limits.memory {format_size(limit)}"
        )
        return f"memory: the jail went over {named} (tmpfs and /dev/shm counted)"

    def _unwatch_closed_pipes(self, everything: bool = False) -> None:
        """Stop watching pipes that reached end of file (all of them with `everything`)."""
        assert self._selector is not None
        r = self.running
        for name, fd in list(self._pipe_fds.items()):
            stream = getattr(r.child.popen, name) if r else None
            if everything or stream is None or stream.closed:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(fd)
                del self._pipe_fds[name]

    def _cleanup_exited(self) -> None:
        """What is left of the exited agent's tree is stopped before any git step."""
        r = self.running
        if r is None:
            return
        left = self._stop_tree()
        if left:
            self.report({"event": "stragglers_stopped", "run": r.run, "processes": left})
        self._finish_running()

    def _finish_running(self) -> None:
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
                self._selector.unregister(cgroup.oom_fd)  # type: ignore[union-attr]
        r.child.release()
        self.running = None
        prune_logs(self.dirs.logs, KEEP_RUN_LOGS)

    def _stop_tree(self) -> int:
        """Stop the agent's tree (stop signal, then SIGKILL); how many processes were left."""
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

    def _stop_running(self) -> None:
        if self.running is None:
            return
        self._stop_tree()
        self._agent_exit()
        self._finish_running()

    def _kill(self, reason: str, health: bool) -> None:
        r = self.running
        if r is None:
            return
        if health:
            self._emit(
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

    def _health_tick(self) -> lifecycle.HealthBreach | None:
        r = self.running
        if r is None:
            return None
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
        if shown != r.shown:  # an idle agent's figures do not change: nothing to rewrite
            r.shown = shown
            self._write_state()
        breach = health.judge(self.limits, sample.rss_mb, list(r.cpu_history), heartbeat_age)
        return lifecycle.HealthBreach(breach) if breach is not None else None

    # --- proposals -----------------------------------------------------------------------------

    def _is_protected(self, path: str) -> bool:
        return self.policy.protecting_rule(path) is not None

    def _take_proposals(self) -> list[lifecycle.Observation]:
        """Claim what waits in the inbox. Direct mode: a queued proposal is applied between
        cycles. Experiment mode: the queue goes to an experiment, judged while the agent runs."""
        if self.intake is None:
            return []
        queued = self.intake.take()
        observed: list[lifecycle.Observation] = []
        if self.intake.restart_requested is not None:
            self.intake.restart_requested = None
            observed.append(lifecycle.RestartRequested())
        if not queued:
            return observed
        if self.experimenter is None:
            return [*observed, lifecycle.ProposalQueued()]
        self._start_experiment()
        return observed

    # --- experiments (proposals.mode: experiment) ------------------------------------------------

    def _start_experiments(self) -> None:
        self.experimenter = Experimenter(
            self.repo, self.config, self.policy, self.dirs.root, self._emit, self.reaper
        )
        self.experimenter.clean_leftovers()
        self._exp_wake = WakePipe()
        assert self._selector is not None
        self._selector.register(self._exp_wake.read_fd, selectors.EVENT_READ, "experiment")
        for record in tail_events(self.dirs.events):
            judged = record.get("event") in ("experiment_passed", "experiment_failed")
            if judged and record.get("improvement") is not None:
                self.recent_gains.append(float(record["improvement"]))

    def _start_experiment(self) -> None:
        """Judge every queued proposal as one A/B experiment, in a thread."""
        if self._exp_thread is not None or self._exp_ready is not None or self.intake is None:
            return  # one at a time; the queue waits for the next
        queue, self.intake.queue = self.intake.queue, []
        if not queue:
            return
        self._exp_items = [item for item, _ in queue]
        sources = [(item.id, item.path.read_bytes()) for item in self._exp_items]
        experimenter, wake = self.experimenter, self._exp_wake
        assert experimenter is not None and wake is not None
        experimenter.strategy = self._strategy()

        def work() -> None:
            try:
                self._exp_done = experimenter.evaluate(sources)
            except BaseException as e:  # reported on the main thread
                self._exp_done = e
            wake.poke()

        self._exp_thread = threading.Thread(target=work, name="experiment", daemon=True)
        self._exp_thread.start()

    def _experiment_finished(self) -> list[lifecycle.Observation]:
        assert self._exp_wake is not None and self._exp_thread is not None
        self._exp_wake.drain()
        self._exp_thread.join()
        self._exp_thread = None
        done, self._exp_done = self._exp_done, None
        if isinstance(done, BaseException):
            raise done
        assert done is not None
        for c in done.candidates:
            if c.verdict is not None and c.verdict.improvement is not None:
                self.recent_gains.append(c.verdict.improvement)
        if done.winner is None:
            self._conclude(done)  # nothing to merge: archive now, the agent runs on
            self._start_experiment()
            return []
        self._exp_ready = done
        return [lifecycle.ProposalQueued()]

    def _merge_ready(self, run: int) -> str | None:
        """Between cycles, right after the snapshot: merge the judged winner."""
        outcome = self._exp_ready
        self._exp_ready = None
        assert outcome is not None
        self._conclude(outcome)
        self._start_experiment()
        return outcome.merged

    def _conclude(self, outcome: Outcome) -> None:
        assert self.experimenter is not None and self.intake is not None
        self.experimenter.conclude(outcome, mark_good=False)
        items = {item.id: item for item in self._exp_items}
        self._exp_items = []
        for c in outcome.candidates:
            item = items.get(c.source)
            if item is not None:
                if c.outcome == "merged":
                    self.intake.store.done(item)
                else:
                    self.intake.store.reject(
                        item,
                        [{"code": "experiment_" + c.outcome, "message": c.failure() or c.outcome}],
                    )
            summary = c.as_dict()
            self.recent_experiments.append(
                {k: summary[k] for k in ("id", "source", "outcome", "score", "improvement")}
            )

    def _check_integrity_at_start(self) -> None:
        """The protected files must be as approved, and the config the one approved; the first
        start approves what it finds. A baseline gone from a repository that was approved
        before is no first start: the agent may have deleted it with the files it guards."""
        from metasup.pipelines import integrity

        tracked, ignored = self.repo.protected_files(self._is_protected)
        config = integrity.config_key(self.repo.workdir, self.config.path)
        baseline = integrity.load(self.dirs.baseline)
        if baseline is None:
            before = self._approved_before()
            if before is not None:
                raise IntegrityError(
                    f"the approval baseline ({self.dirs.baseline.name}) is missing, but this "
                    f"repository was approved before ({before}): check the protected files, "
                    "then run `metasup approve`"
                )
            current = integrity.Baseline(tracked, ignored, config)
            good = self.repo.good_with(
                sorted(tracked), "metasup: approve (first start)\n\nThe protected files as found.\n"
            )
            integrity.save(self.dirs.baseline, current, "first start", good=good)
            self._emit(
                Event.APPROVED,
                reason="first start: the protected files as the operator left them",
                files=len(tracked),
                good=good,
                config=config,
                by="metasup",
            )
            baseline = current
        else:
            if baseline.config is not None and baseline.config != config:
                raise IntegrityError(
                    f"the config in use is {config}, but the approved one is {baseline.config}: "
                    f"run with --config {baseline.config}, or `metasup approve --config {config}` "
                    "to approve the move"
                )
            differ = integrity.differences(baseline.files, tracked) + [
                f"{line} (ignored by git)"
                for line in integrity.differences(baseline.ignored, ignored)
            ]
            if differ:
                raise IntegrityError(
                    "protected files differ from the approved baseline: "
                    f"{integrity.summary(differ)}. If you changed them on purpose, run "
                    "`metasup approve`; if not, restore them (git checkout -- FILE)"
                )
        self._baseline = baseline.files
        self._verify_good()

    def _approved_before(self) -> str | None:
        """Where the journal or the refs say this repository was approved, or None."""
        for record in read_events(self.dirs.events):
            if record.get("event") in (Event.APPROVED, Event.MARK_GOOD):
                return f"journal: {record.get('event')} #{record.get('seq')}"
        if self.repo.good() is not None:
            return "refs/metasup/good exists"
        return None

    def _verify_good(self) -> None:
        """Before each cycle: the good commit's protected files are the approved ones. Only
        the paths that changed since the last verified good are looked at."""
        from metasup.pipelines import integrity

        good = self.repo.good()
        if good is None or good == self._verified_good:
            return
        if self._verified_good is not None:
            # The last verified good matched the baseline everywhere: only the protected
            # paths changed since can differ now (a full walk of a big tree takes 100 ms).
            changed = [
                p
                for p in self.repo.changed_paths(self._verified_good, good)
                if self._is_protected(p)
            ]
            if not changed:
                self._verified_good = good
                return
            baseline = {p: self._baseline[p] for p in changed if p in self._baseline}
            differ = integrity.differences(baseline, self.repo.entries_at(good, changed))
        else:
            differ = integrity.differences(
                self._baseline, self.repo.protected_in_commit(good, self._is_protected)
            )
        if differ:
            self._good_forged = True
            self.report({"event": "integrity_stop", "good": good, "differ": differ})
            raise IntegrityError(
                f"the good commit {good[:12]} has protected files that differ from the approved "
                f"baseline: {integrity.summary(differ)}; metasup stops (inspect it, then "
                "`metasup approve` or `metasup rollback --to REF`)"
            )
        self._verified_good = good

    def _start_backups(self) -> None:
        if not self.config.rollback.backup_interval:
            return
        self._backup_wake = WakePipe()
        assert self._selector is not None
        self._selector.register(self._backup_wake.read_fd, selectors.EVENT_READ, "backup")
        self.timers[Timer.BACKUP] = time.monotonic()  # the first one at start

    def _start_backup(self) -> None:
        """A git bundle of every ref, in a thread: it can take a while on a big repository."""
        if self._backup_thread is not None or self._backup_wake is None:
            return
        from metasup.effects.git.repo import write_bundle

        wake, head = self._backup_wake, self.repo.head()
        workdir, folder = self.repo.workdir, self.dirs.backups
        keep, reaper = self.config.rollback.keep_commits, self.reaper

        def work() -> None:
            try:
                self._backup_done = write_bundle(workdir, folder, keep, head, reaper)
            except BaseException as e:  # reported on the main thread
                self._backup_done = e
            wake.poke()

        self._backup_started = time.perf_counter()
        self._backup_thread = threading.Thread(target=work, name="backup", daemon=True)
        self._backup_thread.start()

    def _backup_finished(self) -> None:
        assert self._backup_wake is not None and self._backup_thread is not None
        self._backup_wake.drain()
        self._backup_thread.join()
        self._backup_thread = None
        done, self._backup_done = self._backup_done, None
        if isinstance(done, Path):
            self._emit(
                Event.BACKUP,
                path=done.name,
                bytes=done.stat().st_size,
                kept=self.config.rollback.keep_commits,
                duration_ms=ms_since(self._backup_started),
            )
        else:
            self.report({"event": "backup_failed", "error": str(done)})
        interval = self.config.rollback.backup_interval or 3600.0
        self.timers[Timer.BACKUP] = time.monotonic() + interval

    def _start_tamper_watch(self) -> None:
        from metasup.pipelines.tamper import TamperWatch

        watch = TamperWatch(self.repo.workdir, self._is_protected, self.dirs.lock)
        if not watch.start():
            watch.stop()
            self.report({"event": "tamper_watch_off", "reason": "the tree cannot be watched"})
            return
        self.tamper = watch
        assert self._selector is not None
        self._selector.register(watch.fd, selectors.EVENT_READ, "tamper")

    def _tamper_restore(self, recheck: bool = False) -> list[lifecycle.Observation]:
        """Protected paths touched while the agent runs: put back from the good commit.

        A writer racing the restore (its write lands just after) is caught by a recheck of the
        same paths a moment later, repeated until one finds nothing to put back.
        """
        assert self.tamper is not None
        self.lock.check()
        self._verify_good()  # never restore from a good commit that is not the approved one
        touched = set(self.tamper.take())
        if recheck:
            touched |= self._tamper_recent
        restored = self.repo.restore_protected(sorted(touched), self._is_protected)
        if self.tamper.take_overflow():  # events were lost: the guard looks at everything
            restored = tuple(sorted({*restored, *self.repo.guard_protected(self._is_protected)}))
        if not restored:
            if recheck:
                self._tamper_recent = set()
            return []  # metasup's own writes, or already as good as the good commit
        self._tamper_recent |= set(restored)
        self.timers[Timer.TAMPER] = time.monotonic() + TAMPER_RECHECK_S
        mode = self.settings.on_tamper
        self._emit(
            Event.TAMPER_RESTORED, paths=list(restored), run=self.state.run, by="watch", then=mode
        )
        if mode is OnTamper.STOP:
            self.report({"event": "stop_requested", "reason": "on_tamper: stop"})
        return [lifecycle.TamperRestored()]

    def _start_intake(self) -> None:
        store = ProposalStore(self.repo.workdir / INBOX, self.dirs.root / "proposals")
        self.intake = Intake(store, self.policy, self.repo.workdir, self._emit, self.report)
        assert self._selector is not None
        self._selector.register(self.intake.fd, selectors.EVENT_READ, "inbox")
        self.intake.start()

    # --- quick failure: archive, reset, note ---------------------------------------------------

    def _check_refs(self, everything: bool = True) -> None:
        """Put back metasup's refs that differ from the journal (deleted, moved, made
        symbolic) while their commits exist; report them, and those that cannot be.

        Between cycles the good ref is read every time, the archive refs (a lookup each:
        about 4 ms for a thousand) when their folder or packed-refs changed, and at least
        every ARCHIVE_CHECK_S."""
        stamp = self.repo.refs_stamp()
        now = time.monotonic()
        if stamp != self._refs_stamp or now - self._refs_checked > ARCHIVE_CHECK_S:
            everything = True
        if everything:
            self._refs_stamp, self._refs_checked = stamp, now
        restored, lost = refguard.put_back(self.repo, self.expected, archives=everything)
        if restored or lost:
            self._emit(
                Event.REFS_RESTORED,
                refs=refguard.as_fields(restored),
                lost=refguard.as_fields(lost),
            )

    def _keep_rewritten(self) -> None:
        """The branch rewound or rewritten behind metasup's back: what it no longer reaches
        is archived before the next snapshot builds on the new history."""
        found = refguard.rewritten(self.repo, self.expected)
        if found is None:
            return
        left, now = found
        ref = self.repo.archive_commit(
            archive_ref_name("history_rewritten")[len(ARCHIVE_PREFIX) :], left
        )
        self._emit(
            Event.ARCHIVE, ref=ref, commit=left, reason="history_rewritten", was=left, now=now
        )

    def _quick_failure(self, qf: lifecycle.QuickFailure) -> lifecycle.Observation | None:
        self._check_refs()  # the rollback's target must not have vanished with its ref
        self._crashed_at = self._exit_mono
        details = {
            "code": qf.code,
            "runtime_s": round(qf.runtime, 3),
            "stderr_tail": self.last_stderr_tail,
        }
        failure = {"run": qf.run, "failed": qf.failed, "reason": qf.reason, **details}
        if qf.target is None:  # rollback disabled: the note is all there is to do
            self._write_recovery(failure)
            return lifecycle.RolledBack(good=None)
        try:
            target = self.repo.check_rollback_target(qf.target, self.repo.head())
        except RollbackRefused as e:
            # No reset, but the failed state is kept all the same before the stop.
            archive = rollback.archive_now(self.repo, qf.reason, qf.run, self._emit)
            self.last_archive = archive.ref if archive else self.last_archive
            self._write_recovery({**failure, "archive": archive.ref if archive else None})
            return lifecycle.RollbackFailed(str(e))
        staging = self.dirs.preserve / f"run-{qf.run}"
        intent = rollback.plan(
            qf.run, qf.failed, target, qf.reason, staging, since_ns=self._good_since_ns, **details
        )
        self._carry_out(intent)
        return None  # RolledBack comes when the thread is done

    def _carry_out(self, intent: dict[str, Any]) -> None:
        """The rollback, on a thread of its own: an archive of a big tree takes a while, and
        the loop stays there for signals and the status meanwhile. Nothing else touches the
        tree until it is done (tamper restores and proposals wait; see `_wait`)."""
        wake = self._rb_wake
        assert wake is not None

        def work() -> None:
            try:
                self._rb_done = rollback.carry_out(
                    self.repo,
                    intent,
                    self.config.rollback.preserve,
                    self.dirs.intent,
                    self._emit,
                    self._bounds,
                )
            except BaseException as e:  # re-raised on the loop's thread
                self._rb_done = e
            wake.poke()

        self._rb_thread = threading.Thread(target=work, name="metasup-rollback", daemon=True)
        self._rb_thread.start()

    def _rollback_finished(self) -> list[lifecycle.Observation]:
        assert self._rb_wake is not None and self._rb_thread is not None
        self._rb_wake.drain()
        self._rb_thread.join()
        done, self._rb_thread, self._rb_done = self._rb_done, None, None
        if isinstance(done, BaseException):
            raise done
        assert done is not None
        observed = [self._rolled_back(done)]
        if self._deferred_tamper and self.tamper is not None:
            self._deferred_tamper = False
            observed += self._tamper_restore()
        if self._deferred_inbox:
            self._deferred_inbox = False
            observed += self._take_proposals()
        return observed

    @property
    def _bounds(self) -> rollback.Bounds:
        return (self.config.rollback.max_file_size, self.config.rollback.max_files)

    def _rolled_back(self, done: dict[str, Any]) -> lifecycle.Observation:
        self.last_archive = done.get("archive") or self.last_archive
        self._write_recovery(done)
        return lifecycle.RolledBack(good=str(done["target"]))

    def _resume_intent(self) -> None:
        """Finish a rollback that a previous supervisor was killed in the middle of."""
        intent = rollback.pending(self.dirs.intent)
        if intent is None:
            return
        self.report(
            {"event": "resuming_rollback", "step": intent.get("step"), "run": intent.get("run")}
        )
        done = rollback.resume(
            self.repo,
            self.dirs.intent,
            self.dirs.events,
            self.dirs.preserve,
            self.config.rollback.preserve,
            self._emit,
            self._bounds,
        )
        if done is not None:
            self._rolled_back(done)

    def _write_recovery(self, intent: dict[str, Any]) -> None:
        note = {
            "ts": utc_now(),
            "run": intent["run"],
            "commit": intent.get("failed"),
            "exit_code": intent.get("code"),
            "runtime_s": intent.get("runtime_s"),
            "reason": intent.get("reason"),
            "stderr_tail": intent.get("stderr_tail", []),
            "archive_ref": intent.get("archive"),
            "rolled_back_to": intent.get("target"),
            "consecutive_failures": self.state.consecutive_failures,
        }
        write_json_atomic(self.dirs.recovery, note)

    def _strategy(self) -> str:
        return lifecycle.strategy(self.state.consecutive_failures, list(self.recent_gains))

    # --- records -------------------------------------------------------------------------------

    def _emit(self, event: Event, **fields: Any) -> None:
        assert self.journal is not None
        record = self.journal.append(event, **fields)
        self.counters = tally(self.counters, event, fields)
        self.expected.observe(record)
        self.report(record)

    def _write_state(self, status: str | None = None) -> None:
        r = self.running
        phase = self.state.phase
        if status is None:
            status = "emergency_stop" if phase is Phase.EMERGENCY_STOP else "running"
        uptime = time.monotonic() - self.started_mono
        doc: dict[str, Any] = {
            "status": status,
            "phase": str(phase),
            "supervisor_pid": os.getpid() if status == "running" else None,
            "repo": str(self.repo.workdir),
            "branch": self.repo.branch,
            "config": str(self.config.path),
            "started_at": self.started_wall,
            "updated_at": utc_now(),
            "current_commit": self.state.commit,
            "good_commit": self.state.good,
            "consecutive_failures": self.state.consecutive_failures,
            "max_failures": self.settings.max_failures,
            "min_runtime_s": self.settings.min_runtime,
            "uptime_s": round(uptime, 3),
            "uptime": human_duration(uptime),
            "run": self.state.run,
            "agent": {
                "pid": r.child.pid if r else None,
                "pgid": r.child.pgid if r else None,
                "token": r.child.token if r else None,
                "state": str(phase) if r else ("stopped" if status != "running" else str(phase)),
                "rss_mb": round(r.rss_mb, 1) if r else None,
                "cpu_percent": round(r.cpu_percent, 1) if r else None,
                "started_at": r.launched_wall if r else None,
                "log": str(r.log.path) if r else None,
            },
            "last_exit": self.last_exit,
            "last_archive": self.last_archive,
            "mcp_servers": self.fleet.states() if self.fleet else {},
            "mcp": self.fleet.details() if self.fleet else {},
            "helper_trees": (self.fleet.trees() if self.fleet else [])
            + (self.api.trees() if self.api else []),
            "api_url": self.api.url if self.api else None,
            "last_crash_to_relaunch_s": self.last_crash_to_relaunch_s,
            "experiments": list(self.recent_experiments),
            "experiment_running": self._exp_thread is not None,
            "strategy": self._strategy(),
            "counters": {**self.counters.as_dict(), "quick_failures": self.state.quick_failures},
        }
        write_json_atomic(self.dirs.state, doc, sync=False)


def _noop_handler(signum: int, frame: object) -> None:
    """Signals are read from the wakeup pipe; the handler only has to exist."""
