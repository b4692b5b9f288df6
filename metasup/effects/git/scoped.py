"""libgit2's status, limited to the paths a watch saw change.

pygit2's `status()` walks and stats the whole working tree (250 ms at 100k files here) even
when the agent changed ten files. libgit2 itself can limit a diff of the index against the
working tree to a list of paths (`pathspec` with `DISABLE_PATHSPEC_MATCH`: exact paths, a
folder standing for all it holds), and then its iterators descend only into those folders, so
the cost follows the change. pygit2 does not pass a pathspec, so the call is made here through
pygit2's own cffi bindings, with the same rules as a full status: .gitignore, the stat cache,
filters, nested repositories reported as `name/` and never entered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pygit2
from pygit2._libgit2 import ffi  # type: ignore[import-not-found]
from pygit2._libgit2 import lib as C
from pygit2.enums import DeltaStatus, DiffOption, FileStatus
from pygit2.errors import check_error
from pygit2.utils import StrArray

_AS_STATUS = {
    DeltaStatus.UNTRACKED: FileStatus.WT_NEW,
    DeltaStatus.MODIFIED: FileStatus.WT_MODIFIED,
    DeltaStatus.DELETED: FileStatus.WT_DELETED,
    DeltaStatus.TYPECHANGE: FileStatus.WT_TYPECHANGE,
    DeltaStatus.UNREADABLE: FileStatus.WT_UNREADABLE,
    DeltaStatus.IGNORED: FileStatus.IGNORED,
}


def status_within(
    repo: pygit2.Repository,
    index: pygit2.Index,
    paths: Sequence[str],
    untracked: str = "all",
) -> dict[str, int]:
    """What `repo.status(untracked_files=untracked)` reports for the working tree against
    `index`, for `paths` and what they hold only. Staged changes (index against HEAD) are
    not looked at: the caller knows the index holds HEAD."""
    if not paths:
        return {}
    flags = DiffOption.INCLUDE_TYPECHANGE | DiffOption.DISABLE_PATHSPEC_MATCH
    if untracked != "no":
        flags |= DiffOption.INCLUDE_UNTRACKED
    if untracked == "all":
        flags |= DiffOption.RECURSE_UNTRACKED_DIRS
    opts = ffi.new("git_diff_options *")
    check_error(C.git_diff_options_init(opts, 1))
    opts.flags = int(flags)
    out = ffi.new("git_diff **")
    with StrArray(list(paths)) as arr:
        opts.pathspec = arr.ptr[0]
        check_error(C.git_diff_index_to_workdir(out, repo._repo, index._index, opts))
    diff = pygit2.Diff.from_c(bytes(ffi.buffer(out)[:]), repo)
    found: dict[str, int] = {}
    for delta in diff.deltas:
        flag = _AS_STATUS.get(delta.status)
        if flag is not None:
            found[delta.new_file.path or delta.old_file.path] = int(flag)
    return found


_WT = (
    FileStatus.WT_NEW
    | FileStatus.WT_MODIFIED
    | FileStatus.WT_DELETED
    | FileStatus.WT_TYPECHANGE
    | FileStatus.WT_RENAMED
)


def dirty_paths(workdir: Path) -> list[str]:
    """Every path a full status reports changed in the working tree (untracked included),
    read through a repository object of its own: safe on another thread than the loop's."""
    repo = pygit2.Repository(str(workdir))
    return [p.rstrip("/") for p, f in repo.status(untracked_files="all").items() if f & _WT]
