"""`metasup status --watch` in a real terminal (tmux): it draws, follows a rollback, and quits
on `q`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from metasup.faces.view.render import ASK, HINT
from testing.fixtures import (
    agent_config,
    events,
    screen,
    start_metasup,
    tmux,
    wait_for,
    write_config,
)

# Run 1 waits for the test's go, then fails quickly (min_runtime is long): a rollback to the
# baseline good commit to watch. Run 2 runs on.
AGENT = """
import os, sys, time
from pathlib import Path
run = int(os.environ["METASUP_RUN"])
if run == 1:
    while not Path("go").exists():
        time.sleep(0.02)  # ok: waits for the test to start watching
    sys.exit(1)
Path("ran-%d" % run).write_text("x")
time.sleep(120)  # ok: a long run
"""


def alive(base: list[str]) -> bool:
    return subprocess.run([*base, "has-session"], capture_output=True).returncode == 0


def test_the_live_view_draws_follows_a_rollback_and_quits_on_q(repo: Path) -> None:
    (repo / "agent.py").write_text(AGENT)
    (repo / ".gitignore").write_text("go\nran-*\n__pycache__/\n")
    # Run 1 waits for the view to draw before it fails: however slow the view's start, that is
    # well within min_runtime, so a quick failure.
    write_config(repo, agent_config(min_runtime="60s") + '  api: {listen: "127.0.0.1:0"}\n')
    proc = start_metasup(repo)
    try:
        wait_for(lambda: any(e["event"] == "launch" and e["run"] == 1 for e in events(repo)))
        done = repo / "view-exit"
        command = (
            f"{shlex.quote(sys.executable)} -m metasup status --watch --interval 0.1; "
            f"echo $? > {shlex.quote(str(done))}"
        )
        with tmux(repo, command) as (base, target):
            # A frame may be caught half drawn: wait for the whole of it.
            drawn = wait_for(
                lambda: (
                    "metasup running" in (s := screen(base, target))
                    and "latest events" in s
                    and "launch" in s
                    and s
                ),
                what="the view to draw",
            )
            assert "latest events" in drawn and "launch" in drawn
            (repo / "go").write_text("now")

            def rolled_back() -> str:
                shown = screen(base, target)  # one capture: the line and the screen agree
                return shown if _line_with(shown, " rollback ") else ""

            seen = wait_for(rolled_back, what="the rollback on screen")
            rollback = _line_with(seen, " rollback ")
            assert "run=1" in rollback
            wait_for(lambda: "failures 1 in a row" in " ".join(screen(base, target).split()))
            subprocess.run([*base, "send-keys", "-t", target, "q"], check=True)
            # The shell creates the file, then writes the code: wait for the code itself.
            code = wait_for(
                lambda: done.exists() and done.read_text().strip(), what="the view to quit on q"
            )
            assert code == "0"
            last = json.loads((repo / ".git" / "metasup" / "state.json").read_text())
            assert last["api_url"]  # it was fed by the API
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_run_on_a_terminal_shows_the_view_inline(repo: Path) -> None:
    (repo / "agent.py").write_text(
        "import time\nprint('agent says hi', flush=True)\ntime.sleep(120)  # ok: a long run\n"
    )
    write_config(repo, agent_config(min_runtime="200ms"))
    done = repo / "run-exit"
    command = f"{shlex.quote(sys.executable)} -m metasup run; echo $? > {shlex.quote(str(done))}"
    with tmux(repo, command) as (base, target):
        drawn = wait_for(
            lambda: (
                "metasup running" in (s := screen(base, target))
                and "mark_good" in s
                and "latest events" in s
                and s
            ),
            what="the view in metasup run",
        )
        assert "latest events" in drawn and "agent says hi" not in drawn
        logs = repo / ".git" / "metasup" / "logs"
        wait_for(
            lambda: any("agent says hi" in p.read_text() for p in logs.glob("run-*.log")),
            what="the agent's output in its log",
        )
        assert "agent says hi" not in screen(base, target), "its output goes to its log only"
        subprocess.run([*base, "send-keys", "-t", target, "C-c"], check=True)
        code = wait_for(
            lambda: done.exists() and done.read_text().strip(), what="metasup run to end on Ctrl-C"
        )
        assert code == "0"
    assert (repo / ".git" / "metasup" / "logs" / "supervisor.log").exists()


def test_log_follow_is_in_colour_on_a_terminal_and_raw_with_json(repo: Path) -> None:
    (repo / "agent.py").write_text("import time\ntime.sleep(120)  # ok: a long run\n")
    write_config(repo, agent_config(min_runtime="200ms"))
    follower = subprocess.Popen(
        [sys.executable, "-m", "metasup", "log", "--follow", "--json"],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    proc = start_metasup(repo)
    try:
        with tmux(repo, f"{shlex.quote(sys.executable)} -m metasup log --follow") as (base, t):
            coloured = wait_for(
                lambda: "mark_good" in (s := subprocess.run(
                    [*base, "capture-pane", "-e", "-p", "-t", t], capture_output=True, text=True
                ).stdout) and s,
                what="mark_good in the follower",
            )  # fmt: skip
            line = next(x for x in coloured.splitlines() if "mark_good" in x)
            assert "\x1b[32m" in line  # green
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["event"] == "supervisor_start" and len(first["prev"]) == 64
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        proc.terminate()
        proc.wait(timeout=30)


def test_watch_the_demo_from_a_second_terminal(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "metasup", "demo", "--dir", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (target / ".git" / "metasup" / "state.json").exists(), what="the demo")
        command = f"{shlex.quote(sys.executable)} -m metasup status --watch --interval 0.1"
        with tmux(target, command) as (base, t):
            seen = wait_for(
                lambda: "archived archive/" in " ".join((s := screen(base, t)).split()) and s,
                timeout=30,
                what="a rollback in the watcher",
            )
            assert "metasup running" in seen and "http://127.0.0.1:" in seen  # via the API
    finally:
        demo.wait(timeout=60)
    assert demo.returncode == 0


def test_run_view_keys_do_not_echo_q_asks_then_stops_and_events_fill_the_rows(
    repo: Path,
) -> None:
    # Short runs past min_runtime: plain restarts, three events each, to fill the screen.
    (repo / "agent.py").write_text("import time\ntime.sleep(0.3)  # ok: a short good run\n")
    write_config(repo, agent_config(min_runtime="100ms"))
    done = repo / "run-exit"
    command = f"{shlex.quote(sys.executable)} -m metasup run; echo $? > {shlex.quote(str(done))}"
    with tmux(repo, command) as (base, target):

        def keys(*k: str) -> None:
            subprocess.run([*base, "send-keys", "-t", target, *k], check=True)

        def event_rows(s: str) -> int:
            return sum(1 for line in s.splitlines() if re.match(r"^│ \d\d:\d\d:\d\d", line))

        # The terminal has 45 rows: the events take what the panels above leave, not 10.
        last: list[str] = [""]

        def filled() -> str | None:
            last[0] = screen(base, target)
            return last[0] if event_rows(last[0]) > 20 else None

        try:
            full = wait_for(filled, timeout=30, what="the events to fill the screen")
        except AssertionError:
            raise AssertionError("the events did not fill the screen:\n" + last[0]) from None
        assert full.count("metasup running") == 1
        keys("x", "Enter", "z")
        hinted = wait_for(lambda: HINT in (s := screen(base, target)) and s, what="the hint")
        assert hinted.count("metasup running") == 1, "a key left a stale frame behind"
        assert not re.search(r"^\s*[xz]\s*$", hinted, re.M), "a key was echoed"
        keys("q")
        wait_for(lambda: ASK in screen(base, target), what="the question")
        keys("n")
        wait_for(lambda: HINT in screen(base, target), what="the answer no")
        assert not done.exists(), "n keeps metasup running"
        keys("q")
        wait_for(lambda: ASK in screen(base, target), what="the question again")
        keys("y")
        code = wait_for(
            lambda: done.exists() and done.read_text().strip(), what="metasup run to stop on q, y"
        )
        assert code == "0"
    stops = [e for e in events(repo) if e["event"] == "supervisor_stop"]
    assert stops, "a clean stop, journalled"


def _line_with(text: str, word: str) -> str:
    """The first line of a screen holding `word` ("" when none: the frame is not there yet)."""
    return next((line for line in text.splitlines() if word in line), "")
