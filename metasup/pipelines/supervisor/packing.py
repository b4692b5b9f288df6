"""Loose objects packed in the background (`effects.git.packing`), never during a git step.

The packing starts when a run passes `min_runtime` (the loop has no git step to do until the
agent ends, and a crash, whose rollback must not wait, is not what usually follows), and only
once git's own `gc.auto` threshold is passed. Should the agent end while it runs, the loop
waits for it before its next git step (a first packing of 10k loose objects took 2.6 s here).
"""

from __future__ import annotations

import selectors
import time

from metasup.effects.git import packing
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.facts.events import Notice, Report
from metasup.facts.units import ms_since
from metasup.pipelines.supervisor.background import Job


class Packer:
    def __init__(
        self,
        repo: GitRepo,
        reaper: Reaper,
        report: Report,
        selector: selectors.BaseSelector,
        auto: int = packing.AUTO,
    ) -> None:
        self.repo = repo
        self.reaper = reaper
        self.report = report
        self.auto = auto
        self.job: Job[int] = Job("pack")
        selector.register(self.job.fd, selectors.EVENT_READ, "pack")
        self._started = 0.0

    def maybe_start(self) -> None:
        if self.job.running or not packing.due(self.repo.git_dir, self.auto):
            return
        workdir, git_dir, reaper = self.repo.workdir, self.repo.git_dir, self.reaper
        self._started = time.perf_counter()
        self.job.start(lambda: packing.repack(workdir, git_dir, reaper))

    def hold(self) -> None:
        """Before a git step: a packing under way ends first."""
        if self.job.alive:
            self.job.join(timeout=600)

    def finished(self) -> None:
        try:
            left = self.job.result()
        except Exception as e:
            self.report({"event": Notice.PACK_FAILED, "error": str(e)})
        else:
            self.report(
                {
                    "event": Notice.OBJECTS_PACKED,
                    "loose": left,
                    "duration_ms": ms_since(self._started),
                }
            )

    def close(self) -> None:
        self.job.join(timeout=600)
        self.job.close()
