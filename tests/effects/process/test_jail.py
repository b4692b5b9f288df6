"""The jail's decisions (pure) and its command line, then bwrap itself on the edge cases."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasup.effects.process import cgroups
from metasup.effects.process.jail import GUARANTEES, Jail, Machine, launcher_args, machine, plan
from metasup.effects.process.view import View, literal_paths, make_view, settle, view_options
from metasup.facts.settings import SandboxConfig
from metasup.facts.units import format_size, parse_size

FULL = Machine("/usr/bin/bwrap", True, "namespaces work", 7, "v1", "cgroup v1")


def test_literal_paths_hold_what_a_mount_can_hold() -> None:
    held, freed = literal_paths(
        ["/protected", "/.metasup/*", "!/.metasup/inbox/", "secrets.txt", "*.key", "a/**/b",
         "/config/x.yaml", "# a comment", "", "/../up", "dir/"]
    )  # fmt: skip
    assert held == ["protected", ".metasup", "secrets.txt", "config/x.yaml", "dir"]
    assert freed == [".metasup/inbox"]


@given(st.lists(st.text(max_size=30), max_size=8))
def test_literal_paths_never_leave_the_tree(patterns: list[str]) -> None:
    held, freed = literal_paths(patterns)
    for path in (*held, *freed):
        assert path and not path.startswith("/") and ".." not in path.split("/")
        assert not any(ch in path for ch in "*?[")


@given(st.integers(min_value=1, max_value=1 << 50))
def test_sizes_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.text(max_size=12))
def test_a_bad_size_is_a_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert size is not None and size > 0


def test_plan_picks_the_strongest_and_says_what_holds() -> None:
    auto = SandboxConfig()
    assert plan(auto, FULL).mode == "bwrap" and plan(auto, FULL).all_held
    no_ns = Machine("/usr/bin/bwrap", False, "user namespaces disabled", 7, None, "no cgroup")
    landlock = plan(auto, no_ns)
    assert landlock.mode == "landlock"
    held = [h for h, _ in landlock.held]
    assert held == [False, False, False, False, True]
    old_kernel = Machine(None, False, "no bwrap", 5, None, "no cgroup")
    off = plan(auto, old_kernel)
    assert off.mode == "off" and not any(h for h, _ in off.held)
    assert plan(SandboxConfig(mode="off"), FULL).mode == "off"
    assert plan(SandboxConfig(mode="landlock"), FULL).mode == "landlock"
    assert plan(SandboxConfig(mode="bwrap"), no_ns).mode == "off"
    no_net = plan(SandboxConfig(mode="landlock", network=False), FULL)
    assert no_net.held[4][0] is False
    assert len(plan(auto, FULL).held) == len(GUARANTEES) == 5


def test_a_worktree_inside_the_common_git_dir_is_bound_below_it(tmp_path: Path) -> None:
    common = tmp_path / "repo" / ".git"
    tree = common / "metasup" / "worktrees" / "cand-0"
    tree.mkdir(parents=True)
    view = View(tree=tree, cwd=tree, readonly=(common, tree / ".git"))
    args = view_options(view)
    assert args.index(str(common)) < args.index("--bind") < args.index(str(tree / ".git"))
    assert "--unshare-net" not in args
    assert "--unshare-net" in view_options(View(tree=tree, cwd=tree, network=False))
    launcher = launcher_args("bwrap", 7, 8)
    assert launcher[-5:] == ["--seccomp", "8", "--args", "7", "--"] and "--cap-drop" in launcher


def test_the_view_holds_git_dirs_protected_paths_and_missing_ones(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / ".git").mkdir(parents=True)
    (tree / "protected").mkdir()
    (tree / ".metasup" / "inbox").mkdir(parents=True)
    view = make_view(
        tree,
        protected_patterns=["/protected", "/.metasup/*", "!/.metasup/inbox/", "/secrets/"],
        sandbox=SandboxConfig(readonly=(".venv",)),
    )
    assert tree / ".git" in view.readonly and tree / "protected" in view.readonly
    assert view.placeholders == (tree / "secrets",)
    assert view.holes == (tree / ".metasup" / "inbox",)
    assert tree / ".venv" not in view.readonly, "a readonly path that is not there is left out"
    # A read-only path a rollback took away is held by a placeholder again.
    (tree / "protected").rmdir()
    settled = settle(view)
    assert tree / "protected" in settled.placeholders
    assert tree / "protected" not in settled.readonly


def test_a_jail_made_ahead_runs_nothing_if_its_options_never_come(tmp_path: Path) -> None:
    """Should the supervisor die before the launch, bwrap reads no options: no binds, an
    empty root, and the command cannot start (it would otherwise run unjailed)."""
    prepared = Jail(SandboxConfig()).ahead()
    assert prepared is not None and prepared.ahead
    marker = tmp_path / "ran"
    try:
        prepared.fill([])  # nothing, then end of file: as when the supervisor is gone
        done = subprocess.run(
            [*prepared.prefix, "/usr/bin/touch", str(marker)],
            pass_fds=prepared.pass_fds,
            capture_output=True,
            text=True,
            timeout=10,
        )
    finally:
        prepared.release()
    assert done.returncode != 0 and not marker.exists(), done.stderr
    assert "No such file or directory" in done.stderr


@pytest.mark.parametrize("mode", ["bwrap", "landlock"])
def test_doctor_and_the_supervisor_agree_on_the_plan(mode: str) -> None:
    sandbox = SandboxConfig(mode=mode)
    assert Jail(sandbox).plan == plan(sandbox, machine())


@contextlib.contextmanager
def _a_pids_cgroup_of_its_own() -> Iterator[Path]:
    """This test process in a pids cgroup of its own while it lasts: the jails that tests beside
    it set up sweep their own cgroup's folders, and would take this test's dead owner's first."""
    base = cgroups.CGROUP_ROOT / "pids" / cgroups.own_cgroups()["pids"].lstrip("/")
    mine = base / f"test-sweep-{os.getpid()}"
    mine.mkdir()
    try:
        (mine / "cgroup.procs").write_text(str(os.getpid()))
        yield mine
    finally:
        (base / "cgroup.procs").write_text(str(os.getpid()))
        mine.rmdir()


def test_a_dead_supervisors_jails_are_swept(tmp_path: Path) -> None:
    """A jail is its supervisor's: what is left in the cgroup of one no longer alive is killed
    when the next jail is set up, and the cgroup goes."""
    kind = machine().cgroup
    assert kind == "v1", "this machine offers cgroup v1 (the v2 path is not exercised here)"
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names the owner: dead
    with _a_pids_cgroup_of_its_own() as own:
        folder = own / f"metasup-{gone.pid}-1-t"
        folder.mkdir()
        left = subprocess.Popen(["sleep", "60"])
        try:
            (folder / "cgroup.procs").write_text(str(left.pid))
            assert cgroups.sweep() >= 1
            assert left.wait(timeout=5) == -9
            cgroups.sweep()  # empty now: removed
            assert not folder.exists()
        finally:
            left.kill()
            left.wait()
            if folder.exists():
                folder.rmdir()


def test_marks_change_when_a_bound_file_is_replaced_not_when_written(tmp_path: Path) -> None:
    """A jail built ahead shows the files its binds were made on: replaced since (a new file
    renamed over it), it would show the old one, so the marks differ and it is not used."""
    from metasup.effects.process.view import marks

    tree = tmp_path / "tree"
    tree.mkdir()
    config = tree / "metasup.yaml"
    config.write_text("a\n")
    view = View(tree=tree, cwd=tree, readonly=(config,), placeholders=(tree / "missing",))
    before = marks(view)
    config.write_text("b\n")  # in place: the bind shows it
    assert marks(view) == before
    (tree / "new.yaml").write_text("c\n")
    (tree / "new.yaml").replace(config)
    assert marks(view) != before
    after = marks(view)
    (tree / "missing").mkdir()  # a path that appears is another file too
    assert marks(view) != after
