"""The status document's type and its reader's checks describe the same document."""

from __future__ import annotations

from typing import get_type_hints

from metasup.effects.records.statefile import STATE_FIELDS
from metasup.pipelines.supervisor.status import AgentStatus, StatusDocument


def test_every_field_written_is_checked_when_read_and_none_more() -> None:
    written = set(get_type_hints(StatusDocument))
    checked = set(STATE_FIELDS) - {"note"}  # added by `metasup status` when none runs
    assert written == checked


def test_the_agent_part_too() -> None:
    agent = STATE_FIELDS["agent"]
    assert isinstance(agent, dict) and set(get_type_hints(AgentStatus)) == set(agent)
