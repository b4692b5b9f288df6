"""What the agent may have broken, checked and put back between and during its runs.

- The protected files: as approved at start (or the start is refused), in every good commit
  before it is used (or metasup stops), and put back from the good commit the moment the agent
  writes them (the tamper watch).
- metasup's refs: good and the archives as the journal has them, put back when moved or
  deleted; a branch rewritten behind metasup's back has what it dropped archived.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metasup.effects.git import protected
from metasup.effects.git.repo import ARCHIVE_PREFIX, GitRepo, archive_ref_name
from metasup.effects.records.journal import RepoLock, StateDir
from metasup.facts.errors import IntegrityError
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.pipelines import integrity, refguard

if TYPE_CHECKING:
    from metasup.pipelines.tamper import TamperWatch

ARCHIVE_CHECK_S = 10.0  # the archive refs are compared with the journal at least this often


class Guards:
    def __init__(
        self,
        repo: GitRepo,
        dirs: StateDir,
        lock: RepoLock,
        is_protected: Callable[[str], bool],
        emit: Emit,
        report: Report,
    ) -> None:
        self.repo = repo
        self.dirs = dirs
        self.lock = lock
        self.is_protected = is_protected
        self.emit = emit
        self.report = report
        self.expected = refguard.Expected()  # metasup's refs as the journal has them
        self.tamper: TamperWatch | None = None
        self.good_forged = False  # the good commit failed the integrity check: restore nothing
        self._baseline: dict[str, str] = {}
        self._verified_good: str | None = None
        self._recent: set[str] = set()  # restored lately: looked at again once
        self._refs_stamp: tuple[int, ...] = ()  # the archive refs' folder and packed-refs
        self._refs_checked = 0.0

    # --- the protected files ------------------------------------------------------------------

    def check_at_start(self, config_path: Any) -> None:
        """The protected files must be as approved, and the config the one approved; the first
        start approves what it finds (see `check_protected`)."""
        self._baseline = integrity.check_protected(
            self.repo, self.dirs, self.is_protected, config_path, self.emit
        )
        self.verify_good()

    def verify_good(self) -> None:
        """Before each cycle: the good commit's protected files are the approved ones. Only
        the paths that changed since the last verified good are looked at."""
        good = self.repo.good()
        if good is None or good == self._verified_good:
            return
        if self._verified_good is not None:
            # The last verified good matched the baseline everywhere: only the protected
            # paths changed since can differ now (a full walk of a big tree takes 100 ms).
            changed = [
                p
                for p in self.repo.changed_paths(self._verified_good, good)
                if self.is_protected(p)
            ]
            if not changed:
                self._verified_good = good
                return
            baseline = {p: self._baseline[p] for p in changed if p in self._baseline}
            differ = integrity.differences(baseline, protected.entries_at(self.repo, good, changed))
        else:
            differ = integrity.differences(
                self._baseline, protected.protected_in_commit(self.repo, good, self.is_protected)
            )
        if differ:
            self.good_forged = True
            self.report({"event": Notice.INTEGRITY_STOP, "good": good, "differ": differ})
            raise IntegrityError(
                f"the good commit {good[:12]} has protected files that differ from the approved "
                f"baseline: {integrity.summary(differ)}; metasup stops (inspect it, then "
                "`metasup approve` or `metasup rollback --to REF`)"
            )
        self._verified_good = good

    def start_tamper_watch(self, selector: selectors.BaseSelector) -> None:
        from metasup.pipelines.tamper import TamperWatch

        watch = TamperWatch(self.repo.workdir, self.is_protected, self.dirs.lock)
        if not watch.start():
            watch.stop()
            self.report({"event": Notice.TAMPER_WATCH_OFF, "reason": "the tree cannot be watched"})
            return
        self.tamper = watch
        selector.register(watch.fd, selectors.EVENT_READ, "tamper")

    def restore_touched(self, recheck: bool = False) -> tuple[str, ...]:
        """Protected paths the watch saw written: put back from the good commit; the ones put
        back. A writer racing the restore (its write lands just after) is caught by a recheck of
        the same paths a moment later, repeated until one finds nothing to put back."""
        assert self.tamper is not None
        self.lock.check()
        self.verify_good()  # never restore from a good commit that is not the approved one
        touched = set(self.tamper.take())
        if recheck:
            touched |= self._recent
        restored = protected.restore_protected(self.repo, sorted(touched), self.is_protected)
        if self.tamper.take_overflow():  # events were lost: the guard looks at everything
            everything = protected.guard_protected(self.repo, self.is_protected)
            restored = tuple(sorted({*restored, *everything}))
        if not restored:
            if recheck:
                self._recent = set()
            return ()  # metasup's own writes, or already as good as the good commit
        self._recent |= set(restored)
        return restored

    def restore_all(self) -> tuple[str, ...]:
        """At the stop: what the agent wrote to protected paths as it was stopped goes back,
        or the next start would refuse the tree it left."""
        if self.tamper is None or self.good_forged or not self.lock.held():
            return ()
        return tuple(protected.guard_protected(self.repo, self.is_protected))

    def stop(self) -> None:
        if self.tamper is not None:
            self.tamper.stop()

    # --- metasup's refs -----------------------------------------------------------------------

    def check_refs(self, everything: bool = True) -> None:
        """Put back metasup's refs that differ from the journal (deleted, moved, made
        symbolic) while their commits exist; report them, and those that cannot be.

        Between cycles the good ref is read every time, the archive refs (a lookup each:
        about 4 ms for a thousand) when their folder or packed-refs changed, and at least
        every ARCHIVE_CHECK_S."""
        stamp = self.repo.refs_stamp()
        now = time.monotonic()
        if stamp != self._refs_stamp or now - self._refs_checked > ARCHIVE_CHECK_S:
            everything = True
        if everything:
            self._refs_stamp, self._refs_checked = stamp, now
        restored, lost = refguard.put_back(self.repo, self.expected, archives=everything)
        if restored or lost:
            self.emit(
                Event.REFS_RESTORED,
                refs=refguard.as_fields(restored),
                lost=refguard.as_fields(lost),
            )

    def own_writes_begin(self) -> tuple[int, ...] | None:
        """Before metasup itself adds an archive ref: the refs' stamp, when it is the one the
        last check saw (None otherwise)."""
        stamp = self.repo.refs_stamp()
        return stamp if stamp == self._refs_stamp else None

    def own_writes_done(self, before: tuple[int, ...] | None) -> None:
        """metasup added an archive ref since `before`, its agent stopped: the stamp moves on
        without comparing every archive ref again (a look at a thousand costs ~4 ms, and each
        crash added one). A ref someone else wrote meanwhile is found by the check that runs
        at least every ARCHIVE_CHECK_S."""
        if before is not None and before == self._refs_stamp:
            self._refs_stamp = self.repo.refs_stamp()

    def keep_rewritten(self) -> None:
        """The branch rewound or rewritten behind metasup's back: what it no longer reaches
        is archived before the next snapshot builds on the new history."""
        found = refguard.rewritten(self.repo, self.expected)
        if found is None:
            return
        left, now = found
        ref = self.repo.archive_commit(
            archive_ref_name("history_rewritten")[len(ARCHIVE_PREFIX) :], left
        )
        self.emit(
            Event.ARCHIVE, ref=ref, commit=left, reason="history_rewritten", was=left, now=now
        )
