"""What metasup reads after the agent ran is not trusted: its state files, its refs, its lock, the
branch and its clock. Each test plays the agent with the jail off and checks the promise held."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

from tests.conftest import (
    agent_config,
    names,
    start_metasup,
    wait_for,
    write_config,
)


def test_a_run_that_outlived_min_runtime_while_the_supervisor_was_paused_is_no_quick_failure(
    repo: Path, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    (repo / "agent.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from pathlib import Path
            t0 = time.monotonic()
            Path({str(ready)!r}).write_text(str(os.getpid()))
            while not Path({str(go)!r}).exists() or time.monotonic() - t0 < 3.5:
                time.sleep(0.02)  # ok: waits for the test, then outlives min_runtime
            sys.exit(1)
            """
        )
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(min_runtime="3s", extra="  sandbox: {mode: off}\n"))
    proc = start_metasup(repo, "--max-cycles", "1")
    try:
        wait_for(ready.exists, what="the agent's start")
        agent = int(ready.read_text())
        proc.send_signal(signal.SIGSTOP)  # the supervisor misses its min_runtime timer
        go.touch()

        def agent_ended() -> bool:
            try:
                with open(f"/proc/{agent}/stat") as f:
                    return f.read().split(") ")[-1].split()[0] == "Z"
            except FileNotFoundError:
                return True

        wait_for(agent_ended, what="the agent's exit while the supervisor is paused")
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    seen = names(repo)
    assert "exit" in seen
    assert "rollback" not in seen and "archive" not in seen, seen
