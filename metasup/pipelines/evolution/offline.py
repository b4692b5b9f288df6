"""`metasup evolve`, with no supervisor running: under the repository's lock, journalled, the
current work snapshotted before a merge, Ctrl-C (or SIGTERM) stopping it resumably."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from metasup.decisions.evolution import History, figures
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper, become_subreaper
from metasup.effects.records.journal import (
    StateDir,
    locked_journal,
    read_events,
    write_json_atomic,
)
from metasup.effects.records.statefile import read_state
from metasup.facts.policy import Policy
from metasup.facts.settings import Config
from metasup.pipelines import integrity
from metasup.pipelines.evolution.search import Result, Search
from metasup.pipelines.experiments import Experimenter, snapshot_before_merge


@contextmanager
def _stopping_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM stop the search (in-flight commands are killed, nothing is recorded
    for them) instead of raising in the middle of a git step."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_figures(dirs: StateDir, h: History) -> None:
    """The evolution's figures in `state.json`, for `metasup status` (no supervisor runs: this
    process holds the repository's lock)."""
    doc = read_state(dirs.state) or {"status": "stopped", "run": 0}
    doc["evolution"] = figures(h, running=h.finished is None)
    write_json_atomic(dirs.state, doc, sync=False)


def run_offline(
    repo: GitRepo,
    cfg: Config,
    policy: Policy,
    *,
    resume: bool,
    generations: int | None,
    merge: bool,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_open: Callable[[History, bool], None] | None = None,
) -> Result:
    dirs = StateDir.for_git_dir(repo.git_dir)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        become_subreaper()  # so what a mutator or evaluator leaves behind is found and stopped
        repo.clear_stale_locks()  # a run killed mid-write left them; we hold the repo's lock
        exp = Experimenter(repo, cfg, policy, dirs.root, journal.append, Reaper())
        search = Search(
            exp,
            journal.append,
            lambda: read_events(dirs.events),
            on_record=on_record,
            on_progress=lambda h: _write_figures(dirs, h),
        )
        # The evaluator (protected) must be as approved, as for `metasup run`: the first use
        # approves what it finds, so a good commit set here later reads as approved. After the
        # config's own errors (jail, executor, evolution section), which change nothing.
        integrity.check_protected(
            repo, dirs, lambda p: policy.protecting_rule(p) is not None, cfg.path, journal.append
        )
        with _stopping_on_signals(exp.cancel.set):
            history, resumed = search.open(resume, generations)
            _write_figures(dirs, history)
            if on_open is not None:
                on_open(history, resumed)
            return search.run(
                history,
                generations=generations,
                merge=merge,
                before_merge=snapshot_before_merge(repo, policy, journal.append, dirs.state),
            )
