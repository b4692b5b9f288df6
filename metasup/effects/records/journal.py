"""The supervisor's own records, kept in `<git-dir>/metasup/`, out of the working tree.

- `events.jsonl`: append-only, one JSON object a line, each carrying the SHA-256 of the line
  before it (`prev`), synced to disk before the step it records is reported done.
- `state.json`: the current status, replaced atomically (write, fsync, rename).
- `lock`: an flock held for the supervisor's lifetime; the kernel drops it when the process dies,
  kill -9 included, so a stale lock never blocks a restart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import NotRegular, open_regular, real_folder
from metasup.effects.records import chain
from metasup.effects.records.statefile import read_state
from metasup.facts.digest import sha256_hex
from metasup.facts.errors import RepoBusyError, UserError
from metasup.facts.units import human_duration

GENESIS = "0" * 64
# Fields of a journal line that link it to the chain and say nothing of what happened.
CHAIN_FIELDS = frozenset({"prev", "mac"})
# What a one-line rendering of an event leaves out: its place in the journal.
HEADER_FIELDS = frozenset({"ts", "seq", "event"}) | CHAIN_FIELDS
_TAIL_WINDOW = 1 << 20
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True)
class StateDir:
    """Where each record lives under `<git-dir>/metasup/`."""

    root: Path

    @classmethod
    def for_git_dir(cls, git_dir: Path) -> StateDir:
        return cls(git_dir / "metasup")

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def recovery(self) -> Path:
        return self.root / "recovery.json"

    @property
    def intent(self) -> Path:
        return self.root / "intent.json"

    @property
    def preserve(self) -> Path:
        return self.root / "preserve"

    @property
    def heartbeat(self) -> Path:
        return self.root / "heartbeat"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def secret(self) -> Path:
        """What the jail hides from every run: the journal's key and tail."""
        return self.root / "secret"

    @property
    def mcp_control(self) -> Path:
        """The MCP worker's operator socket (`metasup mcp restart`): in `secret`, which the
        jail hides, so no agent can drive it."""
        return self.secret / "mcp-control.sock"

    @property
    def baseline(self) -> Path:
        """The approved content of the protected files (`metasup approve`)."""
        return self.root / "baseline.json"

    @property
    def mcp(self) -> Path:
        """The Unix sockets through which agents reach the supervised MCP servers."""
        return self.root / "mcp"

    def create(self) -> None:
        """Make the folders, refusing any of them that is a symlink or a file: the agent can
        write here when the jail is off, and metasup must never write through its links."""
        for folder in (self.root, self.logs, self.preserve, self.backups, self.mcp, self.secret):
            try:
                real_folder(folder)
            except NotRegular as e:
                raise UserError(
                    f"{e.path} is {e.kind}, not a folder: metasup keeps its own state only in "
                    "real folders; remove it"
                ) from None
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret.mkdir(mode=0o700, exist_ok=True)


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, as events carry it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line_hash(line: bytes) -> str:
    return sha256_hex(line.rstrip(b"\n"))


class Journal:
    """The append side of `events.jsonl`. One writer: the supervisor holding the lock."""

    def __init__(self, path: Path, secret: Path | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.seq, self.prev, self.mac = self._recover_tail()
        self.secret = chain.Secret(secret or path.parent / "secret")
        key, made = self.secret.key(create=True)
        assert key is not None
        self._key = key
        # What a check of the tail found at open: the supervisor reports it as an event.
        self.breaks = self._check_tail(made)
        self._lock = threading.Lock()  # experiment threads record events too

    def _check_tail(self, key_made: bool) -> list[str]:
        """The end of the journal against the tail kept aside: cut off, edited, or extended
        by someone without the key since the last writer closed it."""
        if key_made and self.mac:
            return ["the journal key was missing: a new one was made; older macs cannot be checked"]
        tail = self.secret.read_tail()
        if tail is None:
            return []
        size = os.fstat(self._fd).st_size
        start = max(0, size - _TAIL_WINDOW)
        lines = os.pread(self._fd, size - start, start).splitlines(keepends=True)
        if start > 0:
            lines = lines[1:]
        # From the line the tail names to the end; the tail's own mac starts the chain.
        at = None
        for i, raw in enumerate(lines):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if int(json.loads(chain.split(raw)[0]).get("seq")) == tail.seq:
                    at = i
        if at is None:
            if self.seq < tail.seq:
                return [
                    f"the journal ends at seq {self.seq}, but seq {tail.seq} was written: "
                    "events were cut off"
                ]
            return [f"seq {tail.seq}, kept aside as the last written, is not in the journal"]
        problems = []
        if chain.split(lines[at])[1] != tail.mac:
            problems.append(f"seq {tail.seq} differs from the copy of its mac kept aside")
        return problems + chain.verify_macs(lines[at + 1 :], self._key, None, start_mac=tail.mac)

    def _recover_tail(self) -> tuple[int, str, str]:
        """Seq, hash and mac ("" for none) of the last whole record; a torn or garbled tail
        is cut off.

        A torn line is a crash mid-write: it was never reported done (the sync comes first), so
        dropping it loses nothing anyone was told happened, and keeps the chain verifiable.
        """
        size = os.fstat(self._fd).st_size
        start = max(0, size - _TAIL_WINDOW)
        tail = os.pread(self._fd, size - start, start)
        end = len(tail)
        while end > 0:
            line_start = tail.rfind(b"\n", 0, end - 1) + 1
            if line_start == 0 and start > 0:
                break  # a line longer than the window; no event is that long
            line = tail[line_start:end]
            if line.endswith(b"\n"):
                try:
                    record = json.loads(line)
                    seq = int(record["seq"])
                except (ValueError, KeyError, TypeError):
                    pass
                else:
                    if end < len(tail):
                        os.ftruncate(self._fd, start + end)
                    return seq, line_hash(line), chain.split(line)[1] or ""
            end = line_start
        if end < len(tail):
            os.ftruncate(self._fd, start + end)
        return 0, GENESIS, ""

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record: dict[str, Any] = {
                "ts": utc_now(),
                "seq": self.seq + 1,
                "event": str(event),
                "prev": self.prev,
            }
            record.update(fields)
            body = json.dumps(record, separators=(",", ":"), default=str).encode()
            mac = chain.sign(self._key, self.mac, body)
            line = chain.with_mac(body, mac) + b"\n"
            os.write(self._fd, line)
            os.fdatasync(self._fd)
            self.seq += 1
            self.prev = line_hash(line)
            self.mac = mac
            self.secret.write_tail(self.seq, mac)
            return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.secret.close()


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            with contextlib.suppress(ValueError):
                yield json.loads(raw)


def events_since(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The events of the complete lines after byte `offset`, and the offset past them: a
    follower reads only what was appended since its last look, not the whole journal again."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:  # not there (yet), or unreadable for now: nothing new to follow
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next look
    out = []
    for raw in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(raw))
    return out, offset + end


def tail_events(path: Path, window: int = 1 << 18) -> list[dict[str, Any]]:
    """The events in the last `window` bytes of the log: recent history, read cheaply."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - window))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > window:
        lines = lines[1:]  # the first one is cut
    out = []
    for raw in lines:
        with contextlib.suppress(ValueError):
            if raw:
                out.append(json.loads(raw))
    return out


def verify_chain(path: Path, secret: Path | None = None) -> list[str]:
    """Problems found in the journal: every line must link to the one before (`prev`), carry
    the next seq, and a mac made with the key; the journal must reach the tail kept aside.
    Empty when it is intact."""
    problems: list[str] = []
    keys = chain.Secret(secret or path.parent / "secret")
    tail = keys.read_tail()
    if not path.exists():
        if tail is not None:
            problems.append(f"the journal is missing, but seq {tail.seq} was written")
        return problems
    key, _ = keys.key(create=False)
    with path.open("rb") as f:
        problems += chain.verify_macs(f, key, tail)
    prev = GENESIS
    expected_seq = 1
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw)
            except ValueError:
                problems.append(f"line {n}: not JSON")
                prev = line_hash(raw)
                continue
            if record.get("prev") != prev:
                problems.append(
                    f"line {n} (seq {record.get('seq')}): prev does not match line {n - 1}"
                )
            if record.get("seq") != expected_seq:
                problems.append(f"line {n}: seq {record.get('seq')}, expected {expected_seq}")
            expected_seq = (record.get("seq") or expected_seq) + 1
            prev = line_hash(raw)
    return problems


def write_json_atomic(path: Path, data: Any, *, sync: bool = True) -> None:
    """Replace `path` so a reader sees the old document or the new one, never a mix.

    `sync=False` skips the fdatasync: still atomic against a crash of the process, not against
    a power cut. Right for a status view rewritten many times a minute.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            if sync:
                os.fdatasync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LockLost(RepoBusyError):
    """The lock file was replaced or removed while held: another supervisor may start beside
    this one, so this one stops before it touches git again."""


class RepoLock:
    """One supervisor per repository.

    The flock is the truth: the kernel drops it when its holder dies and names the holder in
    its lock table. The pid written in the file is for people only; nothing here reads it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd = -1
        self._id: tuple[int, int] = (0, 0)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
                )
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise RepoBusyError(f"{self.path} is a symbolic link; remove it") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    holder = holder_pid(self.path)
                    who = f"pid {holder}" if holder else "another process"
                    raise RepoBusyError(
                        f"another metasup ({who}) already supervises {self.what}; stop it first"
                    ) from None
                raise
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise RepoBusyError(f"{self.path} is not a regular file; remove it")
            self._fd, self._id = fd, (st.st_dev, st.st_ino)
            if self.held():
                break
            # Unlinked or replaced between our open and our lock: lock what is there now.
            os.close(fd)
            self._fd = -1
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def held(self) -> bool:
        """The file at the path is still the one this process locked."""
        if self._fd < 0:
            return False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def check(self) -> None:
        """LockLost unless the lock is still ours, at its path."""
        if not self.held():
            raise LockLost(
                f"{self.path} was removed or replaced while this supervisor held it: a second "
                "metasup could start beside it, so this one stops before touching git again"
            )

    def release(self) -> None:
        if self._fd >= 0:
            if self.held():
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RepoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_journal(dirs: StateDir, what: str) -> Iterator[Journal]:
    """The journal, for a command that changes the repository while no supervisor runs: the
    repo lock is held throughout (a running supervisor makes this a clear error)."""
    dirs.create()
    with RepoLock(dirs.lock, what):
        journal = Journal(dirs.events, dirs.secret)
        if journal.breaks:
            journal.append("journal_broken", problems=journal.breaks)
        try:
            yield journal
        finally:
            journal.close()


def holder_pid(path: Path) -> int | None:
    """The pid holding the lock at `path` as the kernel's lock table names it (-1 when it is
    held by a process this namespace cannot see); None when nobody holds it."""
    try:
        fd = open_regular(path)
    except OSError:
        return None  # missing, or a symlink or fifo: no supervisor locks that
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            st = os.fstat(fd)
            holders = lock_holders(st.st_dev, st.st_ino)
            return holders[0] if holders else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_holders(dev: int, ino: int, table: str = "/proc/locks") -> list[int]:
    """Pids holding an flock on the file (dev, ino), from the kernel's lock table."""
    try:
        with open(table, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return []
    return parse_lock_table(text, dev, ino)


def parse_lock_table(text: str, dev: int, ino: int) -> list[int]:
    """The FLOCK holders of (dev, ino) in `/proc/locks` text (waiters, marked `->`, left out)."""
    want = (os.major(dev), os.minor(dev), ino)
    pids = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == want and pid > 0:
            pids.append(pid)
    return pids


def public_status(doc: dict[str, Any], now: float) -> dict[str, Any]:
    """The status document for readers outside the supervisor (the API, the agent's MCP tools):
    without the process markers it keeps for itself, with the uptime as of `now`."""
    out = {k: v for k, v in doc.items() if k != "helper_trees"}
    if isinstance(out.get("agent"), dict):
        out["agent"] = {k: v for k, v in out["agent"].items() if k != "token"}
    started = out.get("started_at")
    if out.get("status") == "running" and isinstance(started, int | float):
        uptime = max(0.0, now - started)
        out["uptime_s"] = round(uptime, 3)
        out["uptime"] = human_duration(uptime)
    return out


def recorded_trees(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The process trees a status document records (the agent's, the helpers'), by marker."""
    trees = [doc.get("agent"), *(doc.get("helper_trees") or [])]
    return [t for t in trees if isinstance(t, dict) and t.get("token")]


def current_status(dirs: StateDir) -> tuple[dict[str, Any], bool]:
    """The status document (`state.json`) and whether a supervisor holds the repository now."""
    doc = read_state(dirs.state)
    holder = holder_pid(dirs.lock)
    if not doc:
        doc = {"status": "stopped", "run": 0, "note": "no supervisor has run in this repository"}
    elif holder is None and doc.get("status") == "running":
        # It was killed without a chance to record its end.
        doc["status"] = "stopped"
        doc["note"] = "the supervisor ended without recording it (killed?)"
    return doc, holder is not None
