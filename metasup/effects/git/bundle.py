"""Backups: a `git bundle` of every ref, the newest few kept."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metasup.effects.git.repo import GitError


def write_bundle(workdir: Path, folder: Path, keep: int, head: str | None, reaper: Any) -> Path:
    """`git bundle create` of every ref into `folder`, the newest `keep` bundles kept.

    libgit2 writes no bundles, so this one step runs the git CLI (with a hard timeout). It
    touches no pygit2 object, so a thread may run it while the loop goes on.
    """
    from metasup.effects.process.spawn import run_command

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{(head or 'unborn')[:12]}.bundle"
    tmp = folder / f".{name}.tmp"
    done = run_command(
        ["git", "-C", str(workdir), "bundle", "create", "-q", str(tmp), "--all"],
        cwd=workdir,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        timeout=600.0,
        reaper=reaper,
    )
    if not done.ok:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise GitError(f"git bundle failed: {done.stderr.strip()[-300:] or done.code}")
    target = folder / name
    os.replace(tmp, target)
    for old in sorted(folder.glob("*.bundle"))[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return target
