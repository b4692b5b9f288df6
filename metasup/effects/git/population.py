"""The population in git: every candidate a commit with the evolution's trailers, kept
reachable by `refs/metasup/pop/<id>`; crossover as a three-way merge; a mutator's edits read
back from its worktree as a list of changes."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pygit2
from pygit2.enums import FileStatus

from metasup.effects.git.repo import GitRepo, signature

POP_PREFIX = "refs/metasup/pop/"


@dataclass(frozen=True)
class Lineage:
    """What a candidate commit's trailers say."""

    generation: int
    island: int
    operator: str
    parents: tuple[str, ...]


def message(title: str, lineage: Lineage, body: str = "") -> str:
    lines = [
        f"Metasup-Generation: {lineage.generation}",
        f"Metasup-Island: {lineage.island}",
        f"Metasup-Operator: {lineage.operator}",
        *(f"Metasup-Parent: {p}" for p in lineage.parents),
    ]
    text = body.strip()
    return f"{title}\n\n" + (f"{text}\n\n" if text else "") + "\n".join(lines) + "\n"


def tree_of(git: GitRepo, commit: str) -> str:
    return str(git.repo[commit].peel(pygit2.Commit).tree_id)


def make_commit(git: GitRepo, tree: str, parents: list[str], text: str) -> str:
    """A commit on no branch (a ref keeps it)."""
    oid = git.repo.create_commit(
        None,
        signature(),
        signature(),
        text,
        pygit2.Oid(hex=tree),
        [pygit2.Oid(hex=p) for p in parents],
    )
    return str(oid)


def keep(git: GitRepo, member: str, commit: str) -> str:
    """Point refs/metasup/pop/<member> at `commit` (again, after a crash: same commit)."""
    ref = POP_PREFIX + member
    git.repo.references.create(ref, commit, force=True)
    return ref


def kept(git: GitRepo, prefix: str = "") -> dict[str, str]:
    """{member id: commit} of the pop refs whose id starts with `prefix`."""
    start = POP_PREFIX + prefix
    out = {}
    for name in git.repo.references:
        if name.startswith(start):
            ref = git.repo.references.get(name)
            if ref is not None and isinstance(ref.target, pygit2.Oid):
                out[name.removeprefix(POP_PREFIX)] = str(ref.target)
    return out


def merged_tree(git: GitRepo, ours: str, theirs: str) -> str | list[str]:
    """The tree of a three-way merge of two commits against their merge base, or the paths
    that conflict."""
    index = git.repo.merge_commits(ours, theirs)
    if index.conflicts is not None:
        return sorted({e.path for entries in index.conflicts for e in entries if e is not None})
    return str(index.write_tree(git.repo))


class Unrepresentable(Exception):
    """The worktree holds something a commit of ours cannot (a symlink, a nested repository)."""


def worktree_changes(worktree: Path, parent: str) -> list[dict[str, str]]:
    """What was changed in `worktree` since `parent`, as a proposal's `changes` (content in
    base64): what `git add -A` would commit, whatever the index says.

    One status walk (which trusts the index's stat cache) names the suspects; each is then
    compared with the parent's tree, so an index someone staged into changes nothing. Ignored
    files are removed: the worktree started without any, and the child is judged in it as its
    commit alone."""
    import base64
    import shutil

    repo = pygit2.Repository(str(worktree))
    tree = repo[parent].peel(pygit2.Commit).tree
    changes: list[dict[str, str]] = []
    for path, flags in sorted(repo.status(untracked_files="all", ignored=True).items()):
        if flags & FileStatus.IGNORED:
            left = worktree / path.rstrip("/")
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
            continue
        if path.endswith("/"):
            raise Unrepresentable(f"{path} is a nested repository")
        try:
            entry: pygit2.Object | None = tree[path]
        except KeyError:
            entry = None
        full = worktree / path
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a folder became a file
            if entry is not None:
                changes.append({"file": path, "action": "delete"})
            continue
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise Unrepresentable(f"{path} is {kind}")
        data = full.read_bytes()
        executable = bool(st.st_mode & stat.S_IXUSR)
        mode = "100755" if executable else "100644"
        if entry is not None and str(entry.id) == str(pygit2.hash(data)):
            same_mode = (entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE) == executable
            if same_mode:
                continue
        changes.append(
            {"file": path, "content_base64": base64.b64encode(data).decode(), "mode": mode}
        )
    return changes
