"""Health verdicts: memory, sustained CPU, heartbeat."""

from __future__ import annotations

from metasup.decisions.health import Limits, judge


def test_no_limits_no_breach() -> None:
    assert judge(Limits(), 10_000, [400, 400, 400], 1e6) is None


def test_memory_over_the_limit() -> None:
    breach = judge(Limits(max_memory_mb=100), 150.4, [], None)
    assert breach == "memory 150 MB > max_memory_mb 100"
    assert judge(Limits(max_memory_mb=100), 100, [], None) is None


def test_cpu_must_be_sustained_over_the_window() -> None:
    limits = Limits(max_cpu_percent=90, cpu_window=3)
    assert judge(limits, 1, [95, 95], None) is None, "two samples are not a window"
    assert judge(limits, 1, [95, 50, 95, 95], None) is None, "a dip resets the window"
    assert judge(limits, 1, [50, 95, 96, 97], None) == (
        "cpu 95% > max_cpu_percent 90 for 3 samples"
    )


def test_heartbeat_timeout() -> None:
    limits = Limits(heartbeat_timeout=5)
    assert judge(limits, 1, [], 4.9) is None
    assert judge(limits, 1, [], 5.5) == "no heartbeat for 5.5s > heartbeat_timeout 5s"
    assert judge(limits, 1, [], None) is None


def test_memory_is_reported_before_cpu() -> None:
    limits = Limits(max_memory_mb=1, max_cpu_percent=1, cpu_window=1)
    breach = judge(limits, 2, [50], None)
    assert breach is not None and breach.startswith("memory")
