"""What a mutator prints is outside input: read without an error, a proposal only when its
last line is one."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from metasup.pipelines.evolution.breed import objective_score, printed_proposal

PROPOSAL = {"reason": "r", "changes": [{"file": "a.txt", "content": "x"}]}


@given(st.text(), st.text())
def test_any_output_is_read_and_only_a_last_line_proposal_counts(before: str, after: str) -> None:
    found = printed_proposal(before)
    if found is not None:
        doc = json.loads(found)
        assert isinstance(doc, dict) and "changes" in doc
    line = json.dumps(PROPOSAL)
    assert printed_proposal(f"{before}\n{line}\n\n") == line.encode()
    tail = printed_proposal(f"{line}\n{after}")
    assert tail is None or tail == line.encode() or b"changes" in tail


def test_talk_a_list_or_an_object_without_changes_is_no_proposal() -> None:
    assert printed_proposal("") is None
    assert printed_proposal("done, edited gaps.txt\n") is None
    assert printed_proposal('{"reason": "no changes"}') is None
    assert printed_proposal("[1, 2]") is None
    assert printed_proposal('{"changes": [] ') is None


def test_the_objective_needs_every_run() -> None:
    assert objective_score([{"score": 1.0}, {"score": 3.0}], "score") == 2.0
    assert objective_score([{"score": 1.0}, {"other": 3.0}], "score") is None
    assert objective_score([], "score") is None
