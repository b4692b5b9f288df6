"""The serving decisions, pure: which replica takes a request, which arm a client is on, which
requests are mirrored, how many replicas to run, and where a canary goes next.

The front door (a helper process) asks and acts; nothing here touches a socket or a process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from metasup.facts.settings import CanaryConfig, ServeConfig

# --- routing ---------------------------------------------------------------------------------


def least_inflight(inflight: Sequence[int], turn: int) -> int | None:
    """The replica with the fewest requests in flight; ties go round, from `turn` on (so equal
    replicas share the load rather than the first taking it all). None: no replica."""
    if not inflight:
        return None
    low = min(inflight)
    n = len(inflight)
    for k in range(n):
        i = (turn + k) % n
        if inflight[i] == low:
            return i
    return None  # unreachable: `low` is one of them


_BUCKETS = 10_000


def stick(key: str, share: float) -> bool:
    """Whether a client (its session header or cookie) is on the candidate at `share`. The same
    key stays on the same side while the share is unchanged, and a key on the candidate stays
    there as the share grows: its place in [0, 1) is fixed, the share only moves the line."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    place = int.from_bytes(digest, "big") % _BUCKETS
    return place < round(share * _BUCKETS)


def picked(n: int, share: float) -> bool:
    """Whether request number `n` (from 0) is among the `share` picked: for a copy to the
    candidate (mirror), or for the candidate itself (a canary request without a session key).
    Exactly floor(count x share) of the first `count` requests are, spread evenly."""
    return math.floor((n + 1) * share) > math.floor(n * share)


# --- scaling ---------------------------------------------------------------------------------

SCALE_DOWN_AFTER_S = 10.0  # load must stay low this long before a replica goes


@dataclass(frozen=True)
class Scale:
    target: int  # replicas wanted now
    low_since: float | None  # when the load fell below the scale-down line (None: it is not)


def scale(
    cfg: ServeConfig,
    replicas: int,
    inflight: int,
    low_since: float | None,
    now: float,
    quiet_s: float = SCALE_DOWN_AFTER_S,
) -> Scale:
    """Replicas to run for `inflight` requests in flight over `replicas` ready ones. Up at once
    to what keeps each at `target_inflight` at most; down one at a time, and only after the load
    stayed under half the target per replica (one fewer replica) for `quiet_s`: a burst does
    not make replicas come and go (hysteresis)."""
    replicas = max(replicas, 1)
    wanted = max(cfg.min_replicas, min(cfg.max_replicas, math.ceil(inflight / cfg.target_inflight)))
    if wanted > replicas:
        return Scale(wanted, None)
    low = replicas > cfg.min_replicas and inflight < (replicas - 1) * cfg.target_inflight / 2
    if not low:
        return Scale(max(replicas, cfg.min_replicas), None)
    if low_since is None:
        return Scale(replicas, now)
    if now - low_since >= quiet_s:
        return Scale(replicas - 1, now)  # the next step down waits as long again
    return Scale(replicas, low_since)


# --- latency ---------------------------------------------------------------------------------


@dataclass
class Latencies:
    """Requests, errors and a latency histogram of one arm: log-spaced buckets (5% wide) from
    0.1 ms to ~20 min, so p50 and p99 cost no memory per request and are within 5%."""

    requests: int = 0
    errors: int = 0
    counts: dict[int, int] = field(default_factory=dict)

    RATIO = 1.05
    FLOOR_S = 1e-4

    def add(self, seconds: float, error: bool) -> None:
        self.requests += 1
        self.errors += bool(error)
        bucket = (
            0
            if seconds <= self.FLOOR_S
            else math.ceil(math.log(seconds / self.FLOOR_S, self.RATIO))
        )
        self.counts[bucket] = self.counts.get(bucket, 0) + 1

    def quantile(self, q: float) -> float | None:
        """The `q` quantile in seconds (the upper edge of its bucket); None without requests."""
        total = sum(self.counts.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return self.FLOOR_S * self.RATIO**bucket
        return None  # unreachable

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self, share: float) -> dict[str, object]:
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "share": share,
        }


# --- the canary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """Keep the share: not enough requests at this step yet."""


@dataclass(frozen=True)
class Step:
    share: float


@dataclass(frozen=True)
class Revert:
    reason: str


@dataclass(frozen=True)
class Promote:
    """The last step held: merge the candidate and mark it good."""


Canary = Hold | Step | Revert | Promote

# Requests on each arm before their p99s are compared: below a hundred, a p99 is the slowest one.
MIN_FOR_P99 = 100
# A p99 difference below this is the scheduler's, not the candidate's (loopback answers take a
# millisecond or two, and one preemption doubles them): compared beyond it.
P99_SLACK_S = 0.002


def breach(cfg: CanaryConfig, good: Latencies, candidate: Latencies) -> str | None:
    """Why the candidate is worse than the good arm beyond the bounds, or None."""
    if candidate.requests and candidate.error_rate > good.error_rate + cfg.max_error_delta:
        return (
            f"error rate {candidate.error_rate:.3f} against {good.error_rate:.3f} on the good "
            f"arm (allowed {cfg.max_error_delta:g} more)"
        )
    if candidate.requests >= MIN_FOR_P99 and good.requests >= MIN_FOR_P99:
        cp99, gp99 = candidate.quantile(0.99), good.quantile(0.99)
        if cp99 is not None and gp99 is not None and cp99 > gp99 * cfg.max_p99_ratio + P99_SLACK_S:
            return (
                f"p99 {cp99 * 1000:.1f} ms against {gp99 * 1000:.1f} ms on the good arm "
                f"(allowed x{cfg.max_p99_ratio:g} + {P99_SLACK_S * 1000:g} ms)"
            )
    return None


def next_canary(
    cfg: CanaryConfig, share: float, at_step: int, good: Latencies, candidate: Latencies
) -> Canary:
    """Where the canary goes after a request: `at_step` requests reached the candidate since its
    share last changed; `good` and `candidate` count since then too. Reverted at the first
    breach, stepped once `step_requests` passed without one, promoted after the last step."""
    why = breach(cfg, good, candidate)
    if why is not None:
        return Revert(why)
    if at_step < cfg.step_requests:
        return Hold()
    later = [s for s in cfg.steps if s > share]
    return Step(later[0]) if later else Promote()


# --- candidates waiting for the front door ---------------------------------------------------


@dataclass
class Offers:
    """Candidates go on live traffic one at a time, in the order offered. `on` is the one the
    front door has; the others wait. Each call says which candidate to hand the front door now
    (None: nothing to send)."""

    on: tuple[str, str] | None = None  # (commit, id)
    waiting: list[tuple[str, str]] = field(default_factory=list)

    def offer(self, commit: str, candidate: str) -> tuple[str, str] | None:
        self.waiting.append((commit, candidate))
        return self._next()

    def ended(self, candidate: str) -> tuple[str, str] | None:
        """A verdict on `candidate`; one on a candidate not on (from before a restart of ours)
        changes nothing."""
        if self.on is not None and self.on[1] == candidate:
            self.on = None
        return self._next()

    def drop_all(self) -> list[tuple[str, str]]:
        """The front door is gone for good: every candidate on or waiting, none left."""
        pending = [*([self.on] if self.on else []), *self.waiting]
        self.on, self.waiting = None, []
        return pending

    def _next(self) -> tuple[str, str] | None:
        if self.on is None and self.waiting:
            self.on = self.waiting.pop(0)
            return self.on
        return None
