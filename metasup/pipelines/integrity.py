"""The approved baseline of the protected files, and what differs from it.

The baseline is `<git-dir>/metasup/baseline.json`: each protected file git would track, as
`mode:blob id`, the protected files git ignores (checked against the tree only), and the config
file in use, pinned. It is recorded at the first start (the operator's state) and by `metasup
approve`; metasup refuses to start while the working tree differs from it or another config is
in use, and stops if the good commit ever differs. A baseline missing where the repository was
approved before is an error, never a first start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasup.effects.files.safeio import read_json
from metasup.effects.records.journal import StateDir, read_events, utc_now, write_json_atomic
from metasup.facts.errors import ConfigError, IntegrityError
from metasup.facts.events import Emit, Event
from metasup.facts.policy import Policy, load_policy

if TYPE_CHECKING:
    from metasup.effects.git.repo import GitRepo

_ENTRY = re.compile(r"(100644|100755|120000):([0-9a-f]{40}|[0-9a-f]{64})")


@dataclass(frozen=True)
class Baseline:
    """What was approved: the protected files git would track, the protected files git ignores
    (compared with the tree only: no commit holds them), and the config file in use, pinned."""

    files: dict[str, str]
    ignored: dict[str, str] = field(default_factory=dict)
    config: str | None = None  # relative to the working tree, or absolute outside it


def load(path: Path) -> Baseline | None:
    """The baseline, or None when there is none. A baseline that is there but malformed is an
    IntegrityError: it is never taken for a first start."""
    if not os.path.lexists(path):
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise IntegrityError(
            f"{path} is not an approval baseline metasup wrote; check the protected files, "
            "then `metasup approve`"
        )
    parts: list[dict[str, str]] = []
    for key in ("files", "ignored"):
        entries = doc.get(key) or {}
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _ENTRY.fullmatch(v)
            for k, v in entries.items()
        ):
            raise IntegrityError(f"{path}: `{key}` is malformed; check, then `metasup approve`")
        parts.append(dict(entries))
    config = doc.get("config")
    return Baseline(parts[0], parts[1], config if isinstance(config, str) and config else None)


def save(path: Path, baseline: Baseline, reason: str, **extra: Any) -> None:
    doc = {
        "files": dict(sorted(baseline.files.items())),
        "ignored": dict(sorted(baseline.ignored.items())),
        "config": baseline.config,
        "reason": reason,
        "at": utc_now(),
        **extra,
    }
    write_json_atomic(path, doc)


def config_key(workdir: Path, config: Path) -> str:
    """How a baseline names a config file: relative to the tree when inside it."""
    config = config.resolve()
    try:
        return config.relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return str(config)


def config_in_use(workdir: Path, explicit: Path | None = None) -> Path:
    """The config file metasup uses in `workdir`: `explicit`, else the one the last approval
    pinned (while it exists), else `metasup.yaml`, else `config/metasup.yaml`. Pinning keeps
    an agent's ignored `./metasup.yaml` from becoming the config of the next start."""
    from metasup.effects.git.lookup import discover
    from metasup.effects.records.journal import StateDir
    from metasup.facts.config import find_config

    # Only the git dir is needed: found on a detached HEAD too (the hook during a rebase).
    found = discover(workdir) if explicit is None else None
    if found is not None:
        pinned = pinned_config(workdir, StateDir.for_git_dir(Path(found[0]).resolve()).baseline)
        if pinned is not None and pinned.is_file():
            return pinned
    return find_config(workdir, explicit)


def pinned_config(workdir: Path, baseline_path: Path) -> Path | None:
    """The config file the last approval pinned, when the baseline names one."""
    try:
        baseline = load(baseline_path)
    except IntegrityError:
        return None  # the start that follows says what is wrong with it
    if baseline is None or baseline.config is None:
        return None
    return workdir / baseline.config


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The paths whose entry differs between two listings (present in one only included)."""
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


def differences(baseline: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs, a line a path: `changed X`, `added Y`, `removed Z`, `mode of X`."""
    out = []
    for path in differing(baseline, current):
        was, now = baseline.get(path), current.get(path)
        if was is None:
            out.append(f"added {path}")
        elif now is None:
            out.append(f"removed {path}")
        elif was.split(":")[1] == now.split(":")[1]:
            out.append(f"mode of {path}")
        else:
            out.append(f"changed {path}")
    return out


def summary(lines: list[str], most: int = 8) -> str:
    shown = ", ".join(lines[:most])
    return shown + (f" and {len(lines) - most} more" if len(lines) > most else "")


def load_repo_policy(workdir: Path, config: Path | None = None) -> Policy:
    """The policy for a repository as its config (found, or `config`) makes it; without a
    config, the shipped and the repository's own rules."""
    from metasup.facts.config import load_config

    try:
        path = config_in_use(workdir, config)
    except ConfigError:
        if config is not None:
            raise
        return load_policy(workdir)
    cfg = load_config(path)
    return load_policy(workdir, cfg.path, cfg.protected_paths)


def check_protected(
    repo: GitRepo,
    dirs: StateDir,
    is_protected: Callable[[str], bool],
    config_path: Any,
    emit: Emit,
) -> dict[str, str]:
    """The protected files must be as approved, and the config the one approved; the first
    start approves what it finds. A baseline gone from a repository that was approved before
    is no first start: the agent may have deleted it with the files it guards. Returns the
    approved files. Every command that judges and merges candidates on its own (the
    supervisor, `metasup evolve`) asks this first: an evaluator nobody approved judges
    nothing."""
    from metasup.effects.git import protected  # git, only for the commands that judge

    tracked, ignored = protected.protected_files(repo, is_protected)
    config = config_key(repo.workdir, config_path)
    baseline = load(dirs.baseline)
    if baseline is None:
        before = _approved_before(repo, dirs)
        if before is not None:
            raise IntegrityError(
                f"the approval baseline ({dirs.baseline.name}) is missing, but this "
                f"repository was approved before ({before}): check the protected files, "
                "then run `metasup approve`"
            )
        current = Baseline(tracked, ignored, config)
        good = repo.good_with(
            sorted(tracked), "metasup: approve (first start)\n\nThe protected files as found.\n"
        )
        save(dirs.baseline, current, "first start", good=good)
        emit(
            Event.APPROVED,
            reason="first start: the protected files as the operator left them",
            files=len(tracked),
            good=good,
            config=config,
            by="metasup",
        )
        return current.files
    if baseline.config is not None and baseline.config != config:
        raise IntegrityError(
            f"the config in use is {config}, but the approved one is {baseline.config}: "
            f"run with --config {baseline.config}, or `metasup approve --config {config}` "
            "to approve the move"
        )
    differ = differences(baseline.files, tracked) + [
        f"{line} (ignored by git)" for line in differences(baseline.ignored, ignored)
    ]
    if differ:
        raise IntegrityError(
            "protected files differ from the approved baseline: "
            f"{summary(differ)}. If you changed them on purpose, run "
            "`metasup approve`; if not, restore them (git checkout -- FILE)"
        )
    return baseline.files


def _approved_before(repo: GitRepo, dirs: StateDir) -> str | None:
    """Where the journal or the refs say this repository was approved, or None."""
    for record in read_events(dirs.events):
        if record.get("event") in (Event.APPROVED, Event.MARK_GOOD):
            return f"journal: {record.get('event')} #{record.get('seq')}"
    if repo.good() is not None:
        return "refs/metasup/good exists"
    return None
