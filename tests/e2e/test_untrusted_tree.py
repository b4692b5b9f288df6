"""Nothing the agent can write is trusted, with or without the jail: here the jail is off and the
agent has planted modules in the tree, ignored by git, where a Python started in the tree would
import them first."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testing.fixtures import (
    agent_config,
    events,
    git,
    jail_off,
    names,
    run_metasup,
    start_metasup,
    state,
    wait_for,
    write_config,
)

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


def test_an_inbox_made_a_symlink_is_refused_and_nothing_of_metasup_is_read_through_it(
    repo: Path,
) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    state_dir = repo / ".git" / "metasup"
    before = {p.name: p.read_bytes() for p in state_dir.glob("*.json")}
    assert "baseline.json" in before and "state.json" in before
    inbox = repo / ".metasup" / "inbox"
    inbox.rmdir()
    inbox.symlink_to(state_dir)  # the agent's move: metasup would ingest its own state

    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ".metasup/inbox is a symbolic link, not a folder" in out.stderr, out.stderr
    proposal = json.dumps({"reason": "r", "changes": [{"file": "x.txt", "content": "x"}]})
    out = run_metasup(repo, "propose", "-", input=proposal)
    assert out.returncode == 2 and "not a folder" in out.stderr, out.stderr
    assert {p.name: p.read_bytes() for p in state_dir.glob("*.json")} == before
    assert inbox.is_symlink(), "refused, not repaired behind the operator's back"


def test_a_proposal_to_the_inbox_in_another_case_is_protected(repo: Path) -> None:
    for path, code in ((".metasup/INBOX/x.json", 1), (".metasup/inbox/x.json", 0)):
        raw = json.dumps({"reason": "r", "changes": [{"file": path, "content": "{}"}]})
        out = run_metasup(repo, "validate", "-", "--json", input=raw)
        assert out.returncode == code, (path, out.stdout)
        if code:
            assert json.loads(out.stdout)["errors"][0]["code"] == "path_protected"


@pytest.mark.parametrize("what", ["folder", "file"])
def test_logs_planted_as_symlinks_are_never_written_through(
    repo: Path, tmp_path: Path, what: str
) -> None:
    jail_off(repo, "print('ok')\n", min_runtime="0s")
    assert run_metasup(repo, "run", "--max-cycles", "1").returncode == 0
    logs = repo / ".git" / "metasup" / "logs"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "bashrc").write_text("precious\n")
    if what == "folder":
        shutil.rmtree(logs)
        logs.symlink_to(victim)
    else:
        # The next run's log, named ahead of time: its run number and the commit it runs.
        head = git(repo, "rev-parse", "HEAD").strip()[:12]
        (logs / f"run-000002-{head}.log").symlink_to(victim / "bashrc")
    out = run_metasup(repo, "run", "--max-cycles", "1")
    assert "Traceback" not in out.stderr
    if what == "folder":
        assert out.returncode == 2 and "logs is a symbolic link, not a folder" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert not (logs / f"run-000002-{head}.log").is_symlink()
    assert (victim / "bashrc").read_text() == "precious\n"
    assert [p.name for p in victim.iterdir()] == ["bashrc"]


SHADOWER = """
import importlib._bootstrap_external as bootstrap
import os, sys, time
from pathlib import Path
import helper  # a tracked module of the agent's own
run = int(os.environ["METASUP_RUN"])
if run == 2:
    # Ignored by git, found first by Python: the good commit would break on them for ever.
    Path("json.py").write_text("raise SystemExit('a planted json.py')\\n")
    st = os.stat("helper.py")
    code = compile("raise SystemExit('a forged helper.pyc')", "helper.py", "exec")
    tag = sys.implementation.cache_tag
    forged = bootstrap._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size)
    Path(f"__pycache__/helper.{tag}.pyc").write_bytes(forged)
    Path("cache").mkdir(exist_ok=True)
    Path("cache/new.txt").write_text("made by the failed run\\n")
    sys.exit(1)
import json  # the stdlib's, or the planted one
time.sleep(0.5)  # ok: a healthy run outlasts min_runtime
"""


def test_ignored_files_a_failed_run_planted_go_into_the_archive(repo: Path) -> None:
    (repo / "agent.py").write_text(SHADOWER)
    (repo / "helper.py").write_text("VALUE = 1\n")
    (repo / ".gitignore").write_text("__pycache__/\ncache/\nkeep/\n")
    (repo / ".git" / "info" / "exclude").write_text("json.py\n")
    (repo / "cache").mkdir()
    (repo / "cache" / "old.txt").write_text("there before metasup started\n")
    (repo / "__pycache__").mkdir()
    write_config(
        repo,
        agent_config(
            extra="  sandbox: {mode: off}\n  rollback: {preserve: [keep/]}\n",
            agent_extra="",
        ).replace('PYTHONDONTWRITEBYTECODE: "1"', 'PYTHONDONTWRITEBYTECODE: ""'),
    )
    (repo / "keep").mkdir()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the agent")
    out = run_metasup(repo, "run", "--max-cycles", "3")
    assert out.returncode == 0, out.stderr
    seen = names(repo)
    assert seen.count("rollback") == 1 and "emergency_stop" not in seen, seen
    exits = [e["code"] for e in events(repo) if e["event"] == "exit"]
    assert exits == [0, 1, 0], "the run after the rollback is healthy again"
    assert not (repo / "json.py").exists() and not (repo / "cache" / "new.txt").exists()
    assert (repo / "cache" / "old.txt").exists(), "ignored files older than the good state stay"
    archive = next(e for e in events(repo) if e["event"] == "archive")
    assert archive["ignored"] >= 3
    stored = git(repo, "ls-tree", "-r", "--name-only", archive["ref"], ".metasup/archived")
    assert ".metasup/archived/ignored/json.py" in stored.split()
    assert ".metasup/archived/ignored/cache/new.txt" in stored.split()
    assert any("__pycache__/helper." in p for p in stored.split())


def test_oversized_files_and_past_the_count_are_quarantined_not_hashed(repo: Path) -> None:
    (repo / "agent.py").write_text(
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "if os.environ['METASUP_RUN'] == '2':\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        f.truncate(2 << 30)  # 2 GiB, sparse: nothing to write, all to hash\n"
        "    Path('many').mkdir()\n"
        "    for n in range(300):\n"
        "        Path(f'many/{n}.txt').write_text(str(n))\n"
        "    Path('small.txt').write_text('kept in git')\n"
        "    sys.exit(1)\n"
        "time.sleep(0.5)  # ok: a healthy run outlasts min_runtime\n"
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(
        repo,
        agent_config(extra="  sandbox: {mode: off}\n  rollback: {max_files: 100}\n"),
    )
    out = run_metasup(repo, "run", "--max-cycles", "3", timeout=120)
    assert out.returncode == 0, out.stderr
    archive = next(e for e in events(repo) if e["event"] == "archive")
    assert sorted(archive["quarantined"]) == ["big.bin", "many"]
    assert archive["duration_ms"] < 2000
    manifest = json.loads(git(repo, "show", f"{archive['ref']}:.metasup/archived/manifest.json"))
    folder = repo / ".git" / manifest["quarantine"]
    assert (folder / "big.bin").stat().st_size == 2 << 30
    assert len(list((folder / "many").iterdir())) == 300
    listed = {q["path"]: q for q in manifest["quarantined"]}
    assert listed["many"]["files"] == 300 and listed["big.bin"]["bytes"] == 2 << 30
    assert git(repo, "show", f"{archive['ref']}:small.txt") == "kept in git"
    assert not (repo / "big.bin").exists() and not (repo / "many").exists()


def test_the_loop_answers_while_a_rollback_archives(repo: Path, tmp_path: Path) -> None:
    """A long archive runs off the loop's thread: the status says so and a stop is heard."""
    (repo / "agent.py").write_text(
        "import os, sys, time\n"
        "if os.environ['METASUP_RUN'] == '2':\n"
        "    open('broken.txt', 'w').write('x')\n"
        "    sys.exit(1)\n"
        "time.sleep(0.5)  # ok: a healthy run outlasts min_runtime\n"
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    write_config(repo, agent_config(extra="  sandbox: {mode: off}\n"))
    release = tmp_path / "release"
    proc = start_metasup(repo, env={"METASUP_HOLDPOINT": f"rollback:archive:{release}"})
    try:
        wait_for(lambda: state(repo).get("phase") == "rolling_back", what="the rollback")
        assert "rollback" not in names(repo), "held in the archive"
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: proc.stderr is not None and _line_with(proc, "stop_requested"))
        release.touch()
        assert proc.wait(timeout=30) == 0
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert names(repo).count("rollback") == 1 and names(repo).count("launch") == 2
    assert not (repo / "broken.txt").exists()


def _line_with(proc: subprocess.Popen[str], word: str) -> bool:
    """Reads the supervisor's stderr a line at a time until one holds `word`."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    return word in line
