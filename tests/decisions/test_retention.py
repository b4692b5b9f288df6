"""What retention lets go of: never the newest run, never more than asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from metasup.decisions.retention import archive_time, archives_to_prune, logs_to_drop

runs = st.lists(
    st.tuples(st.integers(1, 10_000), st.integers(0, 1 << 20)), unique_by=lambda r: r[0]
)


@given(runs, st.integers(1, 50), st.none() | st.integers(1, 1 << 22))
def test_logs_kept_fit_the_limits_and_the_newest_stays(
    found: list[tuple[int, int]], keep: int, max_size: int | None
) -> None:
    dropped = logs_to_drop(found, keep, max_size)
    kept = [r for r in found if r[0] not in dropped]
    assert len(set(dropped)) == len(dropped) and set(dropped) <= {n for n, _ in found}
    if found:
        newest = max(n for n, _ in found)
        assert newest not in dropped
    assert len(kept) <= keep
    if max_size is not None and len(kept) > 1:
        assert sum(s for _, s in kept) <= max_size
    # Oldest first: whatever was kept is newer than whatever was dropped.
    if kept and dropped:
        assert min(n for n, _ in kept) > max(dropped)


def test_logs_by_count_then_by_size() -> None:
    found = [(1, 10), (2, 10), (3, 10), (4, 50)]
    assert logs_to_drop(found, 3, None) == [1]
    assert logs_to_drop(found, 3, 60) == [1, 2]
    assert logs_to_drop(found, 3, 59) == [1, 2, 3]
    assert logs_to_drop([(9, 500)], 3, 60) == [], "the newest run's logs stay, whatever size"


def ref(when: datetime, reason: str = "exit-1") -> str:
    return "refs/metasup/archive/" + when.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + reason


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@given(
    st.lists(st.integers(0, 10**7), unique=True, max_size=30),
    st.none() | st.integers(1, 10),
    st.none() | st.floats(1, 10**7),
)
def test_archives_kept_are_the_newest_within_the_age(
    ages: list[int], count: int | None, max_age: float | None
) -> None:
    refs = [ref(NOW - timedelta(seconds=a)) for a in ages]
    pruned = archives_to_prune(refs, NOW, count, max_age)
    kept = [r for r in refs if r not in pruned]
    assert set(pruned) <= set(refs)
    if count is not None:
        assert len(kept) <= count
    if max_age is not None:
        for r in kept:
            when = archive_time(r)
            assert when is not None and (NOW - when).total_seconds() <= max_age
    if kept and pruned:
        newest_pruned = max(archive_time(r) for r in pruned)  # type: ignore[type-var]
        if max_age is None:
            assert min(archive_time(r) for r in kept) >= newest_pruned  # type: ignore[type-var]


def test_the_time_comes_from_the_name_and_a_hand_made_ref_is_never_judged_by_age() -> None:
    made = ref(NOW - timedelta(days=40), "exp-3-failed")
    assert archive_time(made) == NOW - timedelta(days=40)
    odd = "refs/metasup/archive/by-hand"
    assert archive_time(odd) is None
    assert archives_to_prune([made, odd], NOW, None, 86400 * 30) == [made]
    assert archives_to_prune([made, odd], NOW, 1, None) == [odd], "undated counts as oldest"
