"""Landlock: the jail where user namespaces are not available. Writes are confined to a few
trees and signals and ptrace to the jail (ABI >= 6); the process restricts itself between fork
and exec (`preexec`)."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from metasup.effects.process import nolinks

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
MIN_ABI = 6  # signals scoped
PR_SET_NO_NEW_PRIVS = 38
_FS_READ = 0b1 | 0b100 | 0b1000  # execute, read file, read dir
_FS_ALL_V3 = (1 << 15) - 1  # every filesystem right up to truncate (ABI 3)
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_SCOPE_ABSTRACT_UNIX = 1
_SCOPE_SIGNAL = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def rules(tree: Path, writable: Sequence[Path]) -> list[tuple[str, int]]:
    """(path, rights): read and execute everywhere, write only in the tree, /tmp, /dev and
    `writable`."""
    handled = _FS_ALL_V3 | _FS_IOCTL_DEV
    found = [("/", _FS_READ)]
    for path in (tree, Path("/tmp"), Path("/dev"), *writable):
        found.append((str(path), handled))
    return found


def _enforce(rules: list[tuple[str, int]], libc: ctypes.CDLL) -> None:
    handled = _FS_ALL_V3 | _FS_IOCTL_DEV
    attr = _RulesetAttr(handled, 0, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            rule = _PathBeneath(rights, fd)
            libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                         ctypes.byref(rule), 0)  # fmt: skip
            os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "no_new_privs")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none."""
    if sys.platform != "linux":
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        found = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(0, int(found))


def preexec(
    join: list[str], rlimits: list[tuple[int, int]], landlock: list[tuple[str, int]]
) -> Callable[[], None]:
    """What the child runs between fork and exec: joins its cgroup, sets its rlimits and
    restricts itself. Only system calls, nothing that takes a lock (libc is loaded here, in the
    parent: a dlopen after fork may wait for ever)."""
    libc = ctypes.CDLL(None, use_errno=True)
    no_links = nolinks.installer(libc)

    def enter() -> None:
        for path in join:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"0")  # 0: the writing process itself
            os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        _enforce(landlock, libc)  # sets no_new_privs, which a filter needs
        no_links()

    return enter
