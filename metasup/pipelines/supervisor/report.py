"""Report lines: every event (journalled or a notice), one line each, as `metasup run` shows
them in a pipe or with `--plain` (the live view shows them its own way)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from metasup.effects.records.journal import HEADER_FIELDS
from metasup.facts.events import Report

Reporter = Report


def plain_reporter(stream: Any = None) -> Reporter:
    """One line per event, for a terminal or a pipe."""

    def report(record: dict[str, Any]) -> None:
        out = stream or sys.stderr
        detail = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in HEADER_FIELDS)
        with contextlib.suppress(OSError, ValueError):
            out.write(f"metasup: {record['event']} {detail}\n")
            out.flush()

    return report


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, list):
        return f"[{len(value)} lines]"
    return str(value)
