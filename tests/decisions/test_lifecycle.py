"""Every transition of the outer loop's state machine, without I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.decisions.lifecycle import (
    FIRST_SAMPLE,
    ApplyProposals,
    ArmTimer,
    BackoffElapsed,
    CancelTimers,
    Cleanup,
    EmergencyStop,
    Exited,
    Finish,
    HealthBreach,
    HealthDue,
    KillAgent,
    Launch,
    LaunchFailed,
    LoopState,
    MarkGood,
    MergeWinner,
    MinRuntimeReached,
    OnTamper,
    Phase,
    ProposalQueued,
    QuickFailure,
    RestartRequested,
    RollbackFailed,
    RolledBack,
    SampleHealth,
    ServersReady,
    Settings,
    Snapshot,
    Snapshotted,
    Started,
    StopAgent,
    StopRequested,
    SyncServers,
    TamperRestored,
    Timer,
    WinnerJudged,
    backoff_delay,
    decide,
    strategy,
)

S = Settings(min_runtime=10, max_failures=3, backoff_initial=1, backoff_max=8, health_interval=5)


def at(phase: Phase, **kw: object) -> LoopState:
    base = LoopState(phase=phase, run=2, good="g" * 40, commit="c" * 40)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_start_snapshots_for_the_first_run() -> None:
    state, actions = decide(S, LoopState(), Started(good=None))
    assert state.phase is Phase.STARTING and state.good is None
    assert actions == [Snapshot(1)]


def test_first_snapshot_without_good_ref_is_the_baseline() -> None:
    state, actions = decide(S, LoopState(phase=Phase.STARTING), Snapshotted("a" * 40))
    assert actions == [MarkGood("a" * 40, baseline=True), SyncServers("a" * 40)]
    assert state.phase is Phase.LAUNCHING and state.good == "a" * 40 and state.run == 1
    state, actions = decide(S, state, ServersReady())
    assert actions == [
        Launch(1, "a" * 40),
        SampleHealth(),
        ArmTimer(Timer.MIN_RUNTIME, 10),
        ArmTimer(Timer.HEALTH, FIRST_SAMPLE),
    ]
    assert state.phase is Phase.RUNNING


def test_snapshot_with_a_good_ref_launches_without_marking() -> None:
    state, actions = decide(S, at(Phase.STARTING), Snapshotted("d" * 40))
    assert actions == [SyncServers("d" * 40)]
    state, actions = decide(S, state, ServersReady())
    assert actions[0] == Launch(3, "d" * 40)
    assert state.good == "g" * 40 and state.commit == "d" * 40


def test_a_merge_to_the_commit_a_canary_promoted_is_good_before_it_runs() -> None:
    state, actions = decide(S, at(Phase.STARTING), Snapshotted("d" * 40, proven=True))
    assert actions == [MarkGood("d" * 40, promoted=True), SyncServers("d" * 40)]
    assert state.good == "d" * 40 and state.phase is Phase.LAUNCHING
    # Already good: nothing to mark. Not proven: good only after min_runtime, as ever.
    _, actions = decide(S, at(Phase.STARTING), Snapshotted("g" * 40, proven=True))
    assert actions == [SyncServers("g" * 40)]
    state, actions = decide(S, at(Phase.STARTING), Snapshotted("d" * 40))
    assert actions == [SyncServers("d" * 40)] and state.good == "g" * 40


def test_min_runtime_marks_the_running_commit_good() -> None:
    state, actions = decide(S, at(Phase.RUNNING), MinRuntimeReached(run=2))
    assert state.phase is Phase.GOOD and state.good == "c" * 40
    assert actions == [MarkGood("c" * 40)]


def test_a_run_past_min_runtime_ends_the_failure_streak_while_it_runs() -> None:
    """Not at its exit: a long healthy run after a rollback must not read as failing."""
    state, _ = decide(S, at(Phase.RUNNING, consecutive_failures=2), MinRuntimeReached(run=2))
    assert state.phase is Phase.GOOD and state.consecutive_failures == 0


def test_min_runtime_on_an_already_good_commit_marks_nothing() -> None:
    state, actions = decide(S, at(Phase.RUNNING, good="c" * 40), MinRuntimeReached(run=2))
    assert state.phase is Phase.GOOD and actions == []


def test_a_stale_min_runtime_timer_is_ignored() -> None:
    state, actions = decide(S, at(Phase.RUNNING), MinRuntimeReached(run=1))
    assert state == at(Phase.RUNNING) and actions == []


def test_quick_exit_rolls_back_to_good() -> None:
    state, actions = decide(S, at(Phase.RUNNING), Exited(code=1, runtime=0.5))
    assert state.phase is Phase.ROLLING_BACK and state.consecutive_failures == 1
    assert actions == [
        CancelTimers(),
        Cleanup(),
        QuickFailure(2, "c" * 40, "g" * 40, 1, 0.5, "exit 1"),
    ]


def test_an_exit_past_min_runtime_is_never_a_quick_failure() -> None:
    """The supervisor was paused: the exit arrives before the min_runtime timer it outlived."""
    state, actions = decide(S, at(Phase.RUNNING), Exited(code=1, runtime=S.min_runtime + 4))
    assert not any(isinstance(a, QuickFailure) for a in actions)
    assert actions[0] == MarkGood("c" * 40)
    assert state.good == "c" * 40 and state.consecutive_failures == 0
    assert state.phase in (Phase.BACKOFF, Phase.STARTING)


def test_quick_exit_by_signal_names_the_signal() -> None:
    _, actions = decide(S, at(Phase.RUNNING), Exited(code=-9, runtime=0.1))
    qf = actions[-1]
    assert isinstance(qf, QuickFailure) and qf.reason == "signal 9"


def test_quick_exit_with_rollback_disabled_resets_nothing() -> None:
    s = replace(S, rollback_enabled=False)
    _, actions = decide(s, at(Phase.RUNNING), Exited(code=1, runtime=0.5))
    qf = actions[-1]
    assert isinstance(qf, QuickFailure) and qf.target is None


def test_rolled_back_relaunches_at_once() -> None:
    state, actions = decide(
        S, at(Phase.ROLLING_BACK, consecutive_failures=1), RolledBack(good="g" * 40)
    )
    assert state.phase is Phase.STARTING and actions == [Snapshot(3)]


def test_max_failures_quick_failures_is_an_emergency_stop() -> None:
    state, actions = decide(
        S, at(Phase.ROLLING_BACK, consecutive_failures=3), RolledBack(good="g" * 40)
    )
    assert state.phase is Phase.EMERGENCY_STOP and state.exit_code == 3
    assert isinstance(actions[0], EmergencyStop) and actions[-1] == Finish(3)


def test_the_failure_count_climbs_to_the_emergency_stop() -> None:
    state = at(Phase.RUNNING)
    for n in range(1, S.max_failures + 1):
        state, _ = decide(S, state, Exited(code=2, runtime=0.1))
        assert state.consecutive_failures == n
        state, _ = decide(S, state, RolledBack(good="g" * 40))
        if n < S.max_failures:
            state, _ = decide(S, state, Snapshotted("g" * 40))
            state, _ = decide(S, state, ServersReady())
            assert state.phase is Phase.RUNNING
    assert state.phase is Phase.EMERGENCY_STOP


def test_rollback_failure_is_an_emergency_stop() -> None:
    state, actions = decide(S, at(Phase.ROLLING_BACK), RollbackFailed("no good commit"))
    assert state.phase is Phase.EMERGENCY_STOP and state.exit_code == 3
    assert actions[-1] == Finish(3)
    assert isinstance(actions[0], EmergencyStop) and "no good commit" in actions[0].reason


def test_exit_after_min_runtime_is_normal_whatever_the_code() -> None:
    for code in (0, 1, -15):
        state, actions = decide(
            S, at(Phase.GOOD, consecutive_failures=2), Exited(code=code, runtime=11)
        )
        assert state.consecutive_failures == 0 and state.phase is Phase.BACKOFF
        assert actions == [CancelTimers(), Cleanup(), ArmTimer("backoff", 1)]


def test_backoff_grows_and_is_capped() -> None:
    state = at(Phase.GOOD)
    delays = []
    for _ in range(6):
        state, actions = decide(S, state, Exited(code=0, runtime=11))
        timer = actions[-1]
        assert isinstance(timer, ArmTimer)
        delays.append(timer.delay)
        state, _ = decide(S, state, BackoffElapsed())
        state, _ = decide(S, state, Snapshotted("c" * 40))
        state, _ = decide(S, state, ServersReady())
        state, _ = decide(S, state, MinRuntimeReached(run=state.run))
    assert delays == [1, 2, 4, 8, 8, 8]


def test_a_long_run_resets_the_backoff() -> None:
    state, _ = decide(S, at(Phase.GOOD, restarts=4), Exited(code=0, runtime=S.stable_after))
    assert state.restarts == 0


def test_zero_backoff_relaunches_without_a_timer() -> None:
    s = replace(S, backoff_initial=0)
    state, actions = decide(s, at(Phase.GOOD), Exited(code=0, runtime=11))
    assert state.phase is Phase.STARTING
    assert actions == [CancelTimers(), Cleanup(), Snapshot(3)]


def test_backoff_elapsed_snapshots() -> None:
    state, actions = decide(S, at(Phase.BACKOFF), BackoffElapsed())
    assert state.phase is Phase.STARTING and actions == [Snapshot(3)]


def test_max_cycles_counts_this_supervisors_launches() -> None:
    s = replace(S, max_cycles=2)
    state, _ = decide(s, at(Phase.STARTING, run=40), Snapshotted("c" * 40))
    assert state.run == 41 and state.launches == 1
    state, _actions = decide(s, at(Phase.GOOD, run=41, launches=1), Exited(code=0, runtime=11))
    assert state.phase is Phase.BACKOFF


def test_max_cycles_ends_after_the_last_run_exits() -> None:
    s = replace(S, max_cycles=2)
    state, actions = decide(s, at(Phase.GOOD, launches=2), Exited(code=0, runtime=11))
    assert state.phase is Phase.STOPPED and state.exit_code == 0
    assert actions == [CancelTimers(), Cleanup(), Finish(0)]
    state, actions = decide(s, at(Phase.ROLLING_BACK, launches=2), RolledBack(good="g" * 40))
    assert state.phase is Phase.STOPPED and actions == [Finish(0)]


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.GOOD])
def test_stop_while_running_stops_the_agent_then_finishes(phase: Phase) -> None:
    state, actions = decide(S, at(phase), StopRequested())
    assert state.phase is Phase.STOPPING and actions == [CancelTimers(), StopAgent()]
    state, actions = decide(S, state, Exited(code=-15, runtime=0.1))
    assert state.phase is Phase.STOPPED and state.exit_code == 0
    assert state.consecutive_failures == 0, "a requested stop is not a failure"
    assert actions == [CancelTimers(), Cleanup(), Finish(0)]


def test_second_stop_kills() -> None:
    _, actions = decide(S, at(Phase.STOPPING, stop_requested=True), StopRequested())
    assert actions == [KillAgent("second stop request", health=False)]


def test_stop_in_backoff_finishes_at_once() -> None:
    state, actions = decide(S, at(Phase.BACKOFF), StopRequested())
    assert state.phase is Phase.STOPPED and actions == [CancelTimers(), Finish(0)]


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.ROLLING_BACK])
def test_stop_during_a_step_lets_it_finish(phase: Phase) -> None:
    state, actions = decide(S, at(phase), StopRequested())
    assert state.stop_requested and state.phase is phase and actions == []
    if phase is Phase.STARTING:
        state, actions = decide(S, state, Snapshotted("c" * 40))
    else:
        state, actions = decide(S, state, RolledBack(good="g" * 40))
    assert state.phase is Phase.STOPPED and actions == [Finish(0)]


def test_health_breach_kills_once() -> None:
    state, actions = decide(S, at(Phase.RUNNING), HealthBreach("memory"))
    assert actions == [KillAgent("memory")] and state.kill_reason == "memory"
    state, actions = decide(S, state, HealthBreach("memory"))
    assert actions == []
    state, actions = decide(S, state, Exited(code=-9, runtime=1))
    qf = actions[-1]
    assert isinstance(qf, QuickFailure) and qf.reason == "memory"


def test_health_breach_after_min_runtime_is_a_normal_restart() -> None:
    state, _ = decide(S, at(Phase.GOOD), HealthBreach("cpu"))
    state, _actions = decide(S, state, Exited(code=-9, runtime=11))
    assert state.consecutive_failures == 0 and state.phase is Phase.BACKOFF


def test_kill_reason_is_cleared_for_the_next_run() -> None:
    state, _ = decide(S, at(Phase.STARTING, kill_reason="memory"), Snapshotted("c" * 40))
    assert state.kill_reason is None


def test_strategy_turns_metamorphic_after_three_failures() -> None:
    assert [strategy(n) for n in range(6)] == ["hybrid"] * 4 + ["metamorphic"] * 2


def test_strategy_turns_exploratory_when_experiments_stop_paying() -> None:
    assert strategy(0, [0.01, 0.04, -0.2]) == "exploratory"
    assert strategy(0, [0.01, 0.3]) == "hybrid", "one good gain is enough"
    assert strategy(0, []) == "hybrid", "no experiments yet, nothing to conclude"
    assert strategy(5, [0.0]) == "metamorphic", "failures come first"


def test_backoff_delay_edges() -> None:
    assert backoff_delay(S, 0) == 0
    assert backoff_delay(replace(S, backoff_initial=0), 5) == 0
    assert backoff_delay(S, 60) == 8


_observations = st.one_of(
    st.builds(Started, good=st.none() | st.just("g" * 40)),
    st.builds(Snapshotted, commit=st.sampled_from(["a" * 40, "g" * 40]), proven=st.booleans()),
    st.just(ServersReady()),
    st.builds(MinRuntimeReached, run=st.integers(0, 5)),
    st.builds(Exited, code=st.integers(-15, 3), runtime=st.floats(0, 30)),
    st.builds(HealthBreach, reason=st.just("memory")),
    st.just(BackoffElapsed()),
    st.just(StopRequested()),
    st.just(ProposalQueued()),
    st.just(WinnerJudged()),
    st.just(RestartRequested()),
    st.builds(RolledBack, good=st.just("g" * 40)),
    st.builds(RollbackFailed, reason=st.just("x")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_observations, max_size=40))
def test_any_sequence_keeps_the_invariants(observations: list[object]) -> None:
    state = LoopState()
    for obs in observations:
        before = state
        state, actions = decide(S, state, obs)  # type: ignore[arg-type]
        if before.phase in (Phase.STOPPED, Phase.EMERGENCY_STOP):
            assert state == before and actions == [], "final phases absorb everything"
        assert 0 <= state.consecutive_failures <= S.max_failures
        if state.phase is Phase.GOOD:
            assert state.consecutive_failures == 0, "a run past min_runtime is no failure"
        if any(isinstance(a, Finish) for a in actions):
            assert state.phase in (Phase.STOPPED, Phase.EMERGENCY_STOP)
            assert actions[-1] == Finish(state.exit_code or 0)
        for a in actions:
            if isinstance(a, QuickFailure):
                assert a.target == before.good, "a rollback goes to the good commit only"
            if isinstance(a, SyncServers):
                assert state.phase is Phase.LAUNCHING and state.run == before.run + 1
            if isinstance(a, Launch):
                assert before.phase is Phase.LAUNCHING and state.phase is Phase.RUNNING
                assert a.run == before.run and a.commit == before.commit
        if state.phase is Phase.EMERGENCY_STOP:
            assert state.exit_code == 3


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.GOOD])
@pytest.mark.parametrize("why", [ProposalQueued(), RestartRequested()])
def test_a_proposal_or_restart_request_relaunches_without_a_failure(
    phase: Phase, why: ProposalQueued | RestartRequested
) -> None:
    state, actions = decide(S, at(phase, consecutive_failures=1), why)
    assert state.phase is Phase.STOPPING and not state.stop_requested
    assert actions == [CancelTimers(), StopAgent()]
    state, actions = decide(S, state, Exited(code=-15, runtime=0.2))
    assert state.phase is Phase.STARTING and state.consecutive_failures == 1
    apply = [ApplyProposals()] if isinstance(why, ProposalQueued) else []
    assert actions == [CancelTimers(), Cleanup(), *apply, Snapshot(3)]
    assert not state.proposals, "applied once"


def test_a_proposal_cuts_a_backoff_short() -> None:
    state, actions = decide(S, at(Phase.BACKOFF), ProposalQueued())
    assert state.phase is Phase.STARTING
    assert actions == [CancelTimers(), ApplyProposals(), Snapshot(3)]


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.ROLLING_BACK])
def test_a_proposal_during_a_step_waits_for_the_next_snapshot(phase: Phase) -> None:
    state, actions = decide(S, at(phase), ProposalQueued())
    assert state == at(phase, proposals=True) and actions == []
    if phase is Phase.ROLLING_BACK:
        _, actions = decide(S, state, RolledBack(good="g" * 40))
        assert actions == [ApplyProposals(), Snapshot(3)]


def test_a_stop_while_stopping_for_a_proposal_ends_the_loop() -> None:
    state, _ = decide(S, at(Phase.RUNNING), ProposalQueued())
    state, actions = decide(S, state, StopRequested())
    assert state.stop_requested and actions == [], "the first stop request is not a kill"
    state, actions = decide(S, state, Exited(code=-15, runtime=0.2))
    assert state.phase is Phase.STOPPED and actions[-1] == Finish(0)


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.GOOD])
def test_the_health_timer_samples_and_rearms_while_the_agent_runs(phase: Phase) -> None:
    state, actions = decide(S, at(phase), HealthDue())
    assert state == at(phase) and actions == [SampleHealth(), ArmTimer(Timer.HEALTH, 5)]


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.BACKOFF, Phase.STOPPING])
def test_a_late_health_timer_does_nothing(phase: Phase) -> None:
    assert decide(S, at(phase), HealthDue()) == (at(phase), [])


def test_a_launch_that_failed_is_a_quick_failure_at_once() -> None:
    state, actions = decide(S, at(Phase.RUNNING), LaunchFailed("cannot start 'x'"))
    assert state.phase is Phase.ROLLING_BACK and state.quick_failures == 1
    assert actions[-1] == QuickFailure(2, "c" * 40, "g" * 40, 127, 0.0, "exit 127")


def test_quick_failures_are_counted_across_rollbacks() -> None:
    state = at(Phase.RUNNING)
    for n in (1, 2):
        state, _ = decide(S, state, Exited(code=1, runtime=0.1))
        assert state.quick_failures == n and state.consecutive_failures == n
        state, _ = decide(S, state, RolledBack(good="g" * 40))
        state = replace(state, phase=Phase.RUNNING)
    state, _ = decide(S, replace(state, phase=Phase.GOOD), Exited(code=0, runtime=99))
    assert state.quick_failures == 2 and state.consecutive_failures == 0


@pytest.mark.parametrize(
    ("mode", "phase", "actions"),
    [
        (OnTamper.RESTORE, Phase.STOPPING, None),
        (OnTamper.RESTORE_AND_RESTART, Phase.STOPPING, [CancelTimers(), StopAgent()]),
        (OnTamper.STOP, Phase.STOPPING, [CancelTimers(), StopAgent()]),
    ],
)
def test_a_tamper_restore_restarts_or_stops_as_configured(
    mode: OnTamper, phase: Phase, actions: list[object] | None
) -> None:
    settings_ = replace(S, on_tamper=mode)
    state, done = decide(settings_, at(Phase.GOOD), TamperRestored())
    if actions is None:
        assert (state, done) == (at(Phase.GOOD), [])
        return
    assert state.phase is phase and done == actions
    assert state.stop_requested is (mode is OnTamper.STOP), "stop ends the loop; restart does not"


def test_a_stop_while_the_servers_start_ends_at_once() -> None:
    state, _ = decide(S, at(Phase.STARTING), Snapshotted("c" * 40))
    state, actions = decide(S, state, StopRequested())
    assert state.phase is Phase.STOPPED and actions == [CancelTimers(), Finish(0)]


@pytest.mark.parametrize("why", [ProposalQueued(), RestartRequested(), HealthDue()])
def test_the_launch_waits_for_its_servers_whatever_else_comes(why: object) -> None:
    state, _ = decide(S, at(Phase.STARTING), Snapshotted("c" * 40))
    after, actions = decide(S, state, why)  # type: ignore[arg-type]
    waits = isinstance(why, ProposalQueued)
    assert actions == [] and after == replace(state, proposals=waits), "the next snapshot has it"


def test_the_first_snapshot_applies_what_waited_at_start() -> None:
    state, _ = decide(S, LoopState(), ProposalQueued())
    state, actions = decide(S, state, Started(good="g" * 40))
    assert actions == [ApplyProposals(), Snapshot(1)] and not state.proposals


def test_a_winner_is_merged_right_after_the_next_snapshot() -> None:
    state, actions = decide(S, at(Phase.GOOD), WinnerJudged())
    assert state.winner and actions == [CancelTimers(), StopAgent()]
    state, actions = decide(S, state, Exited(code=-15, runtime=20))
    assert actions[-1] == Snapshot(3) and ApplyProposals() not in actions
    state, actions = decide(S, state, Snapshotted("s" * 40))
    assert actions == [MergeWinner()] and not state.winner and state.phase is Phase.STARTING
    state, actions = decide(S, state, Snapshotted("m" * 40))  # the merge's commit
    assert actions == [SyncServers("m" * 40)] and state.commit == "m" * 40
