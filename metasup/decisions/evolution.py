"""Evolution, pure: who is in a generation, which parents make each child, what the journal
says was done. No git, no processes: members and events in, plans out.

A generation is planned from the one before it alone, with a random stream per child seeded by
the evolution's seed and the child's id. Planning it again after a crash therefore gives the
same children with the same ids, and the journal says which of them exist already.

Generation 0 is the seed: the good commit, evaluated once, a member of every island. In each
later generation every island carries its `elite` best over (no new evaluation) and fills the
rest of its share of `population` with children: a three-way merge of two parents with
probability `crossover_rate` (when two distinct passing parents exist), else a mutation of one.
Every `migration_every` generations each island's `migration_count` best join the next island's
pool (a ring), where they may be selected and carried over.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metasup.facts.settings import EvolutionConfig

SEED, MUTATE, CROSSOVER, ELITE = "seed", "mutate", "crossover", "elite"
OPERATORS = (SEED, MUTATE, CROSSOVER, ELITE)

# Weighted selection (ShinkaEvolve's, also DGM's): a sigmoid of the score's distance from the
# median, in units of the scores' spread, damped by how many children a parent has already had.
SIGMOID_SHARPNESS = 10.0


@dataclass(frozen=True)
class Member:
    """A candidate of the population: evaluated, or carried over (an elite)."""

    id: str
    commit: str
    tree: str
    generation: int
    island: int
    operator: str
    parents: tuple[str, ...]  # commits
    score: float | None
    passed: bool
    carries: str | None = None  # an elite: the id of the evaluated candidate it carries

    @property
    def fit(self) -> float:
        """What selection compares: failed candidates lose to every passing one."""
        if self.passed and self.score is not None and math.isfinite(self.score):
            return self.score
        return -math.inf


@dataclass(frozen=True)
class Plan:
    """One slot of a generation: the child to make (or the elite to carry)."""

    id: str
    generation: int
    island: int
    operator: str
    parents: tuple[Member, ...]


def slot_id(evolution: str, generation: int, island: int, kind: str, k: int) -> str:
    """`<evolution>-g3-i1-c4`: the fourth child of island 1 in generation 3 (`e`: an elite)."""
    return f"{evolution}-g{generation}-i{island}-{kind}{k}"


def seed_id(evolution: str) -> str:
    return f"{evolution}-g0-seed"


def island_sizes(population: int, islands: int) -> list[int]:
    """Each island's share of the population; the first ones take the remainder."""
    base, extra = divmod(population, islands)
    return [base + (1 if i < extra else 0) for i in range(islands)]


def ranked(members: Iterable[Member]) -> list[Member]:
    """Best first: passing candidates by score, then failed ones; ties by age, then id."""
    return sorted(members, key=lambda m: (-m.fit, m.generation, m.id))


def distinct_trees(members: Iterable[Member]) -> list[Member]:
    """The first member of each tree, in the given order."""
    seen: set[str] = set()
    out = []
    for m in members:
        if m.tree not in seen:
            seen.add(m.tree)
            out.append(m)
    return out


def tournament(pool: Sequence[Member], size: int, rng: random.Random) -> Member:
    """The fittest of `size` members drawn at random (with replacement)."""
    drawn = [pool[rng.randrange(len(pool))] for _ in range(size)]
    return ranked(drawn)[0]


def weights(pool: Sequence[Member], children: Mapping[str, int]) -> list[float]:
    """Selection weights: sigmoid of the score around the median, over 1 + children so far.
    Failed members weigh nothing unless every member failed (then all weigh the same)."""
    scores = [m.fit for m in pool if m.fit > -math.inf]
    if not scores:
        return [1.0 for _ in pool]
    mid = statistics.median(scores)
    spread = (max(scores) - min(scores)) or 1.0
    out = []
    for m in pool:
        if m.fit == -math.inf:
            out.append(0.0)
            continue
        z = SIGMOID_SHARPNESS * (m.fit - mid) / spread
        out.append(1.0 / (1.0 + math.exp(-z)) / (1 + children.get(m.commit, 0)))
    return out


def select(
    pool: Sequence[Member],
    cfg: EvolutionConfig,
    rng: random.Random,
    children: Mapping[str, int],
) -> Member:
    if cfg.selection == "weighted":
        w = weights(pool, children)
        if sum(w) <= 0:
            w = [1.0] * len(pool)
        return rng.choices(pool, weights=w)[0]
    return tournament(pool, cfg.tournament_size, rng)


def child_rng(seed: int, child: str) -> random.Random:
    return random.Random(f"{seed}:{child}")


def children_counts(members: Iterable[Member]) -> dict[str, int]:
    """How many children each commit has had (elites are not children)."""
    counts: dict[str, int] = {}
    for m in members:
        if m.operator in (MUTATE, CROSSOVER):
            for p in m.parents:
                counts[p] = counts.get(p, 0) + 1
    return counts


def plan_generation(
    evolution: str,
    seed: int,
    generation: int,
    pools: Mapping[int, Sequence[Member]],
    cfg: EvolutionConfig,
    children: Mapping[str, int],
) -> list[Plan]:
    """Every slot of `generation` (>= 1), elites first, from the pools of the one before."""
    plans: list[Plan] = []
    for island, size in enumerate(island_sizes(cfg.population, cfg.islands)):
        pool = list(pools.get(island, ()))
        if not pool:
            continue
        best = [m for m in distinct_trees(ranked(pool)) if m.fit > -math.inf][: cfg.elite]
        for k, m in enumerate(best):
            eid = slot_id(evolution, generation, island, "e", k)
            plans.append(Plan(eid, generation, island, ELITE, (m,)))
        passing = distinct_trees(m for m in pool if m.fit > -math.inf)
        for k in range(size - cfg.elite):
            cid = slot_id(evolution, generation, island, "c", k)
            # Seeded by the slot, not the evolution's id: one seed, one search.
            rng = child_rng(seed, cid.removeprefix(f"{evolution}-"))
            if len(passing) >= 2 and rng.random() < cfg.crossover_rate:
                first = select(passing, cfg, rng, children)
                others = [m for m in passing if m.tree != first.tree]
                second = select(others, cfg, rng, children)
                plans.append(Plan(cid, generation, island, CROSSOVER, (first, second)))
            else:
                parent = select(pool, cfg, rng, children)
                plans.append(Plan(cid, generation, island, MUTATE, (parent,)))
    return plans


def pools_after(
    generation: int,
    members: Sequence[Member],
    cfg: EvolutionConfig,
    previous: Mapping[int, Sequence[Member]] | None = None,
) -> dict[int, list[Member]]:
    """The selection pool of each island for the generation after `generation`: its members
    of that generation (the seed is everyone's), plus migrants from the island before it when
    `generation` is a migration generation. An island where nothing passed keeps its
    `previous` pool, so one bad generation does not make it breed from failures."""
    # In id order, not the order results came in: the plans drawn from a pool are the same
    # whatever the timing (a resume, another executor).
    of_gen = sorted((m for m in members if m.generation == generation), key=lambda m: m.id)
    pools: dict[int, list[Member]] = {i: [] for i in range(cfg.islands)}
    for m in of_gen:
        if m.operator == SEED:
            for i in pools:
                pools[i].append(m)
        elif m.island in pools:
            pools[m.island].append(m)
    if previous is not None:
        for i, pool in pools.items():
            if not any(m.fit > -math.inf for m in pool) and previous.get(i):
                pools[i] = list(previous[i])
    migrate = (
        cfg.islands > 1
        and cfg.migration_count > 0
        and generation > 0
        and generation % cfg.migration_every == 0
    )
    if migrate:
        moving = {
            i: [m for m in ranked(pool) if m.fit > -math.inf][: cfg.migration_count]
            for i, pool in pools.items()
        }
        for i in pools:
            source = (i - 1) % cfg.islands
            have = {m.tree for m in pools[i]}
            pools[i] += [m for m in moving[source] if m.tree not in have]
    return pools


def best_and_median(members: Iterable[Member]) -> tuple[float | None, float | None]:
    scores = [m.fit for m in members if m.fit > -math.inf]
    if not scores:
        return None, None
    return max(scores), statistics.median(scores)


# --- what the journal says ----------------------------------------------------------------------

EVOLUTION_STARTED = "evolution_started"
GENERATION_STARTED = "generation_started"
CANDIDATE_EVALUATED = "candidate_evaluated"
CANDIDATE_CARRIED = "candidate_carried"
CHILD_DISCARDED = "child_discarded"
EVOLUTION_JUDGED = "evolution_judged"  # the best against the good commit, before any merge
GENERATION_FINISHED = "generation_finished"
EVOLUTION_FINISHED = "evolution_finished"


@dataclass
class History:
    """One evolution as its journalled events tell it."""

    evolution: str
    seed: int
    base: str
    started: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict)
    discarded: dict[str, str] = field(default_factory=dict)  # id -> why
    generations_started: set[int] = field(default_factory=set)
    generations_finished: dict[int, dict[str, Any]] = field(default_factory=dict)
    judged: dict[str, Any] | None = None
    merged: dict[str, Any] | None = None  # the `merged` event of its winner
    finished: dict[str, Any] | None = None

    @property
    def evaluations(self) -> int:
        return sum(1 for m in self.members.values() if m.operator != ELITE)

    @property
    def failed(self) -> int:
        return sum(1 for m in self.members.values() if m.operator != ELITE and not m.passed)

    @property
    def last_finished(self) -> int:
        return max(self.generations_finished, default=-1)

    def done(self, slot: str) -> bool:
        return slot in self.members or slot in self.discarded

    def evaluated_trees(self) -> dict[str, Member]:
        out: dict[str, Member] = {}
        for m in self.members.values():
            if m.operator != ELITE:
                out.setdefault(m.tree, m)
        return out

    def best(self) -> Member | None:
        evaluated = [m for m in self.members.values() if m.fit > -math.inf]
        return ranked(evaluated)[0] if evaluated else None

    def of_generation(self, generation: int) -> list[Member]:
        return [m for m in self.members.values() if m.generation == generation]

    def absorb(self, e: Mapping[str, Any]) -> None:
        """Take one journalled event of this evolution into account."""
        kind = e.get("event")
        try:
            if kind in (CANDIDATE_EVALUATED, CANDIDATE_CARRIED):
                m = member_from_event(e)
                self.members.setdefault(m.id, m)  # the first record of an id is the one that counts
            elif kind == CHILD_DISCARDED:
                self.discarded.setdefault(str(e["id"]), str(e.get("reason") or ""))
            elif kind == GENERATION_STARTED:
                self.generations_started.add(_count(e["generation"]))
            elif kind == GENERATION_FINISHED:
                self.generations_finished[_count(e["generation"])] = dict(e)
            elif kind == EVOLUTION_JUDGED:
                self.judged = dict(e)
            elif kind == "merged":
                self.merged = dict(e)
            elif kind == EVOLUTION_FINISHED:
                self.finished = dict(e)
        except (KeyError, TypeError, ValueError):
            pass  # a record metasup did not write; the chain check reports it

    @property
    def elapsed(self) -> float:
        """Seconds spent searching, over every run that worked on it (the wall budget)."""
        last = self.generations_finished.get(self.last_finished, {})
        value = last.get("elapsed_s")
        return float(value) if isinstance(value, int | float) else 0.0


def _count(value: Any) -> int:
    """A generation or island number as metasup writes it; anything else is not ours."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def member_from_event(e: Mapping[str, Any]) -> Member:
    score = e.get("score")
    return Member(
        id=str(e["id"]),
        commit=str(e["commit"]),
        tree=str(e.get("tree") or ""),
        generation=_count(e["generation"]),
        island=_count(e["island"]),
        operator=str(e["operator"]),
        parents=tuple(str(p) for p in e.get("parents") or ()),
        score=float(score)
        if isinstance(score, int | float) and not isinstance(score, bool)
        else None,
        passed=bool(e.get("passed")),
        carries=str(e["carries"]) if e.get("carries") is not None else None,
    )


def histories(events: Iterable[Mapping[str, Any]]) -> dict[str, History]:
    """Every evolution in the journal, by id, in the order they started. Events of an
    evolution that has no `evolution_started` are ignored."""
    out: dict[str, History] = {}
    for e in events:
        evo = e.get("evolution")
        if not isinstance(evo, str):
            continue
        if e.get("event") == EVOLUTION_STARTED:
            seed = e.get("seed")
            seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
            out[evo] = History(evo, seed, str(e.get("base") or ""), dict(e))
        elif evo in out:
            out[evo].absorb(e)
    return out


def within_budget(
    cfg: EvolutionConfig, evaluations: int, elapsed: float, generation: int
) -> str | None:
    """Why no further generation starts (None: go on). `generation` is the one about to."""
    if cfg.generations is not None and generation > cfg.generations:
        return f"{cfg.generations} generations done"
    if cfg.budget_evaluations is not None and evaluations >= cfg.budget_evaluations:
        return f"budget of {cfg.budget_evaluations} evaluations spent"
    if cfg.budget_wall is not None and elapsed >= cfg.budget_wall:
        return f"wall budget of {cfg.budget_wall:g}s spent"
    return None


def trigger_due(
    cfg: EvolutionConfig,
    since_last_round: float,
    gain_since_last_round: float | None,
) -> bool:
    """Continuous mode: a round is due every `trigger.every`; with `min_gain` set, only when
    the good commit's fitness gained less than that since the last round (the agent stalled;
    one that improves on its own is left alone). Gain unknown: due."""
    if since_last_round < cfg.trigger_every:
        return False
    if cfg.trigger_min_gain is None or gain_since_last_round is None:
        return True
    return gain_since_last_round < cfg.trigger_min_gain


def figures(h: History, *, running: bool) -> dict[str, Any]:
    """The status document's `evolution` object."""
    best = h.best()
    seed = h.members.get(seed_id(h.evolution))
    finished = h.finished or {}
    baseline = finished.get("baseline_score", seed.score if seed else None)
    return {
        "evolution": h.evolution,
        "generation": max(h.generations_started, default=0),
        "evaluated": h.evaluations,
        "failed": h.failed,
        "best_score": best.score if best else None,
        "baseline_score": baseline if isinstance(baseline, int | float) else None,
        "running": running,
    }
