"""Experiment verdicts, pure: metrics and criteria in, pass or fail (with reasons) and a winner out.

A fitness run reports one JSON object of numbers, e.g. `{"score": 0.91, "success_rate": 0.97,
"error_rate": 0.01, "response_time_ms": 120}`. A candidate is judged on the mean of its runs:

1. failure criteria: breaching any one fails it;
2. success criteria: each one set must hold; `min_improvement` is the relative gain of the mean
   score over the baseline's, measured in the same experiment with the same repeats;
3. noise guard: with 3 or more repeats, the gain must also exceed the spread (max - min) of the
   baseline's own scores, or it is indistinguishable from noise.

Among the candidates that pass, the one with the highest mean score wins (ties: the first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from metasup.facts.settings import Criteria

Metrics = Mapping[str, float]

NOISE_GUARD_REPEATS = 3
NO_CRITERIA = Criteria()


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when it passed
    score: float | None  # the candidate's mean score
    baseline_score: float | None
    improvement: float | None  # relative gain over the baseline's mean score
    metrics: Mapping[str, float] = field(default_factory=dict)  # the candidate's means


def mean_metrics(runs: Sequence[Metrics]) -> dict[str, float]:
    """The mean of each metric over the runs that report it."""
    keys = sorted({k for run in runs for k in run})
    out = {}
    for key in keys:
        values = [float(run[key]) for run in runs if key in run]
        out[key] = sum(values) / len(values)
    return out


def improvement(score: float, baseline: float) -> float:
    """Relative gain; against a baseline of 0 the absolute difference is all there is."""
    if baseline == 0:
        return score
    return (score - baseline) / abs(baseline)


def judge(
    candidate: Sequence[Metrics],
    baseline: Sequence[Metrics],
    success: Criteria = NO_CRITERIA,
    failure: Criteria = NO_CRITERIA,
) -> Verdict:
    """The verdict on one candidate's fitness runs, against the baseline's runs."""
    if not candidate:
        return Verdict(False, ("no fitness runs for the candidate",), None, None, None)
    means = mean_metrics(candidate)
    base = mean_metrics(baseline) if baseline else {}
    score = means.get("score")
    base_score = base.get("score")
    gain = improvement(score, base_score) if score is not None and base_score is not None else None
    reasons: list[str] = []

    def metric(name: str, rule: str) -> float | None:
        if name not in means:
            reasons.append(f"{rule} needs {name}, which the fitness command did not report")
            return None
        return means[name]

    def bounds(c: Criteria, kind: str) -> None:
        """The three bounds a criteria block can set; `kind` names the block in reasons."""
        label = "failure " if kind == "failure_criteria" else ""
        if c.max_error_rate is not None:
            v = metric("error_rate", f"{kind}.max_error_rate")
            if v is not None and v > c.max_error_rate:
                reasons.append(f"error_rate {v:g} > {label}max_error_rate {c.max_error_rate:g}")
        if c.min_success_rate is not None:
            v = metric("success_rate", f"{kind}.min_success_rate")
            if v is not None and v < c.min_success_rate:
                reasons.append(
                    f"success_rate {v:g} < {label}min_success_rate {c.min_success_rate:g}"
                )
        if c.max_response_time is not None:
            v = metric("response_time_ms", f"{kind}.max_response_time")
            if v is not None and v / 1000 > c.max_response_time:
                reasons.append(
                    f"response_time {v:g} ms > {label}max_response_time "
                    f"{c.max_response_time * 1000:g} ms"
                )

    bounds(failure, "failure_criteria")  # 1. breaching any one fails
    bounds(success, "success_criteria")  # 2. each one set must hold, and the improvement
    if success.min_improvement is not None:
        if score is None:
            reasons.append("min_improvement needs score, which the fitness command did not report")
        elif base_score is None:
            reasons.append("min_improvement needs a baseline score, and there is none")
        elif gain is not None and gain < success.min_improvement:
            reasons.append(
                f"improvement {gain:+.1%} over the baseline < min_improvement "
                f"{success.min_improvement:+.1%}"
            )
    # 3. noise guard
    if len(baseline) >= NOISE_GUARD_REPEATS and score is not None and base_score is not None:
        scores = [float(run["score"]) for run in baseline if "score" in run]
        spread = max(scores) - min(scores) if scores else 0.0
        if score - base_score <= spread:
            reasons.append(
                f"gain {score - base_score:+g} does not exceed the baseline's own spread "
                f"{spread:g} over {len(scores)} runs"
            )
    return Verdict(not reasons, tuple(reasons), score, base_score, gain, means)


def winner(verdicts: Sequence[Verdict]) -> int | None:
    """The index of the passing candidate with the highest mean score (the first on a tie)."""
    best: int | None = None
    for i, v in enumerate(verdicts):
        if not v.passed:
            continue
        if best is None:
            best = i
            continue
        current = verdicts[best].score
        if v.score is not None and (current is None or v.score > current):
            best = i
    return best
