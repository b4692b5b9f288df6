"""The supervisor's counters (status, `/metrics`), derived from the events it journals.

One pure function over each event, so a counter cannot drift from the journal: the count of a
thing is the count of its events (and of the paths or refs an event names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from metasup.facts.events import Event


@dataclass(frozen=True)
class Counters:
    cycles: int = 0
    snapshots: int = 0
    good_marks: int = 0
    rollbacks: int = 0
    health_kills: int = 0
    emergency_stops: int = 0
    tamper_restored: int = 0
    experiments_passed: int = 0
    experiments_failed: int = 0
    refs_restored: int = 0
    proposals_received: int = 0
    proposals_rejected: int = 0
    proposals_applied: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# An event -> the counter it adds one to (an Event is its own string: either looks it up).
ONE_EACH: dict[str, str] = {
    Event.LAUNCH: "cycles",
    Event.SNAPSHOT: "snapshots",
    Event.MARK_GOOD: "good_marks",
    Event.ROLLBACK: "rollbacks",
    Event.HEALTH_KILL: "health_kills",
    Event.EMERGENCY_STOP: "emergency_stops",
    Event.EXPERIMENT_PASSED: "experiments_passed",
    Event.EXPERIMENT_FAILED: "experiments_failed",
    Event.PROPOSAL_RECEIVED: "proposals_received",
    Event.PROPOSAL_REJECTED: "proposals_rejected",
    Event.PROPOSAL_APPLIED: "proposals_applied",
}
# An event -> the counter it adds the length of one of its fields to.
BY_FIELD: dict[str, tuple[str, str]] = {
    Event.TAMPER_RESTORED: ("tamper_restored", "paths"),
    Event.REFS_RESTORED: ("refs_restored", "refs"),
}


def tally(counters: Counters, event: str, fields: Mapping[str, Any]) -> Counters:
    """`counters` after one more event."""
    name = ONE_EACH.get(event)
    if name is not None:
        return replace(counters, **{name: getattr(counters, name) + 1})
    if event in BY_FIELD:
        name, field = BY_FIELD[event]
        items = fields.get(field)
        n = len(items) if isinstance(items, list | tuple) else 0
        return replace(counters, **{name: getattr(counters, name) + n})
    return counters
