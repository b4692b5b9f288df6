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
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metasup.digest import sha256_hex
from metasup.errors import RepoBusyError
from metasup.safeio import read_regular
from metasup.statefile import read_state

GENESIS = "0" * 64
_TAIL_WINDOW = 1 << 20


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
    def baseline(self) -> Path:
        """The approved content of the protected files (`metasup approve`)."""
        return self.root / "baseline.json"

    @property
    def mcp(self) -> Path:
        """The Unix sockets through which agents reach the supervised MCP servers."""
        return self.root / "mcp"

    def create(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, as events carry it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line_hash(line: bytes) -> str:
    return sha256_hex(line.rstrip(b"\n"))


class Journal:
    """The append side of `events.jsonl`. One writer: the supervisor holding the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.seq, self.prev = self._recover_tail()
        self._lock = threading.Lock()  # experiment threads record events too

    def _recover_tail(self) -> tuple[int, str]:
        """Seq and hash of the last whole record; a torn or garbled tail is cut off.

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
                    return seq, line_hash(line)
            end = line_start
        if end < len(tail):
            os.ftruncate(self._fd, start + end)
        return 0, GENESIS

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record: dict[str, Any] = {
                "ts": utc_now(),
                "seq": self.seq + 1,
                "event": str(event),
                "prev": self.prev,
            }
            record.update(fields)
            line = json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"
            os.write(self._fd, line)
            os.fdatasync(self._fd)
            self.seq += 1
            self.prev = line_hash(line)
            return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            with contextlib.suppress(ValueError):
                yield json.loads(raw)


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


def verify_chain(path: Path) -> list[str]:
    """Problems found in the hash chain; empty when every line links to the one before."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    if not path.exists():
        return problems
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


def read_json(path: Path) -> Any:
    """The document at `path`; None when it is missing, not JSON, or no regular file (a fifo
    there would block the reader for ever)."""
    try:
        data = read_regular(path)
    except OSError:
        return None
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


class RepoLock:
    """One supervisor per repository."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd = -1

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
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
        journal = Journal(dirs.events)
        try:
            yield journal
        finally:
            journal.close()


def holder_pid(path: Path) -> int | None:
    """The pid of the live supervisor holding the lock at `path`, or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def human_duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `6s`: an uptime as the status shows it."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
