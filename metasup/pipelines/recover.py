"""`metasup recover`: after an emergency stop, back to the last good state.

It stops everything first: a supervisor still holding the repository gets SIGTERM (and is waited
for), and whatever a dead one left running (the agent, the MCP worker, the API) is stopped by the
markers `state.json` recorded. Then, with the repository lock held, the tree is archived and reset
to the good commit; when `refs/metasup/good` is missing or does not name a commit, to the newest
commit the journal marked good that still exists (and `good` is set to it again).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from metasup.effects.git.repo import GOOD_REF, GitRepo, RollbackRefused
from metasup.effects.process.trees import stop_leftover_tree
from metasup.effects.records.journal import (
    StateDir,
    holder_pid,
    locked_journal,
    read_events,
    recorded_trees,
    write_json_atomic,
)
from metasup.effects.records.statefile import read_state
from metasup.facts.errors import UserError
from metasup.facts.events import Event
from metasup.pipelines import rollback


@dataclass
class Recovery:
    target: str
    source: str  # "good ref" or "journal (<event> #seq)"
    archive: str | None
    stopped: int


def stop_everything(dirs: StateDir, timeout: float = 30.0) -> int:
    """Stop a running supervisor and anything a dead one left; how many processes were found."""
    stopped = 0
    pid = holder_pid(dirs.lock)
    if pid is not None and pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while holder_pid(dirs.lock) is not None:
            if time.monotonic() > deadline:
                raise UserError(f"the supervisor (pid {pid}) did not stop within {timeout:g}s")
            time.sleep(0.05)  # waiting for a process we signalled, bounded by the deadline
    for tree in recorded_trees(read_state(dirs.state)):
        stopped += stop_leftover_tree(tree.get("pgid"), str(tree["token"]), signal.SIGTERM, 5.0)
    return stopped


def recover(
    repo: GitRepo, keep: tuple[str, ...], bounds: rollback.Bounds = rollback.DEFAULT_BOUNDS
) -> Recovery:
    dirs = StateDir.for_git_dir(repo.git_dir)
    stopped = stop_everything(dirs)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        # An interrupted rollback is finished first; one metasup cannot vouch for is archived
        # around and refused.
        rollback.resume(repo, dirs.intent, dirs.events, dirs.preserve, keep, journal.append, bounds)
        target, source = _target(repo, dirs)
        state = read_state(dirs.state)
        run = int(state.get("run") or 0)
        since = rollback.good_since_ns(read_events(dirs.events))
        intent = rollback.plan(
            run, repo.head(), target, "recover", dirs.preserve / "recover", since_ns=since
        )
        done = rollback.carry_out(repo, intent, keep, dirs.intent, journal.append, bounds)
        if repo.good() != target:
            repo.set_good(target)
        journal.append(
            Event.RECOVERED, to=target, source=source, archive=done.get("archive"), stopped=stopped
        )
        if state:
            state.update(
                status="stopped",
                phase="stopped",
                supervisor_pid=None,
                consecutive_failures=0,
                current_commit=target,
                good_commit=target,
                note=f"recovered to {target[:12]} from the {source}",
            )
            write_json_atomic(dirs.state, state)
    return Recovery(target, source, done.get("archive"), stopped)


class NothingToRecoverTo(UserError):
    exit_code = 1


def _target(repo: GitRepo, dirs: StateDir) -> tuple[str, str]:
    try:
        if repo.good() is not None:
            return repo.check_rollback_target(GOOD_REF, failed=None), "good ref"
    except (RollbackRefused, ValueError, OSError):
        pass  # missing object or an unreadable ref: look in the journal
    for commit, source in rollback.good_candidates(read_events(dirs.events)):
        if repo.commit_exists(commit):
            return commit, source
    raise NothingToRecoverTo(
        f"no good state to recover to: {GOOD_REF} is missing or broken and the journal names no "
        "good commit that still exists; use `metasup rollback --to REF`"
    )
