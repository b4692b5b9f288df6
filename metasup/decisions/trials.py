"""Experiment mode's schedule, pure: one experiment at a time, and what its judgement leads to.

IDLE     nothing under judgement; proposals that wait start one
JUDGING  the candidates are being checked, shadow-run and scored (on a thread)
CANARY   judged with a winner, which is on live traffic behind the front door (with `serve`):
         promoted, it is HELD; reverted, it is concluded as such; nothing new starts meanwhile
HELD     judged with a winner, which waits for the next snapshot to be merged (the loop stops
         the agent for it, as for a direct proposal); nothing new starts meanwhile

A judgement without a winner is concluded at once (archived, the proposals rejected) and the
next waiting proposals start. `supervisor.trials` asks these, then acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Trial(StrEnum):
    IDLE = "idle"
    JUDGING = "judging"
    CANARY = "canary"
    HELD = "held"


@dataclass(frozen=True)
class Next:
    state: Trial
    start: bool = False  # judge the waiting proposals now
    conclude: bool = False  # conclude the judged outcome now (archive, reject, or the merge)
    hold: bool = False  # keep the winner for the next snapshot
    offer: bool = False  # put the winner on live traffic (the canary) first


def queued(state: Trial, waiting: bool) -> Next:
    """Proposals wait: one experiment starts when none runs and no winner waits."""
    if state is Trial.IDLE and waiting:
        return Next(Trial.JUDGING, start=True)
    return Next(state)


def judged(state: Trial, winner: bool, waiting: bool, canary: bool = False) -> Next:
    """The experiment under way was judged; `canary`: a winner goes on live traffic first."""
    if state is not Trial.JUDGING:
        return Next(state)  # no experiment was running: nothing to take
    if winner and canary:
        return Next(Trial.CANARY, offer=True)
    if winner:
        return Next(Trial.HELD, hold=True)
    after = queued(Trial.IDLE, waiting)
    return Next(after.state, start=after.start, conclude=True)


def merged(state: Trial, waiting: bool) -> Next:
    """The snapshot came: the held winner is merged (concluded), the next may start."""
    if state is not Trial.HELD:
        return Next(state)
    after = queued(Trial.IDLE, waiting)
    return Next(after.state, start=after.start, conclude=True)


def canary_ended(state: Trial, promoted: bool, waiting: bool) -> Next:
    """The winner's canary ended: promoted, it waits for the snapshot to be merged; reverted, it
    is concluded (archived as reverted, its proposal rejected) and the next may start."""
    if state is not Trial.CANARY:
        return Next(state)
    if promoted:
        return Next(Trial.HELD, hold=True)
    after = queued(Trial.IDLE, waiting)
    return Next(after.state, start=after.start, conclude=True)
