"""Experiments: try proposals on their own branch and worktree, judge them, merge the best.

Per candidate, `max_concurrent` at a time:
1. validate the proposal against the good commit's tree;
2. build the candidate commit in memory from the good commit; branch `metasup/exp/<id>`;
3. move a pooled worktree to it (only the files that differ are written), and put back the
   evaluator's files as the good commit has them: protected paths and every path the check and
   fitness commands name. A candidate that edits its own tests or scorer is judged by the good
   ones;
4. run the checks, the agent for `shadow_runtime` (dying earlier fails), and the fitness command
   `repeats` times, interleaved with the same number of baseline runs on the good commit;
5. judge (verdict.py). The best passing candidate is merged; the others are archived as
   refs/metasup/archive/exp-<id>-<outcome> (ids begin with their UTC time) and their branches
   deleted.

Every command has a hard timeout; a candidate whose step times out has failed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasup.decisions.verdict import Metrics, Verdict, judge, winner
from metasup.effects.git import candidates
from metasup.effects.git.repo import EXP_BRANCH_PREFIX, GitRepo, MergeConflict
from metasup.effects.process.jail import Jail, Prepared
from metasup.effects.process.spawn import Completed, Reaper, run_command
from metasup.effects.process.view import make_view
from metasup.facts.errors import UserError
from metasup.facts.events import Emit, Event
from metasup.facts.faults import child_env
from metasup.facts.policy import Policy
from metasup.facts.settings import Config
from metasup.facts.units import ms_since
from metasup.pipelines import integrity, proposals
from metasup.pipelines.executors import executor_for
from metasup.pipelines.intake import new_id


@dataclass
class StepResult:
    name: str
    ok: bool
    detail: str
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Assessment:
    """What the evaluator found on one commit: the steps run, the fitness runs of the candidate
    and (when asked) of the baseline. Not ok when a step failed; the last step says why."""

    steps: list[StepResult] = field(default_factory=list)
    fitness: list[Metrics] = field(default_factory=list)
    baseline: list[Metrics] = field(default_factory=list)
    node: str | None = None  # where it ran (the executor says)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def failure(self) -> str | None:
        bad = next((s for s in self.steps if not s.ok), None)
        return None if bad is None else f"{bad.name}: {bad.detail}"

    @property
    def cancelled(self) -> bool:
        """Stopped by a cancel, not judged: the candidate has not been evaluated."""
        return any(s.detail == "cancelled" for s in self.steps if not s.ok)


@dataclass
class Candidate:
    id: str
    source: str
    raw: bytes
    proposal: proposals.Proposal | None = None
    commit: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    fitness: list[Metrics] = field(default_factory=list)
    baseline: list[Metrics] = field(default_factory=list)
    verdict: Verdict | None = None
    outcome: str = "pending"  # rejected | failed | passed | lost | merged
    archive: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def branch(self) -> str:
        return f"{EXP_BRANCH_PREFIX}{self.id}"

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    def failure(self) -> str | None:
        for step in self.steps:
            if not step.ok:
                return f"{step.name}: {step.detail}"
        if self.errors:
            return f"{self.errors[0]['code']}: {self.errors[0]['message']}"
        if self.verdict is not None and not self.verdict.passed:
            return "; ".join(self.verdict.reasons)
        return None

    def as_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "id": self.id,
            "source": self.source,
            "commit": self.commit,
            "outcome": self.outcome,
            "steps": [s.as_dict() for s in self.steps],
            "fitness": [dict(m) for m in self.fitness],
            "baseline": [dict(m) for m in self.baseline],
            "score": v.score if v else None,
            "baseline_score": v.baseline_score if v else None,
            "improvement": v.improvement if v else None,
            "reasons": list(v.reasons) if v else [],
            "errors": self.errors,
            "failure": self.failure(),
            "archive": self.archive,
        }


@dataclass
class Outcome:
    candidates: list[Candidate]
    base: str
    winner: Candidate | None
    merged: str | None  # the new head, when the winner was merged
    fast_forward: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "winner": self.winner.id if self.winner else None,
            "merged": self.merged,
            "fast_forward": self.fast_forward,
            "candidates": [c.as_dict() for c in self.candidates],
        }


class Experimenter:
    """Runs experiments for one repository. Thread-safe where it has to be: the git steps
    take a lock, the commands run in parallel."""

    def __init__(
        self,
        repo: GitRepo,
        config: Config,
        policy: Policy,
        state_root: Path,
        emit: Emit,
        reaper: Reaper,
    ) -> None:
        self.repo = repo
        self.config = config
        self.ex = config.experiments
        self.policy = policy
        self.pool = state_root / "worktrees"
        self.state_root = state_root
        self.emit = emit
        self.reaper = reaper
        self._git = threading.Lock()
        self.cancel = threading.Event()  # set: every command running is killed, none starts
        self.slot_prefix = ""  # another user of the same pool (evolution rounds) names its own
        self.strategy = "hybrid"  # what a shadow run is told; the supervisor keeps it current
        sandbox = config.sandbox
        self.jail = Jail(sandbox, reaper=reaper) if sandbox.applies("experiments") else None
        refusal = self.jail.refusal() if self.jail is not None else None
        if refusal is not None:
            raise UserError(refusal)
        self.executor = executor_for(self)

    def slot(self, kind: str, n: int) -> str:
        """The name of a pooled worktree: `cand-0` holds candidates, `base-0` the baseline."""
        return f"{self.slot_prefix}{kind}-{n}"

    @property
    def git_lock(self) -> threading.Lock:
        """Held around every git step: one Repository object is not safe across threads."""
        return self._git

    def _jailed(self, here: Path) -> Prepared | None:
        """The jail for one command in the worktree `here`: the candidate's checks, shadow run
        and fitness cannot write its git dir, the evaluator or anything outside `here`."""
        if self.jail is None:
            return None
        patterns = [p for p, _ in self.policy.patterns]
        return self.jail.prepare(
            make_view(here, protected_patterns=patterns, sandbox=self.config.sandbox)
        )

    # --- housekeeping --------------------------------------------------------------------------

    def clean_leftovers(self) -> list[str]:
        """Archive and delete the branches of experiments a crash interrupted."""
        archived = []
        for ref, commit in self.repo.experiment_branches():
            exp_id = ref.removeprefix(EXP_BRANCH_PREFIX)
            archive = self.repo.archive_commit(f"exp-{exp_id}-interrupted", commit)
            self.repo.delete_ref(ref)
            self.emit(Event.ARCHIVE, ref=archive, commit=commit, reason="interrupted experiment")
            archived.append(archive)
        return archived

    # --- the whole run -------------------------------------------------------------------------

    def run(
        self,
        sources: Sequence[tuple[str, bytes]],
        *,
        dry_run: bool = False,
        before_merge: Callable[[], None] | None = None,
    ) -> Outcome:
        """Try every proposal, merge the best that passes (unless `dry_run`)."""
        return self.conclude(self.evaluate(sources), dry_run=dry_run, before_merge=before_merge)

    def evaluate(self, sources: Sequence[tuple[str, bytes]]) -> Outcome:
        """Judge every candidate, `max_concurrent` at a time; merge nothing yet. Safe to run in
        a thread while the agent runs: it touches neither the working tree nor the branch."""
        base = self.repo.good() or self.repo.head()
        if base is None:
            raise proposals.ApplyError("the repository has no commit to experiment on")
        candidates = [Candidate(new_id(), source, raw) for source, raw in sources]
        free: list[int] = list(range(self.ex.max_concurrent))
        free_lock = threading.Lock()

        def one(c: Candidate) -> None:
            with free_lock:
                slot = free.pop()
            try:
                self._evaluate(c, base, slot)
            finally:
                with free_lock:
                    free.append(slot)

        with ThreadPoolExecutor(max_workers=self.ex.max_concurrent) as pool:
            list(pool.map(one, candidates))
        verdicts = [
            c.verdict or Verdict(False, ("not judged",), None, None, None) for c in candidates
        ]
        best = winner(verdicts)
        return Outcome(candidates, base, candidates[best] if best is not None else None, None)

    def conclude(
        self,
        outcome: Outcome,
        *,
        dry_run: bool = False,
        before_merge: Callable[[], None] | None = None,
        mark_good: bool = True,
    ) -> Outcome:
        """Merge the winner (unless `dry_run`), archive the rest, delete every branch.

        With `mark_good`, a fast-forwarded winner becomes the good commit (it passed an
        experiment). The supervisor passes False: its agent earns that by running min_runtime.

        `before_merge` runs just before the merge (a snapshot, with the agent stopped): the
        merge needs a working tree with nothing uncommitted.
        """
        best = outcome.winner
        if best is not None and not dry_run:
            if before_merge is not None:
                before_merge()
            outcome.merged, outcome.fast_forward = self._merge(best, outcome.base, mark_good)
        for c in outcome.candidates:
            self._finish(c, best, outcome.merged)
        return outcome

    # --- one candidate -------------------------------------------------------------------------

    def _evaluate(self, c: Candidate, base: str, slot: int) -> None:
        t0 = time.perf_counter()
        self.emit(Event.EXPERIMENT_STARTED, id=c.id, source=c.source, base=base)
        with self._git:  # judged against the base commit itself: no worktree to move there
            kind, sha = candidates.in_commit(self.repo, base)
            proposal, errors = proposals.validate(c.raw, self.policy, proposals.Looker(kind, sha))
        if proposal is None or errors:
            c.errors = [e.as_dict() for e in errors]
            c.outcome = "rejected"
            self._failed(c, t0)
            return
        c.proposal = proposal
        changes = [(ch.path, None if ch.delete else ch.data, ch.mode) for ch in proposal.changes]
        with self._git:
            c.commit = candidates.candidate_commit(
                self.repo, base, changes, f"metasup: experiment {c.id}\n\n{proposal.reason}\n"
            )
            self.repo.set_branch(c.branch, c.commit)
        found = self.executor.assess(
            c.commit, base, slot, {"METASUP_EXPERIMENT": c.id}, baseline=True
        )
        c.steps, c.fitness, c.baseline = found.steps, found.fitness, found.baseline
        if not found.ok:
            self._failed(c, t0)
            return
        if self.ex.fitness:
            c.verdict = judge(c.fitness, c.baseline, self.ex.success, self.ex.failure)
        else:
            c.verdict = Verdict(True, (), None, None, None)
        if c.verdict.passed:
            c.outcome = "passed"
            v = c.verdict
            self.emit(
                Event.EXPERIMENT_PASSED,
                id=c.id,
                commit=c.commit,
                score=v.score,
                baseline_score=v.baseline_score,
                improvement=v.improvement,
                duration_ms=ms_since(t0),
            )
        else:
            self._failed(c, t0)

    def assess(
        self,
        commit: str,
        base: str,
        slot: int,
        env_extra: dict[str, str],
        *,
        baseline: bool,
        repeats: int | None = None,
        held: bool = False,
    ) -> Assessment:
        """Check, shadow-run and score `commit` in the pooled worktree `slot`, cheapest stage
        first: a failing check costs no shadow run, a dying shadow no fitness run. With
        `baseline`, each fitness run of the candidate follows one of `base`, interleaved so
        both see the same machine state. The evaluator's files are the good commit's.

        `held`: the slot's worktree holds `commit` already (a mutator just made it there)."""
        found = Assessment()
        if held:
            here = self.pool / self.slot("cand", slot)
        else:
            here = candidates.worktree_at(
                self.repo, self.slot("cand", slot), self.pool, commit, self._git
            )
        # Judged only on its own tree: a slot that does not hold the candidate (a mutator's
        # edit not what was committed, anything else that wrote into the slot) fails it
        # loudly rather than passing another tree's verdict off as its own.
        wrong = candidates.not_held(here, commit, base)
        if wrong:
            said = f"the worktree does not hold {commit[:12]}: {', '.join(wrong[:5])}"
            found.steps.append(StepResult("worktree", False, said, 0.0))
            return found
        baseline_tree = (
            candidates.worktree_at(self.repo, self.slot("base", slot), self.pool, base, self._git)
            if self.ex.fitness and baseline
            else None
        )
        restored = self.restore_evaluator(here, base, commit)
        if restored:
            found.steps.append(
                StepResult("evaluator", True, f"judged by the good {', '.join(restored)}", 0.0)
            )
        env = {**self._env(here), **env_extra, "METASUP_COMMIT": commit}
        for argv in self.ex.checks:
            done = run_command(
                argv,
                cwd=here,
                env=env,
                timeout=self.ex.timeout,
                reaper=self.reaper,
                jail=self._jailed(here),
                cancel=self.cancel,
            )
            found.steps.append(_step("check " + " ".join(argv), done))
            if not done.ok:
                return found
        if self.ex.shadow_runtime > 0:
            shadow_env = {**env, **self.config.agent.env, **self._shadow_env(here)}
            shadow = run_command(
                self.config.agent.command,
                cwd=here,
                env=shadow_env,
                timeout=self.ex.shadow_runtime,
                reaper=self.reaper,
                jail=self._jailed(here),
                cancel=self.cancel,
            )
            # still running when its time was up: that is the pass
            alive = shadow.timed_out and not shadow.cancelled
            detail = (
                f"ran {self.ex.shadow_runtime:g}s"
                if alive
                else "cancelled"
                if shadow.cancelled
                else f"died after {shadow.duration:.2f}s (exit {shadow.code}): {_tail(shadow)}"
            )
            found.steps.append(StepResult("shadow", alive, detail, round(shadow.duration, 3)))
            if not alive:
                return found
        if self.ex.fitness:
            for _ in range(repeats or self.ex.repeats):
                if baseline_tree is not None:
                    base_run = self._fitness(baseline_tree, {**env, "METASUP_COMMIT": base})
                    if isinstance(base_run, dict):
                        found.baseline.append(base_run)
                cand_run = self._fitness(here, env)
                if not isinstance(cand_run, dict):
                    found.steps.append(StepResult("fitness", False, cand_run, 0.0))
                    return found
                found.fitness.append(cand_run)
        return found

    def _failed(self, c: Candidate, t0: float) -> None:
        if c.outcome == "pending":
            c.outcome = "failed"
        if c.verdict is None or c.verdict.passed:  # failed before (or outside) the verdict
            c.verdict = Verdict(False, (c.failure() or "failed",), None, None, None)
        reason = c.failure()
        self.emit(
            Event.EXPERIMENT_FAILED,
            id=c.id,
            commit=c.commit,
            outcome=c.outcome,
            reason=reason,
            improvement=c.verdict.improvement,
            duration_ms=ms_since(t0),
        )

    def _fitness(self, where: Path, env: dict[str, str]) -> dict[str, float] | str:
        assert self.ex.fitness is not None
        done = run_command(
            self.ex.fitness,
            cwd=where,
            env=env,
            timeout=self.ex.timeout,
            reaper=self.reaper,
            jail=self._jailed(where),
            cancel=self.cancel,
        )
        if done.cancelled:
            return "cancelled"
        if done.timed_out:
            return f"timed out after {self.ex.timeout:g}s"
        if done.code != 0:
            return f"exit {done.code}: {_tail(done)}"
        return parse_metrics(done.stdout)

    @staticmethod
    def _env(here: Path) -> dict[str, str]:
        env = child_env()
        env.update({"METASUP_WORKTREE": str(here), "PYTHONDONTWRITEBYTECODE": "1"})
        return env

    def _shadow_env(self, here: Path) -> dict[str, str]:
        """The agent's environment for a shadow run. Its inbox is a throwaway one in its own
        worktree: a shadow must not propose to the real supervisor."""
        inbox = here / ".metasup" / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        return {
            "METASUP_SHADOW": "1",
            "METASUP_RUN": "0",
            "METASUP_INBOX": str(inbox),
            "METASUP_RECOVERY": str(self.state_root / "recovery.json"),
            "METASUP_STRATEGY": self.strategy,
        }

    def evaluator_paths(self) -> list[str]:
        """Paths the check, fitness and mutator commands name: a candidate is judged (and
        mutated) by the good commit's, never by ones it edited."""
        commands = [*self.ex.checks, *([self.ex.fitness] if self.ex.fitness else [])]
        if self.config.evolution is not None:
            commands.append(self.config.evolution.mutator)
        named = []
        for argv in commands:
            for arg in argv[1:]:
                path = arg.removeprefix("./").rstrip("/")
                if path and not path.startswith(("-", "/")) and ".." not in path.split("/"):
                    named.append(path)
        return sorted(set(named))

    def restore_evaluator(self, here: Path, base: str, candidate: str) -> list[str]:
        named = self.evaluator_paths()

        def is_evaluator(path: str) -> bool:
            if self.policy.protecting_rule(path) is not None:
                return True
            return any(path == n or path.startswith(n + "/") for n in named)

        return candidates.restore_in_worktree(
            self.repo, here, base, candidate, is_evaluator, self._git
        )

    # --- merging and archiving -----------------------------------------------------------------

    def _merge(self, best: Candidate, base: str, mark_good: bool) -> tuple[str | None, bool]:
        assert best.commit is not None
        t0 = time.perf_counter()
        merged = self.merge_commit(
            best.id,
            best.commit,
            base,
            f"metasup: merge experiment {best.id}\n",
            mark_good=mark_good,
            why="passed an experiment",
        )
        if isinstance(merged, MergeConflict):
            best.outcome = "failed"
            best.steps.append(StepResult("merge", False, str(merged), ms_since(t0) / 1000))
            return None, False
        best.outcome = "merged"
        return merged

    def merge_commit(
        self,
        cid: str,
        commit: str,
        base: str,
        message: str,
        *,
        mark_good: bool,
        why: str,
        emit: Emit | None = None,
    ) -> tuple[str, bool] | MergeConflict:
        """Bring a judged commit onto the supervised branch (see GitRepo.merge), journalled;
        with `mark_good`, a fast-forward makes it the good commit (`why` says why). A conflict
        changes nothing, is journalled as the candidate failing, and is returned."""
        emit = emit or self.emit
        t0 = time.perf_counter()
        with self._git:
            try:
                head, fast = self.repo.merge(commit, base, message)
            except MergeConflict as e:
                emit(Event.EXPERIMENT_FAILED, id=cid, commit=commit, reason=str(e))
                return e
            if fast and mark_good:
                self.repo.set_good(head)
        emit(
            Event.MERGED,
            id=cid,
            commit=head,
            candidate=commit,
            fast_forward=fast,
            duration_ms=ms_since(t0),
        )
        if fast and mark_good:
            emit(Event.MARK_GOOD, commit=head, reason=why)
        return head, fast

    def _finish(self, c: Candidate, best: Candidate | None, merged: str | None) -> None:
        """Archive what is not merged; delete the branch either way."""
        if c.commit is None:
            return
        with self._git:
            if not (c is best and merged is not None):
                if c.outcome == "passed" and merged is not None:
                    c.outcome = "lost"  # passed, but another one was merged
                c.archive = self.repo.archive_commit(f"exp-{c.id}-{c.outcome}", c.commit)
                self.emit(
                    Event.ARCHIVE, ref=c.archive, commit=c.commit, reason=f"experiment {c.outcome}"
                )
            self.repo.delete_ref(c.branch)


def parse_metrics(stdout: str) -> dict[str, float] | str:
    """The last non-empty line of a fitness command's output: one JSON object of numbers."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return "the fitness command printed nothing"
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        return f"the last line is not JSON: {lines[-1][:200]!r}"
    if not isinstance(doc, dict) or not doc:
        return "the last line is not a JSON object of numbers"
    out = {}
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key!r} is not a number"
        if not math.isfinite(value):
            return f"{key!r} is {value}, not a finite number"
        out[str(key)] = float(value)
    return out


def _step(name: str, done: Completed) -> StepResult:
    if done.cancelled:
        detail = "cancelled"
    elif done.timed_out:
        detail = f"timed out after {done.duration:.1f}s (killed with its process group)"
    elif done.code == 0:
        detail = "ok"
    else:
        detail = f"exit {done.code}: {_tail(done)}"
    return StepResult(name, done.ok, detail, round(done.duration, 3))


def _tail(done: Completed, lines: int = 3) -> str:
    text = (done.stderr or done.stdout).strip().splitlines()
    return " | ".join(text[-lines:])


def snapshot_before_merge(
    repo: GitRepo, policy: Policy, emit: Emit, state: Path
) -> Callable[[], None]:
    """What runs just before an offline merge: the current work snapshotted, so the merge's
    checkout cannot lose it."""
    from metasup.effects.records.statefile import read_state

    run = int(read_state(state).get("run") or 0)

    def before_merge() -> None:
        snap = repo.snapshot(run, protect=lambda p: policy.protecting_rule(p) is not None)
        if snap.commit is not None:
            emit("snapshot", commit=snap.commit, run=run, files=snap.changed)

    return before_merge


def run_offline(
    repo: GitRepo, cfg: Config, policy: Policy, sources: list[tuple[str, bytes]], dry_run: bool
) -> Outcome:
    """`metasup experiment`, with no supervisor: under the repository's lock, journalled, and
    with the current work snapshotted before a merge's checkout could lose it."""
    from metasup.effects.process.spawn import become_subreaper
    from metasup.effects.records.journal import StateDir, locked_journal

    dirs = StateDir.for_git_dir(repo.git_dir)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        become_subreaper()  # so what an evaluator leaves behind is found and stopped
        repo.clear_stale_locks()  # a run killed mid-write left them; we hold the repo's lock
        runner = Experimenter(repo, cfg, policy, dirs.root, journal.append, Reaper())
        # As for `metasup run`: the evaluator (protected) must be as approved; the first use
        # approves what it finds, so a good commit set by a merge here reads as approved.
        # After the config's own errors (the jail, the executor): those change nothing.
        integrity.check_protected(
            repo, dirs, lambda p: policy.protecting_rule(p) is not None, cfg.path, journal.append
        )
        runner.clean_leftovers()
        before_merge = snapshot_before_merge(repo, policy, journal.append, dirs.state)
        return runner.run(sources, dry_run=dry_run, before_merge=before_merge)
