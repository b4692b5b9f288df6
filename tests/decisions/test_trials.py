"""Experiment mode's schedule, every state and input."""

from __future__ import annotations

import itertools

import pytest

from metasup.decisions.trials import Next, Trial, canary_ended, judged, merged, queued


@pytest.mark.parametrize(("state", "waiting"), list(itertools.product(Trial, (False, True))))
def test_one_experiment_at_a_time(state: Trial, waiting: bool) -> None:
    step = queued(state, waiting)
    if state is Trial.IDLE and waiting:
        assert step == Next(Trial.JUDGING, start=True)
    else:
        assert step == Next(state), "a running experiment or a held winner makes the queue wait"


@pytest.mark.parametrize("waiting", [False, True])
def test_a_winner_is_held_until_the_next_snapshot(waiting: bool) -> None:
    assert judged(Trial.JUDGING, winner=True, waiting=waiting) == Next(Trial.HELD, hold=True)
    after = merged(Trial.HELD, waiting)
    assert after.conclude and after.start is waiting
    assert after.state is (Trial.JUDGING if waiting else Trial.IDLE)


@pytest.mark.parametrize("waiting", [False, True])
def test_no_winner_is_concluded_at_once_and_the_next_starts(waiting: bool) -> None:
    step = judged(Trial.JUDGING, winner=False, waiting=waiting)
    assert step.conclude and not step.hold and step.start is waiting


@pytest.mark.parametrize("waiting", [False, True])
def test_with_serving_a_winner_goes_on_live_traffic_first(waiting: bool) -> None:
    step = judged(Trial.JUDGING, winner=True, waiting=waiting, canary=True)
    assert step == Next(Trial.CANARY, offer=True)
    assert queued(Trial.CANARY, waiting) == Next(Trial.CANARY)  # nothing new starts meanwhile
    assert canary_ended(Trial.CANARY, promoted=True, waiting=waiting) == Next(Trial.HELD, hold=True)
    reverted = canary_ended(Trial.CANARY, promoted=False, waiting=waiting)
    assert reverted.conclude and not reverted.hold and reverted.start is waiting
    assert reverted.state is (Trial.JUDGING if waiting else Trial.IDLE)


@pytest.mark.parametrize(("state", "promoted"), list(itertools.product(
    [Trial.IDLE, Trial.JUDGING, Trial.HELD], [False, True])))  # fmt: skip
def test_a_canary_verdict_with_no_canary_on_changes_nothing(state: Trial, promoted: bool) -> None:
    assert canary_ended(state, promoted, waiting=True) == Next(state)


@pytest.mark.parametrize("state", [Trial.IDLE, Trial.HELD, Trial.CANARY])
def test_a_judgement_with_nothing_under_way_changes_nothing(state: Trial) -> None:
    assert judged(state, winner=True, waiting=True) == Next(state)


@pytest.mark.parametrize("state", [Trial.IDLE, Trial.JUDGING, Trial.CANARY])
def test_a_snapshot_without_a_held_winner_merges_nothing(state: Trial) -> None:
    assert merged(state, waiting=True) == Next(state)
