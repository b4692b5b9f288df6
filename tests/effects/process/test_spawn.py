"""Process groups, the subreaper, stopping whole trees, launch logs."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metasup.effects.process.launchlog import LaunchLog, drain
from metasup.effects.process.spawn import (
    PR_SET_CHILD_SUBREAPER,
    Reaper,
    SpawnError,
    become_subreaper,
    run_command,
    spawn,
)
from metasup.effects.process.trees import stop_tree, tree_members
from testing.fixtures import pid_alive, wait_for

DAEMON = textwrap.dedent(
    """
    import os, sys, time
    pidfile = sys.argv[1]
    if os.fork() == 0:
        os.setsid()              # leaves the agent's process group and session
        if os.fork() == 0:       # the classic double fork: re-parented away from the agent
            with open(pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            while True:
                time.sleep(0.05)  # ok: the daemon idles until it is stopped
        os._exit(0)
    os.wait()
    print("parent leaving", flush=True)
    """
)


@pytest.fixture
def subreaper() -> Iterator[Reaper]:
    assert become_subreaper()
    reaper = Reaper()
    yield reaper
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    reaper.reap()


def test_double_forked_daemon_is_found_and_stopped(tmp_path: Path, subreaper: Reaper) -> None:
    pidfile = tmp_path / "daemon.pid"
    child = spawn([sys.executable, "-c", DAEMON, str(pidfile)], cwd=tmp_path, env=os.environ)
    wait_for(pidfile.exists, what="the daemon's pid file")
    daemon = int(pidfile.read_text())
    wait_for(lambda: child.pid in subreaper.reap() or child.pid in subreaper.statuses)
    assert subreaper.pop(child.pid) == 0
    # The agent is gone; its daemon lives on, adopted by us, in another session.
    assert pid_alive(daemon)
    assert os.getppid() != daemon and os.getsid(daemon) != child.pid
    members = tree_members(child.pgid, child.token)
    assert [p.pid for p in members] == [daemon]
    stopped = stop_tree(child.pgid, child.token, signal.SIGTERM, 2.0, subreaper)
    assert stopped == 1
    assert not pid_alive(daemon)


def test_stop_escalates_to_sigkill_after_the_timeout(tmp_path: Path, subreaper: Reaper) -> None:
    code = textwrap.dedent(
        """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("ready-%d" % os.getpid(), "w").close()
        while True:
            time.sleep(0.05)  # ok: ignores SIGTERM and idles
        """
    )
    child = spawn([sys.executable, "-c", code], cwd=tmp_path, env=os.environ)
    wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2, what="both processes")
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("ready-*")]
    t0 = time.monotonic()
    stop_tree(child.pgid, child.token, signal.SIGTERM, 0.3, subreaper)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.3, "SIGTERM was ignored, so the timeout had to run out"
    assert not any(pid_alive(p) for p in pids)
    assert subreaper.pop(child.pid) == -signal.SIGKILL


def test_a_tree_that_cleared_its_environment_is_adopted_only_when_asked(
    tmp_path: Path, subreaper: Reaper
) -> None:
    code = textwrap.dedent(
        """
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                idle = "import time\\nopen('up', 'w').close()\\nwhile True: time.sleep(0.05)"  # ok
                os.execve(sys.executable, [sys.executable, "-c", idle], {})
            os._exit(0)
        os.wait()
        """
    )
    child = spawn([sys.executable, "-c", code], cwd=tmp_path, env=os.environ)
    wait_for(lambda: (tmp_path / "up").exists(), what="the env-less daemon")
    wait_for(lambda: child.pid in subreaper.reap() or child.pid in subreaper.statuses)
    assert tree_members(child.pgid, child.token) == []
    (orphan,) = tree_members(child.pgid, child.token, adopt_unmarked=True)
    stop_tree(child.pgid, child.token, signal.SIGTERM, 2.0, subreaper, adopt_unmarked=True)
    assert not pid_alive(orphan.pid)


def test_spawn_error_for_a_missing_command(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="cannot start 'no-such-agent'"):
        spawn(["no-such-agent"], cwd=tmp_path, env=os.environ)


def test_child_runs_in_its_own_session_with_the_marker(tmp_path: Path) -> None:
    child = spawn(
        [
            sys.executable,
            "-c",
            "import os; print(os.getsid(0), os.getpgid(0), os.environ['METASUP_TREE'])",
        ],
        cwd=tmp_path,
        env=os.environ,
    )
    log = LaunchLog(tmp_path / "logs", 1, "abc", echo=False)
    wait_for(lambda: drain(child, log), what="end of output")
    child.popen.wait()
    log.close()
    sid, pgid, token = log.stdout_tail[-1].split()
    assert int(sid) == child.pid == int(pgid)
    assert token == child.token


def test_launch_log_rotates_on_line_boundaries_and_keeps_the_tail(tmp_path: Path) -> None:
    log = LaunchLog(tmp_path, 3, "deadbeef" * 5, echo=False, max_bytes=100, backups=2, tail_lines=5)
    assert log.path.name == "run-000003-deadbeefdead.log"
    for n in range(40):
        # Split across feeds, so lines arrive in pieces.
        text = f"line {n:02d} {'x' * 10}\n".encode()
        log.feed("stderr", text[:5])
        log.feed("stderr", text[5:])
    log.feed("stdout", b"no newline at the end")
    log.close()
    files = sorted(tmp_path.glob("run-000003-*"))
    assert len(files) == 3  # the current file and two backups
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n") and len(data) <= 100 + 20
        for line in data.splitlines():
            assert line.startswith(b"line ") or line == b"no newline at the end"
    assert list(log.stderr_tail) == [f"line {n:02d} {'x' * 10}" for n in range(35, 40)]
    assert log.path.read_bytes().endswith(b"no newline at the end\n")


def test_run_command_collects_output_and_the_code(tmp_path: Path) -> None:
    reaper = Reaper()
    done = run_command(
        [
            sys.executable,
            "-c",
            "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)",
        ],
        cwd=tmp_path,
        env=os.environ,
        timeout=30,
        reaper=reaper,
    )
    assert (done.code, done.stdout, done.stderr, done.timed_out) == (3, "out\n", "err\n", False)
    assert not done.ok


def test_run_command_timeout_kills_a_tree_that_ignores_sigterm(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            os.setsid()  # out of the group too
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("pid-%d" % os.getpid(), "w").close()
        print("I am fine", flush=True)
        while True:
            time.sleep(0.05)  # ok: hangs until killed
        """
    )
    reaper = Reaper()
    t0 = time.monotonic()
    done = run_command(
        [sys.executable, "-c", code], cwd=tmp_path, env=os.environ, timeout=1.0, reaper=reaper
    )
    assert done.timed_out and done.code is None and not done.ok
    assert 1.0 <= time.monotonic() - t0 < 10
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 2 and not any(pid_alive(p) for p in pids)


def test_run_command_is_not_held_up_by_a_daemon_holding_its_output(
    tmp_path: Path, subreaper: Reaper
) -> None:
    code = textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            open("daemon.tmp", "w").write(str(os.getpid()))
            os.rename("daemon.tmp", "daemon")
            time.sleep(60)  # ok: keeps the inherited stdout open
        while not os.path.exists("daemon"):
            time.sleep(0.01)  # ok: the parent waits for its daemon to be up
        print("done", flush=True)
        """
    )
    done = run_command(
        [sys.executable, "-c", code], cwd=tmp_path, env=os.environ, timeout=20, reaper=subreaper
    )
    assert done.ok and done.stdout == "done\n" and done.duration < 10
    assert not pid_alive(int((tmp_path / "daemon").read_text()))


def test_run_command_missing_program(tmp_path: Path) -> None:
    done = run_command(["no-such-tool"], cwd=tmp_path, env=os.environ, timeout=5, reaper=Reaper())
    assert done.code == 127 and "cannot start" in done.stderr
