"""Loose objects packed as `git gc --auto` would, and nothing ever pruned.

Every snapshot and archive writes a few dozen loose objects; after thousands of them each
lookup walks bigger folders and a clone or a bundle copies them one by one. git packs them when
`gc.auto` (6700) is passed, estimating the count from one fan-out folder as it does. The
packing here is `git repack -d`: it packs the loose objects the refs, the reflogs and the index
reach and removes only loose copies that are now in a pack, so no object is lost; objects no
ref reaches stay loose (metasup prunes nothing: the journal may name them). When packs pile up
past `gc.autoPackLimit` (50) they are merged with `-A`, which loosens what no ref reaches rather
than dropping it. libgit2 writes no packs from loose objects, so this runs the git CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metasup.effects.git.bundle import git_cli
from metasup.facts.gitpaths import common_dir

AUTO = 6700
PACK_LIMIT = 50


def loose_estimate(git_dir: Path) -> int:
    """git's own estimate of the loose objects: one fan-out folder (`17/`) times 256."""
    try:
        names = os.listdir(common_dir(git_dir) / "objects" / "17")
    except OSError:
        return 0
    return 256 * sum(1 for n in names if len(n) == 38)


def pack_count(git_dir: Path) -> int:
    try:
        names = os.listdir(common_dir(git_dir) / "objects" / "pack")
    except OSError:
        return 0
    return sum(1 for n in names if n.endswith(".pack"))


def due(git_dir: Path, auto: int = AUTO) -> bool:
    return auto > 0 and loose_estimate(git_dir) > auto


def repack(workdir: Path, git_dir: Path, reaper: Any) -> int:
    """Pack the reachable loose objects; the loose objects left (an estimate)."""
    args = ["repack", "-d", "-q", "--no-write-bitmap-index"]
    if pack_count(git_dir) >= PACK_LIMIT:
        args.insert(1, "-A")
    git_cli(workdir, args, reaper, "git repack")
    return loose_estimate(git_dir)
