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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from metasup.effects.process.trees import TREE_VAR, stop_tree

if TYPE_CHECKING:
    from metasup.effects.process.jail import Prepared


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
    output: IO[bytes] | None = None,
) -> Child:
    """Start `argv` as the leader of a new session. `capture`: stdout (and stderr, unless
    `stderr` names a file for it) come back as non-blocking pipes; `output`: both go to this
    file instead; `stdin`: a pipe to write to, else /dev/null. `jail`: run it in the jail
    prepared for it (see `jail`)."""
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
            stdout=output if output is not None else pipe,
            stderr=stderr if stderr is not None else output if output is not None else pipe,
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
    cancelled: bool = False  # stopped early because its caller gave up (Ctrl-C)

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out and not self.cancelled


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    reaper: Reaper,
    max_output: int = 1 << 20,
    jail: Prepared | None = None,
    cancel: threading.Event | None = None,
) -> Completed:
    """Run a command to completion with a hard timeout.

    At the timeout the whole tree is killed (SIGKILL, no grace: an evaluator that hangs has
    failed, whatever it printed). After a normal exit, whatever the command left running is
    killed too. Output beyond `max_output` bytes a stream is dropped from the middle. When
    `cancel` is set, the tree is killed as at the timeout, and the result says cancelled.
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

    timed_out = cancelled = False
    with selectors.DefaultSelector() as sel:
        for name, stream in streams.items():
            if stream is not None:
                sel.register(stream.fileno(), selectors.EVENT_READ, name)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if cancel is not None and cancel.is_set():
                timed_out = cancelled = True
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
        cancelled=cancelled,
    )


def run_captured(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a short command run to its end, for a check."""
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout, out.stderr
