"""The state files as untrusted input: any JSON at all reads as a clean document or none."""

from __future__ import annotations

import io
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from metasup.effects.records.journal import public_status, recorded_trees
from metasup.effects.records.statefile import STATE_FIELDS, clean_state, intent_problem
from metasup.faces.view.render import plain, render

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_state = st.dictionaries(st.sampled_from(sorted(STATE_FIELDS)) | st.text(max_size=5), _json)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_json, _state))
def test_any_json_reads_as_a_state_every_reader_can_use(doc: Any) -> None:
    clean = clean_state(doc)
    assert isinstance(clean, dict)
    assert clean_state(clean) == clean, "cleaning is idempotent"
    for tree in recorded_trees(clean):
        assert isinstance(tree["token"], str) and len(tree["token"]) == 32
        assert tree.get("pgid") is None or tree["pgid"] > 1
    public_status(clean, time.time())
    plain(clean, running=False)
    Console(file=io.StringIO(), width=100).print(render(clean, [], running=True, now=time.time()))


def test_a_well_formed_state_is_kept_whole() -> None:
    doc = {
        "status": "running",
        "run": 4,
        "good_commit": "a" * 40,
        "agent": {"pid": 1234, "pgid": 1234, "token": "b" * 32, "rss_mb": 12.5},
        "helper_trees": [{"pgid": 99, "token": "c" * 32}],
        "mcp": {"time": {"state": "healthy", "restarts": 0, "tools": 2}},
        "counters": {"rollbacks": 1},
        "last_exit": None,
    }
    assert clean_state(doc) == doc


def test_bad_fields_are_dropped_one_by_one() -> None:
    doc = {
        "run": "4",
        "consecutive_failures": -1,
        "good_commit": "HEAD",
        "agent": {"pid": 1, "pgid": 0, "token": "../x", "state": "running"},
        "helper_trees": [{"pgid": 1, "token": "c" * 32}, "no"],
        "experiment_running": 1,
    }
    assert clean_state(doc) == {
        "agent": {"state": "running"},
        "helper_trees": [{"token": "c" * 32}],
    }


def test_an_intent_is_checked_field_by_field() -> None:
    good = {
        "op": "rollback",
        "run": 3,
        "failed": None,
        "target": "a" * 40,
        "reason": "exit 1",
        "staging": "/x",
        "step": "start",
    }
    assert intent_problem(good) is None
    assert intent_problem([]) == "it is not a JSON object"
    assert intent_problem({**good, "step": "rm -rf"}) == "`step` is 'rm -rf'"
    assert intent_problem({**good, "target": "main"}) == "`target` is 'main'"
    del good["run"]
    assert intent_problem(good) == "`run` is missing"


def test_refs_drift_from_the_journal() -> None:
    from metasup.pipelines.refguard import Drift, Expected, drift

    log = [
        {"event": "mark_good", "commit": "a" * 40},
        {"event": "archive", "ref": "refs/metasup/archive/x", "commit": "b" * 40},
        {"event": "approved", "good": None},
        {"event": "archive", "ref": "refs/heads/main", "commit": "c" * 40},  # not metasup's
        {"event": "recovered", "to": "d" * 40},
    ]
    expected = Expected.from_journal(log)
    assert expected.good == "d" * 40
    assert expected.archives == {"refs/metasup/archive/x": "b" * 40}
    actual: dict[str, str | None] = {
        "refs/metasup/good": "ref: refs/heads/main",
        "refs/metasup/archive/x": "b" * 40,
    }
    assert drift(expected, actual) == [Drift("refs/metasup/good", "d" * 40, "ref: refs/heads/main")]
    actual["refs/metasup/good"] = "d" * 40
    assert drift(expected, actual) == []
    del actual["refs/metasup/archive/x"]
    assert drift(expected, actual) == [Drift("refs/metasup/archive/x", "b" * 40, None)]
