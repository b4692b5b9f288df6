"""`metasup evolve`: generations of candidates made in git, judged by the experiments'
evaluator, the best merged when it beats the good commit beyond its noise.

The journal is the record: a child is evaluated once when its `candidate_evaluated` is
journalled, and a run killed at any instruction goes on from there (`--resume`). Order per child:
make its commit, point `refs/metasup/pop/<id>` at it (from then on it is never lost), evaluate,
journal. A kill before the ref makes the child again (the same plan, the same id); a kill after
it evaluates the kept commit; a kill after the journal line skips it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from metasup.decisions import evolution as evo
from metasup.decisions.evolution import ELITE, SEED, History, Member, Plan
from metasup.decisions.verdict import NO_CRITERIA, Verdict, judge
from metasup.effects.git import population
from metasup.effects.git.repo import MergeConflict
from metasup.facts.errors import UserError
from metasup.facts.events import Event
from metasup.facts.faults import crashpoint
from metasup.facts.settings import EvolutionConfig
from metasup.facts.units import ms_since
from metasup.pipelines.evolution import breed
from metasup.pipelines.experiments import Experimenter

INSPIRATIONS = 5  # the best candidates a mutator is shown


SEED_ENV = "METASUP_EVOLUTION_SEED"  # a fixed seed: the same search again, to compare or debug


def _seed() -> int:
    fixed = os.environ.get(SEED_ENV, "").strip()
    if fixed:
        try:
            return int(fixed)
        except ValueError:
            raise UserError(f"{SEED_ENV} must be an integer, not {fixed!r}") from None
    return int.from_bytes(os.urandom(8), "big") >> 2


def new_evolution_id() -> str:
    """Sortable by time and short: it prefixes every candidate id."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(2).hex()}"


@dataclass
class Result:
    history: History
    stopped: str  # why the search ended
    interrupted: bool = False  # by a stop before it finished: --resume goes on
    best: Member | None = None
    baseline_score: float | None = None
    verdict: Verdict | None = None
    promoted: bool = False  # the best beat the good commit beyond its noise
    merged: str | None = None  # the new head, when it was merged

    def as_dict(self) -> dict[str, Any]:
        h = self.history
        v = self.verdict
        return {
            "evolution": h.evolution,
            "base": h.base,
            "generation": max(h.generations_finished, default=0),
            "evaluated": h.evaluations,
            "failed": h.failed,
            "discarded": len(h.discarded),
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "best_commit": self.best.commit if self.best else None,
            "best_id": self.best.id if self.best else None,
            "best_score": self.best.score if self.best else None,
            "baseline_score": self.baseline_score,
            "improvement": v.improvement if v else None,
            "reasons": list(v.reasons) if v else [],
            "promoted": self.promoted,
            "merged": self.merged,
            "generations": [
                {
                    "generation": g,
                    "best": rec.get("best"),
                    "median": rec.get("median"),
                }
                for g, rec in sorted(h.generations_finished.items())
            ],
        }


class Search:
    """One evolution, run (or resumed) to its end."""

    def __init__(
        self,
        exp: Experimenter,
        emit: Callable[..., object],
        events: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        on_progress: Callable[[History], None] | None = None,
    ) -> None:
        if exp.config.evolution is None:
            raise UserError("the config has no `evolution:` section; see `metasup evolve --help`")
        if not exp.ex.fitness:
            raise UserError(
                "evolution needs a score: set `experiments.fitness` to a command that prints "
                "a JSON object of numbers"
            )
        self.exp = exp
        self.repo = exp.repo
        self.cfg: EvolutionConfig = exp.config.evolution
        self._emit = emit
        self._events = events
        self._on_record = on_record
        self._on_progress = on_progress
        self._lock = threading.Lock()  # the history, the claimed trees, the budget
        self.stop = exp.cancel  # set by a signal: in-flight commands die, nothing new starts
        self.scratch = exp.state_root / "evolution"

    # --- the journal, and what it says -------------------------------------------------------

    def _record(self, h: History, event: str, **fields: Any) -> None:
        fields = {"evolution": h.evolution, **fields}
        self._emit(event, **fields)
        rec = {"event": event, **fields}
        with self._lock:
            h.absorb(rec)
            if self._on_progress is not None:
                self._on_progress(h)
        if self._on_record is not None:
            self._on_record(rec)

    def open(self, resume: bool, generations: int | None) -> tuple[History, bool]:
        """The evolution to work on: with `resume`, the last one (finished already: it is only
        reported, so resuming until done is safe to repeat); else, or when the journal has
        none, a new one. Returns it and whether it was resumed."""
        found = evo.histories(self._events())
        if resume and found:
            return list(found.values())[-1], True
        base = self.repo.good() or self.repo.head()
        if base is None:
            raise UserError("the repository has no commit to evolve from")
        h = History(new_evolution_id(), _seed(), base, {})
        started = {
            "seed": h.seed,
            "base": base,
            "objective": self.cfg.objective,
            "population": self.cfg.population,
            "islands": self.cfg.islands,
            "generations": generations if generations is not None else self.cfg.generations,
        }
        self._emit(evo.EVOLUTION_STARTED, evolution=h.evolution, **started)
        h.started = {"event": evo.EVOLUTION_STARTED, "evolution": h.evolution, **started}
        if self._on_record is not None:
            self._on_record(h.started)
        return h, False

    # --- the search ----------------------------------------------------------------------------

    def run(
        self,
        h: History,
        *,
        generations: int | None = None,
        merge: bool = True,
        before_merge: Callable[[], None] | None = None,
        mark_good: bool = True,
    ) -> Result:
        if h.finished is not None:
            return _finished_result(h, h.finished)
        target = generations if generations is not None else h.started.get("generations")
        cfg = replace(self.cfg, generations=target if isinstance(target, int) else None)
        t0 = time.monotonic()
        spent_before = h.elapsed
        kept = population.kept(self.repo, h.evolution + "-")
        self._claimed = {tree: m.id for tree, m in h.evaluated_trees().items()}
        with self.exp.git_lock:
            for cid, commit in kept.items():
                if not h.done(cid):
                    self._claimed.setdefault(population.tree_of(self.repo, commit), cid)
        self._reserved = h.evaluations
        self._budget_hit = False

        def elapsed() -> float:
            return spent_before + time.monotonic() - t0

        # generation 0: the seed
        sid = evo.seed_id(h.evolution)
        if 0 not in h.generations_finished:
            if 0 not in h.generations_started:
                self._record(h, evo.GENERATION_STARTED, generation=0)
            if not h.done(sid):
                commit = kept.get(sid) or breed.seed_commit(self.exp, h.base)
                with self.exp.git_lock:
                    population.keep(self.repo, sid, commit)
                    tree = population.tree_of(self.repo, commit)
                self._claimed[tree] = sid
                self._reserved += 1
                self._evaluate(h, Plan(sid, 0, 0, SEED, ()), commit, tree, (h.base,), 0)
            if self.stop.is_set():
                return Result(h, "stopped", interrupted=True)
            self._finish_generation(h, 0, elapsed())
        pools = evo.pools_after(0, list(h.members.values()), cfg)
        stopped = ""
        generation = 1
        while True:
            if generation in h.generations_finished:
                pools = evo.pools_after(generation, list(h.members.values()), cfg, pools)
                generation += 1
                continue
            why = evo.within_budget(cfg, h.evaluations, elapsed(), generation)
            if why is not None:
                stopped = why
                break
            if self.stop.is_set():
                return Result(h, "stopped", interrupted=True)
            if generation not in h.generations_started:
                self._record(h, evo.GENERATION_STARTED, generation=generation)
                crashpoint("evolve_generation_started")
            members = list(h.members.values())
            plans = evo.plan_generation(
                h.evolution, h.seed, generation, pools, cfg, evo.children_counts(members)
            )
            for plan in plans:
                if plan.operator == ELITE and not h.done(plan.id):
                    self._carry(h, plan, kept.get(plan.id))
            children = [p for p in plans if p.operator != ELITE and not h.done(p.id)]
            self._breed_all(h, children, kept)
            if self.stop.is_set():
                return Result(h, "stopped", interrupted=True)
            crashpoint("evolve_generation_done")
            self._finish_generation(h, generation, elapsed())
            pools = evo.pools_after(generation, list(h.members.values()), cfg, pools)
            if self._budget_hit:
                stopped = f"budget of {cfg.budget_evaluations} evaluations spent"
                break
            generation += 1
        return self._conclude(h, stopped, merge, before_merge, mark_good)

    def _breed_all(self, h: History, plans: list[Plan], kept: dict[str, str]) -> None:
        slots = list(range(self.exp.ex.max_concurrent))
        slots_lock = threading.Lock()

        def one(plan: Plan) -> None:
            if self.stop.is_set():
                return
            with slots_lock:
                slot = slots.pop()
            try:
                self._child(h, plan, kept.get(plan.id), slot)
            finally:
                with slots_lock:
                    slots.append(slot)

        with ThreadPoolExecutor(max_workers=self.exp.ex.max_concurrent) as pool:
            for future in [pool.submit(one, p) for p in plans]:
                future.result()

    def _reserve(self) -> bool:
        """One evaluation of the budget, taken before the work that leads to it."""
        with self._lock:
            limit = self.cfg.budget_evaluations
            if limit is not None and self._reserved >= limit:
                self._budget_hit = True
                return False
            self._reserved += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self._reserved -= 1

    def _child(self, h: History, plan: Plan, commit: str | None, slot: int) -> None:
        if not self._reserve():
            return
        parents = tuple(p.commit for p in plan.parents)
        held = False
        if commit is None:
            if plan.operator == evo.CROSSOVER:
                child = breed.crossover(self.exp, plan)
            else:
                child = breed.mutate(
                    self.exp, plan, slot, h.base, self._inspirations(h), self.scratch
                )
            if child.commit is None:
                self._release()
                if child.code != "cancelled":
                    self._discard(h, plan, child.code, child.why)
                return
            commit, held = child.commit, child.held
            crashpoint("evolve_child_made")
            with self.exp.git_lock:
                tree = population.tree_of(self.repo, commit)
            with self._lock:
                owner = self._claimed.setdefault(tree, plan.id)
            if owner != plan.id:
                self._release()
                self._discard(h, plan, "duplicate", f"same tree as {owner}", of=owner)
                return
            with self.exp.git_lock:
                population.keep(self.repo, plan.id, commit)
            crashpoint("evolve_ref_kept")
        else:
            with self.exp.git_lock:
                tree = population.tree_of(self.repo, commit)
        if not self._evaluate(h, plan, commit, tree, parents, slot, held=held):
            self._release()

    def _discard(self, h: History, plan: Plan, code: str, why: str, **extra: Any) -> None:
        self._record(
            h,
            evo.CHILD_DISCARDED,
            id=plan.id,
            generation=plan.generation,
            island=plan.island,
            operator=plan.operator,
            parents=[p.commit for p in plan.parents],
            reason=code,
            detail=why,
            **extra,
        )

    def _carry(self, h: History, plan: Plan, commit: str | None) -> None:
        (kept,) = plan.parents
        commit = commit or breed.elite_commit(self.exp, plan)
        with self.exp.git_lock:
            population.keep(self.repo, plan.id, commit)
        crashpoint("evolve_elite_kept")
        self._record(
            h,
            evo.CANDIDATE_CARRIED,
            id=plan.id,
            commit=commit,
            tree=kept.tree,
            parents=[kept.commit],
            operator=ELITE,
            generation=plan.generation,
            island=plan.island,
            score=kept.score,
            passed=kept.passed,
            carries=kept.carries or kept.id,
        )

    def _inspirations(self, h: History) -> list[Member]:
        with self._lock:
            best = evo.distinct_trees(evo.ranked(h.members.values()))
        return [m for m in best if m.passed][:INSPIRATIONS]

    def _evaluate(
        self,
        h: History,
        plan: Plan,
        commit: str,
        tree: str,
        parents: tuple[str, ...],
        slot: int,
        *,
        held: bool = False,
    ) -> bool:
        """Judge one candidate and journal it. False when a stop cut it short (not evaluated:
        a resume does it again)."""
        t0 = time.perf_counter()
        found = self.exp.executor.assess(
            commit,
            h.base,
            slot,
            {"METASUP_EVOLUTION": h.evolution, "METASUP_CANDIDATE": plan.id},
            baseline=False,
            held=held,
        )
        if found.cancelled:
            return False
        crashpoint("evolve_evaluated")
        score = breed.objective_score(found.fitness, self.cfg.objective) if found.ok else None
        reason = found.failure()
        passed = found.ok and score is not None
        if found.ok and score is None:
            reason = f"the fitness command did not report {self.cfg.objective!r}"
        if passed:
            v = judge(found.fitness, [], NO_CRITERIA, self.exp.ex.failure)
            if not v.passed:
                passed, reason = False, "; ".join(v.reasons)
        self._record(
            h,
            evo.CANDIDATE_EVALUATED,
            id=plan.id,
            commit=commit,
            tree=tree,
            parents=list(parents),
            operator=plan.operator,
            generation=plan.generation,
            island=plan.island,
            score=score,
            passed=passed,
            reason=reason,
            node=found.node,
            duration_ms=ms_since(t0),
        )
        crashpoint("evolve_journalled")
        return True

    def _finish_generation(self, h: History, generation: int, elapsed: float) -> None:
        of_gen = h.of_generation(generation)
        best, median = evo.best_and_median(of_gen)
        self._record(
            h,
            evo.GENERATION_FINISHED,
            generation=generation,
            best=best,
            median=median,
            evaluated=sum(1 for m in of_gen if m.operator != ELITE),
            failed=sum(1 for m in of_gen if m.operator != ELITE and not m.passed),
            elapsed_s=round(elapsed, 3),
        )

    # --- promotion -----------------------------------------------------------------------------

    def _conclude(
        self,
        h: History,
        stopped: str,
        merge: bool,
        before_merge: Callable[[], None] | None,
        mark_good: bool,
    ) -> Result:
        """Judge the best against the good commit, measured in this run; merge it when it
        beats it beyond its noise. The verdict is journalled before the merge, so a run
        killed in between merges on resume what was judged, without judging again (the good
        commit may be the winner by then)."""
        seed = h.members.get(evo.seed_id(h.evolution))
        best = h.best()
        result = Result(h, stopped, best=best, baseline_score=seed.score if seed else None)
        if h.judged is not None:
            best = h.members.get(str(h.judged.get("best_id"))) or best
            result.best = best
            result.verdict = _verdict_of(h.judged)
            target = str(h.judged.get("target"))
        elif best is not None and (seed is None or best.tree != seed.tree):
            target = self.repo.good() or self.repo.head() or h.base
            verdict = self._judge(h, best, target)
            if verdict is None:
                result.interrupted = True
                return result
            result.verdict = verdict
            self._record(
                h,
                evo.EVOLUTION_JUDGED,
                best_id=best.id,
                best_commit=best.commit,
                target=target,
                passed=verdict.passed,
                reasons=list(verdict.reasons),
                score=verdict.score,
                baseline_score=verdict.baseline_score,
                improvement=verdict.improvement,
            )
        v = result.verdict
        if v is not None:
            result.promoted = v.passed
            if v.baseline_score is not None:
                result.baseline_score = v.baseline_score
        if result.promoted and merge and best is not None:
            result.merged = self._merge(h, best, target, before_merge, mark_good)
            crashpoint("evolve_merged")
        self._record(
            h,
            evo.EVOLUTION_FINISHED,
            best_commit=best.commit if best else None,
            best_id=best.id if best else None,
            best_score=best.score if best else None,
            baseline_score=result.baseline_score,
            improvement=v.improvement if v else None,
            promoted=result.promoted,
            merged=result.merged,
            stopped=stopped,
        )
        return result

    def _judge(self, h: History, best: Member, target: str) -> Verdict | None:
        """The experiments' verdict on the best against `target`, repeats interleaved; None
        when a stop cut it short."""
        found = self.exp.executor.assess(
            best.commit,
            target,
            0,
            {"METASUP_EVOLUTION": h.evolution, "METASUP_CANDIDATE": best.id},
            baseline=True,
        )
        if found.cancelled:
            return None
        if not found.ok:
            return Verdict(False, (found.failure() or "failed",), None, None, None)
        objective = self.cfg.objective
        runs = _as_score(found.fitness, objective)
        base_runs = _as_score(found.baseline, objective)
        v = judge(runs, base_runs, self.exp.ex.success, self.exp.ex.failure)
        if v.passed and (
            v.score is None or v.baseline_score is None or v.score <= v.baseline_score
        ):
            reasons = (*v.reasons, "the best candidate does not score above the good commit")
            v = replace(v, passed=False, reasons=reasons)
        return v

    def merge_winner(self, h: History, best: Member, target: str) -> str | None:
        """Merge a winner judged before (a continuous round's, between the agent's runs); it
        becomes good when it has run `min_runtime`."""
        return self._merge(h, best, target, None, mark_good=False)

    def _merge(
        self,
        h: History,
        best: Member,
        target: str,
        before_merge: Callable[[], None] | None,
        mark_good: bool,
    ) -> str | None:
        if h.merged is not None:
            return str(h.merged.get("commit"))
        head = self.repo.head()
        if head is not None and self.repo.reaches(head, best.commit):
            # Merged before a crash, which came before the journal said so.
            fast = head == best.commit
            self._record(
                h, Event.MERGED, id=best.id, commit=head, candidate=best.commit, fast_forward=fast
            )
            if fast and mark_good and self.repo.good() != head:
                with self.exp.git_lock:
                    self.repo.set_good(head)
                self._record(h, Event.MARK_GOOD, commit=head, reason="won an evolution")
            return head
        if before_merge is not None:
            before_merge()
        merged = self.exp.merge_commit(
            best.id,
            best.commit,
            target,
            f"metasup: merge evolution {h.evolution} ({best.id})\n",
            mark_good=mark_good,
            why="won an evolution",
            emit=lambda event, **fields: self._record(h, event, **fields),
        )
        return None if isinstance(merged, MergeConflict) else merged[0]


def _finished_result(h: History, finished: Mapping[str, Any]) -> Result:
    """What a finished evolution's journal says of its end."""
    best = h.members.get(str(finished.get("best_id")))
    base = finished.get("baseline_score")
    return Result(
        h,
        str(finished.get("stopped") or ""),
        best=best,
        baseline_score=float(base) if isinstance(base, int | float) else None,
        verdict=_verdict_of(h.judged) if h.judged is not None else None,
        promoted=bool(finished.get("promoted")),
        merged=finished.get("merged") if isinstance(finished.get("merged"), str) else None,
    )


def _verdict_of(judged: Mapping[str, Any]) -> Verdict:
    def num(key: str) -> float | None:
        value = judged.get(key)
        return float(value) if isinstance(value, int | float) else None

    return Verdict(
        bool(judged.get("passed")),
        tuple(str(r) for r in judged.get("reasons") or ()),
        num("score"),
        num("baseline_score"),
        num("improvement"),
    )


def _as_score(runs: Iterable[Mapping[str, float]], objective: str) -> list[dict[str, float]]:
    """Fitness runs with the objective as `score`, what the verdict reads."""
    return [{**r, "score": r[objective]} for r in runs if objective in r]
