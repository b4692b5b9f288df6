"""What an archive takes besides git's changes: decided on a real tree."""

from __future__ import annotations

import os
from pathlib import Path

from metasup.effects.git.sweep import Sweep, kept, plan


def test_kept_covers_the_path_its_insides_and_its_parents() -> None:
    keep = ("data/", "memory/notes.md")
    assert kept("data", keep) and kept("data/x/y", keep) and kept("memory", keep)
    assert kept("memory/notes.md", keep)
    assert not kept("database", keep) and not kept("memory/other.md", keep)


def test_the_plan_sorts_every_kind_of_file(tmp_path: Path) -> None:
    old = tmp_path / "venv" / "old.py"
    old.parent.mkdir()
    old.write_text("old")
    since = os.lstat(old).st_ctime_ns  # the good state: old.py is part of it
    new = tmp_path / "venv" / "new.py"
    new.write_text("new")
    while os.lstat(new).st_ctime_ns <= since:  # the file clock ticks coarsely: a tick later
        new.write_text("new")
    (tmp_path / "big.bin").write_bytes(b"x" * 2048)
    (tmp_path / "note.txt").write_text("n")
    (tmp_path / "many").mkdir()
    for n in range(5):
        (tmp_path / "many" / f"{n}").write_text("m")
    os.mkfifo(tmp_path / "venv" / "pipe")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("k" * 4096)
    taken = plan(
        tmp_path,
        untracked=["big.bin", "note.txt", "many/", "keep/"],
        ignored=["venv/"],
        sweep=Sweep(since_ns=since, keep=("keep/",), max_file_size=1024, max_files=3),
    )
    assert taken.hash_untracked == ["note.txt"]
    assert [(u.path, u.files) for u in taken.quarantine] == [("big.bin", 1), ("many", 5)]
    assert taken.hash_ignored == ["venv/new.py"]
    assert taken.special == [("venv/pipe", "a fifo")]
    assert "keep/mine.txt" not in taken.hash_untracked, "preserved, too big: left in place"


def test_without_a_good_time_ignored_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "cache.txt").write_text("c")
    taken = plan(tmp_path, [], ["cache.txt"], Sweep(since_ns=None))
    assert taken.empty and taken.hash_untracked == []
