"""Pooled worktrees move by what their watch saw change (or one walk, when it cannot know):
whatever a run did in one, the next commit it holds is exactly that commit, and what a mutator
changed is what a walk finds (property-tested against the git CLI's view, and the walk)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasup.effects.git import candidates
from metasup.effects.git.candidates import candidate_commit, hold, not_held, worktree_at
from metasup.effects.git.population import Unrepresentable, worktree_changes
from metasup.effects.git.repo import GitRepo
from testing.fixtures import git, make_repo

NAMES = ["a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "run.sh", "new.txt", "d/new.txt", "x.log"]
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "write",
                "delete",
                "fifo",
                "chmod",
                "mkdir",
                "ignored",
                "stage",
                "link",
                "dirlink",
                "rename",
            ]
        ),
        st.sampled_from(NAMES),
        st.binary(max_size=20),
    ),
    max_size=12,
)


def _base(tmp: Path) -> tuple[Path, GitRepo, list[str]]:
    repo = make_repo(tmp / "repo")
    (repo / ".gitignore").write_text("*.log\ncache/\n")
    for name in ("a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "run.sh"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"{name}\n")
    os.chmod(repo / "run.sh", 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    g = GitRepo(repo)
    base = git(repo, "rev-parse", "HEAD").strip()
    one = candidate_commit(g, base, [("a.txt", b"one\n", None), ("d/c.txt", None, None)], "1")
    two = candidate_commit(
        g, one, [("new.txt", b"two\n", None), ("run.sh", b"#!/bin/sh\n", "100644")], "2"
    )
    return repo, g, [base, one, two]


def _scribble(here: Path, ops: list[tuple[str, str, bytes]]) -> None:
    for op, name, data in ops:
        path = here / name
        try:
            if op in ("write", "ignored"):
                target = path.with_suffix(".log") if op == "ignored" else path
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink():
                    target.unlink()  # writing would follow it out of the worktree
                elif target.is_dir():
                    shutil.rmtree(target)
                elif target.exists() and not target.is_file():
                    target.unlink()  # a fifo: writing would wait for a reader
                target.write_bytes(data)
            elif op == "delete":
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            elif op == "fifo":
                if path.is_dir():
                    shutil.rmtree(path)
                path.unlink(missing_ok=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.mkfifo(path)
            elif op == "chmod" and path.is_file():
                os.chmod(path, path.stat().st_mode ^ stat.S_IXUSR)
            elif op == "mkdir":
                (here / "cache" / name).mkdir(parents=True, exist_ok=True)
            elif op in ("link", "dirlink"):
                # Dangling, out of the worktree: a write through it would create the file.
                at = path if op == "link" else path.parent
                if at == here:
                    continue
                if at.is_dir() and not at.is_symlink():
                    shutil.rmtree(at)
                else:
                    at.unlink(missing_ok=True)
                at.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(here.parent / f"outside-{at.name}", at)
            elif op == "stage" and path.is_file():
                git(here, "add", "--", name, check=False)
            elif op == "rename":  # the file, or else its folder, to a new name beside it
                src = path if os.path.lexists(path) else path.parent
                if src != here:
                    os.rename(src, src.with_name(src.name + "-moved"))
        except OSError:
            pass  # a path the ops made into something else, or a folder in the way: as a run might


def _is_exactly(here: Path, commit: str) -> None:
    assert git(here, "rev-parse", "HEAD").strip() == commit
    # Without optional locks: git would refresh the index, and a watch that sees the index
    # changed behind it walks the next move (the property test would try only that way).
    left = git(
        here, "--no-optional-locks", "status", "--porcelain", "--ignored", "--untracked-files=all"
    )
    assert left == "", left
    listed = sorted(git(here, "ls-tree", "-r", "--name-only", commit).split())
    # Regular files and links, what git tracks: a special file a run left where the commit has
    # nothing is not seen by git and stays (checkouts never write there).
    files = [p.relative_to(here) for p in here.rglob("*") if p.is_file() or p.is_symlink()]
    on_disk = sorted(str(p) for p in files if p.parts[0] != ".git")
    assert on_disk == listed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, to=st.integers(min_value=0, max_value=2), first=st.integers(0, 2))
def test_a_move_leaves_exactly_the_commit(tmp_path_factory, ops, to, first) -> None:  # type: ignore[no-untyped-def]
    repo, g, commits = _base(tmp_path_factory.mktemp("move"))
    root = repo / ".git" / "metasup" / "worktrees"
    here = worktree_at(g, "cand-0", root, commits[first])
    _is_exactly(here, commits[first])
    _scribble(here, ops)
    staged = any(op == "stage" for op, _, _ in ops)
    if not staged:
        assert candidates.changed_since_clean(here, candidates.repo_of(here)) is not None
    worktree_at(g, "cand-0", root, commits[to])
    _is_exactly(here, commits[to])
    assert not list(root.glob("outside-*")), "a move wrote through a planted link"


def test_a_held_child_is_exactly_its_commit_and_keeps_the_stat_cache(tmp_path: Path) -> None:
    repo, g, (base, one, _) = _base(tmp_path)
    here = worktree_at(g, "cand-0", repo / ".git" / "metasup" / "worktrees", base)
    (here / "a.txt").write_text("one\n")  # what a mutator did: the child `one` is these edits
    (here / "d" / "c.txt").unlink()
    hold(here, one, ["a.txt", "d/c.txt"])
    _is_exactly(here, one)


def test_a_slot_that_does_not_hold_its_candidate_is_named(tmp_path: Path) -> None:
    """What `assess` checks before judging: the slot holds the candidate where it differs
    from the base, or it says where not."""
    _repo, g, (base, one, _two) = _base(tmp_path)
    pool = tmp_path / "pool"
    here = worktree_at(g, "cand-0", pool, one)
    assert not_held(here, one, base) == []
    (here / "a.txt").write_text("another candidate's\n")  # same path, other content
    (here / "d" / "c.txt").write_text("deleted in the candidate\n")
    assert not_held(here, one, base) == ["a.txt", "d/c.txt"]
    worktree_at(g, "cand-0", pool, base)
    assert not_held(here, one, base) == [f"HEAD is {base}"]


def test_the_watch_names_what_a_run_wrote_and_a_move_clears_it(tmp_path: Path) -> None:
    """The moves above take the watch's way unless they cannot know: here they know."""
    _repo, g, (base, one, _two) = _base(tmp_path)
    pool = tmp_path / "pool"
    here = worktree_at(g, "cand-0", pool, base)
    tree_repo = candidates.repo_of(here)
    assert candidates.changed_since_clean(here, tree_repo) == frozenset()
    (here / "a.txt").write_text("changed\n")
    (here / "new").mkdir()
    (here / "new" / "x.txt").write_text("x\n")
    (here / "d" / "c.txt").unlink()
    seen = candidates.changed_since_clean(here, tree_repo)
    assert seen == {"a.txt", "new", "new/x.txt", "d/c.txt"}
    worktree_at(g, "cand-0", pool, one)
    _is_exactly(here, one)
    assert candidates.changed_since_clean(here, tree_repo) == frozenset()
    git(here, "add", "-A", check=False)  # the index changed behind the watch: not known
    assert candidates.changed_since_clean(here, tree_repo) is None


def _changes_or_refusal(here: Path, parent: str, watch: bool) -> object:
    try:
        return worktree_changes(here, parent, watch=watch)
    except Unrepresentable as e:
        return type(e)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, at=st.integers(0, 2))
def test_what_the_watch_saw_a_mutator_change_is_what_a_walk_finds(
    tmp_path_factory, ops, at
) -> None:  # type: ignore[no-untyped-def]
    repo, g, commits = _base(tmp_path_factory.mktemp("changes"))
    root = repo / ".git" / "metasup" / "worktrees"
    watched = worktree_at(g, "cand-0", root, commits[at])
    walked = worktree_at(g, "cand-1", root, commits[at])
    ops = [op for op in ops if op[0] != "stage"]  # a mutator's edits, not its index
    _scribble(watched, ops)
    _scribble(walked, ops)
    assert candidates.changed_since_clean(watched, candidates.repo_of(watched)) is not None
    found = _changes_or_refusal(watched, commits[at], watch=True)
    assert found == _changes_or_refusal(walked, commits[at], watch=False)
