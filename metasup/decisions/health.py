"""Health verdicts, pure: a sample of the agent's tree in, a breach (or None) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# CPU must stay above the limit for this many samples in a row: a burst is not a breach.
CPU_WINDOW_SAMPLES = 3


@dataclass(frozen=True)
class Limits:
    max_memory_mb: float | None = None
    max_cpu_percent: float | None = None
    heartbeat_timeout: float | None = None
    cpu_window: int = CPU_WINDOW_SAMPLES


def judge(
    limits: Limits,
    rss_mb: float,
    cpu_history: Sequence[float],
    heartbeat_age: float | None,
) -> str | None:
    """The first limit breached, described for the event and the recovery note.

    `cpu_history` is the tree's CPU% per sample, newest last; `heartbeat_age` the seconds since
    the heartbeat file was last touched (or since launch, before the first touch).
    """
    if limits.max_memory_mb is not None and rss_mb > limits.max_memory_mb:
        return f"memory {rss_mb:.0f} MB > max_memory_mb {limits.max_memory_mb:g}"
    if limits.max_cpu_percent is not None and len(cpu_history) >= limits.cpu_window:
        window = cpu_history[-limits.cpu_window :]
        if all(c > limits.max_cpu_percent for c in window):
            return (
                f"cpu {min(window):.0f}% > max_cpu_percent {limits.max_cpu_percent:g} "
                f"for {limits.cpu_window} samples"
            )
    if (
        limits.heartbeat_timeout is not None
        and heartbeat_age is not None
        and heartbeat_age > limits.heartbeat_timeout
    ):
        return (
            f"no heartbeat for {heartbeat_age:.1f}s > "
            f"heartbeat_timeout {limits.heartbeat_timeout:g}s"
        )
    return None
