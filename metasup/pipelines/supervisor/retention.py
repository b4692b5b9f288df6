"""`rollback.keep_archives`: archive refs past their count or age, pruned only once a bundle holds
them (written on a thread, then the refs deleted on the loop's); and the run logs kept within
`logs.keep_runs` and `logs.max_size`.

Nothing is lost: a ref is deleted only while it still names the commit the verified bundle
holds, and the pruned bundles (`<state>/backups/archives/`) are never rotated away. A kill at any
point loses nothing either: before the event, the refs the journal still expects are put back by
the ref guard at the next start while their commits exist, and pruned again.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from datetime import UTC, datetime
from pathlib import Path

from metasup.decisions.retention import archives_to_prune, logs_to_drop
from metasup.effects.git.bundle import write_refs_bundle
from metasup.effects.git.repo import GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.facts.settings import LogsConfig, RollbackConfig
from metasup.facts.units import ms_since
from metasup.pipelines.supervisor.background import Job

PRUNED_FOLDER = "archives"  # under backups/: never rotated by the backups' keep_commits


class Retention:
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
        self.job: Job[Path] = Job("prune")
        selector.register(self.job.fd, selectors.EVENT_READ, "prune")
        self._heads: dict[str, str] = {}
        self._done: Path | None = None  # a bundle written, its refs not deleted yet
        self._started = 0.0

    @property
    def enabled(self) -> bool:
        return self.config.keep_archives is not None or self.config.keep_archives_age is not None

    def start(self) -> None:
        """Bundle the archives past the limits, if any (and nothing is under way)."""
        if not self.enabled or self.job.running or self._done is not None:
            return
        archives = dict(self.repo.archives())
        chosen = archives_to_prune(
            list(archives),
            datetime.now(UTC),
            self.config.keep_archives,
            self.config.keep_archives_age,
        )
        if not chosen:
            return
        self._heads = {ref: archives[ref] for ref in chosen}
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.dirs.backups / PRUNED_FOLDER / f"{stamp}-{len(chosen)}-archives.bundle"
        workdir, heads, reaper = self.repo.workdir, dict(self._heads), self.reaper
        self._started = time.perf_counter()
        self.job.start(lambda: write_refs_bundle(workdir, path, heads, reaper))

    def take(self) -> None:
        """The bundle is written (or failed, reported); its refs wait for `apply`."""
        try:
            self._done = self.job.result()
        except Exception as e:
            self.report({"event": Notice.PRUNE_FAILED, "error": str(e)})
            self._heads = {}

    def apply(self) -> None:
        """Delete the refs the bundle holds, each only while it still names the same commit;
        on the loop's thread, between git steps."""
        if self._done is None:
            return
        bundle, self._done = self._done, None
        pruned = []
        for ref, commit in sorted(self._heads.items()):
            if self.repo.ref_value(ref) == commit:
                self.repo.delete_ref(ref)
                pruned.append(ref)
        self._heads = {}
        self.emit(
            Event.ARCHIVES_PRUNED,
            refs=pruned,
            bundle=str(bundle.relative_to(self.dirs.root)),
            duration_ms=ms_since(self._started),
        )

    def close(self) -> None:
        self.job.join(timeout=30)
        self.job.close()


class RunLogs:
    """The run logs kept, within `logs.keep_runs` and `logs.max_size`. The folder is read once;
    after that each run's files are added as its log closes, so a prune reads no folder (a
    glob and a stat of each of the hundreds of logs kept cost a millisecond a crash)."""

    def __init__(self, folder: Path, config: LogsConfig) -> None:
        self.folder = folder
        self.config = config
        self._runs: dict[int, dict[Path, int]] | None = None

    def _known(self) -> dict[int, dict[Path, int]]:
        """run -> {file: size}, read from the folder the first time."""
        if self._runs is None:
            self._runs = {}
            for path in self.folder.glob("run-*.log"):
                number = path.name.split("-")[1]
                if number.isdigit():
                    self._runs.setdefault(int(number), {})[path] = _size(path)
        return self._runs

    def closed(self, run: int, files: list[Path]) -> None:
        """Run `run`'s log closed, having written `files`."""
        self._known().setdefault(run, {}).update({path: _size(path) for path in files})

    def prune(self) -> None:
        """The logs past the limits go, oldest runs first."""
        runs = self._known()
        sizes = [(n, sum(paths.values())) for n, paths in runs.items()]
        for n in logs_to_drop(sizes, self.config.keep_runs, self.config.max_size):
            for path in runs.pop(n):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0
