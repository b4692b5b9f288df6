"""Process trees: the agent's, a server's, an evaluator's, found and stopped whole.

A tree is a process group and the processes carrying its marker (`METASUP_TREE`), orphans that
double-forked into metasup's subreaper included. It is stopped with its stop signal, then
SIGKILL after the timeout, and looked for again on every round, so a late fork is caught too.
Sampled for the health checks (RSS and CPU of every member).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from metasup.effects.process.spawn import Reaper

TREE_VAR = "METASUP_TREE"


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


def subtree(pid: int) -> list[int]:
    """`pid` and every process under it (a jail: bwrap, and all it runs), whatever their
    environment says (a jail's processes do not carry the tree's token)."""
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return [pid]


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
