"""The watch's list of changed paths checked against a full status, off the loop's thread.

inotify misses a write made through a hard link from outside the tree or through a shared
mapping (an LMDB file, say). Every `VERIFY_INTERVAL_S` a thread takes a full status with a
repository object of its own and hands it to `ChangedPaths.verify`: a path changed that the
list lacks makes the next git step look at the whole tree.
"""

from __future__ import annotations

import os
import selectors
from pathlib import Path

from metasup.effects.files.changed import ChangedPaths
from metasup.effects.git.scoped import dirty_paths
from metasup.facts.events import Notice, Report
from metasup.pipelines.supervisor.background import Job


def _interval() -> float:
    """60 s; tests shorten it (an internal knob, like METASUP_CRASHPOINT)."""
    try:
        return max(0.05, float(os.environ.get("METASUP_VERIFY_INTERVAL_S", "60")))
    except ValueError:
        return 60.0


VERIFY_INTERVAL_S = _interval()


class Verifier:
    def __init__(
        self,
        workdir: Path,
        changes: ChangedPaths,
        report: Report,
        selector: selectors.BaseSelector,
    ) -> None:
        self.workdir = workdir
        self.changes = changes
        self.report = report
        self.job: Job[list[str]] = Job("verify")
        selector.register(self.job.fd, selectors.EVENT_READ, "verify")

    def start(self) -> None:
        if not self.job.running:
            workdir = self.workdir
            self.job.start(lambda: dirty_paths(workdir))

    def finished(self) -> None:
        try:
            dirty = self.job.result()
        except Exception as e:  # a status that failed: the next round tries again
            self.report({"event": Notice.VERIFY_FAILED, "error": str(e)})
            return
        missed = self.changes.verify(dirty)
        if missed:
            self.report({"event": Notice.CHANGES_MISSED, "paths": ", ".join(missed[:20])})

    def close(self) -> None:
        self.job.join(timeout=60)
        self.job.close()
