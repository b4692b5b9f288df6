"""Run logs pruned by count and by size, oldest runs first, rotated files with their run."""

from __future__ import annotations

from pathlib import Path

from metasup.effects.process.launchlog import LaunchLog
from metasup.facts.settings import LogsConfig
from metasup.pipelines.supervisor.retention import RunLogs


def test_run_logs_by_count_and_by_size(tmp_path: Path) -> None:
    for run in range(1, 6):
        (tmp_path / f"run-{run:06d}-abc.log").write_text("x")
    (tmp_path / "run-000005-abc.1.log").write_text("x")
    (tmp_path / "mcp-tools.log").write_text("not a run's")
    RunLogs(tmp_path, LogsConfig(keep_runs=2, max_size=None)).prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mcp-tools.log",
        "run-000004-abc.log",
        "run-000005-abc.1.log",
        "run-000005-abc.log",
    ]
    (tmp_path / "run-000006-abc.log").write_text("y" * 100)
    RunLogs(tmp_path, LogsConfig(keep_runs=10, max_size=100)).prune()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run-")) == [
        "run-000006-abc.log"
    ]


def test_run_logs_kept_in_memory_drop_every_file_a_run_wrote(tmp_path: Path) -> None:
    """Runs are told as their logs close; a dropped run takes its rotated files with it."""
    logs = RunLogs(tmp_path, LogsConfig(keep_runs=2, max_size=None))
    for run in range(1, 5):
        log = LaunchLog(tmp_path, run, "abc", echo=False, max_bytes=10, backups=2)
        for n in range(run):  # run N rotates N-1 times (two files kept at most)
            log.feed("stdout", f"line {n} of run {run}\n".encode())
        log.close()
        logs.closed(run, log.files())
        logs.prune()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "run-000003-abc.1.log",
        "run-000003-abc.2.log",
        "run-000003-abc.log",
        "run-000004-abc.1.log",
        "run-000004-abc.2.log",
        "run-000004-abc.log",
    ]
