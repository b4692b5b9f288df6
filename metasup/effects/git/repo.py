"""What metasup does to the supervised branch and tree, through pygit2, with one long-lived
Repository: snapshot, archive, reset, merge, its refs. The same family, in files of their own:
`protected` (the protected files), `candidates` (experiments), `lookup` (one-shot reads),
`files` (writes that never follow what the agent planted), `bundle` (backups).

The traps measured in the project notes shape this module:
- a stale `index.lock` makes a reset rewrite the tree and then fail, so every step that writes
  checks for locks first and removes only stale ones (no live git process on this repository);
- `add_all` fails on an untracked nested repository, so staging walks `status()` instead and
  leaves nested repositories alone (a reset keeps them too: nothing of theirs is lost);
- the archive is built in the index in memory and never written, so HEAD, the index file and the
  working tree stay as they were;
- ref updates are compare-and-swap: a commit whose parent moved is retried on the new tip.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import CheckoutStrategy, FileMode, FileStatus

from metasup.effects.files.changed import ChangedPaths, outermost
from metasup.effects.files.safeio import move, read_regular
from metasup.effects.git import protected
from metasup.effects.git.files import clear_links, clear_special, index_as
from metasup.effects.git.scoped import status_within
from metasup.effects.git.sweep import ARCHIVED, Sweep, Taken
from metasup.effects.git.sweep import plan as plan_sweep
from metasup.effects.git.treeedit import Edit, changed_between, edit_tree
from metasup.facts.errors import UserError
from metasup.facts.faults import crashpoint, is_armed
from metasup.facts.gitpaths import common_dir

GOOD_REF = "refs/metasup/good"
ARCHIVE_PREFIX = "refs/metasup/archive/"
AUTHOR = ("metasup", "metasup@localhost")

_WT_CHANGED = FileStatus.WT_NEW | FileStatus.WT_MODIFIED | FileStatus.WT_TYPECHANGE
_WT_RENAMED = FileStatus.WT_RENAMED
_GONE = FileStatus.WT_DELETED | FileStatus.WT_TYPECHANGE
_WT_ANY = _GONE | FileStatus.WT_MODIFIED
_LOCK_WAIT_S = 5.0
_REF_RETRIES = 5
# A change to one of these changes what other paths mean to git: every path is looked at.
_RULE_FILES = (".gitignore", ".gitattributes")


class GitError(UserError):
    """A git step that cannot go ahead; nothing was changed."""


class RollbackRefused(GitError):
    """The rollback target failed its check: nothing was reset."""


class MergeConflict(GitError):
    """A three-way merge met a conflict; nothing was changed."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"merge conflict in {', '.join(paths)}")
        self.paths = paths


EXP_BRANCH_PREFIX = "refs/heads/metasup/exp/"
POOL_BRANCH_PREFIX = "metasup/pool/"

# (path, content or None to delete, mode "100644"/"100755" or None to keep the current one)
FileChange = tuple[str, bytes | None, str | None]


@dataclass(frozen=True)
class Snapshot:
    commit: str | None  # None: the tree was clean, no commit was made
    head: str | None
    changed: int
    restored: tuple[str, ...] = ()  # protected paths put back from the good commit first


@dataclass(frozen=True)
class Archive:
    ref: str
    commit: str
    dirty: bool  # False: nothing uncommitted, the ref keeps the failed commit itself
    ignored: int = 0  # ignored files taken into the archive
    quarantined: list[str] = field(default_factory=list)  # moved aside, not hashed


def signature() -> pygit2.Signature:
    return pygit2.Signature(*AUTHOR)


def archive_ref_name(reason: str, when: datetime | None = None) -> str:
    """`refs/metasup/archive/<UTC time>-<reason>`, sortable by time, always a valid ref."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", reason).strip("-") or "state"
    return f"{ARCHIVE_PREFIX}{stamp}-{clean[:60]}"


class GitRepo:
    """The supervised repository and the branch HEAD was on when metasup started."""

    def __init__(self, start: Path) -> None:
        found = pygit2.discover_repository(str(start))
        if found is None:
            raise UserError(f"{start} is not inside a git repository (run `git init` first)")
        repo = pygit2.Repository(found)
        if repo.is_bare or repo.workdir is None:
            raise UserError(f"{found} is a bare repository; metasup needs a working tree")
        self.repo = repo
        self.workdir = Path(repo.workdir).resolve()
        self.git_dir = Path(repo.path).resolve()
        head = repo.references.get("HEAD")
        if head is None or head.type != pygit2.enums.ReferenceType.SYMBOLIC:
            raise UserError(
                f"HEAD is detached in {self.workdir}; check out the branch metasup should "
                "supervise (git switch BRANCH)"
            )
        self.branch: str = str(head.target)
        # What a watch saw change since the tree was last clean (see `_scope`), and the state
        # of git's own files when metasup last left the index holding HEAD.
        self.changes: ChangedPaths | None = None
        self._trusted: tuple[object, ...] | None = None
        self.full_scans = 0  # steps that had to look at the whole tree

    # --- what changed ---------------------------------------------------------------------------

    def _stamp(self) -> tuple[object, ...]:
        """What must not have moved for the index to still hold HEAD with nothing staged, and
        for the ignore rules outside the tree to be the same: the index file, info/exclude and
        the config as files, and the branch's tip."""
        out: list[object] = []
        config = common_dir(self.git_dir) / "config"
        for path in (self.git_dir / "index", self.git_dir / "info" / "exclude", config):
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            # The change time too: a program can set a file's mtime back, never its ctime.
            out.append((st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns))
        out.append(self.head())
        return tuple(out)

    def _scope(self) -> frozenset[str] | None:
        """The paths a step needs to look at, or None to look at the whole tree: when no watch
        runs, the watch does not know, someone else wrote the index or moved the branch since
        metasup last did, or an ignore or attributes file changed."""
        feed = self.changes
        paths = feed.begin() if feed is not None else None
        if (
            paths is None
            or self._trusted is None
            or self._trusted != self._stamp()
            or any(p.rsplit("/", 1)[-1] in _RULE_FILES for p in paths)
        ):
            self.full_scans += 1
            return None
        return paths

    def _settled(self) -> None:
        """The tree, the index and HEAD agree now (as of the last `_scope`)."""
        self._trusted = self._stamp()
        if self.changes is not None:
            self.changes.settle()

    def _status(
        self, index: pygit2.Index, scope: frozenset[str] | None, untracked: str = "all"
    ) -> dict[str, int]:
        if scope is None:
            return self.repo.status(untracked_files=untracked)
        return status_within(self.repo, index, outermost(scope), untracked)

    def _ignored_within(self, paths: Iterable[str]) -> list[str]:
        """The ignored paths among `paths` (folders standing for what they hold)."""
        out: list[str] = []
        for path in sorted(set(paths)):
            if any(path.startswith(o + "/") for o in out) or not os.path.lexists(
                self.workdir / path
            ):
                continue
            with contextlib.suppress(pygit2.GitError):
                if self.repo.path_is_ignored(path):
                    out.append(path)
        return out

    # --- reading ------------------------------------------------------------------------------

    def head(self) -> str | None:
        ref = self.repo.references.get(self.branch)
        return str(ref.target) if ref is not None else None

    def good(self) -> str | None:
        ref = self.repo.references.get(GOOD_REF)
        if ref is None:
            return None
        return str(ref.target)

    def commit_exists(self, sha: str) -> bool:
        try:
            obj = self.repo.get(sha)
        except (ValueError, pygit2.GitError):
            return False
        return isinstance(obj, pygit2.Commit)

    def resolve(self, rev: str) -> str:
        try:
            obj = self.repo.revparse_single(rev)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise GitError(f"{rev!r} is not a revision in this repository") from None
        except pygit2.InvalidSpecError:
            raise GitError(f"{rev!r} is a {obj.type_str}, not a commit") from None
        return str(commit.id)

    def file_at(self, rev: str, path: str) -> bytes:
        """A file's content as the commit `rev` has it."""
        tree = self.repo[self.resolve(rev)].peel(pygit2.Commit).tree
        try:
            blob = self.repo[tree[path].id]
        except KeyError:
            raise GitError(f"{path} is not in {rev}") from None
        assert isinstance(blob, pygit2.Blob)
        return bytes(blob.data)

    def changed_paths(self, old: str, new: str) -> set[str]:
        """The paths that differ between two commits (both sides of a rename)."""
        if old == new:
            return set()
        a = self.repo[old].peel(pygit2.Commit).tree
        b = self.repo[new].peel(pygit2.Commit).tree
        return changed_between(a, b)

    def archives(self) -> list[tuple[str, str]]:
        """(ref, commit) of every archived state, oldest first."""
        refs = [r for r in self.repo.references if r.startswith(ARCHIVE_PREFIX)]
        return [(r, str(self.repo.references[r].target)) for r in sorted(refs)]

    def is_clean(self) -> bool:
        return not any(not path.endswith("/") for path in self.repo.status(untracked_files="all"))

    # --- setup --------------------------------------------------------------------------------

    def ensure_excluded(self, pattern: str) -> None:
        """Add `pattern` to `<git-dir>/info/exclude` (local to this clone, never committed)."""
        exclude = self.git_dir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if pattern in text.splitlines():
            return
        sep = "" if not text or text.endswith("\n") else "\n"
        with exclude.open("a", encoding="utf-8") as f:
            f.write(f"{sep}# metasup\n{pattern}\n")

    def stale_locks(self, everywhere: bool = True) -> list[Path]:
        """Lock files git or libgit2 left behind in this repository. Not `everywhere`: only
        those a step of the loop meets (the index, HEAD, packed-refs, the branch and the good
        ref); walking every ref, a thousand archives among them, costs milliseconds a step."""
        candidates = [self.git_dir / n for n in ("index.lock", "HEAD.lock", "packed-refs.lock")]
        refs = self.git_dir / "refs"
        if not everywhere:
            candidates += [self.git_dir / f"{name}.lock" for name in (self.branch, GOOD_REF)]
        elif refs.is_dir():
            candidates += refs.rglob("*.lock")
        # The pooled worktrees' own index and HEAD: a run killed while one moved left them.
        candidates += self.git_dir.glob("worktrees/*/index.lock")
        candidates += self.git_dir.glob("worktrees/*/HEAD.lock")
        return [p for p in candidates if p.exists()]

    def clear_stale_locks(self, wait: float = _LOCK_WAIT_S, everywhere: bool = True) -> list[Path]:
        """Remove locks that no live git process holds; wait a little for live ones.

        Raises GitError when a running git keeps a lock past the wait: going ahead would be
        exactly the lost-edit trap.
        """
        locks = self.stale_locks(everywhere)
        if not locks:
            return []
        deadline = time.monotonic() + wait
        while True:
            holders = _git_processes_in(self.workdir, self.git_dir)
            if not holders:
                break
            locks = self.stale_locks(everywhere)
            if not locks:
                return []
            if time.monotonic() >= deadline:
                names = ", ".join(str(p.relative_to(self.git_dir)) for p in locks)
                raise GitError(
                    f"{names} held by a running git (pid {holders[0]}); "
                    "let it finish, then start again"
                )
            time.sleep(0.05)  # poll: another program's git has no event to wait on
        removed = []
        for lock in locks:
            try:
                lock.unlink()
                removed.append(lock)
            except FileNotFoundError:
                pass
        return removed

    # --- writing ------------------------------------------------------------------------------

    def _stage_worktree(self, index: pygit2.Index, status: dict[str, int]) -> list[str]:
        """Stage every change of the working tree into `index` (in memory); the paths."""
        changed = []
        for path, flags in status.items():
            if path.endswith("/"):
                continue  # a nested repository: its history is its own, and a reset keeps it
            if flags & FileStatus.WT_DELETED:
                index.remove(path)
                changed.append(path)
            elif flags & (_WT_CHANGED | _WT_RENAMED):
                index.add(path)
                changed.append(path)
        return changed

    def _head_tree(self) -> pygit2.Tree | None:
        head = self.head()
        return self.repo[head].peel(pygit2.Commit).tree if head is not None else None

    def _tree_of(
        self, index: pygit2.Index, scope: frozenset[str] | None, staged: list[str]
    ) -> pygit2.Oid:
        """The tree `index` holds. Within a scope the index held HEAD before `staged` were
        staged, so HEAD's tree with those paths is the same tree, for a fraction of the cost."""
        if scope is None:
            return index.write_tree()
        edits: dict[str, Edit] = {}
        for path in staged:
            try:
                entry = index[path]
            except KeyError:
                edits[path] = None
            else:
                edits[path] = (entry.id, entry.mode)
        return edit_tree(self.repo, self._head_tree(), edits)

    def _commit_on_branch(self, tree: pygit2.Oid, message: str) -> str:
        """Commit `tree` on the supervised branch; CAS on the branch tip, retried if it moved."""
        for _ in range(_REF_RETRIES):
            head = self.head()
            parents = [pygit2.Oid(hex=head)] if head else []
            try:
                oid = self.repo.create_commit(
                    self.branch, signature(), signature(), message, tree, parents
                )
                return str(oid)
            except pygit2.GitError:
                if self.head() == head:
                    raise
        raise GitError(f"{self.branch} kept moving while metasup committed; try again")

    def snapshot(self, run: int, protect: Callable[[str], bool] | None = None) -> Snapshot:
        """Commit the whole working tree (honouring .gitignore); no commit when it is clean.

        With `protect`, protected paths that differ from the good commit are first restored
        from it, so a protected change is never committed.
        """
        self.clear_stale_locks(everywhere=False)
        scope = self._scope()
        index = self.repo.index
        index.read(False)  # reloaded only when the file changed
        status = self._status(index, scope)
        restored: tuple[str, ...] = ()
        if protect is not None:
            restored = protected.restore_changed(self, status, protect)
            if restored:
                index.read()
                status = self._status(index, scope)
        staged = self._stage_worktree(index, status)
        tree = self._tree_of(index, scope, staged)
        head = self.head()
        if head is not None and self.repo[head].peel(pygit2.Commit).tree_id == tree:
            if staged:
                index.write()
            self._settled()
            return Snapshot(commit=None, head=head, changed=0, restored=restored)
        index.write()
        message = f"metasup: snapshot\n\nMetasup-Run: {run}\n"
        commit = self._commit_on_branch(tree, message)
        self._settled()
        return Snapshot(commit=commit, head=commit, changed=len(staged), restored=restored)

    def archive(
        self,
        reason: str,
        run: int,
        sweep: Sweep | None = None,
        quarantine_root: Path | None = None,
    ) -> Archive | None:
        """Save HEAD plus every uncommitted change (untracked too) under an archive ref.

        With `sweep`, the ignored files changed since the good state are stored too (under
        `.metasup/archived/ignored/` in the archive's tree) and then removed from the working
        tree, and what is past the sweep's bounds is moved into `quarantine_root/<archive>/`
        and listed in `.metasup/archived/manifest.json`. HEAD and the index file are left
        untouched. None when there is nothing at all (an unborn branch with an empty tree).
        """
        sweep = sweep or Sweep(since_ns=None, max_file_size=None, max_files=None)
        scope = self._scope()
        if scope is not None and sweep.since_ns is not None and self.changes is not None:
            since_good = self.changes.since(sweep.since_ns)
            scope = None if since_good is None else scope | since_good
        index = self.repo.index
        index.read(False)
        if scope is None:
            status = self.repo.status(untracked_files="normal", ignored=sweep.since_ns is not None)
            ignored = [p for p, f in status.items() if f & FileStatus.IGNORED]
        else:
            # "all": libgit2 drops a new folder named in the list when not recursing into it.
            status = status_within(self.repo, index, outermost(scope), "all")
            ignored = self._ignored_within(scope) if sweep.since_ns is not None else []
        untracked = [p for p, f in status.items() if f & FileStatus.WT_NEW]
        if scope is not None:
            untracked = self._as_folders(untracked)
        taken = plan_sweep(self.workdir, untracked, ignored, sweep)
        name = archive_ref_name(reason)
        suffix = 1
        while name in self.repo.references:
            suffix += 1
            name = f"{archive_ref_name(reason)}-{suffix}"
        root = quarantine_root or self.git_dir / "metasup" / "quarantine"
        folder = root / name.rsplit("/", 1)[1]
        tracked = {
            p: f for p, f in status.items() if not f & (FileStatus.WT_NEW | FileStatus.IGNORED)
        }
        if scope is None:
            tree, changed = self._archive_in_index(index, tracked, taken, folder)
        else:
            tree, changed = self._archive_by_edits(tracked, taken, folder)
        head = self.head()
        head_tree = self.repo[head].peel(pygit2.Commit).tree_id if head else None
        if head is not None and tree == head_tree:
            commit, dirty = head, False
        elif head is None and changed == 0:
            return None
        else:
            message = (
                f"metasup: archive ({reason})\n\nMetasup-Run: {run}\nMetasup-Reason: {reason}\n"
            )
            parents = [pygit2.Oid(hex=head)] if head else []
            oid = self.repo.create_commit(None, signature(), signature(), message, tree, parents)
            commit, dirty = str(oid), True
        self.repo.references.create(name, commit)
        # Only now, with the commit holding them, are the ignored files taken out of the tree.
        for path in taken.hash_ignored:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.workdir / path)
        return Archive(
            ref=name,
            commit=commit,
            dirty=dirty,
            ignored=len(taken.hash_ignored),
            quarantined=[u.path for u in taken.quarantine],
        )

    def _as_folders(self, untracked: list[str]) -> list[str]:
        """Untracked files as a status that does not recurse names them: the outermost new
        folder holding each (`name/`), so a folder past the bounds is quarantined whole."""
        tree = self._head_tree()
        out: set[str] = set()
        for path in untracked:
            parts = path.rstrip("/").split("/")
            entry = path
            for n in range(1, len(parts)):
                folder = "/".join(parts[:n])
                if tree is None or folder not in tree:
                    entry = folder + "/"
                    break
            out.add(entry)
        return sorted(out)

    def _archive_in_index(
        self, index: pygit2.Index, tracked: dict[str, int], taken: Taken, folder: Path
    ) -> tuple[pygit2.Oid, int]:
        """The archive's tree staged in the index in memory (which may hold staged changes of
        someone else's: they go in too); the index file is never written."""
        try:
            changed = len(self._stage_worktree(index, tracked))
            for path in taken.hash_untracked:
                with contextlib.suppress(OSError, pygit2.GitError):  # gone, or swapped since
                    index.add(path)
                    changed += 1
            for path in taken.hash_ignored:
                entry = self._entry_for(path, f"{ARCHIVED}/ignored/{path}")
                if entry is not None:
                    index.add(entry)
                    changed += 1
            self._set_aside(taken, folder)
            manifest = self._manifest(taken, folder)
            if manifest is not None:
                index.add(manifest)
                changed += 1
            return index.write_tree(), changed
        finally:
            index.read(force=True)  # drop the in-memory staging; the index file is never written

    def _archive_by_edits(
        self, tracked: dict[str, int], taken: Taken, folder: Path
    ) -> tuple[pygit2.Oid, int]:
        """The archive's tree as HEAD's with the changed paths replaced (the index holds HEAD
        within a scope); files are stored as the bytes on disk."""
        edits: dict[str, Edit] = {}
        for path, flags in tracked.items():
            if path.endswith("/"):
                continue  # a nested repository
            if flags & (_WT_CHANGED | _WT_RENAMED | FileStatus.WT_DELETED):
                entry = self._entry_for(path, path)
                edits[path] = (entry.id, entry.mode) if entry is not None else None
        entries = [self._entry_for(p, p) for p in taken.hash_untracked]
        entries += [self._entry_for(p, f"{ARCHIVED}/ignored/{p}") for p in taken.hash_ignored]
        self._set_aside(taken, folder)
        entries.append(self._manifest(taken, folder))
        for entry in entries:
            if entry is not None:
                edits[str(entry.path)] = (entry.id, entry.mode)
        return edit_tree(self.repo, self._head_tree(), edits), len(edits)

    def _set_aside(self, taken: Taken, folder: Path) -> None:
        """What is past the bounds goes into the quarantine folder; special files go."""
        for unit in taken.quarantine:
            with contextlib.suppress(FileNotFoundError):  # gone since the walk
                move(self.workdir / unit.path, folder / unit.path)
        for path, _kind in taken.special:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.workdir / path)

    def _manifest(self, taken: Taken, folder: Path) -> pygit2.IndexEntry | None:
        if taken.empty:
            return None
        doc = taken.manifest(str(folder.relative_to(self.git_dir)))
        blob = self.repo.create_blob((json.dumps(doc, indent=2) + "\n").encode())
        return pygit2.IndexEntry(f"{ARCHIVED}/manifest.json", blob, FileMode.BLOB)

    def _entry_for(self, path: str, stored_as: str) -> pygit2.IndexEntry | None:
        """An index entry at `stored_as` for the file at `path` in the tree, its blob written
        (streamed from disk for a file, never opened when it turned into a fifo)."""
        full = self.workdir / path
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                blob = self.repo.create_blob(os.fsencode(os.readlink(full)))
                return pygit2.IndexEntry(stored_as, blob, FileMode.LINK)
            if not stat.S_ISREG(st.st_mode):
                return None
            data = read_regular(full)
        except OSError:
            return None
        mode = FileMode.BLOB_EXECUTABLE if st.st_mode & stat.S_IXUSR else FileMode.BLOB
        return pygit2.IndexEntry(stored_as, self.repo.create_blob(data or b""), mode)

    def check_rollback_target(self, target: str, failed: str | None) -> str:
        """The full sha of `target` when it is a safe place to reset to, else RollbackRefused.

        Safe: it exists, it is a commit, and it is not the commit that just failed — unless that
        commit is the good one itself, where restoring its tree is all a rollback can do.
        """
        try:
            sha = self.resolve(target)
        except GitError as e:
            raise RollbackRefused(f"rollback target {target}: {e}") from None
        if not self.commit_exists(sha):
            raise RollbackRefused(f"rollback target {target} is not a commit")
        if failed is not None and sha == failed and sha != self.good():
            raise RollbackRefused(
                f"rollback target {sha[:12]} is the commit that just failed; not resetting to it"
            )
        return sha

    def reset_to(self, target: str) -> None:
        """Make HEAD, the index and the working tree exactly `target`.

        Contents and modes are restored and untracked non-ignored files removed; ignored files
        and nested repositories stay. The caller archives first.
        """
        self.clear_stale_locks(everywhere=False)
        scope = self._scope()
        commit = self.repo[target].peel(pygit2.Commit)
        extra: dict[str, Any] = {}
        if is_armed("reset:mid-checkout"):
            extra["callbacks"] = _CrashMidCheckout()
        strategy = CheckoutStrategy.FORCE | CheckoutStrategy.REMOVE_UNTRACKED
        head = self.head()
        # What differs between the failed commit and the target: the checkout writes there,
        # through any link standing on the way (an untracked one too).
        moved = self.changed_paths(head, str(commit.id)) if head is not None else set()
        unlinked: list[str] = []  # links removed from the checkout's way
        if scope is not None:
            try:
                self._checkout_paths(commit.tree, scope, moved, strategy, extra, unlinked)
            except pygit2.GitError:
                scope = None  # libgit2 refuses some paths-limited checkouts: do the whole tree
        if scope is None:
            self.clear_special_in(self.repo)
            status = self.repo.status(untracked_files="no")
            unlinked += clear_links(self.workdir, [*status, *moved])
            gone = [p for p, f in status.items() if f & _GONE]
            self._make_room(commit.tree, [*gone, *unlinked])
            self.repo.checkout_tree(commit.tree, strategy=strategy, **extra)  # type: ignore[no-untyped-call]
        self._true_up(commit.tree, {*moved, *unlinked})
        self.repo.references.create(self.branch, commit.id, force=True)
        ref = self.repo.references.get("HEAD")
        if ref is None or ref.target != self.branch:
            self.repo.set_head(self.branch)
        self._settled()

    def _true_up(self, tree: pygit2.Tree, paths: set[str]) -> None:
        """After a checkout: each of `paths` in the working tree and the index as `tree` has
        it. libgit2 leaves some behind where a link stood (a link replaced by a file in the
        target, a file written through a link), so these are checked, and written where
        wrong, without following anything the agent planted."""
        kept = []
        for path in sorted(paths):
            full = self.workdir / path
            if path in tree and os.path.isdir(full) and not os.path.islink(full):
                continue  # someone's folder where the target has a file: never deleted here
            kept.append(path)
            if path in tree and isinstance(tree[path], pygit2.Blob):
                protected.restore_path(self, tree, path)  # written only where it differs
        if not kept:
            return
        index = self.repo.index
        index.read(False)
        if index_as(index, tree, kept):
            index.write()

    def _make_room(self, tree: pygit2.Tree, gone: list[str]) -> None:
        """A tracked file deleted where the target has a folder: the folder, made first.
        libgit2 1.9 fails such a checkout ("null OID cannot exist"), hard reset included."""
        for path in gone:
            try:
                entry = tree[path]
            except KeyError:
                continue
            if entry.type_str == "tree" and not os.path.lexists(self.workdir / path):
                with contextlib.suppress(OSError):
                    os.makedirs(self.workdir / path)

    def _checkout_paths(
        self,
        tree: pygit2.Tree,
        scope: frozenset[str],
        moved: set[str],
        strategy: CheckoutStrategy,
        extra: dict[str, Any],
        unlinked: list[str],
    ) -> None:
        """Put what the run changed (`scope`) and what differs between HEAD and `tree`
        (`moved`) back as `tree` has them; folders stand for all they hold. The links removed
        from the way are added to `unlinked`."""
        paths = outermost(scope | moved)
        if not paths:
            return  # an empty list would mean every path to libgit2
        index = self.repo.index
        index.read(False)
        suspect = status_within(self.repo, index, paths, "no")
        clear_special(self.workdir, list(suspect))
        unlinked += clear_links(self.workdir, [*suspect, *scope, *moved])
        self._make_room(tree, [*(p for p, f in suspect.items() if f & _GONE), *unlinked])
        strategy |= CheckoutStrategy.DISABLE_PATHSPEC_MATCH
        if not moved:
            # The index holds the target already: writing it (50 ms at 100k files) would
            # only refresh the stat data of the files put back, and a stale one costs a hash
            # of those files at the next look.
            strategy |= CheckoutStrategy.DONT_UPDATE_INDEX
        self.repo.checkout_tree(  # type: ignore[no-untyped-call]
            tree, strategy=strategy, paths=paths, **extra
        )

    # --- experiments ---------------------------------------------------------------------------

    def _entry_from_disk(self, path: str) -> pygit2.IndexEntry:
        full = self.workdir / path
        if full.is_symlink():
            blob = self.repo.create_blob(os.fsencode(os.readlink(full)))
            return pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.LINK)
        executable = os.access(full, os.X_OK)
        mode = pygit2.enums.FileMode.BLOB_EXECUTABLE if executable else pygit2.enums.FileMode.BLOB
        return pygit2.IndexEntry(path, self.repo.create_blob_fromdisk(str(full)), mode)

    def _tree_with(self, base: str | None, paths: Iterable[str], index: Any = None) -> pygit2.Oid:
        """`base`'s tree with `paths` as the working tree has them (absent ones removed)."""
        tree_index = pygit2.Index()
        if base is not None:
            tree_index.read_tree(self.repo[base].peel(pygit2.Commit).tree)
        for path in paths:
            full = self.workdir / path
            if full.exists() or full.is_symlink():
                entry = self._entry_from_disk(path)
                tree_index.add(entry)
                if index is not None:
                    index.add(entry)
            else:
                with contextlib.suppress(OSError, KeyError):
                    tree_index.remove(path)
                if index is not None:
                    with contextlib.suppress(OSError, KeyError):
                        index.remove(path)
        return tree_index.write_tree(self.repo)

    def commit_paths(self, paths: list[str], message: str) -> str:
        """Commit exactly `paths` as the working tree has them (present or removed) on the
        branch, and stage them, leaving whatever else the index holds as it was."""
        head = self.head()
        index = self.repo.index
        index.read()
        tree = self._tree_with(head, paths, index)
        parents = [pygit2.Oid(hex=head)] if head is not None else []
        oid = self.repo.create_commit(self.branch, signature(), signature(), message, tree, parents)
        index.write()
        return str(oid)

    def good_with(self, paths: list[str], message: str) -> str | None:
        """A new good commit: the good commit with `paths` as the working tree has them, made
        on top of it (the operator's approved change to protected files). None without good."""
        good = self.good()
        if good is None:
            return None
        tree = self._tree_with(good, paths)
        if self.repo[good].peel(pygit2.Commit).tree_id == tree:
            return good
        oid = self.repo.create_commit(
            None, signature(), signature(), message, tree, [pygit2.Oid(hex=good)]
        )
        self.set_good(str(oid))
        return str(oid)

    def set_branch(self, name: str, commit: str) -> None:
        self.repo.references.create(name, commit, force=True)

    def delete_ref(self, name: str) -> None:
        ref = self.repo.references.get(name)
        if ref is not None:
            ref.delete()

    def experiment_branches(self) -> list[tuple[str, str]]:
        """(ref, commit) of every metasup/exp/* branch: leftovers when no experiment runs."""
        refs = [r for r in self.repo.references if r.startswith(EXP_BRANCH_PREFIX)]
        return [(r, str(self.repo.references[r].target)) for r in sorted(refs)]

    def archive_commit(self, name: str, commit: str) -> str:
        """Keep `commit` reachable under refs/metasup/archive/<name> (a suffix keeps it unique)."""
        ref = f"{ARCHIVE_PREFIX}{name}"
        n = 1
        while ref in self.repo.references:
            n += 1
            ref = f"{ARCHIVE_PREFIX}{name}-{n}"
        self.repo.references.create(ref, commit)
        return ref

    def merge(self, candidate: str, base: str, message: str) -> tuple[str, bool]:
        """Bring `candidate` onto the supervised branch and into the working tree.

        Fast-forward when the branch still points at `base`; otherwise a three-way merge, where
        a conflict raises MergeConflict and changes nothing. The caller snapshots first, so the
        working tree holds nothing uncommitted. Returns (new head, fast_forwarded).
        """
        self.clear_stale_locks()
        head = self.head()
        if head == base:
            new, fast = candidate, True
            self.repo.references.create(self.branch, candidate, force=True)
        else:
            assert head is not None
            index = self.repo.merge_commits(head, candidate)
            if index.conflicts is not None:
                paths = sorted(
                    {e.path for entries in index.conflicts for e in entries if e is not None}
                )
                raise MergeConflict(paths)
            tree = index.write_tree(self.repo)
            new = str(
                self.repo.create_commit(
                    self.branch,
                    signature(),
                    signature(),
                    message,
                    tree,
                    [pygit2.Oid(hex=head), pygit2.Oid(hex=candidate)],
                )
            )
            fast = False
        self.repo.checkout_tree(  # type: ignore[no-untyped-call]
            self.repo[new].peel(pygit2.Commit).tree,
            strategy=CheckoutStrategy.FORCE | CheckoutStrategy.REMOVE_UNTRACKED,
        )
        return new, fast

    @staticmethod
    def clear_special_in(repo: pygit2.Repository) -> list[str]:
        """Special files where the index has a file (libgit2 reports them deleted): gone
        before a checkout that would block on them."""
        status = repo.status(untracked_files="no")
        suspect = [
            p for p, f in status.items() if f & (FileStatus.WT_DELETED | FileStatus.WT_TYPECHANGE)
        ]
        workdir = Path(repo.workdir)
        # A link where a tracked file or folder was (typechanged, or modified when libgit2
        # compares it as a file): the checkout would write through it.
        links = clear_links(workdir, [p for p, f in status.items() if f & _WT_ANY])
        return (clear_special(workdir, suspect) if suspect else []) + links

    def reaches(self, commit: str, ancestor: str) -> bool:
        """`ancestor` is in the history of `commit`."""
        try:
            return bool(self.repo.descendant_of(commit, ancestor))
        except (pygit2.GitError, ValueError, KeyError):
            return False

    def refs_stamp(self) -> tuple[int, ...]:
        """Inode, mtime and size of the archive refs' folder and of packed-refs: what changes
        when a ref there is created, deleted or moved by git (it writes through a rename)."""
        common = common_dir(Path(self.repo.path))
        out: list[int] = []
        for path in (common / ARCHIVE_PREFIX.rstrip("/"), common / "packed-refs"):
            try:
                st = os.stat(path)
                out += [st.st_ino, st.st_mtime_ns, st.st_size]
            except OSError:
                out += [0, 0, 0]
        return tuple(out)

    def ref_value(self, name: str) -> str | None:
        """What `name` holds: a commit id, `ref: <target>` for a symbolic ref, None when
        missing or unreadable."""
        try:
            ref = self.repo.references.get(name)
        except (pygit2.GitError, ValueError):
            return None
        if ref is None:
            return None
        target = ref.target
        return str(target) if isinstance(target, pygit2.Oid) else f"ref: {target}"

    def set_ref(self, name: str, sha: str) -> None:
        """Point `name` at `sha`, replacing whatever it was (a symbolic ref included)."""
        with contextlib.suppress(pygit2.GitError, ValueError):
            existing = self.repo.references.get(name)
            if existing is not None and not isinstance(existing.target, pygit2.Oid):
                existing.delete()
        self.repo.references.create(name, sha, force=True)

    def set_good(self, sha: str) -> None:
        self.repo.references.create(GOOD_REF, sha, force=True)

    def refresh_index(self) -> None:
        """Refresh the index stat cache so status stays fast after many mtimes changed."""
        index = self.repo.index
        index.read()
        index.diff_to_workdir(flags=pygit2.enums.DiffOption.UPDATE_INDEX)
        index.write()


class _CrashMidCheckout(pygit2.CheckoutCallbacks):
    """Test hook: SIGKILL after the checkout has written some files but not all."""

    def checkout_progress(self, path: str, completed_steps: int, total_steps: int) -> None:
        if 2 <= completed_steps < total_steps:
            crashpoint("reset:mid-checkout")


def _git_processes_in(*roots: Path) -> list[int]:
    from metasup.effects.process.trees import git_processes_in

    return git_processes_in(*roots)
