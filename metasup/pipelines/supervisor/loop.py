"""The outer loop's driver: observe, ask `lifecycle.decide`, perform the actions.

One thread and one selector. The selector watches the agent's output pipes and a wakeup pipe fed
by signals (SIGCHLD for exits, SIGINT/SIGTERM/SIGHUP for a stop), and its timeout is the nearest
timer (min_runtime, backoff, health tick). An exit is therefore seen the moment the kernel
reports it; nothing polls. The parts it drives: the agent's runs (`agent`), the guards of the
protected files and refs (`guards`), experiments (`trials`), the rollback and the backups on
threads of their own (`background`), the helper children (`helper`, `api_child`).
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import signal
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasup.decisions import lifecycle
from metasup.decisions.counters import Counters, tally
from metasup.decisions.lifecycle import LOOP_TIMERS, OnTamper, Phase, Timer
from metasup.effects.files.safeio import open_append
from metasup.effects.git import packing
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.jail import Jail
from metasup.effects.process.spawn import Reaper, SpawnError, become_subreaper
from metasup.effects.process.trees import kill_descendants, stop_leftover_tree
from metasup.effects.process.view import View, make_view, sandbox_to_json, view_to_json
from metasup.effects.records.journal import (
    Journal,
    RepoLock,
    StateDir,
    read_events,
    recorded_trees,
    utc_now,
    write_json_atomic,
)
from metasup.effects.records.statefile import read_state
from metasup.facts.errors import UserError
from metasup.facts.events import Event, Notice
from metasup.facts.faults import child_env, crashpoint
from metasup.facts.policy import Policy, load_policy
from metasup.facts.settings import Config
from metasup.facts.units import human_duration, ms_since
from metasup.pipelines import refguard
from metasup.pipelines.intake import INBOX, Intake, ProposalStore
from metasup.pipelines.supervisor.agent import Agent
from metasup.pipelines.supervisor.backups import Backups
from metasup.pipelines.supervisor.guards import Guards
from metasup.pipelines.supervisor.helper import Helper
from metasup.pipelines.supervisor.packing import Packer
from metasup.pipelines.supervisor.recovery import Recovery
from metasup.pipelines.supervisor.report import Reporter, plain_reporter
from metasup.pipelines.supervisor.retention import Retention
from metasup.pipelines.supervisor.signals import STOP_SIGNALS, SignalPipe
from metasup.pipelines.supervisor.status import ExitStatus, StatusDocument
from metasup.pipelines.supervisor.trials import Trials
from metasup.pipelines.supervisor.verify import VERIFY_INTERVAL_S, Verifier

if TYPE_CHECKING:
    from metasup.pipelines.mcp.fleet import Fleet
    from metasup.pipelines.supervisor.api_child import ApiProcess
    from metasup.pipelines.supervisor.rounds import Rounds
    from metasup.pipelines.supervisor.serving import ServeProcess

# Actions that write to git: each waits until the repository lock is known to be still ours.
GIT_ACTIONS = (
    lifecycle.ApplyProposals,
    lifecycle.Snapshot,
    lifecycle.MergeWinner,
    lifecycle.MarkGood,
    lifecycle.QuickFailure,
)
INBOX_GRACE_S = 0.25  # after a bare creation in the inbox, before claiming it
TAMPER_RECHECK_S = 0.02  # after a restore, a look again for a write that raced it


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
        self.echo = echo
        self.live_view = live_view
        self.view: Helper | None = None
        self.report = reporter or plain_reporter()
        self.state = lifecycle.LoopState()
        self.counters = Counters()
        self.timers: dict[Timer, float] = {}
        self.reaper = Reaper()
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.last_exit: ExitStatus | None = None
        self.selector = selectors.DefaultSelector()
        self.signals = SignalPipe()
        self.journal: Journal | None = None
        # When the tree was last known good: ignored files changed later go with a rollback.
        # The start is such a moment (the tree passed the integrity check).
        self._good_since_ns = time.time_ns()
        self.lock = RepoLock(self.dirs.lock, str(repo.workdir))
        self.policy: Policy = load_policy(repo.workdir, config.path, config.protected_paths)
        self.jail: Jail | None = None
        self.agent: Agent | None = None
        self.guards = Guards(repo, self.dirs, self.lock, self._is_protected, self._emit, self._say)
        self.intake: Intake | None = None
        self.trials: Trials | None = None
        self.rounds: Rounds | None = None  # evolution rounds, in mode: continuous
        self.fleet: Fleet | None = None
        self.api: ApiProcess | None = None
        self.serving: ServeProcess | None = None
        self.recovery: Recovery | None = None
        self.backups: Backups | None = None
        self.retention: Retention | None = None
        self.packer: Packer | None = None
        self.verifier: Verifier | None = None
        self._terminal: list[Any] | None = None  # the terminal's settings before the view
        self._exit_mono = 0.0  # when the last exit was seen
        self._crashed_at: float | None = None  # the exit of a quick failure, until relaunch
        self._refs_before: tuple[int, ...] | None = None  # the refs as checked before a rollback
        self.last_crash_to_relaunch_s: float | None = None
        self.evolution: dict[str, Any] | None = None  # the last evolution's figures
        self._servers_waiting: list[str] | None = None  # the MCP servers a launch waits for
        self._deferred_tamper = False  # tamper events and proposals seen during a rollback
        self._deferred_inbox = False

    # --- lifecycle of the supervisor itself ----------------------------------------------------

    def run(self) -> int:
        self.dirs.create()
        lock = self.lock
        lock.acquire()
        try:
            # Before anything binds, reads or writes it: the inbox must be a real folder.
            ProposalStore(self.repo.workdir / INBOX, self.dirs.root / "proposals").create()
            self.signals.install()
            self.selector.register(self.signals.read_fd, selectors.EVENT_READ, "signals")
            become_subreaper()
            self._start_jail()  # before the journal: a refusal changes nothing
            self.agent = Agent(
                self.config,
                self.repo.workdir,
                self.dirs,
                self.reaper,
                self.selector,
                self.jail,
                self.jail_view,
                self._emit,
                self._say,
            )
            self.journal = Journal(self.dirs.events, self.dirs.secret)
            if self.journal.breaks:
                self._emit(Event.JOURNAL_BROKEN, problems=self.journal.breaks)
            journalled = list(read_events(self.dirs.events))
            self.guards.expected = refguard.Expected.from_journal(journalled)
            self.evolution = _last_evolution(journalled)
            if self.config.api_listen:
                self._start_api(self.config.api_listen)
            if self.config.serve is not None:
                self._start_serving(self.config.serve.listen)
            if self.config.mcp_servers:
                from metasup.pipelines.mcp.fleet import Fleet  # only where there are servers to run

                self.fleet = Fleet(
                    self.config.mcp_servers,
                    self.repo.workdir,
                    self.dirs,
                    self.reaper,
                    self.selector,
                    self._emit,
                    self._say,
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
                self.report({"event": Notice.STALE_LOCKS_REMOVED, "locks": ", ".join(names)})
            self.recovery = Recovery(
                self.repo, self.config, self.dirs, self._emit, self._say, self.selector
            )
            self.recovery.resume(self.state.consecutive_failures)
            self.guards.check_refs()
            self.guards.check_at_start(self.config.path)
            self._start_intake()
            self.guards.start_tamper_watch(self.selector)
            if self.guards.tamper is not None and self.guards.tamper.changes is not None:
                self.repo.changes = self.guards.tamper.changes
                self._good_now()  # from here the watch sees what changes: nothing ran before
                self.verifier = Verifier(
                    self.repo.workdir, self.repo.changes, self._say, self.selector
                )
                self.timers[Timer.VERIFY] = time.monotonic() + VERIFY_INTERVAL_S
            if self.config.rollback.backup_interval:
                self.backups = Backups(
                    self.repo,
                    self.config.rollback,
                    self.dirs,
                    self.reaper,
                    self._emit,
                    self._say,
                    self.selector,
                )
                self.timers[Timer.BACKUP] = time.monotonic()  # the first one at start
            self.retention = Retention(
                self.repo,
                self.config.rollback,
                self.dirs,
                self.reaper,
                self._emit,
                self._say,
                self.selector,
            )
            self.retention.start()
            auto = _gc_auto(self.repo)
            self.packer = Packer(self.repo, self.reaper, self._say, self.selector, auto)
            if self.config.proposals_mode == "experiment":
                assert self.intake is not None
                self.trials = Trials(
                    self.repo,
                    self.config,
                    self.policy,
                    self.dirs,
                    self.intake,
                    self._emit,
                    self.reaper,
                    self.selector,
                    offer=self.serving.offer if self.serving is not None else None,
                )
            evolution = self.config.evolution
            if evolution is not None and evolution.mode == "continuous":
                from metasup.pipelines.supervisor.rounds import Rounds  # only where configured

                self.rounds = Rounds(
                    self.repo.workdir,
                    self.config,
                    self.policy,
                    self.dirs,
                    self._emit,
                    self.reaper,
                    self.selector,
                    self._evolution_figures,
                    offer=self.serving.offer if self.serving is not None else None,
                )
                self.timers[Timer.EVOLUTION] = self.rounds.first_due(time.monotonic())
            return self._loop()
        finally:
            self._shutdown()
            lock.release()

    def _say(self, record: dict[str, Any]) -> None:
        """A report line, to whoever reports now (the live view takes over from the terminal)."""
        self.report(record)

    def _start_jail(self) -> None:
        """Probe the machine and settle the jail; refuse to start where the config asks for
        more than it offers (a named mode it lacks, or `required` with a guarantee not held)."""
        self.jail = Jail(self.config.sandbox, self.config.health.max_memory_mb, self.reaper)
        refusal = self.jail.refusal()
        if refusal is not None:
            raise UserError(refusal)
        plan = self.jail.plan
        self.report({"event": Notice.SANDBOX, "mode": plan.mode, "detail": self.jail.describe()})
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
        self._terminal = terminal_settings()
        try:
            view.start("--git-dir", str(self.repo.git_dir), "--supervisor", str(os.getpid()))
        except SpawnError as e:
            self.report({"event": Notice.VIEW_FAILED, "error": str(e)})
            return
        self.view = view
        self.echo = False
        log = io.TextIOWrapper(open_append(self.dirs.logs / "supervisor.log"), encoding="utf-8")
        self.report = plain_reporter(log)

    def _stop_view(self) -> None:
        if self.view is not None:
            self.view.stop(grace=2.0, timeout=1.0)  # its stdin ends: it draws a last frame
            self.view = None
        # The view turns echo off while it reads keys; a view killed outright would leave the
        # user's terminal that way.
        restore_terminal(self._terminal)

    def _start_api(self, listen: str) -> None:
        from metasup.pipelines.supervisor.api_child import ApiProcess

        self.api = ApiProcess(
            listen, self.dirs, self.repo.workdir, self.config.path, self.reaper, self._say
        )
        try:
            url = self.api.start()
        except OSError as e:
            self.api = None
            raise UserError(f"cannot serve the API on {listen}: {e.strerror or e}") from None
        if self.agent is not None:
            self.agent.api = self.api
        self.report({"event": Notice.API_LISTENING, "url": url})

    def _start_serving(self, listen: str) -> None:
        from metasup.pipelines.supervisor.serving import ServeProcess

        self.serving = ServeProcess(
            listen,
            self.dirs,
            self.repo.workdir,
            self.config.path,
            self.reaper,
            self.selector,
            self._emit,
            self._say,
        )
        try:
            url = self.serving.start()
        except OSError as e:
            self.serving = None
            raise UserError(f"cannot serve on {listen}: {e.strerror or e}") from None
        self.report({"event": Notice.SERVE_LISTENING, "url": url})

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
            self.report({"event": Notice.LEFTOVERS_STOPPED, "processes": found})

    def _shutdown(self) -> None:
        if self.recovery is not None:
            self.recovery.close(timeout=120)
        self.guards.stop()
        self.repo.changes = None  # no watch from here: the steps left scan the tree
        if self.intake is not None:
            self.intake.stop()
        if self.agent is not None and self.agent.running is not None:
            self.agent.stop_tree()
            self.agent.exit_code()
            self.agent.finish()
        if self.journal is not None:
            restored = self.guards.restore_all()
            if restored:
                self._emit(Event.TAMPER_RESTORED, paths=list(restored), by="stop")
        if self.trials is not None:
            self.trials.stop(lambda: kill_descendants(self.reaper))
        if self.rounds is not None:
            self.rounds.stop()
        if self.backups is not None:
            self.backups.close()
        if self.retention is not None:
            self.retention.close()
        if self.packer is not None:
            self.packer.close()
        if self.verifier is not None:
            self.verifier.close()
        if self.fleet is not None:
            self.fleet.stop()  # after the agent: its servers outlive it
        if self.serving is not None:
            self.serving.stop()  # its replicas with it
        status = "emergency_stop" if self.state.phase is Phase.EMERGENCY_STOP else "stopped"
        if self.journal is not None:
            self._emit(Event.SUPERVISOR_STOP, status=status, exit_code=self.state.exit_code)
            self._write_state(status)
            self.journal.close()
        if self.api is not None:
            self.api.stop()  # last: a watcher reads the final state through it
        self._stop_view()
        if self.agent is not None:
            self.agent.drop()
        if self.jail is not None:
            self.jail.close()
        self.signals.restore()
        self.selector.close()

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> int:
        good = self.repo.good()
        # What waits in the inbox first: the first snapshot applies it.
        pending: deque[lifecycle.Observation] = deque(self._take_proposals())
        pending.append(lifecycle.Started(good=good))
        while True:
            while pending:
                self.state, actions = lifecycle.decide(self.settings, self.state, pending.popleft())
                for action in actions:
                    follow = self._perform(action)
                    if follow is not None:
                        pending.append(follow)
                if self.state.phase in lifecycle.FINAL:
                    return self.state.exit_code or 0
                if not pending:
                    # Once what follows is done: a state between two steps lasts no longer
                    # than the next step, and each write is a file made and renamed (a
                    # restart wrote four).
                    self._write_state()
            pending.extend(self._wait())

    def _wait(self) -> list[lifecycle.Observation]:
        """Block until something happens; return what was observed."""
        observed = []
        exited = self._agent_exit()
        if exited is not None:
            return [exited]
        timeout = None
        if self.timers:
            timeout = max(0.0, min(self.timers.values()) - time.monotonic())
        resetting = self._resetting  # the reset is the tree's writer meanwhile
        for key, _ in self.selector.select(timeout):
            if key.data == "signals":
                observed += self._read_signals()
            elif key.data == "tamper":
                if resetting:
                    assert self.guards.tamper is not None
                    self.guards.tamper.wake.drain()
                    self._deferred_tamper = True
                else:
                    observed += self._tamper_restore()
            elif key.data == "rollback":
                observed += self._rollback_finished()
            elif key.data == "backup":
                assert self.backups is not None
                self.timers[Timer.BACKUP] = self.backups.finished()
            elif key.data == "verify":
                assert self.verifier is not None
                self.verifier.finished()
                self.timers[Timer.VERIFY] = time.monotonic() + VERIFY_INTERVAL_S
            elif key.data == "pack":
                assert self.packer is not None
                self.packer.finished()
            elif key.data == "prune":
                assert self.retention is not None
                self.retention.take()
                if not resetting:  # else after the rollback: its git steps come first
                    self.retention.apply()
            elif key.data == "mcp":
                assert self.fleet is not None
                if self.fleet.read():
                    self._write_state()
            elif key.data == "serve":
                assert self.serving is not None
                if self.serving.read():
                    self._write_state()
                observed += self._canary_verdicts()
            elif key.data == "inbox":
                assert self.intake is not None
                if resetting:
                    self.intake.wake.drain()
                    self._deferred_inbox = True
                elif not self.intake.wake.drain():
                    # Only created, maybe still being written: look once the writer is done.
                    self.timers.setdefault(Timer.INBOX, time.monotonic() + INBOX_GRACE_S)
                else:
                    observed += self._take_proposals()
            elif key.data == "experiment":
                assert self.trials is not None
                if self.trials.judged(self._strategy()):
                    observed.append(lifecycle.WinnerJudged())
            elif key.data == "evolution":
                assert self.rounds is not None
                won, self.timers[Timer.EVOLUTION] = self.rounds.finished()
                if won:
                    observed.append(lifecycle.WinnerJudged())
            elif key.data == "oom":
                observed += self._oom_seen()
            else:
                assert self.agent is not None
                self.agent.pump()
        exited = self._agent_exit()
        if exited is not None:
            observed.append(exited)
        observed += self._servers_ready()
        self.lock.check()  # one lstat a wake-up: a lost lock stops us before the next git step
        now = time.monotonic()
        for name, due in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if due > now:
                continue
            del self.timers[name]
            if name is Timer.MIN_RUNTIME:
                self._good_now()  # the same commit, proven good again
                if self.packer is not None:
                    # A healthy run: no git step until it ends, and a crash (whose rollback
                    # must not wait) is not what usually comes next.
                    self.packer.maybe_start()
                observed.append(lifecycle.MinRuntimeReached(run=self.state.run))
            elif name is Timer.BACKOFF:
                observed.append(lifecycle.BackoffElapsed())
            elif name is Timer.HEALTH:
                observed.append(lifecycle.HealthDue())
            elif name is Timer.SERVERS:
                if self._servers_waiting is not None:
                    self._servers_waiting = None
                    observed.append(lifecycle.ServersReady())  # not all answer: it starts anyway
            elif name is Timer.INBOX and self._resetting:
                self._deferred_inbox = True
            elif name is Timer.TAMPER and self._resetting:
                self._deferred_tamper = True
            elif name is Timer.INBOX:
                observed += self._take_proposals()
            elif name is Timer.TAMPER:
                observed += self._tamper_restore(recheck=True)
            elif name is Timer.BACKUP and self.backups is not None:
                self.backups.start()
            elif name is Timer.VERIFY and self.verifier is not None:
                self.verifier.start()
            elif name is Timer.EVOLUTION and self.rounds is not None:
                won, again = self.rounds.due(time.monotonic())
                if again is not None:
                    self.timers[Timer.EVOLUTION] = again
                if won:
                    observed.append(lifecycle.WinnerJudged())
        return observed

    def _canary_verdicts(self) -> list[lifecycle.Observation]:
        """The front door's verdicts, each to the experiment or the evolution round whose winner
        it was: a promoted one then waits to be merged between runs."""
        assert self.serving is not None
        observed: list[lifecycle.Observation] = []
        verdicts, self.serving.verdicts = self.serving.verdicts, []
        for candidate, promoted, reason in verdicts:
            won = self.trials is not None and self.trials.canary_ended(
                candidate, promoted, reason, self._strategy()
            )
            if self.rounds is not None and self.rounds.canary_ended(candidate, promoted):
                won = True
            if won:
                observed.append(lifecycle.WinnerJudged())
        return observed

    @property
    def _resetting(self) -> bool:
        return self.recovery is not None and self.recovery.resetting

    def _read_signals(self) -> list[lifecycle.Observation]:
        observed: list[lifecycle.Observation] = []
        for signum in self.signals.read():
            if signum == signal.SIGCHLD:
                self.reaper.reap()
                if self.fleet is not None and self.fleet.check_worker():
                    self._write_state()
                if self.api is not None:
                    self.api.check()
                if self.serving is not None and self.serving.check():
                    self._write_state()
                    observed += self._canary_verdicts()
            elif signum in STOP_SIGNALS:
                self.report({"event": Notice.STOP_REQUESTED, "signal": signal.Signals(signum).name})
                observed.append(lifecycle.StopRequested())
        return observed

    def _agent_exit(self) -> lifecycle.Exited | None:
        """The agent's exit, once reaped (by SIGCHLD, or while stopping its tree)."""
        agent = self.agent
        r = agent.running if agent is not None else None
        if agent is None or r is None:
            return None
        code = agent.exit_code()
        if code is None:
            return None
        # The kernel killed it for memory: recorded as ours would be (once: a health tick may
        # have seen the breach first).
        if self._oom_seen() and self.state.kill_reason is None:
            agent.kill(agent.oom_reason(), health=True)
        runtime = time.monotonic() - r.child.started
        self._exited(r.child.pid, r.run, r.commit, code, runtime)
        return lifecycle.Exited(code=code, runtime=runtime)

    def _exited(self, pid: int | None, run: int, commit: str, code: int, runtime: float) -> None:
        """Record an exit (state and journal)."""
        self._exit_mono = time.monotonic()
        self.last_exit = {"run": run, "code": code, "runtime_s": round(runtime, 3)}
        self._emit(
            Event.EXIT, pid=pid, code=code, runtime_s=round(runtime, 3), run=run, commit=commit
        )

    def _oom_seen(self) -> list[lifecycle.Observation]:
        """A kernel OOM kill in the agent's jail is a health breach (reason: memory), once."""
        if self.agent is None or not self.agent.oom_kills():
            return []
        return [lifecycle.HealthBreach(self.agent.oom_reason())]

    # --- actions -------------------------------------------------------------------------------

    def _perform(self, action: lifecycle.Action) -> lifecycle.Observation | None:
        if isinstance(action, GIT_ACTIONS):
            self.lock.check()  # a second supervisor may run beside us: touch nothing
            if self.packer is not None:
                self.packer.hold()
        agent = self.agent
        assert agent is not None
        match action:
            case lifecycle.ApplyProposals():
                if self.intake is not None:
                    self.intake.apply_queued()
            case lifecycle.Snapshot(run=run):
                return self._snapshot(run)
            case lifecycle.MergeWinner():
                if self.rounds is not None and self.rounds.held is not None:
                    merged, proven = self.rounds.merge_held()
                else:
                    assert self.trials is not None
                    merged, proven = self.trials.merge_held(self._strategy())
                head = merged or self.repo.head()
                assert head is not None
                return lifecycle.Snapshotted(commit=head, proven=proven and merged == head)
            case lifecycle.MarkGood(commit=commit, baseline=baseline, promoted=promoted):
                self._good_now()
                self.repo.set_good(commit)
                why = {"reason": "canary promoted"} if promoted else {}
                self._emit(
                    Event.MARK_GOOD, commit=commit, run=self.state.run, baseline=baseline, **why
                )
            case lifecycle.SyncServers(commit=commit):
                return self._sync_servers(commit)
            case lifecycle.Launch(run=run, commit=commit):
                return self._launch(run, commit)
            case lifecycle.ArmTimer(name=name, delay=delay):
                self.timers[name] = time.monotonic() + delay
            case lifecycle.SampleHealth():
                breach, changed = agent.sample()
                if changed:
                    self._write_state()
                return lifecycle.HealthBreach(breach) if breach is not None else None
            case lifecycle.CancelTimers():
                for name in LOOP_TIMERS:  # the inbox's grace timer is not the loop's to cancel
                    self.timers.pop(name, None)
            case lifecycle.Cleanup():
                agent.cleanup()
            case lifecycle.StopAgent():
                agent.stop_tree()  # the exit is observed by the loop, like any other
            case lifecycle.KillAgent(reason=reason, health=health):
                agent.kill(reason, health)
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
        self.guards.check_refs(everything=False)
        self.guards.keep_rewritten()
        self.guards.verify_good()
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
        return lifecycle.Snapshotted(commit=snap.head)

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
        return env

    def _sync_servers(self, commit: str) -> lifecycle.Observation | None:
        """The MCP servers run `commit`'s code before the agent does: start them, or restart
        the ones whose files changed; ServersReady once they answer (see `_servers_ready`) or
        their start timeout passes."""
        fleet = self.fleet
        if fleet is None:
            return lifecycle.ServersReady()
        names = fleet.sync(commit, self.repo.changed_paths)
        if not names:
            return lifecycle.ServersReady()
        self._servers_waiting = names
        self.timers[Timer.SERVERS] = time.monotonic() + fleet.start_timeout(names) + 1.0
        return None  # the loop writes the status (phase: launching) once this batch is done

    def _servers_ready(self) -> list[lifecycle.Observation]:
        """The servers a launch waits for all answer now (or gave up starting)."""
        names = self._servers_waiting
        if names is None or (self.fleet is not None and self.fleet.waiting_for(names)):
            return []
        self._servers_waiting = None
        self.timers.pop(Timer.SERVERS, None)
        return [lifecycle.ServersReady()]

    def _launch(self, run: int, commit: str) -> lifecycle.Observation | None:
        assert self.agent is not None
        error = self.agent.launch(run, commit, self._agent_env(run, commit), self.echo)
        if error is not None:
            self._exited(None, run, commit, 127, 0.0)  # the record: it ended before it began
            return lifecycle.LaunchFailed(error)
        if self._crashed_at is not None:
            self.last_crash_to_relaunch_s = round(time.monotonic() - self._crashed_at, 6)
            self._crashed_at = None
        return None

    # --- proposals and the tree's guards -------------------------------------------------------

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
        if self.trials is None:
            return [*observed, lifecycle.ProposalQueued()]
        self.trials.start_next(self._strategy())
        return observed

    def _start_intake(self) -> None:
        store = ProposalStore(self.repo.workdir / INBOX, self.dirs.root / "proposals")
        self.intake = Intake(store, self.policy, self.repo.workdir, self._emit, self._say)
        self.selector.register(self.intake.fd, selectors.EVENT_READ, "inbox")
        self.intake.start()

    def _tamper_restore(self, recheck: bool = False) -> list[lifecycle.Observation]:
        """Protected paths touched while the agent runs: put back from the good commit, and
        looked at again a moment later (a write may have raced the restore)."""
        restored = self.guards.restore_touched(recheck)
        if not restored:
            return []
        self.timers[Timer.TAMPER] = time.monotonic() + TAMPER_RECHECK_S
        mode = self.settings.on_tamper
        self._emit(
            Event.TAMPER_RESTORED, paths=list(restored), run=self.state.run, by="watch", then=mode
        )
        if mode is OnTamper.STOP:
            self.report({"event": Notice.STOP_REQUESTED, "reason": "on_tamper: stop"})
        return [lifecycle.TamperRestored()]

    # --- quick failure: archive, reset, note ---------------------------------------------------

    def _quick_failure(self, qf: lifecycle.QuickFailure) -> lifecycle.Observation | None:
        assert self.agent is not None and self.recovery is not None
        # The rollback's target must not have vanished with its ref; the archive refs are
        # compared too when their folder changed since the last look.
        self.guards.check_refs(everything=False)
        self._refs_before = self.guards.own_writes_begin()
        self._crashed_at = self._exit_mono
        failures = self.state.consecutive_failures
        return self.recovery.start(qf, self.agent.last_stderr_tail, self._good_since_ns, failures)

    def _rollback_finished(self) -> list[lifecycle.Observation]:
        assert self.recovery is not None
        observed = [self.recovery.finished(self.state.consecutive_failures)]
        self.guards.own_writes_done(self._refs_before)
        self._refs_before = None
        if self.retention is not None:  # a new archive: past the limits, perhaps
            self.retention.apply()
            self.retention.start()
        if self._deferred_tamper and self.guards.tamper is not None:
            self._deferred_tamper = False
            observed += self._tamper_restore()
        if self._deferred_inbox:
            self._deferred_inbox = False
            observed += self._take_proposals()
        return observed

    def _good_now(self) -> None:
        """The tree is in a good state now: ignored files changed later go with a rollback."""
        self._good_since_ns = time.time_ns()
        if self.repo.changes is not None:
            self.repo.changes.good(self._good_since_ns)

    def _strategy(self) -> str:
        gains = list(self.trials.recent_gains) if self.trials is not None else []
        return lifecycle.strategy(self.state.consecutive_failures, gains)

    # --- records -------------------------------------------------------------------------------

    def _emit(self, event: Event, **fields: Any) -> None:
        assert self.journal is not None
        record = self.journal.append(event, **fields)
        self.counters = tally(self.counters, event, fields)
        self.guards.expected.observe(record)
        self.report(record)

    def _evolution_figures(self, figures: dict[str, Any]) -> None:
        """A round's thread reports its progress: shown at the next status write."""
        self.evolution = figures

    def _write_state(self, status: str | None = None) -> None:
        if self.serving is not None:
            # Written once a wake-up's steps are done: the good commit as it stands then is
            # what the replicas run (they wait for a first good commit).
            self.serving.follow(self.state.good)
        phase = self.state.phase
        if status is None:
            status = "emergency_stop" if phase is Phase.EMERGENCY_STOP else "running"
        uptime = time.monotonic() - self.started_mono
        assert self.agent is not None
        doc: StatusDocument = {
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
            "agent": self.agent.status(str(phase), status == "running"),
            "last_exit": self.last_exit,
            "last_archive": self.recovery.last_archive if self.recovery else None,
            "mcp_servers": self.fleet.states() if self.fleet else {},
            "mcp": self.fleet.details() if self.fleet else {},
            "helper_trees": (self.fleet.trees() if self.fleet else [])
            + (self.api.trees() if self.api else [])
            + (self.serving.trees() if self.serving else []),
            "api_url": self.api.url if self.api else None,
            "serve_url": self.serving.url if self.serving else None,
            "serve": self.serving.describe() if self.serving else None,
            "last_crash_to_relaunch_s": self.last_crash_to_relaunch_s,
            "experiments": list(self.trials.recent) if self.trials is not None else [],
            "experiment_running": self.trials is not None and self.trials.job.running,
            "evolution": self.evolution,
            "strategy": self._strategy(),
            "counters": {**self.counters.as_dict(), "quick_failures": self.state.quick_failures},
        }
        write_json_atomic(self.dirs.state, dict(doc), sync=False)


def _last_evolution(journalled: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The figures of the last evolution the journal tells of (a running one updates them)."""
    if not any(r.get("event") == "evolution_started" for r in journalled):
        return None  # and the evolution modules stay unloaded
    from metasup.decisions.evolution import figures, histories

    found = histories(journalled)
    return figures(list(found.values())[-1], running=False) if found else None


def terminal_settings() -> list[Any] | None:
    """The settings of the terminal on stdout, when it is one."""
    import termios

    try:
        return termios.tcgetattr(1)
    except (termios.error, OSError):
        return None


def restore_terminal(saved: list[Any] | None) -> None:
    if saved is None:
        return
    import termios

    with contextlib.suppress(termios.error, OSError):
        termios.tcsetattr(1, termios.TCSADRAIN, saved)


def _gc_auto(repo: GitRepo) -> int:
    """git's `gc.auto`: the loose objects past which it packs (0: never)."""
    try:
        return int(str(repo.repo.config["gc.auto"]))
    except (KeyError, ValueError):
        return packing.AUTO
