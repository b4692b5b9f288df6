"""The serving decisions: routing, stickiness, sampling, scaling and the canary, property-tested
against what each promises."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.decisions.serving import (
    SCALE_DOWN_AFTER_S,
    Hold,
    Latencies,
    Offers,
    Promote,
    Revert,
    Step,
    least_inflight,
    next_canary,
    picked,
    scale,
    stick,
)
from metasup.facts.settings import CanaryConfig, ServeConfig

SHARES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.integers(0, 100))
def test_the_least_loaded_replica_takes_the_request(inflight: list[int], turn: int) -> None:
    i = least_inflight(inflight, turn)
    assert i is not None and inflight[i] == min(inflight)


@given(st.integers(1, 12))
def test_equal_replicas_take_turns(n: int) -> None:
    assert sorted(least_inflight([3] * n, turn) for turn in range(n)) == list(range(n))  # type: ignore[type-var]
    assert least_inflight([], 0) is None


@given(st.text(max_size=40), SHARES, SHARES)
def test_a_client_on_the_candidate_stays_there_as_the_share_grows(
    key: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    if stick(key, low):
        assert stick(key, high)
    assert stick(key, 1.0) and not stick(key, 0.0)


def test_the_sticky_share_is_the_share_of_clients() -> None:
    keys = [f"session-{i}" for i in range(20000)]
    for share in (0.01, 0.25, 0.5):
        on = sum(stick(k, share) for k in keys) / len(keys)
        assert abs(on - share) < 0.015, (share, on)


@given(SHARES, st.integers(0, 5000))
def test_exactly_the_share_is_picked_at_every_count(share: float, count: int) -> None:
    assert sum(picked(n, share) for n in range(count)) == math.floor(count * share)


SERVE = st.builds(
    lambda low, extra, target: ServeConfig(
        min_replicas=low, max_replicas=low + extra, target_inflight=target
    ),
    st.integers(1, 4),
    st.integers(0, 6),
    st.sampled_from([1.0, 2.0, 8.0]),
)


@settings(max_examples=200)
@given(SERVE, st.lists(st.integers(0, 80), min_size=1, max_size=40))
def test_scaling_stays_in_bounds_and_steps_down_one_at_a_time_after_a_quiet_spell(
    cfg: ServeConfig, loads: list[int]
) -> None:
    replicas, low_since, now = cfg.min_replicas, None, 0.0
    for inflight in loads:
        decided = scale(cfg, replicas, inflight, low_since, now)
        assert cfg.min_replicas <= decided.target <= cfg.max_replicas
        if inflight > replicas * cfg.target_inflight and replicas < cfg.max_replicas:
            assert decided.target > replicas  # up at once
        if decided.target < replicas:
            assert decided.target == replicas - 1
            assert low_since is not None and now - low_since >= SCALE_DOWN_AFTER_S
        replicas, low_since = decided.target, decided.low_since
        now += 3.0


def test_a_burst_does_not_make_replicas_come_and_go() -> None:
    cfg = ServeConfig(min_replicas=1, max_replicas=4, target_inflight=8)
    up = scale(cfg, 1, 30, None, 0.0)
    assert up.target == 4
    # the load drops for less than the quiet spell, then comes back: nothing goes
    quiet = scale(cfg, 4, 2, None, 1.0)
    assert quiet.target == 4 and quiet.low_since == 1.0
    back = scale(cfg, 4, 30, quiet.low_since, 5.0)
    assert back.target == 4 and back.low_since is None
    # a long quiet spell: one down, then the next waits as long again
    first = scale(cfg, 4, 2, 1.0, 1.0 + SCALE_DOWN_AFTER_S)
    assert first.target == 3
    assert scale(cfg, 3, 2, first.low_since, 2.0 + SCALE_DOWN_AFTER_S).target == 3


@settings(max_examples=100)
@given(st.lists(st.floats(min_value=1e-4, max_value=100.0), min_size=1, max_size=300))
def test_p50_and_p99_are_within_five_percent(samples: list[float]) -> None:
    arm = Latencies()
    for s in samples:
        arm.add(s, error=False)
    for q in (0.5, 0.99):
        exact = sorted(samples)[max(1, math.ceil(q * len(samples))) - 1]
        got = arm.quantile(q)
        assert got is not None and exact <= got <= exact * 1.05 + 1e-12, (q, exact, got)
    assert arm.requests == len(samples) and arm.error_rate == 0.0


def _arm(n: int, errors: int, seconds: float) -> Latencies:
    arm = Latencies()
    for i in range(n):
        arm.add(seconds, error=i < errors)
    return arm


def test_the_canary_steps_holds_reverts_and_is_promoted() -> None:
    cfg = CanaryConfig(start=0.01, steps=(0.05, 0.5, 1.0), step_requests=100)
    good = _arm(1000, 10, 0.010)  # 1% errors
    fine = _arm(100, 2, 0.011)
    assert next_canary(cfg, 0.01, 50, good, _arm(50, 1, 0.011)) == Hold()
    assert next_canary(cfg, 0.01, 100, good, fine) == Step(0.05)
    assert next_canary(cfg, 0.05, 100, good, fine) == Step(0.5)
    assert next_canary(cfg, 1.0, 100, good, fine) == Promote()
    errors = next_canary(cfg, 0.05, 10, good, _arm(10, 1, 0.011))  # 10% > 1% + 2%
    assert isinstance(errors, Revert) and "error rate" in errors.reason
    slow = next_canary(cfg, 0.05, 100, good, _arm(100, 0, 0.050))
    assert isinstance(slow, Revert) and "p99" in slow.reason
    # too few requests for a p99 on the candidate: the slowest of a few is not a p99
    assert next_canary(cfg, 0.05, 50, good, _arm(50, 0, 0.050)) == Hold()
    # a difference within the scheduler's noise is not a breach, whatever the ratio
    assert next_canary(cfg, 0.05, 100, _arm(1000, 0, 0.001), _arm(100, 0, 0.0025)) == Step(0.5)


@given(st.lists(st.booleans(), min_size=1, max_size=400))
def test_the_share_only_ever_grows_until_a_revert_or_the_promotion(errors: list[bool]) -> None:
    cfg = CanaryConfig(start=0.01, steps=(0.05, 0.25, 1.0), step_requests=20)
    good = _arm(1000, 10, 0.01)
    share, at_step, cand = cfg.start, 0, Latencies()
    shares = [share]
    for failed in errors:
        cand.add(0.01, failed)
        at_step += 1
        decided = next_canary(cfg, share, at_step, good, cand)
        if isinstance(decided, Revert | Promote):
            break
        if isinstance(decided, Step):
            assert decided.share > share
            share, at_step, cand = decided.share, 0, Latencies()
            shares.append(share)
    assert shares == sorted(set(shares))


# --- offers ------------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=40))
def test_offers_go_to_the_front_door_one_at_a_time_in_order(ops: list[tuple[bool, int]]) -> None:
    """Against a model: candidates offered in order are sent in that order, a next one only
    after the verdict on the one on; a verdict on another changes nothing; none is lost."""
    offers = Offers()
    sent: list[str] = []
    offered: list[str] = []
    for n, (is_offer, k) in enumerate(ops):
        if is_offer:
            name = f"c{n}"
            offered.append(name)
            out = offers.offer("sha-" + name, name)
        else:
            target = offers.on[1] if offers.on is not None and k % 2 == 0 else f"stray{k}"
            out = offers.ended(target)
        if out is not None:
            assert out == offers.on and out[0] == "sha-" + out[1]
            sent.append(out[1])
        assert offers.on is None or offers.on[1] == sent[-1]
        if offers.on is None:
            assert offers.waiting == []
    assert sent == offered[: len(sent)]  # in order, each once
    first_left = len(sent) - (1 if offers.on is not None else 0)
    left = offers.drop_all()
    assert [c for _, c in left] == offered[first_left:]  # the one on, then those waiting
    assert offers.on is None and offers.waiting == [] and offers.drop_all() == []
