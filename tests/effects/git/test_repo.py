"""The git engine against real repositories, checked with the git CLI."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasup.effects.git.candidates import candidate_commit, worktree_at
from metasup.effects.git.repo import (
    ARCHIVE_PREFIX,
    GOOD_REF,
    GitError,
    GitRepo,
    MergeConflict,
    RollbackRefused,
)
from metasup.facts.errors import UserError
from testing.fixtures import git, make_repo


def tree_of(repo: Path, rev: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, content) of a commit, as the git CLI sees it."""
    out = {}
    for line in git(repo, "ls-tree", "-r", "-z", rev).split("\0"):
        if not line:
            continue
        meta, path = line.split("\t", 1)
        mode, _, sha = meta.split()
        out[path] = (mode, git(repo, "cat-file", "-p", sha))
    return out


def workdir_files(repo: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root, name)
            rel = p.relative_to(repo).as_posix()
            if p.is_symlink():
                out[rel] = ("120000", os.readlink(p))
            else:
                mode = "100755" if os.stat(p).st_mode & stat.S_IXUSR else "100644"
                out[rel] = (mode, p.read_text())
    return out


def test_snapshot_commits_the_whole_tree_and_nothing_when_clean(repo: Path) -> None:
    (repo / "a.txt").write_text("a\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "b.txt").write_text("b\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "noise.log").write_text("ignored\n")
    g = GitRepo(repo)
    snap = g.snapshot(run=7)
    assert snap.commit is not None and snap.changed == 3
    assert set(tree_of(repo, "HEAD")) == {".gitignore", "a.txt", "sub/b.txt"}
    assert git(repo, "log", "-1", "--format=%an|%s").strip() == "metasup|metasup: snapshot"
    assert "Metasup-Run: 7" in git(repo, "log", "-1", "--format=%B")
    assert (
        git(repo, "status", "--porcelain") == "?? noise.log\n"
        or git(repo, "status", "--porcelain") == ""
    )
    again = g.snapshot(run=8)
    assert again.commit is None and again.head == snap.commit


def test_snapshot_records_deletions_modes_and_symlinks(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "gone.txt").write_text("x\n")
    g.snapshot(1)
    (repo / "run.sh").chmod(0o755)
    (repo / "gone.txt").unlink()
    os.symlink("run.sh", repo / "link")
    g.snapshot(2)
    tree = tree_of(repo, "HEAD")
    assert tree["run.sh"][0] == "100755"
    assert tree["link"] == ("120000", "run.sh")
    assert "gone.txt" not in tree


def test_snapshot_skips_an_untracked_nested_repository(repo: Path) -> None:
    nested = make_repo(repo / "nested")
    (nested / "x").write_text("x\n")
    (repo / "a").write_text("a\n")
    g = GitRepo(repo)
    snap = g.snapshot(1)
    assert snap.commit is not None
    assert set(tree_of(repo, "HEAD")) == {"a"}


def test_snapshot_builds_on_commits_made_outside(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "a").write_text("1\n")
    g.snapshot(1)
    (repo / "a").write_text("2\n")
    git(repo, "commit", "-qam", "by hand")
    outside = git(repo, "rev-parse", "HEAD").strip()
    (repo / "a").write_text("3\n")
    snap = g.snapshot(2)
    assert git(repo, "rev-parse", f"{snap.commit}^").strip() == outside


def test_archive_keeps_everything_and_touches_nothing(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "tracked").write_text("v1\n")
    head = g.snapshot(1).commit
    (repo / "tracked").write_text("v2 dirty\n")
    (repo / "untracked.txt").write_text("new\n")
    (repo / "deep" / "er").mkdir(parents=True)
    (repo / "deep" / "er" / "file").write_text("deep\n")
    index_before = (repo / ".git" / "index").read_bytes()
    files_before = workdir_files(repo)
    archive = g.archive("quick exit", run=2)
    assert archive is not None and archive.dirty
    assert archive.ref.startswith(ARCHIVE_PREFIX) and archive.ref.endswith("-quick-exit")
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert workdir_files(repo) == files_before
    assert tree_of(repo, archive.ref) == files_before
    assert git(repo, "rev-parse", f"{archive.ref}^").strip() == head


def test_archive_of_a_clean_tree_points_at_the_failed_commit(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "a").write_text("a\n")
    head = g.snapshot(1).commit
    archive = g.archive("exit 1", run=1)
    assert archive is not None and not archive.dirty and archive.commit == head


def test_reset_restores_exact_contents_and_modes(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "run.sh").write_text("#!/bin/sh\necho good\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "data.txt").write_text("good\n")
    (repo / ".gitignore").write_text("cache/\n")
    good = g.snapshot(1).commit
    assert good is not None
    expected = workdir_files(repo)
    (repo / "run.sh").write_text("broken\n")
    (repo / "run.sh").chmod(0o644)
    (repo / "data.txt").unlink()
    (repo / "stray").mkdir()
    (repo / "stray" / "x").write_text("x\n")
    (repo / "cache").mkdir()
    (repo / "cache" / "keep").write_text("ignored files stay\n")
    nested = make_repo(repo / "nested")
    (nested / "n").write_text("nested repos stay\n")
    g.snapshot(2)
    g.reset_to(good)
    assert git(repo, "rev-parse", "HEAD").strip() == good
    files = workdir_files(repo)
    assert (repo / "cache" / "keep").read_text() == "ignored files stay\n"
    assert (nested / "n").read_text() == "nested repos stay\n"
    files = {k: v for k, v in files.items() if not k.startswith(("cache/", "nested/"))}
    assert files == expected
    assert git(repo, "status", "--porcelain", "--ignored=no") == "?? nested/\n"


def test_rollback_target_checks(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "a").write_text("a\n")
    good = g.snapshot(1).commit
    assert good is not None
    g.set_good(good)
    (repo / "a").write_text("b\n")
    failed = g.snapshot(2).commit
    assert g.check_rollback_target(GOOD_REF, failed) == good
    with pytest.raises(RollbackRefused, match="just failed"):
        g.check_rollback_target(failed or "", failed)
    with pytest.raises(RollbackRefused, match="not a revision"):
        g.check_rollback_target("0" * 40, failed)
    blob = git(repo, "rev-parse", "HEAD:a").strip()
    with pytest.raises(RollbackRefused):
        g.check_rollback_target(blob, failed)
    # The good commit itself failing: restoring its tree is all that is left to do.
    assert g.check_rollback_target(good, good) == good


def test_stale_index_lock_is_removed_before_a_reset(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "a").write_text("a\n")
    good = g.snapshot(1).commit
    assert good is not None
    (repo / "a").write_text("dirty\n")
    (repo / ".git" / "index.lock").write_text("")
    g.reset_to(good)
    assert not (repo / ".git" / "index.lock").exists()
    assert (repo / "a").read_text() == "a\n"


def test_a_lock_held_by_a_live_git_is_respected(repo: Path) -> None:
    g = GitRepo(repo)
    (repo / "a").write_text("a\n")
    g.snapshot(1)
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    holder = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        with pytest.raises(GitError, match=r"index.lock held by a running git"):
            g.clear_stale_locks(wait=0.2)
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert g.clear_stale_locks(wait=0.2) == [lock]


def test_detached_head_is_refused(repo: Path) -> None:
    (repo / "a").write_text("a\n")
    git(repo, "add", "a")
    git(repo, "commit", "-qm", "one")
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(UserError, match="HEAD is detached"):
        GitRepo(repo)


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not inside a git repository"):
        GitRepo(tmp_path)


_names = st.sampled_from(["a", "b", "c.txt", "d/e", "d/f", "g/h/i", "x y", "ü"])
_content = st.text(alphabet="abc\n", max_size=20)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.dictionaries(_names, st.tuples(_content, st.booleans()), max_size=6),
    edits=st.dictionaries(_names, st.none() | st.tuples(_content, st.booleans()), max_size=6),
)
def test_nothing_is_lost_by_archive_then_reset(
    tmp_path_factory: pytest.TempPathFactory,
    base: dict[str, tuple[str, bool]],
    edits: dict[str, tuple[str, bool] | None],
) -> None:
    repo = make_repo(tmp_path_factory.mktemp("prop") / "r")

    def put(files: dict[str, tuple[str, bool] | None]) -> None:
        for name, spec in files.items():
            p = repo / name
            if spec is None:
                if p.exists():
                    p.unlink()
                continue
            # A path that is a file in one tree and a directory in another: make room.
            for parent in reversed(Path(name).parents[:-1]):
                q = repo / parent
                if q.exists() and not q.is_dir():
                    q.unlink()
            if p.is_dir():
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(spec[0])
            p.chmod(0o755 if spec[1] else 0o644)

    put(dict(base))
    g = GitRepo(repo)
    good = g.snapshot(1).head
    assert good is not None
    good_files = workdir_files(repo)
    put(edits)
    dirty_files = workdir_files(repo)
    archive = g.archive("prop", 2)
    g.reset_to(good)
    assert workdir_files(repo) == good_files
    if archive is not None:
        assert tree_of(repo, archive.ref) == dirty_files
    else:
        assert dirty_files == {}
    assert git(repo, "fsck", "--no-progress", check=False) == ""


def _protected(path: str) -> bool:
    return path.casefold() == "protected" or path.casefold().startswith("protected/")


@pytest.fixture
def guarded(repo: Path) -> tuple[Path, GitRepo, str]:
    (repo / "protected").mkdir()
    (repo / "protected" / "rules.yaml").write_text("rules: strict\n")
    (repo / "protected" / "tool.sh").write_text("#!/bin/sh\n")
    (repo / "protected" / "tool.sh").chmod(0o755)
    (repo / "app.py").write_text("v1\n")
    g = GitRepo(repo)
    good = g.snapshot(1).commit
    assert good is not None
    g.set_good(good)
    return repo, g, good


def test_tamper_guard_restores_protected_paths_before_the_snapshot(
    guarded: tuple[Path, GitRepo, str],
) -> None:
    repo, g, good = guarded
    (repo / "protected" / "rules.yaml").write_text("rules: none\n")
    (repo / "protected" / "tool.sh").chmod(0o644)
    (repo / "protected" / "new.txt").write_text("sneaked in\n")
    (repo / "Protected").mkdir()
    (repo / "Protected" / "x").write_text("case variant\n")
    (repo / "app.py").write_text("v2\n")
    snap = g.snapshot(2, protect=_protected)
    assert snap.restored == (
        "Protected/x",
        "protected/new.txt",
        "protected/rules.yaml",
        "protected/tool.sh",
    )
    assert (repo / "protected" / "rules.yaml").read_text() == "rules: strict\n"
    assert os.stat(repo / "protected" / "tool.sh").st_mode & 0o111
    assert not (repo / "protected" / "new.txt").exists()
    assert not (repo / "Protected" / "x").exists()
    assert snap.commit is not None
    assert git(repo, "diff", "--name-only", good, snap.commit).split() == ["app.py"]


def test_tamper_guard_undoes_a_deletion_and_a_symlinked_directory(
    guarded: tuple[Path, GitRepo, str], tmp_path: Path
) -> None:
    repo, g, _good = guarded
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(repo / "protected")
    (repo / "protected").symlink_to(outside)
    snap = g.snapshot(2, protect=_protected)
    assert "protected" in snap.restored
    assert not (repo / "protected").is_symlink()
    assert (repo / "protected" / "rules.yaml").read_text() == "rules: strict\n"
    assert list(outside.iterdir()) == []
    assert snap.commit is None, "nothing but the tamper happened"


def test_tamper_guard_catches_a_protected_change_the_agent_committed(
    guarded: tuple[Path, GitRepo, str],
) -> None:
    repo, g, _good = guarded
    (repo / "protected" / "rules.yaml").write_text("rules: none\n")
    git(repo, "commit", "-qam", "agent edits its own rules", "--no-verify")
    snap = g.snapshot(2, protect=_protected)
    assert snap.restored == ("protected/rules.yaml",)
    assert git(repo, "show", "HEAD:protected/rules.yaml") == "rules: strict\n"


def test_tamper_guard_is_quiet_when_nothing_changed(guarded: tuple[Path, GitRepo, str]) -> None:
    repo, g, _ = guarded
    (repo / "app.py").write_text("v2\n")
    assert g.snapshot(2, protect=_protected).restored == ()


def test_no_good_commit_no_guard(repo: Path) -> None:
    (repo / "protected").mkdir()
    (repo / "protected" / "rules.yaml").write_text("x\n")
    snap = GitRepo(repo).snapshot(1, protect=_protected)
    assert snap.restored == () and snap.commit is not None


# --- experiments ------------------------------------------------------------------------------


@pytest.fixture
def based(repo: Path) -> tuple[Path, GitRepo, str]:
    (repo / "app.py").write_text("v1\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "old.txt").write_text("old\n")
    g = GitRepo(repo)
    base = g.snapshot(1).commit
    assert base is not None
    return repo, g, base


def test_candidate_commit_is_built_in_memory(based: tuple[Path, GitRepo, str]) -> None:
    repo, g, base = based
    index_before = (repo / ".git" / "index").read_bytes()
    cand = candidate_commit(
        g,
        base,
        [
            ("app.py", b"v2\n", None),
            ("run.sh", b"#!/bin/sh\necho 2\n", None),
            ("bin/tool", b"x", "100755"),
            ("old.txt", None, None),
        ],
        "candidate",
    )
    assert tree_of(repo, cand) == {
        "app.py": ("100644", "v2\n"),
        "run.sh": ("100755", "#!/bin/sh\necho 2\n"),
        "bin/tool": ("100755", "x"),
    }
    assert git(repo, "rev-parse", f"{cand}^").strip() == base
    assert (repo / ".git" / "index").read_bytes() == index_before
    assert (repo / "app.py").read_text() == "v1\n" and git(
        repo, "rev-parse", "HEAD"
    ).strip() == base


def test_worktree_slots_are_reused_and_leave_no_branch(based: tuple[Path, GitRepo, str]) -> None:
    repo, g, base = based
    root = repo / ".git" / "metasup" / "worktrees"
    cand = candidate_commit(g, base, [("app.py", b"v2\n", None)], "c")
    path = worktree_at(g, "slot-0", root, base)
    assert (path / "app.py").read_text() == "v1\n"
    (path / "leftover.log").write_text("a check wrote this\n")
    (path / "app.py").write_text("scribbled\n")
    again = worktree_at(g, "slot-0", root, cand)
    assert again == path and (path / "app.py").read_text() == "v2\n"
    assert not (path / "leftover.log").exists()
    assert git(path, "rev-parse", "HEAD").strip() == cand
    assert "metasup/pool" not in git(repo, "branch", "--list")
    assert git(repo, "status", "--porcelain") == "", "the pool is out of the working tree"


def test_fast_forward_merge(based: tuple[Path, GitRepo, str]) -> None:
    repo, g, base = based
    cand = candidate_commit(g, base, [("app.py", b"v2\n", None)], "c")
    head, fast = g.merge(cand, base, "merge")
    assert fast and head == cand == git(repo, "rev-parse", "HEAD").strip()
    assert (repo / "app.py").read_text() == "v2\n"


def test_three_way_merge(based: tuple[Path, GitRepo, str]) -> None:
    repo, g, base = based
    cand = candidate_commit(g, base, [("app.py", b"v2\n", None)], "c")
    (repo / "other.txt").write_text("meanwhile\n")
    moved = g.snapshot(2).commit
    head, fast = g.merge(cand, base, "metasup: merge")
    assert not fast
    parents = git(repo, "rev-list", "--parents", "-n", "1", head).split()[1:]
    assert parents == [moved, cand]
    assert (repo / "app.py").read_text() == "v2\n" and (repo / "other.txt").exists()
    assert git(repo, "status", "--porcelain") == ""


def test_a_merge_conflict_changes_nothing(based: tuple[Path, GitRepo, str]) -> None:
    repo, g, base = based
    cand = candidate_commit(g, base, [("app.py", b"candidate\n", None)], "c")
    (repo / "app.py").write_text("main line\n")
    moved = g.snapshot(2).commit
    with pytest.raises(MergeConflict) as e:
        g.merge(cand, base, "m")
    assert e.value.paths == ["app.py"]
    assert git(repo, "rev-parse", "HEAD").strip() == moved
    assert (repo / "app.py").read_text() == "main line\n"


def test_experiment_branches_and_archives(based: tuple[Path, GitRepo, str]) -> None:
    _repo, g, base = based
    g.set_branch("refs/heads/metasup/exp/abc", base)
    assert g.experiment_branches() == [("refs/heads/metasup/exp/abc", base)]
    ref = g.archive_commit("exp-abc-failed", base)
    assert ref == "refs/metasup/archive/exp-abc-failed"
    assert g.archive_commit("exp-abc-failed", base) == "refs/metasup/archive/exp-abc-failed-2"
    g.delete_ref("refs/heads/metasup/exp/abc")
    assert g.experiment_branches() == []
