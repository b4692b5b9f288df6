"""A rollback as a resumable pipeline: archive, stash preserved paths, reset, put them back.

Each step is recorded in the intent file (`<git-dir>/metasup/intent.json`) before the next one
starts, and every step can be repeated, so a supervisor killed half way through finds the
intent at its next start and finishes the job. Used by the loop on a quick failure and by
`metasup rollback`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metasup.effects.files import preserve
from metasup.effects.files.safeio import NotRegular, read_json, real_folder
from metasup.effects.git.repo import Archive, GitRepo
from metasup.effects.git.sweep import Sweep
from metasup.effects.records.journal import read_events, write_json_atomic
from metasup.effects.records.statefile import Step, intent_problem
from metasup.facts.errors import UserError
from metasup.facts.events import Emit, Event
from metasup.facts.faults import crashpoint, holdpoint
from metasup.facts.units import ms_since


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
        "step": Step.START,
        **details,
    }


Bounds = tuple[int | None, int | None]  # rollback.max_file_size, rollback.max_files
DEFAULT_BOUNDS: Bounds = (100 << 20, 20_000)
# The events after which the tree is in a good state: ignored files changed later are the
# failed run's (or someone's since), and a rollback takes them into its archive.
GOOD_STATE_EVENTS = ("supervisor_start", "mark_good", "approved", "recovered")


def good_since_ns(records: Iterable[dict[str, Any]]) -> int | None:
    """When the tree was last known good, from the journal (nanoseconds since the epoch)."""
    latest = None
    for record in records:
        if record.get("event") in GOOD_STATE_EVENTS and isinstance(record.get("ts"), str):
            latest = record["ts"]
    if latest is None:
        return None
    try:
        when = datetime.strptime(latest, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def pending(intent_path: Path) -> dict[str, Any] | None:
    intent = read_json(intent_path)
    if isinstance(intent, dict) and intent.get("op") == "rollback":
        return intent
    return None


# Events whose `commit` (or `good`, or `to`) is a commit metasup held good.
GOOD_EVENTS = {"mark_good": "commit", "merged": "commit", "approved": "good", "recovered": "to"}
STAGING_NAMES = re.compile(r"run-[0-9]+|recover|manual")


def good_candidates(records: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(commit, where it was marked good), newest first."""
    found = []
    for record in records:
        field = GOOD_EVENTS.get(str(record.get("event")))
        commit = record.get(field) if field else None
        if isinstance(commit, str) and len(commit) == 40:
            found.append((commit, f"journal ({record['event']} #{record.get('seq')})"))
    found.reverse()
    return found


def resume_problem(intent: dict[str, Any], preserve_root: Path, good: set[str]) -> str | None:
    """Why a half-done rollback found at start must not be resumed; None when it may be.

    The intent file is as writable as the tree when the jail is off: a forged one could aim
    the reset at a commit the agent built, or name any folder as its staging area."""
    problem = intent_problem(intent)
    if problem is not None:
        return f"the intent is malformed ({problem})"
    target = str(intent["target"])
    if target not in good:
        return f"its target {target[:12]} was never recorded good in the journal"
    staging = Path(intent["staging"])
    if staging.parent != preserve_root or not STAGING_NAMES.fullmatch(staging.name):
        return f"its staging folder {staging} is not metasup's own"
    try:
        real_folder(preserve_root)
        if staging.exists() or staging.is_symlink():
            real_folder(staging)
    except NotRegular as e:
        return f"its staging folder is not metasup's own: {e.path} is {e.kind}"
    return None


class UntrustedIntent(UserError):
    """A half-done rollback metasup did not write: archived around, never carried out."""


def resume(
    repo: GitRepo,
    intent_path: Path,
    events_path: Path,
    preserve_root: Path,
    keep: Sequence[str],
    emit: Emit,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> dict[str, Any] | None:
    """Finish the rollback a killed process left half done, if metasup can vouch for it.

    Otherwise the current state is archived (nothing is lost), the intent is set aside next to
    itself, and UntrustedIntent says why; the next start goes on from the current state."""
    intent = pending(intent_path)
    if intent is None:
        return None
    good = {commit for commit, _ in good_candidates(read_events(events_path))}
    problem = resume_problem(intent, preserve_root, good)
    if problem is None:
        intent["resumed"] = True
        return carry_out(repo, intent, keep, intent_path, emit, bounds)
    run = int(intent["run"]) if _nat(intent) else 0
    archive = archive_now(repo, "untrusted_intent", run, emit)
    aside = intent_path.with_name(f"intent.refused-{int(time.time())}.json")
    os.replace(intent_path, aside)
    kept = f"; the current state was archived as {archive.ref}" if archive else ""
    raise UntrustedIntent(
        f"a half-done rollback was found and not resumed: {problem}{kept}. Its intent was set "
        f"aside as {aside.name}; start again to go on from the current state"
    )


def archive_now(
    repo: GitRepo, reason: str, run: int, emit: Emit, sweep: Sweep | None = None
) -> Archive | None:
    """Archive the current state and journal it (`archive`)."""
    t0 = time.perf_counter()
    archive = repo.archive(reason, run, sweep)
    if archive is not None:
        emit(
            Event.ARCHIVE,
            ref=archive.ref,
            commit=archive.commit,
            dirty=archive.dirty,
            reason=reason,
            run=run,
            duration_ms=ms_since(t0),
            **({"ignored": archive.ignored} if archive.ignored else {}),
            **({"quarantined": archive.quarantined} if archive.quarantined else {}),
        )
    return archive


def _nat(intent: dict[str, Any]) -> bool:
    run = intent.get("run")
    return isinstance(run, int) and not isinstance(run, bool) and run >= 0


def carry_out(
    repo: GitRepo,
    intent: dict[str, Any],
    keep: Sequence[str],
    intent_path: Path,
    emit: Emit,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> dict[str, Any]:
    """Take `intent` from its recorded step to the end; return it, finished."""
    t0 = time.perf_counter()
    run, reason = int(intent["run"]), str(intent["reason"])
    staging = Path(intent["staging"])
    if intent["step"] == Step.START:
        write_json_atomic(intent_path, intent)
        since = intent.get("since_ns")
        sweep = Sweep(
            since_ns=since if isinstance(since, int) and not isinstance(since, bool) else None,
            keep=tuple(keep),
            max_file_size=bounds[0],
            max_files=bounds[1],
        )
        holdpoint("rollback:archive")
        archive = archive_now(repo, reason, run, emit, sweep)
        crashpoint("rollback:after-archive")
        intent.update(
            step=Step.ARCHIVED,
            archive=archive.ref if archive else None,
            archived_commit=archive.commit if archive else None,
        )
        write_json_atomic(intent_path, intent)
    if intent["step"] == Step.ARCHIVED:
        preserve.stash(repo.workdir, keep, staging)
        crashpoint("rollback:after-stash")
        intent["step"] = Step.STASHED
        write_json_atomic(intent_path, intent)
    if intent["step"] == Step.STASHED:
        repo.reset_to(intent["target"])
        crashpoint("rollback:after-reset")
        preserve.restore(repo.workdir, keep, staging)
        intent["step"] = Step.RESET
        write_json_atomic(intent_path, intent)
    emit(
        Event.ROLLBACK,
        run=run,
        failed=intent.get("failed"),
        to=intent["target"],
        archive=intent.get("archive"),
        reason=reason,
        duration_ms=ms_since(t0),
        **({"resumed": True} if intent.get("resumed") else {}),
    )
    with contextlib.suppress(FileNotFoundError):
        intent_path.unlink()
    return intent


@dataclass(frozen=True)
class Manual:
    archive: str | None
    target: str


def manual(
    repo: GitRepo,
    to: str | None,
    keep: Sequence[str],
    bounds: Bounds,
    resumed: Callable[[str], object] = lambda target: None,
) -> Manual:
    """`metasup rollback`, with metasup stopped: under the repository's lock, an interrupted
    rollback finished first (`resumed` hears of it at once, whatever follows); then the state
    archived and the tree reset to `to` or good."""
    from metasup.effects.git.repo import GOOD_REF
    from metasup.effects.records.journal import StateDir, locked_journal
    from metasup.effects.records.statefile import read_state

    dirs = StateDir.for_git_dir(repo.git_dir)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        left = resume(repo, dirs.intent, dirs.events, dirs.preserve, keep, journal.append, bounds)
        if left is not None:
            resumed(str(left["target"]))
        if to is None and repo.good() is None:
            raise UserError(f"no good commit yet ({GOOD_REF}); pass --to REF")
        target = repo.check_rollback_target(to or GOOD_REF, failed=None)
        run = int(read_state(dirs.state).get("run") or 0)
        since = good_since_ns(read_events(dirs.events))
        intent = plan(
            run,
            repo.head(),
            target,
            "manual",
            dirs.preserve / "manual",
            by="operator",
            since_ns=since,
        )
        done = carry_out(repo, intent, keep, dirs.intent, journal.append, bounds)
    return Manual(done.get("archive"), target)
