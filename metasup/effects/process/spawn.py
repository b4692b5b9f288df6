"""The one place metasup starts, watches and stops processes.

Each child runs in its own session and process group and carries a marker in its environment
(`METASUP_TREE`). metasup is a Linux child subreaper, so a daemon that double-forks and calls
setsid is re-parented to metasup instead of init: it stays among metasup's descendants, where the
group id or the marker finds it. Exits are reaped on SIGCHLD (no polling loop), and a tree is
stopped with its stop signal, then SIGKILL after the timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psutil

from metasup.effects.files.safeio import open_append

if TYPE_CHECKING:
    from metasup.effects.process.jail import Prepared

TREE_VAR = "METASUP_TREE"


def python_module(module: str, *args: str) -> list[str]:
    """The command line of one of metasup's own processes: Python in isolated mode (-I), so
    neither the working directory nor PYTHON* variables put code on its path: a `json.py` or a
    `metasup/` the agent left in the tree is never imported."""
    return [sys.executable, "-I", "-m", module, *args]


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux >= 3.4); False where the kernel does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def exit_code_of(status: int) -> int:
    """A waitpid status as Popen reports it: the exit code, or -signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class Reaper:
    """Collects the exit status of every child of metasup, the adopted orphans included.

    One reaper serves the whole process: the supervisor's loop reaps on SIGCHLD, threads that
    run commands wait here for their own pid. Nothing else may call waitpid, or a status
    would be stolen (and Popen would report a stolen one as exit code 0).
    """

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self._cond = threading.Condition()

    def reap(self) -> dict[int, int]:
        """Reap every child that has exited; return the ones reaped by this call."""
        reaped: dict[int, int] = {}
        with self._cond:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                reaped[pid] = exit_code_of(status)
            if reaped:
                self.statuses.update(reaped)
                self._cond.notify_all()
        return reaped

    def pop(self, pid: int) -> int | None:
        with self._cond:
            return self.statuses.pop(pid, None)

    def wait(self, pid: int, timeout: float) -> int | None:
        """The exit code of `pid` once it exits, or None when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            with self._cond:
                if pid in self.statuses:
                    return self.statuses.pop(pid)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # Woken by a reap elsewhere; the short bound covers a process with no loop
                # reaping on SIGCHLD (a CLI command), where this thread reaps itself.
                self._cond.wait(min(left, 0.01))


@dataclass
class Child:
    """A started process: the leader of its own session and process group."""

    popen: subprocess.Popen[bytes]
    token: str
    started: float  # time.monotonic() just before the spawn
    argv: tuple[str, ...]
    jail: Prepared | None = None  # the child is bwrap, or runs under Landlock

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session makes the child its group leader

    @property
    def jailed(self) -> bool:
        """True when the child is bwrap: its pid and its pid 1 must not get a stop signal."""
        return self.jail is not None and bool(self.jail.prefix)

    def exit_code(self, raw: int) -> int:
        """The command's exit as Popen reports it. bwrap exits with 128+N for a command killed
        by signal N (as a shell does): that is -N again here."""
        if self.jailed and 128 < raw < 128 + signal.NSIG:
            return -(raw - 128)
        return raw

    def release(self) -> None:
        """What the jail kept for this run (its cgroup, its pipes) goes, once it has ended."""
        if self.jail is not None:
            self.jail.release()


class SpawnError(Exception):
    """The command could not be started at all (missing, not executable)."""


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    capture: bool = True,
    stdin: bool = False,
    stderr: IO[bytes] | None = None,
    pass_fds: Sequence[int] = (),
    jail: Prepared | None = None,
) -> Child:
    """Start `argv` as the leader of a new session. `capture`: stdout (and stderr, unless
    `stderr` names a file for it) come back as non-blocking pipes; `stdin`: a pipe to write to,
    else /dev/null. `jail`: run it in the jail prepared for it (see `jail`)."""
    token = uuid.uuid4().hex
    full_env = dict(env)
    full_env[TREE_VAR] = token
    started = time.monotonic()
    pipe = subprocess.PIPE if capture else None
    full_argv = [*(jail.prefix if jail else ()), *argv]
    if jail is not None and jail.prefix and not findable(argv[0], cwd, env):
        # bwrap would start and fail inside (exit 1): say it as an unjailed spawn would.
        jail.release()
        raise SpawnError(f"cannot start {argv[0]!r}: No such file or directory")
    try:
        popen = subprocess.Popen(
            full_argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=pipe,
            stderr=stderr if stderr is not None else pipe,
            start_new_session=True,
            close_fds=True,
            pass_fds=(*pass_fds, *(jail.pass_fds if jail else ())),
            preexec_fn=jail.preexec if jail else None,
        )
    except (OSError, subprocess.SubprocessError) as e:
        if jail is not None:
            jail.release()
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise SpawnError(f"cannot start {argv[0]!r}: {why}") from None
    if jail is not None:
        try:
            jail.enter(popen.pid)
        except OSError as e:
            popen.kill()
            popen.wait()  # ours to reap: nothing else knows of it yet
            jail.release()
            raise SpawnError(f"cannot jail {argv[0]!r}: {e.strerror or e}") from None
    for stream in (popen.stdout, popen.stderr):
        if stream is not None:
            os.set_blocking(stream.fileno(), False)
    return Child(popen=popen, token=token, started=started, argv=tuple(argv), jail=jail)


CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NS_GET_USERNS = 0xB701  # ioctl on a namespace: the user namespace that owns it


def listen_in_netns(pid: int, host: str, port: int, reaper: Reaper) -> socket.socket:
    """A TCP socket listening at `host`:`port` inside the network namespace of `pid` (a
    jail's), for a server outside to accept on. A forked child enters the namespace (through
    the user namespace that owns it, where it holds the rights to) and hands the socket back;
    this process's threads stay where they are. OSError when it cannot."""
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(net, NS_GET_USERNS)  # not the jail's own: bwrap nests another
    except OSError:
        os.close(net)
        raise
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    libc = ctypes.CDLL(None, use_errno=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    child = os.fork()
    if child == 0:  # only system calls from here to _exit
        try:
            mine.close()
            if os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino and (
                libc.setns(owner, CLONE_NEWUSER) != 0
            ):
                raise OSError(ctypes.get_errno(), "setns(user)")
            if libc.setns(net, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(net)")
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(4096)  # as the API's own (config.LISTEN_BACKLOG)
            socket.send_fds(theirs, [b"ok"], [sock.fileno()])
            os._exit(0)
        except BaseException as e:
            with contextlib.suppress(BaseException):
                theirs.send(str(e).encode()[:200])
            os._exit(1)
    theirs.close()
    os.close(owner)
    os.close(net)
    try:
        mine.settimeout(5.0)
        msg, fds, _, _ = socket.recv_fds(mine, 256, 1)
    finally:
        mine.close()
        reaper.wait(child, 5.0)
    if msg != b"ok" or not fds:
        raise OSError(f"cannot listen in the jail's network: {msg.decode(errors='replace')}")
    return socket.socket(fileno=fds[0])


def findable(command: str, cwd: Path, env: Mapping[str, str]) -> bool:
    """Whether `command` names an executable, as exec would look for it."""
    if "/" in command:
        return os.access(cwd / command, os.X_OK)
    return shutil.which(command, path=env.get("PATH", os.defpath)) is not None


@dataclass
class Completed:
    """What a command run to completion (or to its timeout) left."""

    code: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    duration: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    reaper: Reaper,
    max_output: int = 1 << 20,
    jail: Prepared | None = None,
) -> Completed:
    """Run a command to completion with a hard timeout.

    At the timeout the whole tree is killed (SIGKILL, no grace: an evaluator that hangs has
    failed, whatever it printed). After a normal exit, whatever the command left running is
    killed too. Output beyond `max_output` bytes a stream is dropped from the middle.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        child = spawn(argv, cwd=cwd, env=env, jail=jail)
    except SpawnError as e:
        return Completed(127, "", str(e), 0.0, False)
    out = {"stdout": bytearray(), "stderr": bytearray()}
    streams = {"stdout": child.popen.stdout, "stderr": child.popen.stderr}

    def read(fd: int, name: str) -> bool:
        """Take what the pipe holds; False at end of file."""
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        buf = out[name]
        buf += data
        if len(buf) > 2 * max_output:
            del buf[max_output // 2 : len(buf) - max_output // 2]
        return bool(data)

    timed_out = False
    with selectors.DefaultSelector() as sel:
        for name, stream in streams.items():
            if stream is not None:
                sel.register(stream.fileno(), selectors.EVENT_READ, name)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            # A short bound: a daemon it started may hold the pipes open after it exited.
            for key, _ in sel.select(min(left, 0.05)):
                if not read(key.fd, key.data):
                    sel.unregister(key.fd)
            reaper.reap()
            if child.pid in reaper.statuses:
                for key in list(sel.get_map().values()):
                    read(key.fd, key.data)
                break
    code = None if timed_out else reaper.wait(child.pid, max(0.0, deadline - time.monotonic()))
    if code is not None:
        code = child.exit_code(code)
    if code is None:
        timed_out = True
    # Hard: the group and every marked descendant, whatever they do with SIGTERM.
    stop_tree(child.pgid, child.token, signal.SIGKILL, 0.0, reaper)
    if timed_out:
        reaper.wait(child.pid, 5.0)
    child.popen.returncode = code if code is not None else -signal.SIGKILL
    child.release()
    for stream in streams.values():
        if stream is not None:
            stream.close()
    return Completed(
        code=code,
        stdout=out["stdout"].decode("utf-8", "replace"),
        stderr=out["stderr"].decode("utf-8", "replace"),
        duration=time.monotonic() - t0,
        timed_out=timed_out,
    )


def _marker(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(TREE_VAR)
    except (psutil.Error, OSError):
        return None


def descendants() -> list[psutil.Process]:
    """Every live descendant of this process.

    Walked down from here through /proc/PID/task/TID/children, which costs a read per member;
    psutil's own walk reads /proc/PID/stat of every process on the machine, every health tick.
    """
    me = os.getpid()
    if not os.path.exists(f"/proc/{me}/task/{me}/children"):  # a kernel without the lists
        try:
            return psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
    pids: list[int] = []
    frontier = [me]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = list(os.scandir(f"/proc/{pid}/task"))
        except OSError:
            continue  # it exited meanwhile
        for task in tasks:
            try:
                with open(f"{task.path}/children", "rb") as f:
                    found = [int(c) for c in f.read().split()]
            except OSError:
                continue
            pids += found
            frontier += found
    procs = []
    for pid in dict.fromkeys(pids):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


def tree_members(pgid: int, token: str, adopt_unmarked: bool = False) -> list[psutil.Process]:
    """The live processes of one tree among metasup's descendants.

    A descendant belongs to the tree when it is in the tree's process group or carries its
    marker. With `adopt_unmarked` (the supervisor, which spawns nothing but marked trees), an
    orphan that cleared its environment belongs to it too: nothing else could have made it.
    """
    members = []
    for proc in descendants():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
                continue
        except (psutil.Error, ProcessLookupError):
            continue
        mark = _marker(proc)
        if mark == token or (mark is None and adopt_unmarked):
            members.append(proc)
    return members


def signal_tree(
    pgid: int, members: Iterable[psutil.Process], sig: int, jailed: bool = False
) -> None:
    """`sig` to the group and every member. In a jail (`jailed`), bwrap leads the group and is
    the namespace's pid 1: both die at any signal and take the whole jail with them, so only
    SIGKILL goes to them; a stop signal goes to the jailed processes alone."""
    spare = jailed and sig != signal.SIGKILL
    if not spare:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in members:
        if spare and _is_bwrap(proc, pgid):
            continue
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _is_bwrap(proc: psutil.Process, launcher: int) -> bool:
    """One of bwrap's own processes: the launcher, or the jail's pid 1 (the only process
    whose pid in its namespace is 1; the agent cannot take that, whatever it names itself)."""
    if proc.pid == launcher:
        return True
    try:
        with open(f"/proc/{proc.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == b"1"
    except OSError:
        pass
    return False


def stop_tree(
    pgid: int,
    token: str,
    sig: int,
    timeout: float,
    reaper: Reaper,
    adopt_unmarked: bool = False,
    jailed: bool = False,
) -> int:
    """Stop every process of a tree: `sig`, wait up to `timeout`, then SIGKILL. Returns how many
    processes had to be signalled (0: nothing was left)."""
    members = tree_members(pgid, token, adopt_unmarked)
    if not members and not _group_alive(pgid):
        reaper.reap()
        return 0
    known = {p.pid: p for p in members}
    if jailed:  # bwrap's own processes, ending with the jail, are no stragglers
        members = [p for p in members if not _is_bwrap(p, pgid)]
    signal_tree(pgid, list(known.values()), sig, jailed)
    if sig != signal.SIGKILL:
        # Stopped processes cannot act on the signal until they run again.
        signal_tree(pgid, members, signal.SIGCONT, jailed)
    # In a jail, what bwrap starts a moment after a stop began gets the stop signal too: a run
    # stopped as it launches then ends by its stop signal, as it would outside.
    late = sig if jailed and sig != signal.SIGKILL else None
    if not _wait_gone(pgid, token, adopt_unmarked, reaper, known, timeout, None, late, jailed):
        # Late forks are caught too: the tree is looked for again on every round.
        _wait_gone(pgid, token, adopt_unmarked, reaper, known, 5.0, signal.SIGKILL, None, jailed)
    if jailed:
        # What is left is bwrap's: its pid 1 tearing the namespaces down (that can take the
        # kernel ~10 ms; nothing of the agent's runs any more, so nothing waits for it), and the
        # launcher, about to exit with the command's status. Only one that hangs is killed.
        launcher = known.get(pgid)
        deadline = time.monotonic() + 1.0
        while launcher is not None and _alive(launcher) and time.monotonic() < deadline:
            reaper.reap()
            time.sleep(0.001)  # bounded: bwrap exits as soon as its pid 1 reports
        if launcher is not None and _alive(launcher):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        return len(members)
    return len(members) or 1


def _wait_gone(
    pgid: int,
    token: str,
    adopt: bool,
    reaper: Reaper,
    known: dict[int, psutil.Process],
    limit: float,
    sig: int | None,
    late: int | None = None,
    jailed: bool = False,
) -> bool:
    """Wait until every process known or found in the tree is gone; with `sig`, send it to
    them each round; with `late` (a jailed tree), send it once to each process first found
    here. True when they went within `limit`.

    Processes already known are waited for even when no longer found among our descendants:
    a killed parent's child is re-parented away (when metasup is not a subreaper) a moment
    before it dies itself.
    """
    deadline = time.monotonic() + limit
    while True:
        reaper.reap()
        fresh = []
        for proc in tree_members(pgid, token, adopt):
            if proc.pid not in known:
                fresh.append(proc)
                known[proc.pid] = proc
        if late is not None and fresh:
            signal_tree(pgid, fresh, late, jailed=True)
        if jailed:
            # The jail's own processes aside, once the command has been seen (or bwrap has
            # exited without starting it): a stop that came while bwrap set up waits for it.
            ours = [p for p in known.values() if not _is_bwrap(p, pgid)]
            alive = [p for p in ours if _alive(p)]
            launcher = known.get(pgid)
            if not alive and (ours or launcher is None or not _alive(launcher)):
                return True
        else:
            alive = [p for p in known.values() if _alive(p)]
            if not alive and not _group_alive(pgid):
                return True
        if sig is not None:
            signal_tree(pgid, alive, sig)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)  # bounded wait for processes we signalled; ends at the deadline


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_alive(pgid: int) -> bool:
    """True while the group has a member. Callers reap first: metasup's own zombies are gone
    then, and any other zombie's parent is itself in the group or about to be adopted."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True  # PermissionError too: someone is there


def kill_descendants(reaper: Reaper, timeout: float = 5.0) -> int:
    """SIGKILL everything below this process: the last step of a supervisor's shutdown, for
    commands still running in threads (experiments). Returns how many were found."""
    procs = descendants()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    known = {p.pid: p for p in procs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reaper.reap()
        if not any(_alive(p) for p in known.values()):
            break
        time.sleep(0.002)  # SIGKILL cannot be ignored; this only waits for the kernel
    return len(procs)


def git_processes_in(*roots: Path) -> list[int]:
    """Pids of running git programs whose working directory is inside one of `roots`."""
    me = os.getpid()
    found = []
    prefixes = [str(r) for r in roots]
    for proc in psutil.process_iter(["pid", "name", "cwd"]):
        info = proc.info
        if info["pid"] == me or not (info.get("name") or "").startswith("git"):
            continue
        cwd = info.get("cwd") or ""
        if any(cwd == p or cwd.startswith(p + os.sep) for p in prefixes):
            found.append(info["pid"])
    return found


def run_captured(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a short command run to its end, for a check."""
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout, out.stderr


def stop_leftover_tree(pgid: int | None, token: str, sig: int, timeout: float) -> int:
    """Stop a tree a previous supervisor left running when it was killed (kill -9).

    Those processes are no longer metasup's descendants, so the whole process table is searched
    for the tree's marker. Returns how many were found.
    """
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        if _marker(proc) == token:
            found.append(proc)
    if not found:
        return 0
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Only when the group is still the tree's own (the leader carries the marker).
            if any(p.pid == pgid for p in found):
                os.killpg(pgid, sig)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(found)


@dataclass
class TreeSample:
    rss_mb: float
    cpu_percent: float
    processes: int


@dataclass
class TreeSampler:
    """RSS and CPU of a whole tree; keeps Process objects so CPU% spans samples."""

    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def sample(self, members: Sequence[psutil.Process]) -> TreeSample:
        rss = 0
        cpu = 0.0
        seen = set()
        for proc in members:
            kept = self.procs.setdefault(proc.pid, proc)
            seen.add(proc.pid)
            try:
                with kept.oneshot():
                    rss += kept.memory_info().rss
                    cpu += kept.cpu_percent(None)
            except psutil.Error:
                continue
        for pid in list(self.procs):
            if pid not in seen:
                del self.procs[pid]
        return TreeSample(rss_mb=rss / (1 << 20), cpu_percent=cpu, processes=len(seen))


class LaunchLog:
    """One launch's output: a log file split on line boundaries, the terminal, and a tail.

    The file is `run-<N>-<commit>.log`; past `max_bytes` it rotates to `.1.log`, `.2.log`, ...
    (keeping `backups`), cut only between lines. The last lines of stderr stay in memory for the
    recovery note, so rotation never loses the tail before a crash.
    """

    def __init__(
        self,
        directory: Path,
        run: int,
        commit: str | None,
        *,
        echo: bool = True,
        max_bytes: int = 5 << 20,
        backups: int = 3,
        tail_lines: int = 40,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"run-{run:06d}-{(commit or 'none')[:12]}.log"
        self.max_bytes = max_bytes
        self.backups = backups
        self.echo = echo
        self._file: IO[bytes] = open_append(self.path)
        self._size = self._file.tell()
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self.stderr_tail: deque[str] = deque(maxlen=tail_lines)
        self.stdout_tail: deque[str] = deque(maxlen=tail_lines)

    def feed(self, stream: str, data: bytes) -> None:
        if self.echo:
            target = sys.stderr if stream == "stderr" else sys.stdout
            with contextlib.suppress(OSError, ValueError):
                target.buffer.write(data)
                target.buffer.flush()
        buf = self._partial[stream] + data
        cut = buf.rfind(b"\n") + 1
        whole, self._partial[stream] = buf[:cut], buf[cut:]
        if len(self._partial[stream]) > 1 << 16:
            whole, self._partial[stream] = whole + self._partial[stream] + b"\n", b""
        if whole:
            self._write_lines(stream, whole)

    def _write_lines(self, stream: str, lines: bytes) -> None:
        tail = self.stderr_tail if stream == "stderr" else self.stdout_tail
        for line in lines.splitlines():
            tail.append(line.decode("utf-8", "replace"))
        if self._size and self._size + len(lines) > self.max_bytes:
            self._rotate()
        self._file.write(lines)
        self._file.flush()
        self._size += len(lines)

    def _rotate(self) -> None:
        self._file.close()
        stem = self.path.with_suffix("")
        for n in range(self.backups, 0, -1):
            src = self.path if n == 1 else Path(f"{stem}.{n - 1}.log")
            if src.exists():
                os.replace(src, f"{stem}.{n}.log")
        self._file = open_append(self.path)
        self._size = 0

    def close(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._write_lines(stream, rest + b"\n")
                self._partial[stream] = b""
        self._file.close()


def drain(child: Child, log: LaunchLog) -> bool:
    """Read what the child's pipes hold now; True once both are at end of file."""
    done = True
    for name, stream in (("stdout", child.popen.stdout), ("stderr", child.popen.stderr)):
        if stream is None or stream.closed:
            continue
        while True:
            try:
                data = os.read(stream.fileno(), 1 << 16)
            except BlockingIOError:
                done = False
                break
            if not data:
                stream.close()
                break
            log.feed(name, data)
    return done


def prune_logs(directory: Path, keep_runs: int) -> None:
    """Keep the logs of the newest `keep_runs` launches."""
    runs: dict[str, list[Path]] = {}
    for path in directory.glob("run-*.log"):
        runs.setdefault(path.name.split("-")[1], []).append(path)
    for key in sorted(runs)[:-keep_runs] if keep_runs else sorted(runs):
        for path in runs[key]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
