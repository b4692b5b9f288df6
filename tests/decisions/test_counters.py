"""The counters as a pure function of the journal's events."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from metasup.decisions.counters import BY_FIELD, ONE_EACH, Counters, tally
from metasup.facts.events import Event

EVENTS = st.sampled_from([e.value for e in Event] + ["stale_locks_removed"])
RECORDS = st.tuples(EVENTS, st.lists(st.text(max_size=3), max_size=4))


@given(st.lists(RECORDS, max_size=60))
def test_each_counter_is_the_count_of_its_events(records: list[tuple[str, list[str]]]) -> None:
    counters = Counters()
    for event, items in records:
        counters = tally(counters, event, {"paths": items, "refs": items})
    expected: dict[str, int] = dict.fromkeys(Counters().as_dict(), 0)
    for event, items in records:
        if event in ONE_EACH:
            expected[ONE_EACH[event]] += 1
        elif event in BY_FIELD:
            expected[BY_FIELD[event][0]] += len(items)
    assert counters.as_dict() == expected


def test_a_restore_counts_its_paths_and_a_drift_report_its_refs() -> None:
    c = tally(Counters(), "tamper_restored", {"paths": ["a", "b"], "by": "watch"})
    c = tally(c, "refs_restored", {"refs": [{"ref": "r"}], "lost": [{"ref": "x"}]})
    c = tally(c, "launch", {"error": "cannot start"})  # a failed launch is a cycle too
    fields: dict[str, Any] = {"paths": "not a list"}
    c = tally(c, "tamper_restored", fields)
    assert (c.tamper_restored, c.refs_restored, c.cycles) == (2, 1, 1)


def test_every_counter_has_an_event() -> None:
    fed = set(ONE_EACH.values()) | {name for name, _ in BY_FIELD.values()}
    assert fed == set(Counters().as_dict())
