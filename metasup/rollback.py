"""A rollback as a resumable pipeline: archive, stash preserved paths, reset, put them back.

Each step is recorded in the intent file (`<git-dir>/metasup/intent.json`) before the next one
starts, and every step can be repeated, so a supervisor killed half way through finds the
intent at its next start and finishes the job. Used by the loop on a quick failure and by
`metasup rollback`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metasup import preserve
from metasup.events import Event
from metasup.faults import crashpoint
from metasup.gitrepo import GitRepo
from metasup.journal import read_json, write_json_atomic

Emit = Callable[..., object]  # emit(event, **fields): journal the event, report it


def plan(
    run: int,
    failed: str | None,
    target: str,
    reason: str,
    staging: Path,
    **details: Any,
) -> dict[str, Any]:
    """A new intent, not yet started. `target` must have passed `check_rollback_target`."""
    return {
        "op": "rollback",
        "run": run,
        "failed": failed,
        "target": target,
        "reason": reason,
        "staging": str(staging),
        "step": "start",
        **details,
    }


def pending(intent_path: Path) -> dict[str, Any] | None:
    intent = read_json(intent_path)
    if isinstance(intent, dict) and intent.get("op") == "rollback":
        return intent
    return None


def carry_out(
    repo: GitRepo,
    intent: dict[str, Any],
    keep: Sequence[str],
    intent_path: Path,
    emit: Emit,
) -> dict[str, Any]:
    """Take `intent` from its recorded step to the end; return it, finished."""
    t0 = time.perf_counter()
    run, reason = int(intent["run"]), str(intent["reason"])
    staging = Path(intent["staging"])
    if intent["step"] == "start":
        write_json_atomic(intent_path, intent)
        a0 = time.perf_counter()
        archive = repo.archive(reason, run)
        crashpoint("rollback:after-archive")
        intent.update(
            step="archived",
            archive=archive.ref if archive else None,
            archived_commit=archive.commit if archive else None,
        )
        if archive is not None:
            emit(
                Event.ARCHIVE,
                ref=archive.ref,
                commit=archive.commit,
                dirty=archive.dirty,
                reason=reason,
                run=run,
                duration_ms=_ms(a0),
            )
        write_json_atomic(intent_path, intent)
    if intent["step"] == "archived":
        preserve.stash(repo.workdir, keep, staging)
        crashpoint("rollback:after-stash")
        intent["step"] = "stashed"
        write_json_atomic(intent_path, intent)
    if intent["step"] == "stashed":
        repo.reset_to(intent["target"])
        crashpoint("rollback:after-reset")
        preserve.restore(repo.workdir, keep, staging)
        intent["step"] = "reset"
        write_json_atomic(intent_path, intent)
    emit(
        Event.ROLLBACK,
        run=run,
        failed=intent.get("failed"),
        to=intent["target"],
        archive=intent.get("archive"),
        reason=reason,
        duration_ms=_ms(t0),
        **({"resumed": True} if intent.get("resumed") else {}),
    )
    with contextlib.suppress(FileNotFoundError):
        intent_path.unlink()
    return intent


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
