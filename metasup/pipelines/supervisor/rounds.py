"""Evolution in `mode: continuous`: rounds of `metasup evolve` inside `metasup run`.

A round is due every `trigger.every` (`decisions.evolution.trigger_due`); with `min_gain`, the
good commit is scored first and the round runs only when it gained less than that since the last
round (the agent stalled). The round searches on a thread while the agent runs, touching
neither the working tree nor the branch; a winner is held and merged between runs, as an
experiment's is (WinnerJudged, then MergeWinner after the snapshot), and marked good after it
runs `min_runtime`. An interrupted round (a stop, a crash) is resumed at the next start, and a
winner judged but not merged before a crash is held again.

With `serve`, a winner goes on live traffic before it is held (`offer`): held once its canary is
promoted; reverted, it is archived as `evo-<id>-reverted` and the round's gain forgotten. No round
starts while a winner is on. After a restart, a winner whose canary had not ended is offered
again; one the journal says was reverted stays out.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from typing import Any

from metasup.decisions import evolution as evo
from metasup.decisions.verdict import improvement
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir, read_events
from metasup.facts.events import Emit, Event
from metasup.facts.faults import crashpoint
from metasup.facts.policy import Policy
from metasup.facts.settings import Config
from metasup.pipelines.evolution import breed
from metasup.pipelines.evolution.search import Result, Search
from metasup.pipelines.experiments import Experimenter
from metasup.pipelines.supervisor.background import Job

ROUND_SKIPPED = "evolution_skipped"  # a due round not run: the agent gained enough on its own


class Rounds:
    def __init__(
        self,
        workdir: Any,
        config: Config,
        policy: Policy,
        dirs: StateDir,
        emit: Emit,
        reaper: Reaper,
        selector: selectors.BaseSelector,
        on_figures: Callable[[dict[str, Any]], None],
        offer: Callable[[str, str], bool] | None = None,
    ) -> None:
        assert config.evolution is not None
        self.cfg = config.evolution
        # Its own repository object: the round's thread never shares one with the loop.
        self.repo = GitRepo(workdir)
        self.exp = Experimenter(self.repo, config, policy, dirs.root, emit, reaper)
        self.exp.slot_prefix = "evo-"  # experiment mode's trials use the plain names
        self.dirs = dirs
        self.emit = emit
        self.on_figures = on_figures
        self.search = Search(
            self.exp,
            emit,
            lambda: read_events(dirs.events),
            on_progress=lambda h: on_figures(evo.figures(h, running=h.finished is None)),
        )
        self.job: Job[Result | None] = Job("evolution")  # None: skipped
        selector.register(self.job.fd, selectors.EVENT_READ, "evolution")
        self.offer = offer  # puts a winner (commit, id) on live traffic; None: no serving
        self.held: Result | None = None  # a winner waiting to be merged between runs
        self.offered: Result | None = None  # a winner on live traffic, its canary not ended
        self._reoffer = False  # offer `offered` again at the first due (after a restart)
        self._promoted = False  # the held winner's canary promoted it
        self._announced = False
        events = list(read_events(dirs.events))
        found = evo.histories(events)
        last = list(found.values())[-1] if found else None
        self.interrupted = last is not None and last.finished is None
        self.last_score = _round_score(last)
        if last is not None and last.finished is not None and last.finished.get("promoted"):
            best = last.members.get(str(last.finished.get("best_id")))
            head = self.repo.head()
            if last.merged is None and best is not None and head is not None:
                self._hold_again(last, best, head, _canary_ends(events))

    def _hold_again(
        self, last: evo.History, best: evo.Member, head: str, ends: dict[str, bool]
    ) -> None:
        """A round's winner a crash kept from being merged is held again (or offered again,
        when its canary had not ended; never when it was reverted)."""
        if self.repo.reaches(head, best.commit):
            return
        result = Result(last, "held again after a restart", best=best, promoted=True)
        ended = ends.get(best.id)
        if ended is False:
            self.last_score = _round_score(last, reverted=True)
        elif ended is None and self.offer is not None:
            self.offered, self._reoffer = result, True
        else:
            self.held, self._promoted = result, ended is True

    def first_due(self, now: float) -> float:
        """When the first round may start: at once to resume an interrupted one (or merge a
        winner a crash left unmerged), else one interval from now."""
        soon = self.interrupted or self.held is not None or self._reoffer
        return now if soon else now + self.cfg.trigger_every

    def due(self, now: float) -> tuple[bool, float | None]:
        """The trigger's timer fired: start a round unless one runs or a winner waits. (True
        when a winner waits that the loop has not heard of (held again after a restart), when
        to look again: None when the round started sets it as it finishes)."""
        again = now + self.cfg.trigger_every
        if self.held is not None:
            announce, self._announced = not self._announced, True
            return announce, again
        if self.offered is not None:
            if self._reoffer:
                self._reoffer = False
                return self._put_on_traffic(self.offered), again
            return False, again  # its canary's verdict comes first
        if self.job.running:
            return False, None
        resume, self.interrupted = self.interrupted, False
        since = 0.0 if resume else self.cfg.trigger_every
        self.job.start(lambda: self._round(resume, since))
        return False, None

    def _round(self, resume: bool, since: float) -> Result | None:
        gain = None
        if not resume and self.cfg.trigger_min_gain is not None and self.last_score is not None:
            score = self._good_score()
            if score is not None:
                gain = improvement(score, self.last_score)
            if not evo.trigger_due(self.cfg, since, gain):
                self.emit(ROUND_SKIPPED, gain=gain, min_gain=self.cfg.trigger_min_gain)
                return None
        history, _ = self.search.open(resume, None)
        return self.search.run(history, merge=False)

    def _good_score(self) -> float | None:
        good = self.repo.good() or self.repo.head()
        if good is None:
            return None
        found = self.exp.executor.assess(
            good, good, 0, {"METASUP_EVOLUTION": "trigger"}, baseline=False
        )
        return breed.objective_score(found.fitness, self.cfg.objective) if found.ok else None

    def finished(self) -> tuple[bool, float]:
        """The round's thread is done: (a winner waits to be merged, when the next is due)."""
        now = time.monotonic()
        try:
            result = self.job.result()
        except Exception as e:  # a round that failed is reported; the next comes at its time
            self.emit("evolution_failed", error=str(e))
            return False, now + self.cfg.trigger_every
        if result is None:
            return False, now + self.cfg.trigger_every
        if result.interrupted:
            self.interrupted = True
            return False, now + self.cfg.trigger_every
        self.last_score = result.baseline_score
        if result.promoted and result.best is not None:
            return self._put_on_traffic(result), now + self.cfg.trigger_every
        return False, now + self.cfg.trigger_every

    def _put_on_traffic(self, result: Result) -> bool:
        """A winner goes to the front door when there is one, else is held at once: True when
        it is held (the loop merges it between runs)."""
        assert result.best is not None
        self.offered = None
        if self.offer is not None and self.offer(result.best.commit, result.best.id):
            self.offered = result
            return False
        self.last_score = result.best.score
        self.held, self._announced = result, True
        crashpoint("evolve_round_held")
        return True

    def canary_ended(self, candidate: str, promoted: bool) -> bool:
        """The front door's verdict on the winner it had: True when it is now held. A verdict on
        another candidate (an experiment's) changes nothing."""
        result = self.offered
        if result is None or result.best is None or result.best.id != candidate:
            return False
        self.offered, self._reoffer = None, False
        best = result.best
        if promoted:
            self.last_score = best.score
            self.held, self._announced, self._promoted = result, True, True
            crashpoint("evolve_round_held")
            return True
        with self.exp.git_lock:
            ref = self.repo.archive_commit(f"evo-{best.id}-reverted", best.commit)
        self.emit(Event.ARCHIVE, ref=ref, commit=best.commit, reason="evolution winner reverted")
        return False

    def merge_held(self) -> tuple[str | None, bool]:
        """Between runs, right after the snapshot: merge the held winner. (The new head, whether
        it is the commit a canary promoted: a fast-forward to it.)"""
        held, self.held = self.held, None
        promoted, self._promoted = self._promoted, False
        if held is None or held.best is None:
            return None, False
        target = self.repo.head()
        assert target is not None
        merged = self.search.merge_winner(held.history, held.best, target)
        return merged, promoted and merged == held.best.commit

    def stop(self) -> None:
        """A round under way has its commands killed; it is resumed at the next start."""
        if self.job.alive:
            self.exp.cancel.set()
            self.job.join(timeout=30)
        self.job.close()


def _canary_ends(events: list[dict[str, Any]]) -> dict[str, bool]:
    """Each candidate's last canary verdict in the journal: promoted (True) or reverted."""
    ends: dict[str, bool] = {}
    for e in events:
        if e.get("event") in (Event.CANARY_PROMOTED, Event.CANARY_REVERTED):
            ends[str(e.get("id"))] = e.get("event") == Event.CANARY_PROMOTED
    return ends


def _round_score(h: evo.History | None, reverted: bool = False) -> float | None:
    """The good commit's score as the last round measured it."""
    if h is None or h.finished is None:
        return None
    if h.finished.get("promoted") and not reverted:
        value = h.finished.get("best_score")
    else:
        value = h.finished.get("baseline_score")
    return float(value) if isinstance(value, int | float) else None
