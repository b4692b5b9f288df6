"""A quick failure's recovery: the failed state archived, the tree reset to the good commit,
the note the next run reads (`$METASUP_RECOVERY`), and a rollback a killed supervisor left
half-done finished at the next start.

The archive and reset run on a thread (`background.Job`): on a big tree they take a while, and
the loop stays free for signals and the status meanwhile.
"""

from __future__ import annotations

import selectors
from typing import Any

from metasup.decisions import lifecycle
from metasup.effects.git.repo import GitRepo, RollbackRefused
from metasup.effects.records.journal import StateDir, utc_now, write_json_atomic
from metasup.facts.events import Emit, Notice, Report
from metasup.facts.settings import Config
from metasup.pipelines import rollback
from metasup.pipelines.supervisor.background import Job


class Recovery:
    def __init__(
        self,
        repo: GitRepo,
        config: Config,
        dirs: StateDir,
        emit: Emit,
        report: Report,
        selector: selectors.BaseSelector,
    ) -> None:
        self.repo = repo
        self.config = config
        self.dirs = dirs
        self.emit = emit
        self.report = report
        self.job: Job[dict[str, Any]] = Job("rollback")
        selector.register(self.job.fd, selectors.EVENT_READ, "rollback")
        self.last_archive: str | None = None

    @property
    def resetting(self) -> bool:
        """A rollback is under way: the tree is its to write."""
        return self.job.running

    @property
    def bounds(self) -> rollback.Bounds:
        return (self.config.rollback.max_file_size, self.config.rollback.max_files)

    def start(
        self,
        qf: lifecycle.QuickFailure,
        stderr_tail: list[str],
        good_since_ns: int,
        failures: int,
    ) -> lifecycle.Observation | None:
        """After a quick failure: the note only (rollback off), a refusal (the target is no
        good: the failed state is archived all the same), or a rollback started, whose end
        comes as `finished`."""
        details = {"code": qf.code, "runtime_s": round(qf.runtime, 3), "stderr_tail": stderr_tail}
        failure = {"run": qf.run, "failed": qf.failed, "reason": qf.reason, **details}
        if qf.target is None:
            self.write_note(failure, failures)
            return lifecycle.RolledBack(good=None)
        try:
            target = self.repo.check_rollback_target(qf.target, self.repo.head())
        except RollbackRefused as e:
            archive = rollback.archive_now(self.repo, qf.reason, qf.run, self.emit)
            self.last_archive = archive.ref if archive else self.last_archive
            self.write_note({**failure, "archive": archive.ref if archive else None}, failures)
            return lifecycle.RollbackFailed(str(e))
        staging = self.dirs.preserve / f"run-{qf.run}"
        intent = rollback.plan(
            qf.run, qf.failed, target, qf.reason, staging, since_ns=good_since_ns, **details
        )
        keep, bounds, intent_path = self.config.rollback.preserve, self.bounds, self.dirs.intent
        self.job.start(
            lambda: rollback.carry_out(self.repo, intent, keep, intent_path, self.emit, bounds)
        )
        return None

    def finished(self, failures: int) -> lifecycle.Observation:
        """The rollback's thread is done (what it raised is raised here)."""
        return self._rolled_back(self.job.result(), failures)

    def resume(self, failures: int) -> None:
        """At start: finish a rollback that a previous supervisor was killed in the middle of."""
        intent = rollback.pending(self.dirs.intent)
        if intent is None:
            return
        self.report(
            {
                "event": Notice.RESUMING_ROLLBACK,
                "step": intent.get("step"),
                "run": intent.get("run"),
            }
        )
        done = rollback.resume(
            self.repo,
            self.dirs.intent,
            self.dirs.events,
            self.dirs.preserve,
            self.config.rollback.preserve,
            self.emit,
            self.bounds,
        )
        if done is not None:
            self._rolled_back(done, failures)

    def _rolled_back(self, done: dict[str, Any], failures: int) -> lifecycle.Observation:
        self.last_archive = done.get("archive") or self.last_archive
        self.write_note(done, failures)
        return lifecycle.RolledBack(good=str(done["target"]))

    def write_note(self, intent: dict[str, Any], failures: int) -> None:
        note = {
            "ts": utc_now(),
            "run": intent["run"],
            "commit": intent.get("failed"),
            "exit_code": intent.get("code"),
            "runtime_s": intent.get("runtime_s"),
            "reason": intent.get("reason"),
            "stderr_tail": intent.get("stderr_tail", []),
            "archive_ref": intent.get("archive"),
            "rolled_back_to": intent.get("target"),
            "consecutive_failures": failures,
        }
        write_json_atomic(self.dirs.recovery, note)

    def close(self, timeout: float) -> None:
        """At the stop: a rollback under way finishes (its intent would resume it at the next
        start otherwise)."""
        self.job.join(timeout)
        self.job.close()
