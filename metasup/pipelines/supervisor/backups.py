"""`rollback.backup_interval`: a `git bundle` of every ref, at start and then at that interval,
written on a thread (a big repository takes a while) and journalled as `backup`."""

from __future__ import annotations

import selectors
import time
from pathlib import Path

from metasup.effects.git.bundle import write_bundle
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.facts.settings import RollbackConfig
from metasup.facts.units import ms_since
from metasup.pipelines.supervisor.background import Job


class Backups:
    def __init__(
        self,
        repo: GitRepo,
        config: RollbackConfig,
        dirs: StateDir,
        reaper: Reaper,
        emit: Emit,
        report: Report,
        selector: selectors.BaseSelector,
    ) -> None:
        self.repo = repo
        self.config = config
        self.dirs = dirs
        self.reaper = reaper
        self.emit = emit
        self.report = report
        self.job: Job[Path] = Job("backup")
        selector.register(self.job.fd, selectors.EVENT_READ, "backup")
        self._started = 0.0

    def start(self) -> None:
        if self.job.running:
            return
        head, workdir, folder = self.repo.head(), self.repo.workdir, self.dirs.backups
        keep, reaper = self.config.keep_commits, self.reaper
        self._started = time.perf_counter()
        self.job.start(lambda: write_bundle(workdir, folder, keep, head, reaper))

    def finished(self) -> float:
        """The bundle is written (or failed, reported): the monotonic time of the next one."""
        try:
            done = self.job.result()
        except Exception as e:
            self.report({"event": Notice.BACKUP_FAILED, "error": str(e)})
        else:
            self.emit(
                Event.BACKUP,
                path=done.name,
                bytes=done.stat().st_size,
                kept=self.config.keep_commits,
                duration_ms=ms_since(self._started),
            )
        return time.monotonic() + (self.config.backup_interval or 3600.0)

    def close(self) -> None:
        self.job.join(timeout=30)  # the bundle is written aside, then renamed
        self.job.close()
