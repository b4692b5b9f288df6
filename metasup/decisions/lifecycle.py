"""The outer loop as a pure state machine: `decide(state, observation) -> (state, actions)`.

No I/O here. The driver (`pipelines/supervisor/loop.py`) observes the world (exits, timers,
signals, results of git steps), asks `decide` what to do, and performs the actions. Every
transition is a plain function of its inputs, so the tests walk all of them. Everything that
changes the loop's course lives here (h11's `_state.py` rule): the driver only observes and
performs.

Named states, after supervisord's process states and OTP's restart intensity:
STARTING      snapshot the tree
LAUNCHING     the MCP servers start (or restart) on the snapshot's commit; then the agent
RUNNING       launched, not yet `min_runtime` old: an exit now is a quick failure
GOOD          has run `min_runtime`; its commit is marked good; an exit now is a normal restart
BACKOFF       waiting before a relaunch after a normal exit
ROLLING_BACK  archiving the failed state and resetting to the good commit
STOPPING      a stop was asked for (or a proposal waits); waiting for the agent's group to exit
EMERGENCY_STOP  `max_failures` quick failures in a row (or no way back): everything stopped
STOPPED       ended cleanly
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    STARTING = "starting"
    LAUNCHING = "launching"
    RUNNING = "running"
    GOOD = "good"
    BACKOFF = "backoff"
    ROLLING_BACK = "rolling_back"
    STOPPING = "stopping"
    EMERGENCY_STOP = "emergency_stop"
    STOPPED = "stopped"


FINAL = (Phase.EMERGENCY_STOP, Phase.STOPPED)


class Timer(StrEnum):
    """The timers the driver keeps. The loop's own (armed and cancelled by `decide`), then the
    driver's (its inbox grace, tamper recheck and backup interval: never cancelled by a run's
    end)."""

    MIN_RUNTIME = "min_runtime"
    BACKOFF = "backoff"
    HEALTH = "health"
    SERVERS = "servers"  # the longest the agent waits for its MCP servers
    INBOX = "inbox"
    TAMPER = "tamper"
    BACKUP = "backup"
    EVOLUTION = "evolution"  # the next continuous evolution round
    VERIFY = "verify"  # the watch's list of changes checked against a full status


FIRST_SAMPLE = 1.0  # seconds after a launch: its first health sample past the launch's own

LOOP_TIMERS = (Timer.MIN_RUNTIME, Timer.BACKOFF, Timer.HEALTH, Timer.SERVERS)


class OnTamper(StrEnum):
    """What a protected path restored while the agent runs leads to (config `on_tamper`)."""

    RESTORE = "restore"
    RESTORE_AND_RESTART = "restore_and_restart"
    STOP = "stop"


@dataclass(frozen=True)
class Settings:
    min_runtime: float
    max_failures: int
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    rollback_enabled: bool = True
    max_cycles: int | None = None
    health_interval: float = 30.0
    on_tamper: OnTamper = OnTamper.RESTORE

    @property
    def stable_after(self) -> float:
        """A run this long resets the backoff: the agent is no longer flapping."""
        return self.min_runtime + self.backoff_max


@dataclass(frozen=True)
class LoopState:
    phase: Phase = Phase.STARTING
    run: int = 0  # the current (or last) run's METASUP_RUN; goes on across restarts
    launches: int = 0  # launches by this supervisor, for --max-cycles
    consecutive_failures: int = 0
    quick_failures: int = 0  # all of them, since this supervisor started
    restarts: int = 0  # normal exits in a row of runs shorter than `stable_after`
    good: str | None = None
    commit: str | None = None  # the commit the current (or last) run was launched on
    stop_requested: bool = False
    proposals: bool = False  # direct proposals wait to be applied before the next snapshot
    winner: bool = False  # an experiment's winner waits to be merged after the next snapshot
    kill_reason: str | None = None  # set when the driver killed the agent for its health
    exit_code: int | None = None  # the process exit code once in a final phase


# --- observations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    good: str | None  # refs/metasup/good when the supervisor starts


@dataclass(frozen=True)
class Snapshotted:
    commit: str  # HEAD after the snapshot: what is about to run
    # It ran on live traffic as it is (a canary promoted it and its merge was a fast-forward):
    # good at once, as a run past min_runtime would make it.
    proven: bool = False


@dataclass(frozen=True)
class ServersReady:
    """The MCP servers run the commit about to launch (or their start timeout passed)."""


@dataclass(frozen=True)
class MinRuntimeReached:
    run: int


@dataclass(frozen=True)
class Exited:
    code: int
    runtime: float


@dataclass(frozen=True)
class LaunchFailed:
    """The agent could not be started at all (missing, not executable, no jail)."""

    error: str


@dataclass(frozen=True)
class HealthDue:
    """The health timer fired: time to sample the agent's tree."""


@dataclass(frozen=True)
class HealthBreach:
    reason: str


@dataclass(frozen=True)
class TamperRestored:
    """Protected paths written while the agent ran were put back from the good commit."""


@dataclass(frozen=True)
class BackoffElapsed:
    pass


@dataclass(frozen=True)
class StopRequested:
    pass


@dataclass(frozen=True)
class ProposalQueued:
    """A valid proposal waits to be applied between cycles (direct mode)."""


@dataclass(frozen=True)
class WinnerJudged:
    """An experiment found a winner; it is merged between cycles (experiment mode)."""


@dataclass(frozen=True)
class RestartRequested:
    """The agent asked (through `metasup mcp serve`) to be restarted between cycles."""


@dataclass(frozen=True)
class RolledBack:
    good: str | None  # the commit the tree now holds; None when rollback is disabled


@dataclass(frozen=True)
class RollbackFailed:
    reason: str


Observation = (
    Started
    | Snapshotted
    | ServersReady
    | MinRuntimeReached
    | Exited
    | LaunchFailed
    | HealthDue
    | HealthBreach
    | TamperRestored
    | BackoffElapsed
    | StopRequested
    | ProposalQueued
    | WinnerJudged
    | RestartRequested
    | RolledBack
    | RollbackFailed
)


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyProposals:
    """Apply the queued proposals, each all or nothing, before the snapshot commits them."""


@dataclass(frozen=True)
class Snapshot:
    run: int  # the run the snapshot is for


@dataclass(frozen=True)
class MergeWinner:
    """Merge the held winner into the branch just snapshotted; Snapshotted comes again with
    the commit the branch then has."""


@dataclass(frozen=True)
class MarkGood:
    commit: str
    baseline: bool = False  # the first snapshot, marked good because nothing else was
    promoted: bool = False  # a canary promoted it


@dataclass(frozen=True)
class SyncServers:
    """Start the MCP servers, or restart those whose files differ, on `commit`; ServersReady
    comes once they answer (at once when there is nothing to wait for)."""

    commit: str


@dataclass(frozen=True)
class Launch:
    run: int
    commit: str


@dataclass(frozen=True)
class ArmTimer:
    name: Timer
    delay: float


@dataclass(frozen=True)
class SampleHealth:
    """Sample the agent's tree and judge it: a breach comes back as HealthBreach."""


@dataclass(frozen=True)
class CancelTimers:
    pass


@dataclass(frozen=True)
class Cleanup:
    """Stop whatever is left of the exited agent's tree before any git step."""


@dataclass(frozen=True)
class StopAgent:
    pass


@dataclass(frozen=True)
class KillAgent:
    reason: str
    health: bool = True  # a health breach (recorded as health_kill), not an operator's stop


@dataclass(frozen=True)
class QuickFailure:
    """Record the failure (recovery note) and, when `target` is set, archive and reset to it."""

    run: int
    failed: str | None
    target: str | None
    code: int
    runtime: float
    reason: str


@dataclass(frozen=True)
class EmergencyStop:
    reason: str


@dataclass(frozen=True)
class Finish:
    code: int


Action = (
    ApplyProposals
    | Snapshot
    | MergeWinner
    | MarkGood
    | SyncServers
    | Launch
    | ArmTimer
    | SampleHealth
    | CancelTimers
    | Cleanup
    | StopAgent
    | KillAgent
    | QuickFailure
    | EmergencyStop
    | Finish
)


# --- decisions --------------------------------------------------------------------------------


def backoff_delay(settings: Settings, restarts: int) -> float:
    """Exponential, capped: initial, 2x, 4x, ... up to max; none before the first restart."""
    if restarts <= 0 or settings.backoff_initial <= 0:
        return 0.0
    return float(min(settings.backoff_initial * 2 ** (restarts - 1), settings.backoff_max))


EXPLORATORY_BELOW = 0.05


def strategy(consecutive_failures: int, recent_gains: Sequence[float] = ()) -> str:
    """METASUP_STRATEGY, after the Meta-Supervisor design: `metamorphic` after more than 3
    failures in a row (change how you change); `exploratory` when the recent experiments all
    gained less than 5% over their baselines (look further afield); `hybrid` otherwise."""
    if consecutive_failures > 3:
        return "metamorphic"
    if recent_gains and max(recent_gains) < EXPLORATORY_BELOW:
        return "exploratory"
    return "hybrid"


def _snapshot(state: LoopState, before: Sequence[Action] = ()) -> tuple[LoopState, list[Action]]:
    """To STARTING: the queued proposals applied (when there are), then the snapshot."""
    apply: list[Action] = [ApplyProposals()] if state.proposals else []
    after = replace(state, phase=Phase.STARTING, proposals=False)
    return after, [*before, *apply, Snapshot(state.run + 1)]


def _cycles_done(settings: Settings, state: LoopState) -> bool:
    return settings.max_cycles is not None and state.launches >= settings.max_cycles


def _finish(state: LoopState, code: int, actions: list[Action]) -> tuple[LoopState, list[Action]]:
    phase = Phase.EMERGENCY_STOP if code == 3 else Phase.STOPPED
    return replace(state, phase=phase, exit_code=code), [*actions, Finish(code)]


def decide(
    settings: Settings, state: LoopState, obs: Observation
) -> tuple[LoopState, list[Action]]:
    """The next state and what to do, for one observation. Unexpected observations change
    nothing (a timer that fires after its run ended, a second exit report)."""
    if state.phase in FINAL:
        return state, []

    match obs:
        case Started(good=good):
            return _snapshot(replace(state, good=good))

        case StopRequested():
            return _on_stop(state)

        case ProposalQueued():
            return _on_proposal(replace(state, proposals=True))

        case WinnerJudged():
            return _on_proposal(replace(state, winner=True))

        case RestartRequested():
            return _on_proposal(state)

        case Snapshotted() if state.phase is Phase.STARTING and state.winner:
            return replace(state, winner=False), [MergeWinner()]

        case Snapshotted(commit=commit, proven=proven) if state.phase is Phase.STARTING:
            if state.stop_requested:
                return _finish(state, 0, [])
            actions: list[Action] = []
            good = state.good
            if good is None:
                good = commit
                actions.append(MarkGood(commit, baseline=True))
            elif proven and good != commit:
                good = commit
                actions.append(MarkGood(commit, promoted=True))
            return replace(
                state,
                phase=Phase.LAUNCHING,
                run=state.run + 1,
                launches=state.launches + 1,
                commit=commit,
                good=good,
                kill_reason=None,
            ), [*actions, SyncServers(commit)]

        case ServersReady() if state.phase is Phase.LAUNCHING:
            assert state.commit is not None
            return replace(state, phase=Phase.RUNNING), [
                Launch(state.run, state.commit),
                # A figure at once, and the agent's own a second later, not one interval later
                # (the status read 0 MB for the first 30 s of every run).
                SampleHealth(),
                ArmTimer(Timer.MIN_RUNTIME, settings.min_runtime),
                ArmTimer(Timer.HEALTH, min(settings.health_interval, FIRST_SAMPLE)),
            ]

        case MinRuntimeReached(run=run) if state.phase is Phase.RUNNING and run == state.run:
            assert state.commit is not None
            marks: list[Action] = [] if state.good == state.commit else [MarkGood(state.commit)]
            # A run past min_runtime ends the streak now, not at its exit: a long healthy run
            # after a rollback must not read as failing (status, alerts on the gauge).
            passed = replace(state, phase=Phase.GOOD, good=state.commit, consecutive_failures=0)
            return passed, marks

        case HealthDue() if state.phase in (Phase.RUNNING, Phase.GOOD):
            return state, [SampleHealth(), ArmTimer(Timer.HEALTH, settings.health_interval)]

        case TamperRestored():
            if settings.on_tamper is OnTamper.RESTORE_AND_RESTART:
                return _on_proposal(state)
            if settings.on_tamper is OnTamper.STOP:
                return _on_stop(state)
            return state, []

        case LaunchFailed() if state.phase is Phase.RUNNING:
            # Nothing ran: a quick failure like an exit at once (the code a shell gives).
            return _on_exit(settings, state, 127, 0.0)

        case HealthBreach(reason=reason) if state.phase in (Phase.RUNNING, Phase.GOOD):
            if state.kill_reason is not None:
                return state, []
            return replace(state, kill_reason=reason), [KillAgent(reason)]

        case Exited(code=code, runtime=runtime) if state.phase in (
            Phase.RUNNING,
            Phase.GOOD,
            Phase.STOPPING,
        ):
            if state.phase is Phase.RUNNING and runtime >= settings.min_runtime:
                # It lived its min_runtime (on the monotonic clock) but the timer was not seen
                # first: the supervisor was paused or busy. Judged by the runtime, not the
                # order the two observations arrived in: it is good, then it exited.
                assert state.commit is not None
                marked: list[Action] = (
                    [] if state.good == state.commit else [MarkGood(state.commit)]
                )
                lived = replace(state, phase=Phase.GOOD, good=state.commit, consecutive_failures=0)
                after, actions = _on_exit(settings, lived, code, runtime)
                return after, [*marked, *actions]
            return _on_exit(settings, state, code, runtime)

        case BackoffElapsed() if state.phase is Phase.BACKOFF:
            return _snapshot(state)

        case RolledBack(good=good) if state.phase is Phase.ROLLING_BACK:
            return _after_failure(settings, replace(state, good=good or state.good))

        case RollbackFailed(reason=reason) if state.phase is Phase.ROLLING_BACK:
            return _finish(state, 3, [EmergencyStop(f"rollback impossible: {reason}")])

    return state, []


def _on_stop(state: LoopState) -> tuple[LoopState, list[Action]]:
    if state.phase in (Phase.RUNNING, Phase.GOOD):
        return replace(state, phase=Phase.STOPPING, stop_requested=True), [
            CancelTimers(),
            StopAgent(),
        ]
    if state.phase is Phase.STOPPING:
        if not state.stop_requested:  # stopping to apply a proposal: end instead of relaunching
            return replace(state, stop_requested=True), []
        # A second request while the agent takes its time to stop: do not wait any longer.
        return state, [KillAgent("second stop request", health=False)]
    if state.phase in (Phase.BACKOFF, Phase.LAUNCHING):
        # Nothing runs: end now (servers still starting are stopped with the supervisor).
        return _finish(replace(state, stop_requested=True), 0, [CancelTimers()])
    # STARTING or ROLLING_BACK: the step under way finishes, then the loop ends.
    return replace(state, stop_requested=True), []


def _on_proposal(state: LoopState) -> tuple[LoopState, list[Action]]:
    """Proposals are applied between cycles: stop the agent, or cut a backoff short."""
    if state.phase in (Phase.RUNNING, Phase.GOOD):
        return replace(state, phase=Phase.STOPPING), [CancelTimers(), StopAgent()]
    if state.phase is Phase.BACKOFF:
        return _snapshot(state, [CancelTimers()])
    return state, []  # STARTING, LAUNCHING, ROLLING_BACK, STOPPING: the next snapshot applies it


def _on_exit(
    settings: Settings, state: LoopState, code: int, runtime: float
) -> tuple[LoopState, list[Action]]:
    cleanup: list[Action] = [CancelTimers(), Cleanup()]
    if state.phase is Phase.STOPPING:
        if state.stop_requested or _cycles_done(settings, state):
            return _finish(state, 0, cleanup)
        # Stopped for a proposal: neither a failure nor a normal exit, and no backoff.
        return _snapshot(state, cleanup)

    if state.phase is Phase.RUNNING:  # died before min_runtime: a quick failure
        failures = state.consecutive_failures + 1
        if state.kill_reason:
            reason = state.kill_reason
        elif code >= 0:
            reason = f"exit {code}"
        else:
            reason = f"signal {-code}"
        target = state.good if settings.rollback_enabled else None
        failed = replace(
            state,
            consecutive_failures=failures,
            quick_failures=state.quick_failures + 1,
            restarts=0,
        )
        return replace(failed, phase=Phase.ROLLING_BACK), [
            *cleanup,
            QuickFailure(state.run, state.commit, target, code, runtime, reason),
        ]

    # GOOD: it ran its min_runtime; whatever the code, a normal exit.
    restarts = 0 if runtime >= settings.stable_after else state.restarts + 1
    after = replace(state, consecutive_failures=0, restarts=restarts)
    if state.stop_requested or _cycles_done(settings, state):
        return _finish(after, 0, cleanup)
    delay = backoff_delay(settings, restarts)
    if delay <= 0:
        return _snapshot(after, cleanup)
    return replace(after, phase=Phase.BACKOFF), [*cleanup, ArmTimer(Timer.BACKOFF, delay)]


def _after_failure(settings: Settings, state: LoopState) -> tuple[LoopState, list[Action]]:
    if state.consecutive_failures >= settings.max_failures:
        return _finish(
            state,
            3,
            [EmergencyStop(f"{state.consecutive_failures} quick failures in a row")],
        )
    if state.stop_requested or _cycles_done(settings, state):
        return _finish(state, 0, [])
    # A relaunch right after a rollback needs no backoff: the code changed back.
    return _snapshot(state)
