"""`metasup doctor` on a good repository and on broken ones."""

from __future__ import annotations

import socket
from pathlib import Path

from testing.fixtures import make_repo, run_metasup


def test_a_fresh_init_is_healthy(tmp_path: Path) -> None:
    repo = tmp_path / "agent"
    assert run_metasup(tmp_path, "init", str(repo)).returncode == 0
    out = run_metasup(repo, "doctor")
    assert out.returncode == 0, out.stdout
    for name in ("git", "repository", "config", "policy", "hook", "inotify"):
        assert any(line.startswith(f"ok   {name}") for line in out.stdout.splitlines()), name


def test_each_problem_is_named_with_its_fix(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = run_metasup(repo, "doctor")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "FAIL config" in out.stdout and "`metasup init` writes one" in out.stdout
    assert "FAIL policy" in out.stdout and "FAIL hook" in out.stdout
    assert "fix: run `metasup hook install`" in out.stdout


def test_a_broken_policy_and_a_busy_port(tmp_path: Path) -> None:
    repo = tmp_path / "agent"
    assert run_metasup(tmp_path, "init", str(repo)).returncode == 0
    (repo / "protected" / "safety_rules.yaml").write_text("protected: [unclosed\n")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config = repo / "metasup.yaml"
        config.write_text(
            config.read_text()
            + f'  api: {{listen: "127.0.0.1:{port}"}}\n'
            + f'  serve: {{listen: "127.0.0.1:{port}"}}\n'
        )
        out = run_metasup(repo, "doctor")
    assert out.returncode == 1
    assert "FAIL policy     protected/safety_rules.yaml:" in out.stdout
    assert f"FAIL api        cannot listen on 127.0.0.1:{port}" in out.stdout
    assert f"FAIL serve      cannot listen on 127.0.0.1:{port}" in out.stdout
    assert "set serve.listen to another" in out.stdout


def test_outside_a_repository(tmp_path: Path) -> None:
    out = run_metasup(tmp_path, "doctor")
    assert out.returncode == 1 and "FAIL repository" in out.stdout
    assert "run `metasup init`" in out.stdout


def test_doctor_status_and_log_take_the_config_other_commands_take(tmp_path: Path) -> None:
    repo = tmp_path / "agent"
    assert run_metasup(tmp_path, "init", str(repo)).returncode == 0
    (repo / "ops").mkdir()
    (repo / "metasup.yaml").rename(repo / "ops" / "sup.yaml")
    without = run_metasup(repo, "doctor")
    assert "FAIL config" in without.stdout
    given = run_metasup(repo, "doctor", "--config", "ops/sup.yaml")
    assert "ok   config     sup.yaml is valid" in given.stdout, given.stdout
    for command in ("status", "log"):
        assert run_metasup(repo, command, "--config", "ops/sup.yaml").returncode in (0, 1)
        missing = run_metasup(repo, command, "--config", "ops/none.yaml")
        assert missing.returncode == 2 and "ops/none.yaml: no such config file" in missing.stderr
