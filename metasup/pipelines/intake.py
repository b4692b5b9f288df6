"""Taking proposals in: the inbox, claims, and where each proposal ends up.

Agents drop `*.json` into `.metasup/inbox/` (written elsewhere, then renamed in), and
`*.restart` to ask for a restart of the agent between cycles (`metasup mcp serve`'s
`request_restart`). A proposal is
claimed by renaming it into `<git-dir>/metasup/proposals/claimed/<id>.json`: a rename succeeds for
exactly one taker, so two watchers never take the same one. A claim left behind by a supervisor
that died is taken again at the next start. Rejected proposals move to `rejected/` with
`<id>.errors.json` beside them; applied ones to `applied/`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import NotRegular, open_folder, read_regular, read_regular_at
from metasup.effects.process.wake import WakePipe
from metasup.effects.records.journal import write_json_atomic
from metasup.facts.errors import UserError
from metasup.facts.events import Emit, Event, Notice, Report
from metasup.facts.policy import Policy
from metasup.pipelines import proposals

IDLE_WAKE_S = 60.0
INBOX = ".metasup/inbox"  # relative to the working tree; excluded from snapshots
RESTART_SUFFIX = ".restart"
_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{6}$")


def new_id() -> str:
    """Unique and sortable by time: `20261121T195012123456Z-1a2b3c`."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{os.urandom(3).hex()}"


@dataclass(frozen=True)
class Claimed:
    id: str
    path: Path  # in claimed/
    source: str  # the name it had in the inbox


class InboxRefused(UserError):
    """The inbox, or the folder holding it, is not a real folder (a symlink, a file)."""


class ProposalStore:
    """The inbox in the working tree and the folders metasup keeps proposals in.

    The inbox is the agent's to write, so it is only ever reached through descriptors opened
    step by step without following a symlink: an inbox made a link to `.git/metasup` (or
    anywhere) is refused, never read."""

    def __init__(self, inbox: Path, root: Path) -> None:
        self.inbox = inbox
        self._top, self._rel = inbox.parent.parent, f"{inbox.parent.name}/{inbox.name}"
        self.claimed = root / "claimed"
        self.rejected = root / "rejected"
        self.applied = root / "applied"

    def open_inbox(self, create: bool = False) -> int:
        """A descriptor on the inbox; InboxRefused where a step of it is no real folder."""
        try:
            return open_folder(self._top, self._rel, create=create)
        except NotRegular as e:
            raise InboxRefused(
                f"{e.path} is {e.kind}, not a folder: metasup takes proposals only from a real "
                f"folder at {self._rel}; remove it and metasup makes the folder again"
            ) from None

    def create(self) -> None:
        os.close(self.open_inbox(create=True))
        for d in (self.claimed, self.rejected, self.applied):
            d.mkdir(parents=True, exist_ok=True)

    def enqueue(self, raw: bytes, suffix: str = ".json") -> str:
        """Put a proposal (or a restart request) in the inbox the way an agent should: write
        aside, rename in."""
        folder = self.open_inbox(create=True)
        try:
            pid = new_id()
            tmp = f".{pid}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o644, dir_fd=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, f"{pid}{suffix}", src_dir_fd=folder, dst_dir_fd=folder)
            return pid
        finally:
            os.close(folder)

    def take_restart_requests(self) -> list[tuple[str, str]]:
        """(id, reason) of each restart request in the inbox, taken (removed) once."""
        taken = []
        try:
            folder = self.open_inbox()
        except FileNotFoundError:
            return []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
            for e in entries:
                if not e.name.endswith(RESTART_SUFFIX) or e.name.startswith("."):
                    continue
                try:
                    raw = read_regular_at(folder, e.name, 4096) or b""
                except OSError:
                    raw = b""  # a link or a fifo: taken as a request without a reason
                try:
                    os.unlink(e.name, dir_fd=folder)  # one taker wins the unlink
                except OSError:
                    continue
                try:
                    reason = str(json.loads(raw).get("reason") or "")
                except (ValueError, AttributeError):
                    reason = ""
                taken.append((e.name.removesuffix(RESTART_SUFFIX), reason[:500]))
        finally:
            os.close(folder)
        return taken

    def waiting(self) -> list[Path]:
        """Proposals in the inbox, oldest name first; dot files are still being written."""
        try:
            folder = self.open_inbox()
        except FileNotFoundError:
            return []
        try:
            entries = list(os.scandir(folder))
        finally:
            os.close(folder)
        return sorted(
            self.inbox / e.name
            for e in entries
            if e.name.endswith(".json")
            and not e.name.startswith(".")
            and e.is_file(follow_symlinks=False)
        )

    def claim(self, path: Path) -> Claimed | None:
        """Take one proposal from the inbox; None when another taker was first."""
        stem = path.name.removesuffix(".json")
        pid = stem if _ID.match(stem) else new_id()
        target = self.claimed / f"{pid}.json"
        try:
            folder = self.open_inbox()
        except FileNotFoundError:
            return None
        try:
            os.rename(path.name, target, src_dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # The git dir is on another filesystem: claim inside the inbox first, then copy.
            staging = f".claim-{pid}"
            try:
                os.rename(path.name, staging, src_dir_fd=folder, dst_dir_fd=folder)
            except FileNotFoundError:
                return None
            try:
                data = read_regular_at(folder, staging) or b""
            except OSError:
                data = b""  # not a regular file: an empty claim, rejected as such
            target.write_bytes(data)  # in metasup's own folder
            os.unlink(staging, dir_fd=folder)
        finally:
            os.close(folder)
        return Claimed(pid, target, path.name)

    def left_claimed(self) -> list[Claimed]:
        """Claims a previous supervisor did not finish, to be taken again."""
        return [
            Claimed(p.name.removesuffix(".json"), p, p.name)
            for p in sorted(self.claimed.glob("*.json"))
        ]

    def reject(self, item: Claimed, errors: Iterable[dict[str, Any]]) -> Path:
        write_json_atomic(self.rejected / f"{item.id}.errors.json", list(errors))
        target = self.rejected / f"{item.id}.json"
        os.replace(item.path, target)
        return target

    def done(self, item: Claimed) -> Path:
        target = self.applied / f"{item.id}.json"
        os.replace(item.path, target)
        return target


class InboxWatcher:
    """Wakes the supervisor when something lands in the inbox: inotify through watchdog, or
    watchdog's polling observer where inotify is not available.

    `wake(now)`: now=True when a proposal is complete (renamed in, or closed after writing);
    now=False for a bare creation, which may still be being written: the supervisor looks a
    moment later, so an agent that writes in place instead of renaming is not cut short.
    """

    def __init__(
        self, inbox: Path, wake: Callable[[bool], None], force_polling: bool = False
    ) -> None:
        self.inbox = inbox
        self.wake = wake
        self.force_polling = force_polling
        self.polling = False
        self._observer: Any = None

    def start(self) -> None:
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        wake = self.wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                target = str(getattr(event, "dest_path", "") or event.src_path)
                wanted = target.endswith((".json", RESTART_SUFFIX))
                if not wanted or os.path.basename(target).startswith("."):
                    return
                if isinstance(event, FileMovedEvent | FileClosedEvent):
                    wake(True)
                elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
                    wake(False)

        factories = (PollingObserver,) if self.force_polling else (Observer, PollingObserver)
        for factory in factories:
            # A long timeout only bounds how often the idle threads wake; events come at once.
            observer = factory(timeout=IDLE_WAKE_S) if factory is Observer else factory(timeout=1.0)
            try:
                observer.schedule(Handler(), str(self.inbox), recursive=False)
                observer.daemon = True
                observer.start()
            except OSError:
                continue
            self._observer = observer
            self.polling = factory is PollingObserver
            return
        raise OSError(f"cannot watch {self.inbox}")

    def stop(self) -> None:
        if self._observer is not None:
            import logging

            # Stopping races its emitter thread, which then warns that it was inactive.
            logging.getLogger("watchdog").setLevel(logging.ERROR)
            self._observer.stop()
            with contextlib.suppress(RuntimeError):
                self._observer.join(timeout=5)
            self._observer = None


class Intake:
    """Proposals from the inbox to the working tree: claim, check, queue, then between cycles
    apply each all or nothing, or reject it with its errors."""

    def __init__(
        self, store: ProposalStore, policy: Policy, workdir: Path, emit: Emit, report: Report
    ) -> None:
        self.store = store
        self.policy = policy
        self.workdir = workdir
        self.emit = emit
        self.report = report
        self.queue: list[tuple[Claimed, proposals.Proposal]] = []
        self.restart_requested: str | None = None  # the reason, until the supervisor acts
        self.wake = WakePipe()
        self.watcher = InboxWatcher(store.inbox, self.wake.poke)
        self.refused = False  # the inbox was found replaced (reported once)

    @property
    def fd(self) -> int:
        """Readable when the inbox changed: for the supervisor's selector."""
        return self.wake.read_fd

    def start(self) -> None:
        self.store.create()
        self.watcher.start()
        if self.watcher.polling:
            self.report({"event": Notice.INBOX_POLLING, "reason": "inotify is not available"})
        for item in self.store.left_claimed():  # a previous supervisor died with these
            self._check(item, retaken=True)

    def stop(self) -> None:
        self.watcher.stop()
        self.wake.close()

    def take(self) -> bool:
        """Claim what waits in the inbox; True when something valid is queued. A restart
        request sets `restart_requested`."""
        try:
            for rid, reason in self.store.take_restart_requests():
                self.emit(Event.RESTART_REQUESTED, id=rid, reason=reason)
                self.restart_requested = reason
            for path in self.store.waiting():
                item = self.store.claim(path)
                if item is not None:
                    self._check(item)
        except InboxRefused as e:
            if not self.refused:
                self.report({"event": Notice.INBOX_REFUSED, "reason": str(e)})
            self.refused = True
        else:
            self.refused = False
        return bool(self.queue)

    def _check(self, item: Claimed, retaken: bool = False) -> None:
        try:
            raw = read_regular(item.path) or b""
        except OSError as e:
            raw = b""
            self.report({"event": Notice.PROPOSAL_UNREADABLE, "id": item.id, "error": str(e)})
        extra = {"retaken": True} if retaken else {}
        self.emit(Event.PROPOSAL_RECEIVED, id=item.id, source=item.source, bytes=len(raw), **extra)
        proposal, errors = proposals.validate(raw, self.policy, self.workdir)
        if errors or proposal is None:
            self._reject(item, [e.as_dict() for e in errors])
        elif all(queued.id != item.id for queued, _ in self.queue):
            self.queue.append((item, proposal))

    def _reject(self, item: Claimed, errors: list[dict[str, Any]]) -> None:
        self.store.reject(item, errors)
        codes = sorted({e["code"] for e in errors})
        self.emit(Event.PROPOSAL_REJECTED, id=item.id, codes=codes, errors=errors)

    def apply_queued(self) -> None:
        """Between cycles, the agent stopped: apply every queued proposal, each all or none."""
        queue, self.queue = self.queue, []
        for item, proposal in queue:
            # The tree may have moved since the proposal was checked: check it again.
            stale = proposals.check_against_tree(proposal, self.workdir)
            if stale:
                self._reject(item, [e.as_dict() for e in stale])
                continue
            t0 = time.perf_counter()
            try:
                proposals.apply(proposal, self.workdir)
            except proposals.ApplyError as e:
                failure = {"index": None, "file": None, "code": "apply_failed", "message": str(e)}
                self._reject(item, [failure])
                continue
            self.store.done(item)
            self.emit(
                Event.PROPOSAL_APPLIED,
                id=item.id,
                reason=proposal.reason,
                files=[c.path for c in proposal.changes],
                duration_ms=round((time.perf_counter() - t0) * 1000, 3),
            )
