"""What to let go of, pure: run logs past their count or size, archive refs past their count or
age. Nothing here deletes; the callers do, and archive refs only once a bundle holds them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

_STAMP = re.compile(r"(\d{8}T\d{6})(?:\.(\d{1,6}))?Z")


def logs_to_drop(
    runs: Sequence[tuple[int, int]], keep_runs: int, max_size: int | None
) -> list[int]:
    """The runs whose logs go, oldest first. `runs` is (run number, bytes of its logs). The
    newest `keep_runs` are kept, then the oldest of those dropped until the rest fit `max_size`;
    the newest run is always kept (it may be the one running)."""
    ordered = sorted(runs)
    drop = [n for n, _ in ordered[: max(0, len(ordered) - keep_runs)]]
    kept = ordered[len(drop) :]
    if max_size is not None:
        total = sum(size for _, size in kept)
        while len(kept) > 1 and total > max_size:
            n, size = kept.pop(0)
            drop.append(n)
            total -= size
    return drop


def archive_time(ref: str) -> datetime | None:
    """When an archive ref was made, from its name (`<UTC time>-<reason>`); None when its name
    carries no time (a ref made by hand)."""
    m = _STAMP.search(ref.rsplit("/", 1)[-1])
    if m is None:
        return None
    try:
        when = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return when.replace(microsecond=int((m.group(2) or "0").ljust(6, "0")))


def archives_to_prune(
    refs: Sequence[str], now: datetime, count: int | None, max_age: float | None
) -> list[str]:
    """The archive refs to prune, oldest first: past the newest `count`, or older than
    `max_age` seconds. Refs without a time in their name are ordered oldest and never judged
    by age."""
    dated = sorted(refs, key=lambda r: (archive_time(r) or datetime.min.replace(tzinfo=UTC), r))
    prune = set(dated[: max(0, len(dated) - count)]) if count is not None else set()
    if max_age is not None:
        for ref in dated:
            when = archive_time(ref)
            if when is not None and (now - when).total_seconds() > max_age:
                prune.add(ref)
    return [r for r in dated if r in prune]
