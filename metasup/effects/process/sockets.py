"""Who listens on a local TCP port: the kernel's socket tables (`/proc/net/tcp`, `tcp6`) give
the listening sockets' inodes, and a process's descriptors say which of them it holds.

A replica is told its port; anything else on the host's loopback (a candidate's replica among
them) could bind that port first and answer its health check in its place. The front door
routes to a replica only once the listener on its port is one of the replica's own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

_LISTEN = "0A"


def listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets listening on `port` (any local address), in this process's
    network namespace."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _LISTEN:
                        continue
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.add(int(fields[9]))
        except OSError:
            continue
    return found


def held_sockets(pid: int) -> set[int]:
    """The socket inodes `pid` holds. PermissionError when its descriptors cannot be read."""
    found: set[int] = set()
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return found
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{folder}/{name}")
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def listens_on(pids: Iterable[int], port: int) -> bool | None:
    """Whether one of `pids` holds a socket listening on `port`: False when someone else's
    does (or none), None when their descriptors cannot be read."""
    listening = listening_inodes(port)
    if not listening:
        return False
    for pid in pids:
        try:
            if held_sockets(pid) & listening:
                return True
        except PermissionError:
            return None
    return False
