"""A cgroup per jailed run: memory (tmpfs and /dev/shm pages included), cpu and pids limits,
and the kernel's OOM kills in it. cgroup v1 where this process may write its hierarchies (root),
or a cgroup v2 subtree delegated to this user; none otherwise (the jail then falls back to
rlimits, see `jail`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from metasup.facts.settings import SandboxLimits

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


def own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path in that hierarchy."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                found[c] = path
    return found


def support() -> tuple[str | None, str]:
    own = own_cgroups()
    if all(c in own for c in V1_CONTROLLERS):
        dirs = [CGROUP_ROOT / c / own[c].lstrip("/") for c in V1_CONTROLLERS]
        if all(os.access(d, os.W_OK) for d in dirs):
            return "v1", "cgroup v1 (memory, pids, cpu): a cgroup per jail"
        return None, "cgroup v1 hierarchies are not writable by this user: rlimits only"
    if "" in own and (CGROUP_ROOT / "cgroup.controllers").exists():
        here = CGROUP_ROOT / own[""].lstrip("/")
        if _v2_delegated(here):
            return "v2", f"cgroup v2, delegated at {here}"
        return None, (
            f"cgroup v2 at {here} is not delegated to this user with memory, pids and cpu "
            "(run metasup in a delegated scope: systemd-run --user --scope -p Delegate=yes): "
            "rlimits only"
        )
    return None, "no cgroup hierarchy this process can use: rlimits only"


def _v2_delegated(here: Path) -> bool:
    try:
        enabled = set((here / "cgroup.subtree_control").read_text().split())
    except OSError:
        return False
    return {"memory", "pids", "cpu"} <= enabled and os.access(here, os.W_OK)


_cgroup_seq = itertools.count(1)


@dataclass
class Cgroup:
    """One jail's cgroup (a folder per v1 controller, or one v2 folder)."""

    dirs: dict[str, Path]  # "memory" / "pids" / "cpu", or "" for v2
    oom_fd: int = -1  # readable when the kernel OOM-killed in here (v1: an eventfd)
    _fds: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, kind: str, limits: SandboxLimits, memory: int | None) -> Cgroup:
        own = own_cgroups()
        name = f"metasup-{os.getpid()}-{next(_cgroup_seq)}-{uuid.uuid4().hex[:6]}"
        if kind == "v1":
            dirs = {c: CGROUP_ROOT / c / own[c].lstrip("/") / name for c in V1_CONTROLLERS}
        else:
            dirs = {"": CGROUP_ROOT / own[""].lstrip("/") / name}
        made = cls(dirs)
        try:
            for d in dirs.values():
                d.mkdir()
            made._limit(kind, limits, memory)
        except OSError:
            made.remove()
            raise
        return made

    def _path(self, controller: str, name: str) -> Path:
        return self.dirs.get(controller, self.dirs.get("", Path("/nonexistent"))) / name

    def _limit(self, kind: str, limits: SandboxLimits, memory: int | None) -> None:
        if kind == "v1":
            if memory is not None:
                _write(self._path("memory", "memory.limit_in_bytes"), str(memory))
                with contextlib.suppress(OSError):  # swap accounting may be off
                    _write(self._path("memory", "memory.memsw.limit_in_bytes"), str(memory))
            if limits.processes is not None:
                _write(self._path("pids", "pids.max"), str(limits.processes))
            if limits.cpu is not None:
                _write(self._path("cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                _write(self._path("cpu", "cpu.cfs_quota_us"), str(int(limits.cpu * CPU_PERIOD_US)))
            self._watch_oom_v1()
        else:
            if memory is not None:
                _write(self._path("", "memory.max"), str(memory))
                _write(self._path("", "memory.swap.max"), "0")
                _write(self._path("", "memory.oom.group"), "1")
            if limits.processes is not None:
                _write(self._path("", "pids.max"), str(limits.processes))
            if limits.cpu is not None:
                _write(
                    self._path("", "cpu.max"), f"{int(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}"
                )
            self._watch_oom_v2()

    def _watch_oom_v1(self) -> None:
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ctl = os.open(self._path("memory", "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        self._fds += [efd, ctl]
        _write(self._path("memory", "cgroup.event_control"), f"{efd} {ctl}")
        self.oom_fd = efd

    def _watch_oom_v2(self) -> None:
        import select

        ev = os.open(self._path("", "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        ep = select.epoll()
        ep.register(ev, select.EPOLLPRI)  # memory.events notifies as a priority event
        self._fds += [ev]
        self._epoll = ep
        self.oom_fd = ep.fileno()

    def kill(self) -> None:
        """SIGKILL whatever is still in it: nothing of a jail outlives its run."""
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def join(self, pid: int) -> None:
        """Move `pid` in (it has forked nothing yet: its children will be born here)."""
        for path in self.join_paths():
            _write(Path(path), str(pid))

    def join_paths(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_kills(self) -> int:
        """How many processes the kernel killed in here for memory."""
        name = "memory.events" if "" in self.dirs else "memory.oom_control"
        try:
            text = self._path("memory", name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def drain_oom(self) -> None:
        with contextlib.suppress(OSError):
            if "" in self.dirs:
                self._epoll.poll(0)
            else:
                os.eventfd_read(self.oom_fd)

    def remove(self) -> bool:
        """False while a process is still in it (a jail's pid 1 takes a moment to die after
        its run): the caller tries again later."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if "" in self.dirs:
            with contextlib.suppress(AttributeError, OSError):
                self._epoll.close()
        self.oom_fd = -1
        for key, d in list(self.dirs.items()):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self.dirs.pop(key, None)
        return not self.dirs


def sweep() -> int:
    """What supervisors no longer alive left (killed with -9, say): every process still in one
    of their jails' cgroups is killed (a jail is its supervisor's, and it is gone), and the
    cgroups removed once empty. Returns how many processes were killed."""
    killed = 0
    own = own_cgroups()
    roots = [CGROUP_ROOT / c / own[c].lstrip("/") for c in V1_CONTROLLERS if c in own]
    if "" in own:
        roots.append(CGROUP_ROOT / own[""].lstrip("/"))
    for root in roots:
        for d in root.glob("metasup-*-*"):
            try:
                owner = int(d.name.split("-")[1])
            except ValueError:
                continue
            if owner == os.getpid() or Path(f"/proc/{owner}").exists():
                continue
            with contextlib.suppress(OSError, ValueError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                        killed += 1
            with contextlib.suppress(OSError):
                d.rmdir()  # or at a later sweep, once the killed are gone
    return killed


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
