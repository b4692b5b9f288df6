"""What happens to an MCP server after a failure, and which servers a change of code touches.

Pure decisions, no processes: the fleet worker asks, then acts.

Restarts follow two old rules at once. supervisord's: each restart waits longer than the one
before (exponential backoff, the first one at once). Erlang/OTP's: a server restarted more than
`max_restarts` times within `restart_period` seconds is not restarted again; it is `failed`, and
metasup goes on without it until its code changes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from metasup.facts.gitpaths import in_git_dir

STATES = ("starting", "healthy", "unhealthy", "failed", "stopped")


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


def default_watch(
    command: str | None,
    args: Sequence[str],
    cwd: str | None,
    root: str,
    kind: Callable[[str], str | None],
) -> tuple[str, ...]:
    """The repository paths whose change restarts a server, when the config names none.

    Every file the command line names inside the repository stands for its whole folder (a
    server imports its neighbours); a folder stands for itself. `python -m pkg.mod` names
    `pkg/mod.py` or `pkg/mod/`. A command that names nothing in the repository (an installed
    server) watches nothing. `kind(path)` says "file", "dir" or None for a repo-relative path.
    """
    base = _inside(cwd or "", "", root)
    if base is None:
        return ()
    words = [w for w in (command, *args) if w]
    found: list[str] = []
    for i, word in enumerate(words):
        candidates = [word]
        if i > 0 and words[i - 1] == "-m" and "/" not in word:
            module = word.replace(".", "/")
            candidates = [module + ".py", module]
        for candidate in candidates:
            rel = _inside(candidate, base, root)
            if rel is None or rel == "":
                continue
            what = kind(rel)
            if what == "file":
                found.append(posixpath.dirname(rel))
                break
            if what == "dir":
                found.append(rel)
                break
    return tuple(dict.fromkeys(found))


def _inside(path: str, base: str, root: str) -> str | None:
    """`path` (relative to `base`, or absolute) as a repo-relative path; None when outside."""
    if posixpath.isabs(path):
        root = root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            return None
        path = path[len(root) :].lstrip("/")
    else:
        path = posixpath.join(base, path)
    norm = posixpath.normpath(path) if path else "."
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../") or in_git_dir(norm):
        return None
    return norm


def touched(watch: Sequence[str], changed: Iterable[str]) -> bool:
    """True when a changed path lies in a watched one ("" watches the whole tree)."""
    for path in changed:
        for w in watch:
            if w == "" or path == w or path.startswith(w + "/"):
                return True
    return False
