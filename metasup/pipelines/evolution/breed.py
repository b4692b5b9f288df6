"""Making the commits of a generation: the seed, an elite carried over, a child by crossover
(a three-way merge) or by mutation (the `mutator` command, jailed, in a pooled worktree holding
the parent). What a mutator changed is checked like a proposal: protected paths, sizes, modes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from metasup.decisions.evolution import CROSSOVER, ELITE, MUTATE, SEED, Member, Plan
from metasup.effects.git import candidates, population
from metasup.effects.git.population import Lineage, Unrepresentable
from metasup.effects.process.spawn import run_command
from metasup.effects.records.journal import write_json_atomic
from metasup.pipelines import proposals
from metasup.pipelines.experiments import Experimenter


@dataclass(frozen=True)
class Child:
    commit: str | None  # None: no child; `why` says why
    why: str = ""
    code: str = ""  # conflict | mutator | rejected | no_change | cancelled
    held: bool = False  # the slot's worktree holds this commit: evaluate it there


def seed_commit(exp: Experimenter, base: str) -> str:
    """Generation 0: the good commit's tree, as a candidate with the evolution's trailers."""
    with exp.git_lock:
        tree = population.tree_of(exp.repo, base)
        text = population.message("metasup: evolve seed", Lineage(0, 0, SEED, (base,)))
        return population.make_commit(exp.repo, tree, [base], text)


def elite_commit(exp: Experimenter, plan: Plan) -> str:
    """An elite carried into the next generation: its tree, unchanged, as a new member."""
    (kept,) = plan.parents
    lineage = Lineage(plan.generation, plan.island, ELITE, (kept.commit,))
    text = population.message(f"metasup: evolve elite {plan.id}", lineage)
    with exp.git_lock:
        return population.make_commit(exp.repo, kept.tree, [kept.commit], text)


def crossover(exp: Experimenter, plan: Plan) -> Child:
    first, second = plan.parents
    lineage = Lineage(plan.generation, plan.island, CROSSOVER, (first.commit, second.commit))
    with exp.git_lock:
        tree = population.merged_tree(exp.repo, first.commit, second.commit)
        if isinstance(tree, list):
            return Child(None, "conflict in " + ", ".join(tree[:5]), "conflict")
        text = population.message(f"metasup: evolve crossover {plan.id}", lineage)
        return Child(population.make_commit(exp.repo, tree, [first.commit, second.commit], text))


def mutate(
    exp: Experimenter,
    plan: Plan,
    slot: int,
    base: str,
    inspirations: list[Member],
    scratch: Path,
) -> Child:
    """Run the mutator on the parent; the child is what it edited, or the proposal it printed
    as its last line. The mutator's own files (and the evaluator's) are the good commit's."""
    assert exp.config.evolution is not None
    (parent,) = plan.parents
    here = candidates.worktree_at(
        exp.repo, exp.slot("cand", slot), exp.pool, parent.commit, exp.git_lock
    )
    exp.restore_evaluator(here, base, parent.commit)
    scratch.mkdir(parents=True, exist_ok=True)
    inspiration_file = scratch / f"inspirations-{plan.id}.json"
    write_json_atomic(
        inspiration_file,
        [{"commit": m.commit, "score": m.score, "id": m.id} for m in inspirations],
        sync=False,
    )
    env = {
        **exp._env(here),
        "METASUP_PARENT": parent.commit,
        "METASUP_PARENT_SCORE": "" if parent.score is None else repr(parent.score),
        "METASUP_GENERATION": str(plan.generation),
        "METASUP_ISLAND": str(plan.island),
        "METASUP_INSPIRATIONS": str(inspiration_file),
        "METASUP_CHILD": plan.id,
    }
    done = run_command(
        exp.config.evolution.mutator,
        cwd=here,
        env=env,
        timeout=exp.ex.timeout,
        reaper=exp.reaper,
        jail=exp._jailed(here),
        cancel=exp.cancel,
    )
    inspiration_file.unlink(missing_ok=True)
    if done.cancelled:
        return Child(None, "cancelled", "cancelled")
    if done.timed_out:
        return Child(None, f"the mutator timed out after {exp.ex.timeout:g}s", "mutator")
    if done.code != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return Child(None, f"the mutator exited {done.code}: {tail}", "mutator")
    printed = printed_proposal(done.stdout)
    if printed is not None:
        # The proposal applies to the parent, not to what was edited.
        here = candidates.worktree_at(
            exp.repo, exp.slot("cand", slot), exp.pool, parent.commit, exp.git_lock
        )
        proposal, errors = proposals.validate(printed, exp.policy, here)
        reason = proposal.reason if proposal is not None else ""
    else:
        try:
            changes = population.worktree_changes(here, parent.commit)
        except Unrepresentable as e:
            return Child(None, f"the mutator left {e}", "rejected")
        if not changes:
            return Child(None, "the mutator changed nothing", "no_change")
        raw = json.dumps({"reason": "mutator edits", "changes": changes}).encode()
        proposal, errors = proposals.parse(raw, exp.policy)
        reason = ""
    if proposal is None or errors:
        first = errors[0] if errors else None
        why = f"{first.code}: {first.message}" if first else "not a proposal"
        return Child(None, why, "rejected")
    edits = [(ch.path, None if ch.delete else ch.data, ch.mode) for ch in proposal.changes]
    lineage = Lineage(plan.generation, plan.island, MUTATE, (parent.commit,))
    text = population.message(f"metasup: evolve mutate {plan.id}", lineage, reason)
    with exp.git_lock:
        commit = candidates.candidate_commit(exp.repo, parent.commit, edits, text)
    # The worktree is the parent plus these edits (the printed ones not yet written): make it
    # the child's by writing the changed paths only, so it is judged here without a full move.
    candidates.hold(here, commit, [path for path, _, _ in edits])
    return Child(commit, held=True)


def printed_proposal(stdout: str) -> bytes | None:
    """The last non-empty line, when it is a JSON object with `changes`: a printed proposal.
    Anything else is the mutator talking; its edits are in the worktree."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()
    if not last.startswith("{"):
        return None
    try:
        doc = json.loads(last)
    except ValueError:
        return None
    return last.encode() if isinstance(doc, dict) and "changes" in doc else None


def objective_score(runs: Sequence[Mapping[str, float]], objective: str) -> float | None:
    values = [r[objective] for r in runs if objective in r]
    return sum(values) / len(values) if values and len(values) == len(runs) else None
