"""Snapshot, archive and reset look only at what the watch saw change, and still commit
exactly what `git add -A` would: random file operations under a real inotify watch, each
snapshot compared with the git CLI's tree of the same working tree."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasup.effects.files.changed import ChangedPaths, outermost
from metasup.effects.git.repo import GitRepo
from metasup.pipelines.tamper import TamperWatch
from testing.fixtures import git, make_repo

NAMES = ["a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "d/e", "n/m/o.txt", "x.log", "link"]
KINDS = [
    "write", "delete", "rename", "mkdir_p", "chmod", "symlink", "ignore_rule", "rmtree",
    "move_out", "move_in", "touch",
]  # fmt: skip
OPS = st.lists(
    st.tuples(st.sampled_from(KINDS), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    min_size=1,
    max_size=8,
)


def _cli_tree(repo: Path) -> str:
    """The tree `git add -A` would commit now, staged in a scratch index."""
    scratch = repo / ".git" / "scratch-index"
    shutil.copy(repo / ".git" / "index", scratch)
    env = {**os.environ, "GIT_INDEX_FILE": str(scratch)}
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True, capture_output=True)
    out = subprocess.run(
        ["git", "write-tree"], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    scratch.unlink()
    return out


def _listing(repo: Path, tree: str) -> dict[str, str]:
    lines = git(repo, "ls-tree", "-r", tree).splitlines()
    return {line.split("\t", 1)[1]: line.split("\t", 1)[0] for line in lines}


def _holds(repo: Path, commit: str, expected: str) -> None:
    """The archive holds the tree `git add -A` makes, and beyond it only ignored files (those
    inside a new folder are taken with it)."""
    archived, wanted = _listing(repo, commit), _listing(repo, expected)
    assert {p: archived.get(p) for p in wanted} == wanted
    for extra in set(archived) - set(wanted):
        check = subprocess.run(["git", "check-ignore", "-q", "--no-index", extra], cwd=repo)
        assert check.returncode == 0, f"{extra} is in the archive and neither changed nor ignored"


def _status(repo: Path, untracked: str = "all") -> str:
    """`git status`, without the index refresh it writes otherwise (someone else's write of
    the index is a reason for a full scan, which the test must not cause itself)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(
        ["git", "status", "--porcelain", f"--untracked-files={untracked}"],
        cwd=repo, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _apply(repo: Path, outside: Path, kind: str, a: str, b: str) -> None:
    pa, pb = repo / a, repo / b
    try:
        if kind in ("write", "touch"):
            if pa.is_dir() and not pa.is_symlink():
                shutil.rmtree(pa)
            pa.parent.mkdir(parents=True, exist_ok=True)
            if kind == "touch" and pa.is_file():
                os.utime(pa)
            else:
                with open(pa, "a") as f:
                    f.write(f"{kind} {b}\n")
        elif kind == "delete":
            if pa.is_symlink() or pa.is_file():
                pa.unlink()
        elif kind == "rename" and (pa.exists() or pa.is_symlink()) and not pb.exists():
            pb.parent.mkdir(parents=True, exist_ok=True)
            os.rename(pa, pb)
        elif kind == "mkdir_p":
            (pa.parent / "deep" / "er").mkdir(parents=True, exist_ok=True)
            (pa.parent / "deep" / "er" / "leaf.txt").write_text(b)
        elif kind == "chmod" and pa.is_file() and not pa.is_symlink():
            os.chmod(pa, pa.stat().st_mode ^ stat.S_IXUSR)
        elif kind == "symlink" and not pa.exists() and not pa.is_symlink():
            pa.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(b, pa)
        elif kind == "ignore_rule":
            rule = pa.parent / ".gitignore"
            rule.parent.mkdir(parents=True, exist_ok=True)
            with open(rule, "a") as f:
                f.write(f"{Path(b).name}\n")
        elif kind == "rmtree" and pa.parent != repo and pa.parent.is_dir():
            shutil.rmtree(pa.parent)
        elif kind == "move_out" and pa.parent != repo and pa.parent.is_dir():
            gone = outside / f"out-{len(list(outside.iterdir()))}"
            os.rename(pa.parent, gone)
        elif kind == "move_in" and not pa.parent.exists():
            come = outside / f"in-{len(list(outside.iterdir()))}"
            (come / "sub").mkdir(parents=True)
            (come / "sub" / "moved.txt").write_text(b)
            (come / "top.txt").write_text(a)
            pa.parent.parent.mkdir(parents=True, exist_ok=True)
            os.rename(come, pa.parent)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError, OSError):
        pass  # a path the ops made into something else: as an agent might


class Watched:
    def __init__(self, root: Path) -> None:
        self.repo = make_repo(root / "repo")
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.repo / ".gitignore").write_text("*.log\n")
        for name in ("a.txt", "d/c.txt", "d/e/f.txt"):
            (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / name).write_text(f"{name}\n")
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", "base")
        state = self.repo / ".git" / "metasup"
        state.mkdir()
        self.watch = TamperWatch(self.repo, lambda path: False, state / "lock")
        assert self.watch.start()
        self.g = GitRepo(self.repo)
        self.g.changes = self.watch.changes
        self.g.snapshot(0)  # the first look is a full one: nothing is known before it
        assert self.g.full_scans == 1


@pytest.fixture
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    w = Watched(tmp_path_factory.mktemp("changed"))
    yield w
    w.watch.stop()


@settings(
    max_examples=int(os.environ.get("METASUP_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.tuples(OPS, st.sampled_from(["snapshot", "rollback"])), max_size=4))
def test_every_snapshot_is_what_git_add_would_commit(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[list[tuple[str, str, str]], str]]
) -> None:
    watched = Watched(tmp_path_factory.mktemp("changed"))
    try:
        _steps(watched, steps)
    finally:
        watched.watch.stop()


def _steps(watched: Watched, steps: list[tuple[list[tuple[str, str, str]], str]]) -> None:
    g, repo = watched.g, watched.repo
    ruled = False
    for ops, then in steps:
        scans = g.full_scans
        ruled = ruled or any(kind == "ignore_rule" for kind, _a, _b in ops)
        for op in ops:
            _apply(repo, watched.outside, *op)
        if then == "snapshot":
            expected = _cli_tree(repo)
            snap = g.snapshot(1)
            assert snap.head is not None
            assert git(repo, "rev-parse", f"{snap.head}^{{tree}}").strip() == expected
        else:
            expected = _cli_tree(repo)
            good = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
            archive = g.archive("test", 1)
            if archive is not None:
                _holds(repo, archive.commit, expected)
            g.reset_to(good)
            if ruled:
                # A file ignored when archived is kept (it was not archived); it may be
                # untracked again once the reset put the rules back.
                assert _status(repo, "no") == ""
            else:
                assert _cli_tree(repo) == git(repo, "rev-parse", f"{good}^{{tree}}").strip()
                assert _status(repo) == ""
        if not ruled:
            # A rule file changes what other paths mean: only then is the whole tree looked at
            # (and after a reset that put one back).
            assert g.full_scans == scans, f"a full scan after {ops}"


def test_a_lost_event_queue_means_a_full_scan(watched: Watched) -> None:
    g, repo = watched.g, watched.repo
    (repo / "a.txt").write_text("changed\n")
    assert watched.watch.changes is not None
    watched.watch.changes.lost()
    scans = g.full_scans
    snap = g.snapshot(1)
    assert g.full_scans == scans + 1 and snap.commit is not None
    assert git(repo, "show", f"{snap.commit}:a.txt") == "changed\n"


def test_an_index_written_by_someone_else_means_a_full_scan(watched: Watched) -> None:
    """The agent's own `git add` stages what the watch never hears of from `.git/`."""
    g, repo = watched.g, watched.repo
    (repo / "b.txt").write_text("staged by the agent\n")
    git(repo, "add", "b.txt")
    scans = g.full_scans
    snap = g.snapshot(1)
    assert g.full_scans == scans + 1
    assert git(repo, "show", f"{snap.head}:b.txt") == "staged by the agent\n"


def test_a_barrier_that_does_not_pass_means_nothing_is_known() -> None:
    changes = ChangedPaths(lambda: lambda timeout: False)
    changes.begin()
    changes.settle()  # as after a full scan
    changes.add("a.txt")
    assert changes.begin() is None


def test_changes_during_a_step_stay_for_the_next() -> None:
    changes = ChangedPaths(lambda: lambda timeout: True)
    changes.begin()
    changes.settle()
    changes.add("a.txt")
    assert changes.begin() == {"a.txt"}
    changes.add("b.txt")  # while the step runs
    changes.settle()
    assert changes.begin() == {"b.txt"}


@given(st.lists(st.sampled_from(["a", "a/b", "a/b/c", "a-b", "a-b/c", "b", "ab/c"]), max_size=7))
def test_outermost_keeps_no_path_inside_another(paths: list[str]) -> None:
    kept = outermost(paths)
    for path in set(paths):
        assert path in kept or any(path.startswith(k + "/") for k in kept)
    for k in kept:
        assert not any(k.startswith(other + "/") for other in kept)


@pytest.mark.parametrize("watch", [True, False], ids=["watched", "scanned"])
def test_a_reset_never_writes_through_a_planted_link(
    tmp_path_factory: pytest.TempPathFactory, watch: bool
) -> None:
    """Tracked files and a folder replaced by links pointing out of the tree (dangling, so a
    write through them would create the file there): the reset puts the tree back and writes
    nothing outside."""
    w = Watched(tmp_path_factory.mktemp("links"))
    try:
        if not watch:
            w.g.changes = None
        good = git(w.repo, "rev-parse", "HEAD").strip()
        victim = w.outside / "victim.txt"
        folder = w.outside / "folder"
        (w.repo / "a.txt").unlink()
        os.symlink(victim, w.repo / "a.txt")
        shutil.rmtree(w.repo / "d" / "e")
        os.symlink(folder, w.repo / "d" / "e")
        g = w.g
        g.archive("test", 1)
        g.reset_to(good)
        assert not victim.exists() and not folder.exists()
        assert (w.repo / "a.txt").read_text() == "a.txt\n"
        assert (w.repo / "d" / "e" / "f.txt").read_text() == "d/e/f.txt\n"
        assert _status(w.repo) == ""
    finally:
        w.watch.stop()


def test_a_config_rewritten_with_its_old_time_means_a_full_scan(watched: Watched) -> None:
    """The agent edits `.git/config` in place (an ignore file named there, say), same size,
    and sets its mtime back: the change time still tells."""
    g, repo = watched.g, watched.repo
    config = repo / ".git" / "config"
    before = config.stat()
    text = config.read_text()
    config.write_text(text.replace("filemode = true", "filemode = True"))  # same size
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert config.stat().st_mtime_ns == before.st_mtime_ns
    scans = g.full_scans
    g.snapshot(1)
    assert g.full_scans == scans + 1
