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

from metasup.effects.files.safeio import is_special
from metasup.effects.git import candidates
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


def worktree_changes(worktree: Path, parent: str, *, watch: bool = True) -> list[dict[str, str]]:
    """What was changed in `worktree` since `parent`, as a proposal's `changes` (content in
    base64): what `git add -A` would commit, whatever the index says.

    The suspects are the paths the worktree's watch saw written since its last move (and what
    they hold, for a new folder), or else those one status walk names (which trusts the index's
    stat cache); each is then compared with the parent's tree, so an index someone staged into
    changes nothing. Ignored files are removed: the worktree started without any, and the child
    is judged in it as its commit alone. `watch=False`: walk, whatever the watch knows."""
    import base64

    repo = candidates.repo_of(worktree)
    tree = repo[parent].peel(pygit2.Commit).tree
    known = candidates.changed_since_clean(worktree, repo) if watch else None
    suspects = _walked(repo, worktree) if known is None else _seen(repo, worktree, tree, known)
    changes: list[dict[str, str]] = []
    for path in sorted(suspects):
        try:
            entry: pygit2.Object | None = tree[path]
        except KeyError:
            entry = None
        full = worktree / path
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):  # gone, or a folder became a file
            if entry is not None and not isinstance(entry, pygit2.Tree):
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


def _walked(repo: pygit2.Repository, worktree: Path) -> list[str]:
    """The suspects of one status walk; ignored files removed on the way."""
    suspects = []
    for path, flags in repo.status(untracked_files="all", ignored=True).items():
        if flags & FileStatus.IGNORED:
            candidates.remove_path(worktree / path.rstrip("/"))
            continue
        if path.endswith("/"):
            raise Unrepresentable(f"{path} is a nested repository")
        suspects.append(path)
    return suspects


def _seen(
    repo: pygit2.Repository, worktree: Path, tree: pygit2.Tree, known: frozenset[str]
) -> set[str]:
    """The suspects among the paths a watch saw written: each file, what a folder holds, what
    the parent had in a folder that went; untracked ignored files removed on the way."""
    suspects: set[str] = set()
    for rel in known:
        full = worktree / rel
        if full.is_dir() and not full.is_symlink():
            for folder, dirs, files in os.walk(full):
                if ".git" in dirs or ".git" in files:
                    inner = Path(folder).relative_to(worktree).as_posix()
                    raise Unrepresentable(f"{inner}/ is a nested repository")
                here = Path(folder).relative_to(worktree).as_posix()
                suspects.update(f"{here}/{name}" for name in files)
                # a link to a folder is listed with the folders; os.walk does not follow it
                suspects.update(f"{here}/{d}" for d in dirs if os.path.islink(f"{folder}/{d}"))
        else:
            suspects.add(rel)
        try:
            entry: pygit2.Object | None = tree[rel]
        except (KeyError, TypeError, ValueError):
            entry = None
        if isinstance(entry, pygit2.Tree):  # a folder of the parent's, maybe gone or replaced
            suspects.update(candidates.files_under(entry, rel))
    kept = set()
    for path in suspects:
        if path.split("/")[0] == ".git":
            continue
        try:
            tree[path]
            tracked = True
        except (KeyError, TypeError, ValueError):
            tracked = False
        if not tracked:
            try:
                mode = os.lstat(worktree / path).st_mode
            except OSError:
                mode = None
            if mode is not None and is_special(mode):
                continue  # a fifo, a socket, a device: git never lists one it does not track
            if mode is not None and repo.path_is_ignored(path):
                candidates.remove_path(worktree / path)
                continue
        kept.add(path)
    return kept
