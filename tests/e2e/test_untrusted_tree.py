"""Nothing the agent can write is trusted, with or without the jail: here the jail is off and the
agent has planted modules in the tree, ignored by git, where a Python started in the tree would
import them first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import agent_config, git, names, write_config

PLANTED = ("metasup/__init__.py", "json.py", "yaml.py", "pygit2.py", "typer.py")


def plant(repo: Path, log: Path) -> None:
    code = (
        "import os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()} {sys.argv!r}\\n')\n"
    )
    for rel in PLANTED:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(code)
    exclude = repo / ".git" / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    exclude.write_text("\n".join(["", "metasup/", *PLANTED[1:], ""]))


def test_the_supervisor_its_helpers_and_the_hook_import_nothing_from_the_tree(
    repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "imported.log"
    (repo / "agent.py").write_text("import time\ntime.sleep(0.5)  # ok: a short healthy run\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(
        repo,
        agent_config(extra='  sandbox: {mode: off}\n  api: {listen: "127.0.0.1:0"}\n'),
    )
    plant(repo, log)
    # The console script, as a user runs it (`python -m metasup` in the tree would import the
    # planted package before metasup could do anything about it).
    metasup = str(Path(sys.executable).with_name("metasup"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [metasup, *args], cwd=repo, capture_output=True, text=True, timeout=60
        )

    assert run("hook", "install").returncode == 0
    out = run("run", "--max-cycles", "2")
    assert out.returncode == 0, out.stderr
    assert names(repo).count("launch") == 2 and "api_listening" in out.stderr
    (repo / "notes.txt").write_text("mine\n")
    git(repo, "add", "notes.txt")
    committed = subprocess.run(
        ["git", "commit", "-qm", "notes"], cwd=repo, capture_output=True, text=True
    )
    assert committed.returncode == 0, committed.stderr
    assert "metasup: pre-commit" not in committed.stderr
    assert not log.exists(), log.read_text()
    # The planted files were there all along: a Python started in the tree would take them.
    probe = subprocess.run(
        [sys.executable, "-c", "import json"], cwd=repo, capture_output=True, text=True
    )
    assert probe.returncode == 0 and log.exists(), "the plant works: the test can fail"


def test_a_fifo_where_a_tracked_file_was_never_blocks_a_rollback(repo: Path) -> None:
    (repo / "agent.py").write_text(
        "import os, sys, time\n"
        "if os.environ['METASUP_RUN'] == '2':\n"
        "    os.unlink('data.txt')\n"
        "    os.mkfifo('data.txt')  # a checkout writing here would wait for a reader for ever\n"
        "    os.mkfifo('pipe')\n"
        "    sys.exit(1)\n"
        "time.sleep(0.5)  # ok: a healthy run outlasts min_runtime\n"
    )
    (repo / "data.txt").write_text("good data\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: off}\n"))
    out = subprocess.run(
        [str(Path(sys.executable).with_name("metasup")), "run", "--max-cycles", "3"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "rollback" in names(repo)
    assert (repo / "data.txt").read_text() == "good data\n"
    assert git(repo, "status", "--porcelain").strip() == ""
