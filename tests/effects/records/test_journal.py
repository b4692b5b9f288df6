"""events.jsonl, state.json and the repo lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasup.effects.records.journal import (
    GENESIS,
    Journal,
    RepoLock,
    holder_pid,
    line_hash,
    read_events,
    verify_chain,
    write_json_atomic,
)
from testing.fixtures import rechain


def test_events_are_chained(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    j = Journal(path)
    j.append("launch", pid=1)
    j.append("exit", pid=1, code=0)
    j.close()
    lines = path.read_bytes().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["prev"] == GENESIS and first["seq"] == 1
    assert second["prev"] == line_hash(lines[0]) and second["seq"] == 2
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert verify_chain(path) == []


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    Journal(path).append("a")
    j = Journal(path)
    record = j.append("b")
    assert record["seq"] == 2
    assert verify_chain(path) == []


@pytest.fixture
def three_events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    j = Journal(path)
    for n in range(3):
        j.append("exit", code=n)
    j.close()
    return path


def test_an_edited_line_breaks_the_chain(three_events: Path) -> None:
    path = three_events
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"code":1', '"code":0')
    path.write_text("\n".join(lines) + "\n")
    problems = verify_chain(path)
    assert problems[0].startswith("line 2 (seq 2): mac does not match")
    assert "line 3 (seq 3): prev does not match line 2" in problems


def test_a_dropped_line_re_chained_is_still_seen(three_events: Path) -> None:
    path = three_events
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(rechain([lines[0], lines[2]])) + b"\n")
    problems = verify_chain(path)
    assert any("mac does not match" in p for p in problems), problems
    assert not any("prev does not match" in p for p in problems), "the plain chain is whole"


def test_a_journal_cut_short_is_seen(three_events: Path) -> None:
    path = three_events
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:2]) + b"\n")
    assert verify_chain(path) == [
        "the journal ends at seq 2, but seq 3 was written: events were cut off"
    ]
    j = Journal(path)  # the writer's own check at open says the same
    assert j.breaks == ["the journal ends at seq 2, but seq 3 was written: events were cut off"]
    j.close()


def test_macs_stripped_or_the_key_gone_are_seen(three_events: Path) -> None:
    path = three_events
    bare = [json.dumps({k: v for k, v in json.loads(raw).items() if k != "mac"}).encode()
            for raw in path.read_bytes().splitlines()]  # fmt: skip
    intact = path.read_bytes()
    path.write_bytes(b"\n".join(rechain(bare)) + b"\n")
    assert verify_chain(path) == ["seq 3 differs from the copy of its mac kept aside"]
    path.write_bytes(intact)
    (path.parent / "secret" / "journal.key").unlink()
    assert verify_chain(path) == ["line 1 (seq 1): keyed, but the journal key is missing"]
    j = Journal(path)
    assert j.breaks and "the journal key was missing" in j.breaks[0]
    j.close()


def test_an_intact_journal_reopened_reports_nothing(three_events: Path) -> None:
    j = Journal(three_events)
    assert j.breaks == []
    j.append("more")
    j.close()
    assert verify_chain(three_events) == []


def test_a_deleted_line_breaks_the_chain(three_events: Path) -> None:
    path = three_events
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert verify_chain(path)


def test_a_torn_last_line_is_cut_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    j = Journal(path)
    j.append("a")
    j.append("b")
    j.close()
    with path.open("ab") as f:
        f.write(b'{"ts": "2026-01-01T00:00:00Z", "seq": 3, "ev')
    j = Journal(path)
    assert j.seq == 2
    j.append("c")
    assert [e["event"] for e in read_events(path)] == ["a", "b", "c"]
    assert verify_chain(path) == []


def test_state_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"status": "running"})
    write_json_atomic(path, {"status": "stopped"})
    assert json.loads(path.read_text()) == {"status": "stopped"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_second_lock_holder_is_refused_with_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with RepoLock(path, "the repo"):
        assert holder_pid(path) == os.getpid()
        # flock is per open file description: a second process is refused.
        code = (
            "import sys; from pathlib import Path\n"
            "from metasup.effects.records.journal import RepoLock\n"
            "try:\n    RepoLock(Path(sys.argv[1]), 'the repo').acquire()\n"
            "except Exception as e:\n    print(e); sys.exit(2)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True
        )
        assert out.returncode == 2
        assert f"another metasup (pid {os.getpid()}) already supervises the repo" in out.stdout
    assert holder_pid(path) is None


def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    code = (
        "import os, signal, sys; from pathlib import Path\n"
        "from metasup.effects.records.journal import RepoLock\n"
        "RepoLock(Path(sys.argv[1]), 'r').acquire(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)])
    assert path.exists() and holder_pid(path) is None
    lock = RepoLock(path, "r")
    lock.acquire()
    lock.release()


@given(st.lists(st.integers(0, 1000), max_size=20), st.lists(st.integers(1, 40), max_size=30))
def test_a_follower_reads_each_appended_event_once_and_never_half_a_line(
    values: list[int], cuts: list[int]
) -> None:
    """`events_since`, as `metasup log --follow` and `mcp restart` use it: the journal
    written in arbitrary pieces, read between any two of them."""
    import tempfile

    from metasup.effects.records.journal import events_since

    data = b"".join(json.dumps({"seq": v}).encode() + b"\n" for v in values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        seen: list[int] = []
        offset, written = 0, 0
        for cut in [*cuts, len(data)]:
            chunk = data[written : written + cut]
            written += len(chunk)
            with path.open("ab") as f:
                f.write(chunk)
            events, offset = events_since(path, offset)
            seen += [e["seq"] for e in events]
        assert seen == values
        assert events_since(path, offset) == ([], offset)
