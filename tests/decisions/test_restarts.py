from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.decisions.restarts import GiveUp, Restart, RestartPolicy, after_failure

POLICY = RestartPolicy(initial=1.0, max=8.0, max_restarts=3, period=60.0)


def test_first_restart_is_immediate_then_backoff_doubles() -> None:
    history: tuple[float, ...] = ()
    delays = []
    for now in (0.0, 1.0, 3.0):
        decision, history = after_failure(POLICY, history, now)
        assert isinstance(decision, Restart)
        delays.append((decision.attempt, decision.delay))
    assert delays == [(1, 0.0), (2, 1.0), (3, 2.0)]
    decision, history = after_failure(POLICY, history, 10.0)
    assert isinstance(decision, GiveUp) and "more than 3 restarts within 60s" in decision.reason


def test_restarts_outside_the_period_are_forgotten() -> None:
    decision, history = after_failure(POLICY, (0.0, 1.0, 2.0), 100.0)
    assert decision == Restart(delay=0.0, attempt=1) and history == (100.0,)


def test_backoff_is_capped() -> None:
    policy = RestartPolicy(initial=1.0, max=3.0, max_restarts=10, period=60.0)
    decision, _ = after_failure(policy, (1.0, 2.0, 3.0, 4.0, 5.0), 6.0)
    assert decision == Restart(delay=3.0, attempt=6)


def test_restart_on_failure_off_gives_up_at_once() -> None:
    decision, _ = after_failure(RestartPolicy(enabled=False), (), 0.0)
    assert decision == GiveUp("restart_on_failure is off")


@settings(max_examples=300)
@given(
    st.lists(st.floats(0, 1000), max_size=30).map(sorted),
    st.integers(0, 6),
    st.floats(0.1, 100),
)
def test_never_more_than_max_restarts_within_a_period(
    failures: list[float], max_restarts: int, period: float
) -> None:
    policy = RestartPolicy(initial=0.5, max=4.0, max_restarts=max_restarts, period=period)
    history: tuple[float, ...] = ()
    restarts: list[float] = []
    for now in failures:
        decision, history = after_failure(policy, history, now)
        if isinstance(decision, Restart):
            restarts.append(now)
            assert 0 <= decision.delay <= policy.max
    for t in restarts:
        assert sum(1 for r in restarts if r <= t and t - r < period) <= max_restarts


FILES = {"servers/s.py": "file", "servers": "dir", "tools/pkg/mod.py": "file", "tools": "dir"}


def kind(path: str) -> str | None:
    return FILES.get(path) or ("dir" if path in ("tools/pkg",) else None)
