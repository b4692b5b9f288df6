"""Evolution's pure decisions: slots, selection, pools, migration, the journal's story."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.decisions import evolution as evo
from metasup.decisions.evolution import CROSSOVER, ELITE, MUTATE, SEED, Member
from metasup.facts.settings import EvolutionConfig

CFG = EvolutionConfig(mutator=("m",), population=8, islands=2, elite=1, crossover_rate=0.5)


def member(
    i: int,
    score: float | None,
    *,
    gen: int = 1,
    island: int = 0,
    op: str = MUTATE,
    passed: bool | None = None,
) -> Member:
    return Member(
        id=f"e-g{gen}-i{island}-c{i}",
        commit=f"{i:040x}",
        tree=f"t{i}",
        generation=gen,
        island=island,
        operator=op,
        parents=("p",),
        score=score,
        passed=score is not None if passed is None else passed,
    )


def test_island_sizes_share_the_population_and_the_first_islands_take_the_rest() -> None:
    assert evo.island_sizes(8, 2) == [4, 4]
    assert evo.island_sizes(7, 3) == [3, 2, 2]
    for pop in range(1, 40):
        for islands in range(1, pop + 1):
            sizes = evo.island_sizes(pop, islands)
            assert sum(sizes) == pop and max(sizes) - min(sizes) <= 1


def test_ranked_puts_failures_last_and_breaks_ties_by_age() -> None:
    old = member(1, 5.0, gen=1)
    young = member(2, 5.0, gen=3)
    failed = member(3, 9.0, passed=False)
    none = member(4, None)
    assert evo.ranked([none, failed, young, old, member(5, 7.0)])[:3] == [
        member(5, 7.0),
        old,
        young,
    ]
    assert failed.fit == -math.inf and none.fit == -math.inf


def test_a_tournament_of_the_whole_pool_size_mostly_finds_the_best() -> None:
    pool = [member(i, float(i)) for i in range(10)]
    rng = random.Random(1)
    wins = [evo.tournament(pool, 3, rng).score for _ in range(300)]
    # The winner of 3 draws is the best of them: never below what a single draw averages.
    assert sum(w for w in wins if w is not None) / len(wins) > 5.5
    assert evo.tournament(pool, 50, random.Random(2)).score == 9.0


def test_weights_favour_higher_scores_and_damp_parents_with_many_children() -> None:
    low, high = member(1, 1.0), member(2, 2.0)
    w = evo.weights([low, high], {})
    assert w[1] > w[0] > 0
    damped = evo.weights([low, high], {high.commit: 9})
    assert damped[1] < w[1]
    assert evo.weights([member(3, None), member(4, None)], {}) == [1.0, 1.0]
    assert evo.weights([member(3, None), high], {})[0] == 0.0


def test_weighted_selection_never_picks_a_failure_while_one_passed() -> None:
    pool = [member(1, None), member(2, 3.0), member(3, 1.0, passed=False)]
    cfg = replace(CFG, selection="weighted")
    rng = random.Random(3)
    assert {evo.select(pool, cfg, rng, {}).id for _ in range(200)} == {pool[1].id}


def test_a_generation_is_elites_first_then_children_with_stable_ids() -> None:
    seed = member(0, 1.0, gen=0, op=SEED)
    pools = evo.pools_after(0, [seed], CFG)
    plans = evo.plan_generation("e", 42, 1, pools, CFG, {})
    assert [p.id for p in plans if p.operator == ELITE] == ["e-g1-i0-e0", "e-g1-i1-e0"]
    children = [p for p in plans if p.operator != ELITE]
    assert len(children) == CFG.population - CFG.islands * CFG.elite
    assert len({p.id for p in plans}) == len(plans)
    # Only one distinct passing parent: no crossover is possible.
    assert {p.operator for p in children} == {MUTATE}
    again = evo.plan_generation("e", 42, 1, pools, CFG, {})
    assert again == plans


def test_crossover_takes_two_parents_of_different_trees_and_follows_the_rate() -> None:
    pool = [member(i, float(i), gen=1) for i in range(6)]
    cfg = replace(CFG, population=200, islands=1, crossover_rate=0.3)
    plans = evo.plan_generation("e", 7, 2, {0: pool}, cfg, {})
    crosses = [p for p in plans if p.operator == CROSSOVER]
    assert 0.15 < len(crosses) / len(plans) < 0.45
    assert all(p.parents[0].tree != p.parents[1].tree for p in crosses)
    none = evo.plan_generation("e", 7, 2, {0: pool}, replace(cfg, crossover_rate=0.0), {})
    assert not [p for p in none if p.operator == CROSSOVER]


def test_elites_are_the_best_distinct_trees_that_passed() -> None:
    a, twin = member(1, 9.0), replace(member(2, 9.0), tree="t1")
    pool = [member(3, None), a, twin, member(4, 5.0)]
    plans = evo.plan_generation("e", 1, 2, {0: pool}, replace(CFG, islands=1, elite=2), {})
    elites = [p.parents[0] for p in plans if p.operator == ELITE]
    assert [m.id for m in elites] == [a.id, pool[3].id]


def test_migration_moves_each_islands_best_to_the_next_one_in_a_ring() -> None:
    cfg = replace(CFG, islands=3, population=9, migration_every=2, migration_count=1)
    members = [member(i, float(i), gen=2, island=i % 3) for i in range(6)]
    pools = evo.pools_after(2, members, cfg)
    best_of = {i: max((m for m in members if m.island == i), key=lambda m: m.fit) for i in range(3)}
    for i in range(3):
        assert best_of[(i - 1) % 3] in pools[i]
    quiet = evo.pools_after(1, [replace(m, generation=1) for m in members], cfg)
    assert all(len(p) == 2 for p in quiet.values())


def test_an_island_where_nothing_passed_keeps_its_previous_pool() -> None:
    before = {0: [member(1, 3.0, gen=1)], 1: [member(2, 4.0, gen=1, island=1)]}
    members = [member(3, None, gen=2), member(4, 5.0, gen=2, island=1)]
    pools = evo.pools_after(2, members, replace(CFG, migration_every=100), before)
    assert pools[0] == before[0]
    assert [m.id for m in pools[1]] == [members[1].id]


def test_children_counts_count_mutations_and_crossovers_not_elites() -> None:
    ms = [
        replace(member(1, 1.0), parents=("a",)),
        replace(member(2, 1.0, op=CROSSOVER), parents=("a", "b")),
        replace(member(3, 1.0, op=ELITE), parents=("a",)),
    ]
    assert evo.children_counts(ms) == {"a": 2, "b": 1}


def test_budgets_and_generations_stop_the_search() -> None:
    cfg = replace(CFG, generations=3, budget_evaluations=10, budget_wall=60.0)
    assert evo.within_budget(cfg, 0, 0.0, 3) is None
    assert "3 generations" in (evo.within_budget(cfg, 0, 0.0, 4) or "")
    assert "evaluations" in (evo.within_budget(cfg, 10, 0.0, 2) or "")
    assert "wall" in (evo.within_budget(cfg, 0, 60.0, 2) or "")
    assert evo.within_budget(replace(cfg, generations=None), 0, 0.0, 999) is None


def test_continuous_rounds_are_due_each_interval_unless_the_agent_gained_enough() -> None:
    cfg = replace(CFG, trigger_every=60.0, trigger_min_gain=0.05)
    assert not evo.trigger_due(cfg, 59.0, None)
    assert evo.trigger_due(cfg, 60.0, None)
    assert evo.trigger_due(cfg, 60.0, 0.01)
    assert not evo.trigger_due(cfg, 60.0, 0.2)
    assert evo.trigger_due(replace(cfg, trigger_min_gain=None), 61.0, 0.9)


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "evolution": "e", **fields}


def _evaluated(i: int, score: float | None, **extra: Any) -> dict[str, Any]:
    return _event(
        evo.CANDIDATE_EVALUATED,
        id=f"c{i}",
        commit=f"{i:040x}",
        tree=f"t{i}",
        parents=[],
        operator=MUTATE,
        generation=1,
        island=0,
        score=score,
        passed=score is not None,
        **extra,
    )


def test_the_journal_tells_each_evolution_and_which_is_resumable() -> None:
    story = [
        {"event": "launch"},
        _event(evo.EVOLUTION_STARTED, seed=5, base="b"),
        _event(evo.GENERATION_STARTED, generation=0),
        _evaluated(1, 2.0),
        _evaluated(1, 9.0),  # a second record of an id does not count
        _event(evo.CHILD_DISCARDED, id="c2", reason="conflict"),
        _event(evo.GENERATION_FINISHED, generation=0, elapsed_s=3.5),
        {"event": evo.CANDIDATE_EVALUATED, "evolution": "ghost", "id": "x"},
    ]
    found = evo.histories(story)
    assert list(found) == ["e"]
    h = found["e"]
    assert h.seed == 5 and h.base == "b"
    assert h.members["c1"].score == 2.0 and h.evaluations == 1
    assert h.done("c2") and not h.done("c3")
    assert h.last_finished == 0 and h.elapsed == 3.5 and h.finished is None
    found = evo.histories([*story, _event(evo.EVOLUTION_FINISHED)])
    assert found["e"].finished is not None


_EVENT_KINDS = [
    evo.EVOLUTION_STARTED,
    evo.GENERATION_STARTED,
    evo.CANDIDATE_EVALUATED,
    evo.CANDIDATE_CARRIED,
    evo.CHILD_DISCARDED,
    evo.GENERATION_FINISHED,
    evo.EVOLUTION_JUDGED,
    evo.EVOLUTION_FINISHED,
    "merged",
]
_junk = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(), st.booleans())


@settings(max_examples=300)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"event": st.sampled_from(_EVENT_KINDS), "evolution": st.sampled_from(["e", "f", 3])},
            optional={
                k: _junk
                for k in ("id", "commit", "generation", "island", "operator", "score", "seed")
            },
        ),
        max_size=30,
    )
)
def test_any_journal_is_read_without_an_error(records: list[dict[str, Any]]) -> None:
    """The journal may hold records metasup did not write (the chain check reports them):
    reading never raises, and counts stay consistent."""
    for h in evo.histories(records).values():
        assert h.evaluations >= h.failed >= 0
        assert h.last_finished >= -1
        assert set(h.members) <= {str(r.get("id")) for r in records}


@settings(max_examples=100)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=3),
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=0, max_value=2**62),
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=12),
)
def test_a_planned_generation_fills_each_island(
    population: int, islands: int, elite: int, rate: float, seed: int, scores: list[float | None]
) -> None:
    islands = min(islands, population)
    elite = min(elite, population // islands - 1) if population // islands > 1 else 0
    cfg = replace(CFG, population=population, islands=islands, elite=elite, crossover_rate=rate)
    pool = [member(i, s, island=i % islands) for i, s in enumerate(scores)]
    pools = evo.pools_after(1, pool, cfg)
    plans = evo.plan_generation("e", seed, 2, pools, cfg, evo.children_counts(pool))
    assert len({p.id for p in plans}) == len(plans)
    for island, size in enumerate(evo.island_sizes(population, islands)):
        mine = [p for p in plans if p.island == island]
        if not pools[island]:
            assert not mine
            continue
        assert len([p for p in mine if p.operator != ELITE]) == size - elite
        assert len([p for p in mine if p.operator == ELITE]) <= elite
        for p in mine:
            assert all(parent in pools[island] for parent in p.parents)
            assert len(p.parents) == (2 if p.operator == CROSSOVER else 1)
