"""Proposals in experiment mode: judged while the agent runs, merged between its runs.

One experiment at a time, on a thread. Its states, in order:
IDLE     nothing under judgement; queued proposals start one
JUDGING  the candidates are being checked, shadow-run and scored
HELD     judged with a winner: it waits for the next snapshot to be merged (the loop stops the
         agent for it as for a direct proposal); without a winner the outcome is concluded at
         once (archived, rejected) and the next queued proposals start
"""

from __future__ import annotations

import selectors
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir, tail_events
from metasup.facts.policy import Policy
from metasup.facts.settings import Config
from metasup.pipelines.experiments import Experimenter, Outcome
from metasup.pipelines.intake import Intake
from metasup.pipelines.supervisor.background import Job

Emit = Callable[..., None]


class Trial(StrEnum):
    IDLE = "idle"
    JUDGING = "judging"
    HELD = "held"


class Trials:
    def __init__(
        self,
        repo: GitRepo,
        config: Config,
        policy: Policy,
        dirs: StateDir,
        intake: Intake,
        emit: Emit,
        reaper: Reaper,
        selector: selectors.BaseSelector,
    ) -> None:
        self.intake = intake
        self.experimenter = Experimenter(repo, config, policy, dirs.root, emit, reaper)
        self.experimenter.clean_leftovers()
        self.job: Job[Outcome] = Job("experiment")
        selector.register(self.job.fd, selectors.EVENT_READ, "experiment")
        self.state = Trial.IDLE
        self._held: Outcome | None = None
        self._items: list[Any] = []  # the claims the experiment under way is about
        self.recent_gains: deque[float] = deque(maxlen=5)
        self.recent: deque[dict[str, Any]] = deque(maxlen=10)  # for the status
        for record in tail_events(dirs.events):
            judged = record.get("event") in ("experiment_passed", "experiment_failed")
            if judged and record.get("improvement") is not None:
                self.recent_gains.append(float(record["improvement"]))

    def start_next(self, strategy: str) -> None:
        """Judge every queued proposal as one A/B experiment, on a thread (when none is)."""
        if self.state is not Trial.IDLE:
            return  # one at a time; the queue waits for the next
        queue, self.intake.queue = self.intake.queue, []
        if not queue:
            return
        self._items = [item for item, _ in queue]
        sources = [(item.id, item.path.read_bytes()) for item in self._items]
        self.experimenter.strategy = strategy
        experimenter = self.experimenter
        self.job.start(lambda: experimenter.evaluate(sources))
        self.state = Trial.JUDGING

    def judged(self, strategy: str) -> bool:
        """Its thread is done: True when a winner waits to be merged between runs."""
        outcome = self.job.result()
        for c in outcome.candidates:
            if c.verdict is not None and c.verdict.improvement is not None:
                self.recent_gains.append(c.verdict.improvement)
        if outcome.winner is None:
            self._conclude(outcome)  # nothing to merge: archive now, the agent runs on
            self.state = Trial.IDLE
            self.start_next(strategy)
            return False
        self._held, self.state = outcome, Trial.HELD
        return True

    def merge_held(self, strategy: str) -> str | None:
        """Between runs, right after the snapshot: merge the held winner; its commit."""
        outcome, self._held = self._held, None
        if outcome is None:
            return None
        self._conclude(outcome)
        self.state = Trial.IDLE
        self.start_next(strategy)
        return outcome.merged

    def _conclude(self, outcome: Outcome) -> None:
        self.experimenter.conclude(outcome, mark_good=False)
        items = {item.id: item for item in self._items}
        self._items = []
        for c in outcome.candidates:
            item = items.get(c.source)
            if item is not None:
                if c.outcome == "merged":
                    self.intake.store.done(item)
                else:
                    self.intake.store.reject(
                        item,
                        [{"code": "experiment_" + c.outcome, "message": c.failure() or c.outcome}],
                    )
            summary = c.as_dict()
            self.recent.append(
                {k: summary[k] for k in ("id", "source", "outcome", "score", "improvement")}
            )

    def stop(self, kill: Callable[[], object]) -> None:
        """At the stop: an experiment under way has its commands killed, then its thread
        ends. Its claims stay claimed and its branch stays: the next start takes them up."""
        if self.job.alive:
            kill()
            self.job.join(timeout=30)
        self.job.close()
