"""What the tests share: real git repositories in temp dirs, real metasup processes, and the
ways to watch them (state.json, the journal, processes by marker) with deadlines, never sleeps.

Importable by any test (as pre-commit's `testing/fixtures.py`); pytest's fixtures that wrap
these are in `tests/conftest.py`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def git(repo: Path, *args: str, check: bool = True) -> str:
    """The git CLI, as a user (and an independent checker) would run it."""
    out = subprocess.run(["git", *args], cwd=repo, check=check, capture_output=True, text=True)
    return out.stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "test")
    git(path, "config", "user.email", "test@example.com")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it is truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # poll interval of a deadline-bounded wait


def json_written(path: Path) -> Any:
    """The JSON document a process wrote to `path`, once it is whole; None before (the file
    is created before it is written: waiting for it to exist is not waiting for its content)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


SLEEPER = "import time\ntime.sleep(120)  # ok: a long-running agent\n"


def state(repo: Path) -> dict[str, Any]:
    """state.json as the supervisor last wrote it ({} before the first write)."""
    try:
        return dict(json.loads((repo / ".git" / "metasup" / "state.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def events(repo: Path) -> list[dict[str, Any]]:
    path = repo / ".git" / "metasup" / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def names(repo: Path) -> list[str]:
    return [e["event"] for e in events(repo)]


def metasup_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "metasup", *args]


def run_metasup(
    repo: Path,
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        metasup_cmd(*args),
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        input=input,
    )


def start_metasup(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        metasup_cmd("run", *args),
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


@contextlib.contextmanager
def supervising(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A `metasup run` that has launched its agent; stopped with SIGTERM afterwards."""
    proc = start_metasup(repo, *args, env=env)
    try:
        wait_for(lambda: "launch" in names(repo), what="the first launch")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def write_config(repo: Path, body: str) -> None:
    (repo / "metasup.yaml").write_text(body)


def agent_config(
    min_runtime: str = "300ms",
    max_failures: int = 3,
    extra: str = "",
    agent_extra: str = "",
) -> str:
    return f"""\
supervisor:
  min_runtime: {min_runtime}
  max_failures: {max_failures}
  agent:
    command: [{json.dumps(sys.executable)}, agent.py]
    env: {{PYTHONDONTWRITEBYTECODE: "1"}}
    stop_timeout: 2s
    restart_backoff: {{initial: 0s, max: 1s}}
{agent_extra}{extra}"""


def jail_off(repo: Path, code: str, **config: Any) -> None:
    """A repository whose agent runs `code`, supervised with the jail off: for the defences
    that must hold without it."""
    (repo / "agent.py").write_text(code)
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: off}\n", **config))


def marked_pids(marker: str, jail: bool = True) -> list[int]:
    """Live processes (zombies aside) with `marker` as an argument. A jailed process knows only
    its pid in the jail's namespace: a test finds it from outside by what it runs. `jail`:
    bwrap's own processes (whose arguments hold the jailed command's) count too, and the shell
    that waits in the next run's jail built ahead (`metasup-launch`)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        info = proc.info
        argv = info["cmdline"] or []
        if info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid() or not argv:
            continue
        if not jail and (os.path.basename(argv[0]) == "bwrap" or "metasup-launch" in argv[:4]):
            continue
        if marker in argv:
            found.append(proc.pid)
    return found


def rechain(lines: list[bytes]) -> list[bytes]:
    """Journal lines renumbered and chained again (`seq`, `prev`), as one without the key
    can do after dropping or editing some: the plain chain is whole again."""
    import hashlib

    out, prev = [], "0" * 64
    for n, raw in enumerate(lines, start=1):
        record = json.loads(raw)
        record.update(seq=n, prev=prev)
        line = json.dumps(record, separators=(",", ":")).encode()
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Reaped between the signal and the read: /proc answers ESRCH on the open file.
        return False


@contextlib.contextmanager
def tmux(cwd: Path, command: str) -> Iterator[tuple[list[str], str]]:
    """`command` in a real terminal (a detached tmux session of 120x45), for views."""
    sock = f"metasup-test-{uuid.uuid4().hex[:8]}"
    base = ["tmux", "-L", sock]
    subprocess.run(
        [*base, "new-session", "-d", "-s", "view", "-x", "120", "-y", "45", "-c", str(cwd),
         command],
        check=True,
    )  # fmt: skip
    try:
        yield base, "view"
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True)


def screen(base: list[str], target: str) -> str:
    out = subprocess.run(
        [*base, "capture-pane", "-p", "-t", target], capture_output=True, text=True
    )
    return out.stdout
