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
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{(head or 'unborn')[:12]}.bundle"
    tmp = folder / f".{name}.tmp"
    try:
        git_cli(workdir, ["bundle", "create", "-q", str(tmp), "--all"], reaper, "git bundle")
    except GitError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    target = folder / name
    os.replace(tmp, target)
    for old in sorted(folder.glob("*.bundle"))[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return target


SHIP_REF = "refs/metasup/ship/"  # a commit on its way to another machine, for the bundle's sake


def bundle_bytes(repo: Any, commit: str, base: str | None, reaper: Any) -> bytes:
    """A bundle of `commit` (with `base`: only what `base` lacks, which the receiver must
    hold). A bundle names refs, so the commit is given one for the moment it takes."""
    import tempfile

    ref = SHIP_REF + commit
    repo.set_ref(ref, commit)
    try:
        with tempfile.TemporaryDirectory(prefix="metasup-bundle-") as tmp:
            out = Path(tmp) / "c.bundle"
            argv = ["bundle", "create", "-q", str(out), ref, *([f"^{base}"] if base else [])]
            git_cli(repo.workdir, argv, reaper, "git bundle")
            return out.read_bytes()
    finally:
        repo.delete_ref(ref)


def fetch_bundle(workdir: Path, data: bytes, reaper: Any) -> None:
    """The commits of a bundle made by `bundle_bytes`, fetched into the repository at
    `workdir` (kept by their ship refs there)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="metasup-bundle-") as tmp:
        path = Path(tmp) / "c.bundle"
        path.write_bytes(data)
        argv = ["fetch", "-q", str(path), f"+{SHIP_REF}*:{SHIP_REF}*"]
        git_cli(workdir, argv, reaper, "git fetch of a bundle")


def write_refs_bundle(workdir: Path, path: Path, heads: dict[str, str], reaper: Any) -> Path:
    """A bundle at `path` holding each ref of `heads` at its commit, with all their history (it
    restores alone: `git fetch BUNDLE 'refs/metasup/*:refs/metasup/*'`). Checked by listing
    its heads before it is renamed into place: a ref moved meanwhile fails the whole bundle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        git_cli(workdir, ["bundle", "create", "-q", str(tmp), *sorted(heads)], reaper, "git bundle")
        listed = git_cli(
            workdir, ["bundle", "list-heads", str(tmp)], reaper, "git bundle list-heads"
        )
        held = {}
        for line in listed.splitlines():
            commit, _, ref = line.partition(" ")
            held[ref] = commit
        moved = sorted(ref for ref, commit in heads.items() if held.get(ref) != commit)
        if moved:
            raise GitError(f"the bundle does not hold {', '.join(moved)} as expected")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def git_cli(workdir: Path, args: list[str], reaper: Any, what: str) -> str:
    """The git CLI for what libgit2 cannot do (bundles, packs), with a hard timeout; its
    stdout."""
    from metasup.effects.process.spawn import run_command

    done = run_command(
        ["git", "-C", str(workdir), *args],
        cwd=workdir,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        timeout=600.0,
        reaper=reaper,
    )
    if not done.ok:
        raise GitError(f"{what} failed: {done.stderr.strip()[-300:] or done.code}")
    return str(done.stdout)
