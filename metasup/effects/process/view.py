"""The filesystem a jailed run sees: what is bound read-write (the tree), read-only on top
(`.git/`, the protected paths, the config, metasup and its Python), hidden (metasup's secret), and
the placeholders that keep a protected path that does not exist from being created. Pure where
it can be: a View is data, turned into bwrap options here and sent to the MCP worker as JSON.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from metasup.facts.gitpaths import common_dir, git_dir_of
from metasup.facts.settings import SandboxConfig, SandboxLimits


@dataclass(frozen=True)
class View:
    """What one jailed run may touch. All paths absolute."""

    tree: Path  # read-write
    cwd: Path
    readonly: tuple[Path, ...] = ()  # bound read-only on top of the tree, in this order
    placeholders: tuple[Path, ...] = ()  # missing protected paths: an empty read-only folder
    holes: tuple[Path, ...] = ()  # read-write again inside a read-only path (the inbox)
    writable: tuple[Path, ...] = ()  # outside the tree
    hidden: tuple[Path, ...] = ()  # folders seen empty: metasup's secrets (the journal key)
    network: bool = True
    tmp_overlay: bool = True  # /tmp: the host's seen, writes kept in the jail; else empty


def marks(view: View) -> tuple[tuple[int, int] | None, ...]:
    """What each path the view binds is now (device and inode; None: missing). A jail built
    ahead shows the files its binds were made on: it is used only if these are unchanged (a
    protected file replaced by a new one since would show its old content there)."""
    found: list[tuple[int, int] | None] = []
    for path in (view.tree, *view.readonly, *view.placeholders, *view.holes, *view.writable,
                 *view.hidden):  # fmt: skip
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append((st.st_dev, st.st_ino))
    return tuple(found)


def view_to_json(view: View) -> dict[str, Any]:
    """For a helper process (the MCP worker) that jails what it starts."""
    return {
        "tree": str(view.tree),
        "cwd": str(view.cwd),
        "readonly": [str(p) for p in view.readonly],
        "placeholders": [str(p) for p in view.placeholders],
        "holes": [str(p) for p in view.holes],
        "writable": [str(p) for p in view.writable],
        "hidden": [str(p) for p in view.hidden],
        "network": view.network,
    }


def view_from_json(doc: dict[str, Any]) -> View:
    def paths(key: str) -> tuple[Path, ...]:
        return tuple(Path(p) for p in doc[key])

    return View(
        tree=Path(doc["tree"]),
        cwd=Path(doc["cwd"]),
        readonly=paths("readonly"),
        placeholders=paths("placeholders"),
        holes=paths("holes"),
        writable=paths("writable"),
        hidden=paths("hidden") if "hidden" in doc else (),
        network=bool(doc["network"]),
    )


def sandbox_to_json(sb: SandboxConfig) -> dict[str, Any]:
    return {**asdict(sb), "applies_to": sorted(sb.applies_to)}


def sandbox_from_json(doc: dict[str, Any]) -> SandboxConfig:
    return SandboxConfig(
        mode=doc["mode"],
        required=doc["required"],
        network=doc["network"],
        writable=tuple(doc["writable"]),
        readonly=tuple(doc["readonly"]),
        limits=SandboxLimits(**doc["limits"]),
        applies_to=frozenset(doc["applies_to"]),
    )


# The jail's /tmp: what the host's holds is seen (a venv, a tool), what is written stays in the
# jail and goes with it.
TMP_OVERLAY = ("--overlay-src", "/tmp", "--tmp-overlay", "/tmp")


def view_options(view: View, gate: tuple[int, int] | None = None) -> list[str]:
    """The bwrap options that build `view`. Pure.

    Order matters: later mounts go on top of earlier ones. The private /tmp comes before the
    tree, which may itself live under /tmp.
    """
    args = []
    if not view.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    args += TMP_OVERLAY if view.tmp_overlay else ("--tmpfs", "/tmp")
    for path in view.writable:
        args += ["--bind-try", str(path), str(path)]
    # A read-only path that holds the tree (a worktree inside the common git dir) goes below
    # it; the others on top.
    below = [p for p in view.readonly if _within(view.tree, p)]
    above = [p for p in view.readonly if not _within(view.tree, p)]
    for path in below:
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(view.tree), str(view.tree)]
    for path in (*above, *view.placeholders):
        args += ["--ro-bind", str(path), str(path)]
    for path in view.hidden:  # an empty read-only folder over it
        args += ["--tmpfs", str(path), "--remount-ro", str(path)]
    for path in view.holes:
        args += ["--bind", str(path), str(path)]
    args += ["--chdir", str(view.cwd)]
    if gate is not None:  # (block fd, info fd): the command waits until the gate opens
        args += ["--block-fd", str(gate[0]), "--info-fd", str(gate[1])]
    return args


def literal_paths(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """The repo-relative paths a mount can hold among gitignore `patterns`: (protected, freed
    again by a `!` pattern). A pattern with wildcards is left to the tamper watch; one without a
    slash (it matches at any depth) is held at the top of the tree only. Pure."""
    held: list[str] = []
    freed: list[str] = []
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#") or "\\" in pattern:
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if pattern.endswith("/*"):
            pattern = pattern[:-2]  # the folder's contents: the folder itself is held
        pattern = pattern.strip("/")
        if not pattern or any(ch in pattern for ch in "*?[") or ".." in pattern.split("/"):
            continue
        (freed if negated else held).append(pattern)
    return list(dict.fromkeys(held)), list(dict.fromkeys(freed))


def installation_paths() -> list[Path]:
    """metasup's code and the Python that runs it."""
    import metasup

    paths = [Path(metasup.__file__).resolve().parent, Path(sys.executable).resolve().parent]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        paths.append(Path(prefix).resolve())
    return list(dict.fromkeys(paths))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def git_dirs(tree: Path) -> list[Path]:
    """The git dir of `tree` and, for a linked worktree, the common dir its `commondir` names:
    where refs, objects and config live."""
    git_dir = git_dir_of(tree)
    if git_dir is None:
        return []
    common = common_dir(git_dir)
    return [git_dir] if common == git_dir else [git_dir, common]


def make_view(
    tree: Path,
    *,
    cwd: Path | None = None,
    protected_patterns: Iterable[str] = (),
    config_path: Path | None = None,
    sandbox: SandboxConfig,
    holes: Sequence[Path] = (),
) -> View:
    """The view of a run in `tree`: what the policy protects there, held read-only."""
    tree = tree.resolve()
    held, freed = literal_paths(protected_patterns)
    writable = [Path(os.path.expanduser(w)) for w in sandbox.writable]
    readonly: list[Path] = [tree / ".git", *git_dirs(tree)]
    placeholders: list[Path] = []
    for rel in held:
        path = tree / rel
        if path.is_symlink() or path.exists():
            readonly.append(path)
        else:
            placeholders.append(path)
    readonly += [tree / rel for rel in sandbox.readonly]
    if config_path is not None:
        readonly.append(config_path.resolve())
    # Outside the tree everything is read-only already, but for /tmp (private in the jail)
    # and `writable`: metasup and its Python are bound again only where one of those holds them.
    open_to_writes = [tree, Path("/tmp"), *writable]
    for path in installation_paths():
        if any(_within(path, w) for w in open_to_writes) and not _within(tree, path):
            readonly.append(path)
    hole_paths = [tree / rel for rel in freed if (tree / rel).exists()] + [*holes]
    ro = [p for p in dict.fromkeys(readonly) if p.is_symlink() or p.exists()]
    secrets = [d / "metasup" / "secret" for d in (tree / ".git", *git_dirs(tree))]
    hidden = [p for p in dict.fromkeys(secrets) if p.is_dir() and not p.is_symlink()]
    return View(
        tree=tree,
        cwd=(cwd or tree).resolve(),
        readonly=tuple(ro),
        placeholders=tuple(dict.fromkeys(placeholders)),
        holes=tuple(dict.fromkeys(hole_paths)),
        writable=tuple(w for w in dict.fromkeys(writable) if not _within(w, tree)),
        hidden=tuple(p.resolve() for p in hidden),
        network=sandbox.network,
    )


def settle(view: View) -> View:
    """`view` as the disk is now: a read-only path inside the tree that went away since the
    view was made (a rollback took an empty placeholder) is held by a placeholder again; one
    outside it is dropped (bwrap cannot bind what is not there)."""
    if any(not p.is_dir() for p in view.hidden):
        view = replace(view, hidden=tuple(p for p in view.hidden if p.is_dir()))
    gone = [p for p in view.readonly if not (p.exists() or p.is_symlink())]
    if not gone:
        return view
    inside = [p for p in gone if _within(p, view.tree)]
    return replace(
        view,
        readonly=tuple(p for p in view.readonly if p not in gone),
        placeholders=(*view.placeholders, *inside),
    )


def make_placeholders(view: View) -> list[Path]:
    """Create the empty folders that hold missing protected paths (and their missing parents
    inside the tree); returns what was created, deepest first, for `remove_placeholders`."""
    made: list[Path] = []
    for path in view.placeholders:
        missing = []
        p = path
        while not (p.exists() or p.is_symlink()) and _within(p, view.tree) and p != view.tree:
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            try:
                m.mkdir()
            except FileExistsError:
                continue
            made.append(m)
    return list(reversed(made))


def remove_placeholders(paths: Iterable[Path]) -> None:
    """Remove placeholder folders that are still empty (the host sees them as plain folders)."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.rmdir()
