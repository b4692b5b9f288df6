"""Durations and sizes: as a config writes them (`500ms`, `5m`; `512MiB`) and back, an uptime as
the status shows it, and the milliseconds events carry."""

from __future__ import annotations

import re
import time

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])i?B?|B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `10s`, `5m`, `1h` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (use 500ms, 10s, 5m, 1h or seconds)")


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def parse_size(value: object) -> int | None:
    """Bytes from `4GiB`, `512MiB`, `100M`, `1GB` or a plain number; None stays None.
    K, M, G and T are powers of 1024 with or without the `i` (as memory sizes are meant)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive: {value!r}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 4GiB, 512MiB or bytes)")
    scale = 1024 ** "_KMGT".index((m.group(2) or "_").upper())
    size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise ValueError(f"a size must be positive: {value!r}")
    return size


def format_size(size: int | None) -> str:
    if size is None:
        return "none"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def human_duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `6s`: an uptime as the status shows it."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def ms_since(t0: float) -> float:
    """Milliseconds since `t0` (a `time.perf_counter()`), as events carry `duration_ms`."""
    return round((time.perf_counter() - t0) * 1000, 3)
