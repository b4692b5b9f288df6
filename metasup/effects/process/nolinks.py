"""No hard links in the jail: `link` and `linkat` fail there with EXDEV, as between two mounts.

A hard link made inside the tree and written through changes a file under another name, and
inotify reports the write against the name used only: the watch that keeps the set of changed
paths (the main tree's, and each experiment worktree's) would miss the file the agent really
changed, and a rollback or a worktree move would leave it as the agent wrote it. Links between
the tree and the other mounts of a jail already fail with EXDEV, which tools treat as "another
file system" and answer by copying (cp, git, pip, shutil); inside the tree they now do the same.

A seccomp filter (classic BPF over `struct seccomp_data`), given to bwrap (`--seccomp FD`) or
installed by a Landlock child on itself before its exec.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable

# struct seccomp_data: int nr; __u32 arch; ...
_NR, _ARCH = 0, 4
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000

# arch -> the numbers of link and linkat there (aarch64 has linkat only)
ARCHES: dict[int, tuple[int, ...]] = {
    0xC000003E: (86, 265),  # x86_64 (x32 too: its numbers carry _X32_BIT)
    0x40000003: (9, 303),  # i386, a 32-bit program on x86_64
    0xC00000B7: (37,),  # aarch64
}
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def program() -> bytes:
    """The filter, as the kernel and bwrap read it: an array of `struct sock_filter`. Pure."""
    ops: list[tuple[int, int, int, int]] = []
    blocks: list[list[tuple[int, int, int, int]]] = []
    for numbers in ARCHES.values():
        block = [(_LD_W_ABS, 0, 0, _NR), (_AND_K, 0, 0, ~_X32_BIT & 0xFFFFFFFF)]
        for i, nr in enumerate(numbers):
            left = len(numbers) - i - 1  # the compares after this one, then allow, then deny
            block.append((_JEQ_K, left + 1, 0, nr))
        block += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.EXDEV)]
        blocks.append(block)
    # The arch dispatch: one compare per arch, jumping to its block; an unknown arch is let be
    # (nothing to deny there that this filter knows of).
    ops.append((_LD_W_ABS, 0, 0, _ARCH))
    arches = list(ARCHES)
    dispatch_len = len(arches) + 1  # the compares and an allow
    offset = 0
    for i, arch in enumerate(arches):
        to_block = (dispatch_len - i - 1) + offset
        ops.append((_JEQ_K, to_block, 0, arch))
        offset += len(blocks[i])
    ops.append((_RET_K, 0, 0, _RET_ALLOW))
    for block in blocks:
        ops += block
    return b"".join(struct.pack("=HBBI", *op) for op in ops)


def program_fd() -> int:
    """A pipe's read end holding the filter (bwrap reads it to its end); CLOEXEC: the spawn
    passes it on by number."""
    data = program()
    read, write = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write, data)  # a few hundred bytes: within any pipe's buffer
    except OSError:
        os.close(read)
        raise
    finally:
        os.close(write)
    return read


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def installer(libc: ctypes.CDLL) -> Callable[[], None]:
    """In a child that set no_new_privs: deny links from here on, for it and what it runs.
    Built before the fork: the child only makes the call."""
    data = program()
    buffer = ctypes.create_string_buffer(data, len(data))
    prog = _Fprog(len(data) // 8, ctypes.cast(buffer, ctypes.c_void_p))

    def install(_keep: object = buffer) -> None:  # the filter's bytes live as long as this
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "seccomp")

    return install
