"""What happens to a child after a failure: an MCP server, the MCP worker, the API server.

A pure decision, no processes: the fleet worker and the supervisor's helpers ask, then act.

Restarts follow two old rules at once. supervisord's: each restart waits longer than the one
before (exponential backoff, the first one at once). Erlang/OTP's: a server restarted more than
`max_restarts` times within `restart_period` seconds is not restarted again; it is `failed`, and
metasup goes on without it until its code changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True  # restart_on_failure
    initial: float = 1.0
    max: float = 30.0
    max_restarts: int = 5
    period: float = 60.0


@dataclass(frozen=True)
class Restart:
    delay: float
    attempt: int  # 1 for the first restart within the period


@dataclass(frozen=True)
class GiveUp:
    reason: str


def after_failure(
    policy: RestartPolicy, history: Sequence[float], now: float
) -> tuple[Restart | GiveUp, tuple[float, ...]]:
    """Restart (after how long) or give up; and the restart times to remember.

    `history` holds the times of earlier restarts; only those within the period count.
    """
    recent = tuple(t for t in history if now - t < policy.period)
    if not policy.enabled:
        return GiveUp("restart_on_failure is off"), recent
    if len(recent) >= policy.max_restarts:
        return GiveUp(f"more than {policy.max_restarts} restarts within {policy.period:g}s"), recent
    n = len(recent)
    delay = 0.0 if n == 0 else min(policy.max, policy.initial * 2 ** (n - 1))
    return Restart(delay=delay, attempt=n + 1), (*recent, now)
