"""Every verdict rule, on plain numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasup.decisions.verdict import Criteria, Verdict, improvement, judge, mean_metrics, winner

GOOD = {"score": 1.0, "success_rate": 0.99, "error_rate": 0.0, "response_time_ms": 100}


def runs(n: int = 1, **over: float) -> list[dict[str, float]]:
    return [{**GOOD, **over} for _ in range(n)]


def test_means() -> None:
    assert mean_metrics([{"a": 1, "b": 2}, {"a": 3}]) == {"a": 2, "b": 2}


def test_improvement_is_relative() -> None:
    assert improvement(1.1, 1.0) == pytest.approx(0.1)
    assert improvement(-0.9, -1.0) == pytest.approx(0.1), "less negative is better"
    assert improvement(0.3, 0.0) == 0.3


def test_no_criteria_passes() -> None:
    v = judge(runs(), runs())
    assert v.passed and v.reasons == () and v.improvement == 0


def test_no_runs_fails() -> None:
    assert not judge([], runs()).passed


@pytest.mark.parametrize(
    ("metric", "value", "criteria", "fragment"),
    [
        ("error_rate", 0.2, Criteria(max_error_rate=0.1), "error_rate 0.2 > failure"),
        ("success_rate", 0.4, Criteria(min_success_rate=0.5), "success_rate 0.4 < failure"),
        ("response_time_ms", 11_000, Criteria(max_response_time=10), "response_time 11000 ms"),
    ],
)
def test_failure_criteria(metric: str, value: float, criteria: Criteria, fragment: str) -> None:
    v = judge(runs(**{metric: value}), runs(), failure=criteria)
    assert not v.passed and any(fragment in r for r in v.reasons)
    assert judge(runs(), runs(), failure=criteria).passed


@pytest.mark.parametrize(
    ("metric", "value", "criteria", "fragment"),
    [
        ("success_rate", 0.8, Criteria(min_success_rate=0.9), "success_rate 0.8 < min"),
        ("error_rate", 0.05, Criteria(max_error_rate=0.01), "error_rate 0.05 > max"),
        ("response_time_ms", 6000, Criteria(max_response_time=5), "response_time 6000 ms > max"),
    ],
)
def test_success_criteria(metric: str, value: float, criteria: Criteria, fragment: str) -> None:
    v = judge(runs(**{metric: value}), runs(), success=criteria)
    assert not v.passed and any(fragment in r for r in v.reasons)
    assert judge(runs(), runs(), success=criteria).passed


def test_min_improvement_over_the_baseline() -> None:
    crit = Criteria(min_improvement=0.1)
    low = judge(runs(score=1.05), runs(score=1.0), success=crit)
    assert not low.passed and "improvement +5.0%" in low.reasons[0]
    high = judge(runs(score=1.2), runs(score=1.0), success=crit)
    assert high.passed and high.improvement == pytest.approx(0.2)


def test_min_improvement_needs_scores() -> None:
    crit = Criteria(min_improvement=0.1)
    no_score = judge([{"success_rate": 1.0}], runs(), success=crit)
    assert not no_score.passed and "needs score" in no_score.reasons[0]
    no_base = judge(runs(score=2), [], success=crit)
    assert not no_base.passed and "baseline" in no_base.reasons[0]


def test_a_missing_metric_fails_the_rule_that_needs_it() -> None:
    v = judge([{"score": 1.0}], runs(), success=Criteria(min_success_rate=0.9))
    assert not v.passed and "needs success_rate" in v.reasons[0]


def test_noise_guard_with_three_repeats() -> None:
    noisy_baseline = [{"score": s} for s in (0.9, 1.0, 1.1)]  # spread 0.2, mean 1.0
    within = judge([{"score": 1.15}] * 3, noisy_baseline)
    assert not within.passed and "spread 0.2" in within.reasons[0]
    beyond = judge([{"score": 1.25}] * 3, noisy_baseline)
    assert beyond.passed


def test_noise_guard_is_off_below_three_repeats() -> None:
    assert judge([{"score": 1.0}] * 2, [{"score": 1.0}, {"score": 1.0}]).passed


def test_means_are_judged_not_single_runs() -> None:
    v = judge(
        [{"error_rate": 0.0}, {"error_rate": 0.3}], runs(), failure=Criteria(max_error_rate=0.2)
    )
    assert v.passed and v.metrics["error_rate"] == pytest.approx(0.15)


def test_winner_is_the_best_passing_score() -> None:
    def v(passed: bool, score: float | None) -> Verdict:
        return Verdict(passed, (), score, 1.0, None)

    assert winner([]) is None
    assert winner([v(False, 9.0)]) is None
    assert winner([v(True, 1.0), v(False, 9.0), v(True, 2.0)]) == 2
    assert winner([v(True, 2.0), v(True, 2.0)]) == 0, "a tie goes to the first"
    assert winner([v(True, None), v(True, 0.5)]) == 1


@given(st.lists(st.tuples(st.booleans(), st.none() | st.floats(-10, 10)), max_size=6))
def test_the_winner_always_passed_and_none_passing_scores_higher(
    cands: list[tuple[bool, float | None]],
) -> None:
    verdicts = [Verdict(p, (), s, None, None) for p, s in cands]
    w = winner(verdicts)
    if w is None:
        assert not any(v.passed for v in verdicts)
        return
    assert verdicts[w].passed
    best = verdicts[w].score
    for v in verdicts:
        if v.passed and v.score is not None and best is not None:
            assert v.score <= best
