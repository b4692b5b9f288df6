"""`rollback.preserve`: paths moved out of the way of a reset and put back after it.

A rename within one filesystem is atomic and copies nothing, so a preserved directory of any size
costs the same. Every step can be repeated: a supervisor killed half way through finds the
staging directory (recorded in the rollback intent) and finishes the job.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from metasup.effects.files.safeio import move


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def stash(workdir: Path, paths: Sequence[str], staging: Path) -> list[str]:
    """Move each existing preserved path into `staging`; skip ones already there."""
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        staging.unlink()  # metasup's own name, taken by something else: never followed
    staging.mkdir(parents=True, exist_ok=True)
    moved = []
    for rel in paths:
        src, dst = workdir / rel, staging / rel
        if dst.exists() or dst.is_symlink():
            moved.append(rel)  # stashed before a crash
            continue
        if src.exists() or src.is_symlink():
            move(src, dst)
            moved.append(rel)
    return moved


def restore(workdir: Path, paths: Sequence[str], staging: Path) -> None:
    """Put every stashed path back over whatever the reset left there, then drop `staging`."""
    for rel in paths:
        src, dst = staging / rel, workdir / rel
        if not (src.exists() or src.is_symlink()):
            continue
        _remove(dst)
        # A parent that the reset turned into a file must become a directory again.
        for parent in reversed(dst.relative_to(workdir).parents[:-1]):
            p = workdir / parent
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                p.unlink()
        move(src, dst)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(staging)
