"""What names git's own folder, and a step's duration: two small facts several modules need.

`.git` is matched ignoring case and trailing dots and spaces, as the filesystems git supports
would resolve it (git itself refuses such paths for the same reason).
"""

from __future__ import annotations

import time


def is_git_dir_name(part: str) -> bool:
    """`part` (one path component) names git's folder on some filesystem git supports."""
    return part.casefold().rstrip(". ") == ".git"


def in_git_dir(rel: str) -> bool:
    """`rel` (relative to the working tree, `/`-separated) is `.git` or inside it."""
    return is_git_dir_name(rel.split("/", 1)[0])


def ms_since(t0: float) -> float:
    """Milliseconds since `t0` (a `time.perf_counter()`), as events carry `duration_ms`."""
    return round((time.perf_counter() - t0) * 1000, 3)
