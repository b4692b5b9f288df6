"""Proposals in experiment mode: judged while the agent runs, merged between its runs.

The schedule (one at a time, a winner held until the next snapshot) is `decisions.trials`; this
performs it: the judging thread, the merge, the inbox's verdicts on the proposals. With `serve`,
a winner goes on live traffic first (`offer`): merged once its canary is promoted, archived as
`exp-<id>-reverted` (its proposal rejected, `experiment_reverted`) when it is reverted.
"""

from __future__ import annotations

import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

from metasup.decisions import trials
from metasup.decisions.trials import Trial
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir, tail_events
from metasup.facts.events import Emit
from metasup.facts.policy import Policy
from metasup.facts.settings import Config
from metasup.pipelines.experiments import Experimenter, Outcome
from metasup.pipelines.intake import Intake
from metasup.pipelines.supervisor.background import Job


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
        offer: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.intake = intake
        self.offer = offer  # puts a winner (commit, id) on live traffic; None: no serving
        self.experimenter = Experimenter(repo, config, policy, dirs.root, emit, reaper)
        self.experimenter.clean_leftovers()
        self.job: Job[Outcome] = Job("experiment")
        selector.register(self.job.fd, selectors.EVENT_READ, "experiment")
        self.state = Trial.IDLE
        self._held: Outcome | None = None
        self._promoted = False  # the held winner's canary promoted it
        self._items: list[Any] = []  # the claims the experiment under way is about
        self.recent_gains: deque[float] = deque(maxlen=5)
        self.recent: deque[dict[str, Any]] = deque(maxlen=10)  # for the status
        for record in tail_events(dirs.events):
            judged = record.get("event") in ("experiment_passed", "experiment_failed")
            if judged and record.get("improvement") is not None:
                self.recent_gains.append(float(record["improvement"]))

    def start_next(self, strategy: str) -> None:
        """Proposals were queued: judge them as one A/B experiment when the schedule says."""
        self._follow(trials.queued(self.state, bool(self.intake.queue)), strategy)

    def judged(self, strategy: str) -> bool:
        """Its thread is done: True when a winner waits to be merged between runs."""
        outcome = self.job.result()
        for c in outcome.candidates:
            if c.verdict is not None and c.verdict.improvement is not None:
                self.recent_gains.append(c.verdict.improvement)
        self._held = outcome
        step = trials.judged(
            self.state, outcome.winner is not None, bool(self.intake.queue), self.offer is not None
        )
        if step.offer:
            assert self.offer is not None and outcome.winner is not None
            assert outcome.winner.commit is not None
            if not self.offer(outcome.winner.commit, outcome.winner.id):
                step = trials.Next(trials.Trial.HELD, hold=True)  # no front door: merge as ever
        self._follow(step, strategy)
        return step.hold

    def canary_ended(
        self, candidate: str, promoted: bool, reason: str | None, strategy: str
    ) -> bool:
        """The front door's verdict on the winner it had: True when it now waits to be merged
        (promoted); reverted, it is concluded as such. A verdict on another candidate (one
        offered before a restart) changes nothing."""
        held = self._held
        if held is None or held.winner is None or held.winner.id != candidate:
            return False
        self._promoted = promoted
        if not promoted:
            held.winner.outcome = "reverted"
            held.winner.errors = [{"code": "canary", "message": reason or "reverted"}]
            held.winner = None
        step = trials.canary_ended(self.state, promoted, bool(self.intake.queue))
        self._follow(step, strategy)
        return step.hold

    def merge_held(self, strategy: str) -> tuple[str | None, bool]:
        """Between runs, right after the snapshot: merge the held winner. (Its commit, whether
        that commit is the one a canary promoted: a fast-forward to it.)"""
        outcome, promoted, self._promoted = self._held, self._promoted, False
        self._follow(trials.merged(self.state, bool(self.intake.queue)), strategy)
        if outcome is None or outcome.merged is None:
            return None, False
        return outcome.merged, promoted and outcome.fast_forward

    def _follow(self, step: trials.Next, strategy: str) -> None:
        if step.conclude and self._held is not None:
            held, self._held = self._held, None
            self._conclude(held)
        self.state = step.state
        if step.start:
            self._start(strategy)

    def _start(self, strategy: str) -> None:
        queue, self.intake.queue = self.intake.queue, []
        self._items = [item for item, _ in queue]
        sources = [(item.id, item.path.read_bytes()) for item in self._items]
        self.experimenter.strategy = strategy
        experimenter = self.experimenter
        self.job.start(lambda: experimenter.evaluate(sources))

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
