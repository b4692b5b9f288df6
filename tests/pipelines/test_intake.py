"""The inbox: ids, atomic claims, the watcher."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import threading
from pathlib import Path

import pytest

from metasup.pipelines.intake import InboxWatcher, ProposalStore, new_id


@pytest.fixture
def store(tmp_path: Path) -> ProposalStore:
    (tmp_path / "work").mkdir()  # the working tree; the inbox is made in it
    s = ProposalStore(tmp_path / "work" / ".metasup" / "inbox", tmp_path / "state" / "proposals")
    s.create()
    return s


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    # The time part never goes backwards; the random part only separates equal times.
    assert all(a[:22] <= b[:22] for a, b in itertools.pairwise(ids))
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{6}", ids[0])


def test_enqueue_then_claim_keeps_the_id(store: ProposalStore) -> None:
    pid = store.enqueue(b"{}")
    (path,) = store.waiting()
    item = store.claim(path)
    assert item is not None and item.id == pid and item.path.read_bytes() == b"{}"
    assert store.waiting() == [] and store.claim(path) is None


def test_an_agents_own_name_gets_an_id(store: ProposalStore) -> None:
    (store.inbox / "my idea.json").write_text("{}")
    (store.inbox / ".half-written.json").write_text("{")
    (store.inbox / "notes.txt").write_text("x")
    (path,) = store.waiting()
    item = store.claim(path)
    assert item is not None and item.source == "my idea.json"
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{6}", item.id)


def test_reject_and_done_move_the_claim(store: ProposalStore) -> None:
    (store.inbox / "a.json").write_text("1")
    a = store.claim(store.inbox / "a.json")
    assert a is not None
    store.reject(a, [{"code": "schema"}])
    assert (store.rejected / f"{a.id}.json").read_text() == "1"
    assert "schema" in (store.rejected / f"{a.id}.errors.json").read_text()
    (store.inbox / "b.json").write_text("2")
    b = store.claim(store.inbox / "b.json")
    assert b is not None
    store.done(b)
    assert (store.applied / f"{b.id}.json").read_text() == "2"
    assert store.left_claimed() == []


def _claim_all(inbox: str, root: str, out: multiprocessing.Queue[list[str]]) -> None:
    s = ProposalStore(Path(inbox), Path(root))
    taken = []
    for path in s.waiting():
        item = s.claim(path)
        if item is not None:
            taken.append(item.source)
    out.put(taken)


def test_two_takers_never_take_the_same_proposal(store: ProposalStore) -> None:
    names = {f"p{n:03d}.json" for n in range(300)}
    for name in names:
        (store.inbox / name).write_text("{}")
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_all, args=(str(store.inbox), str(store.claimed.parent), out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    first, second = out.get(timeout=30), out.get(timeout=30)
    for p in procs:
        p.join(timeout=30)
    assert set(first) | set(second) == names
    assert not set(first) & set(second)
    assert len(list(store.claimed.iterdir())) == 300


@pytest.mark.parametrize("polling", [False, True])
def test_the_watcher_wakes_on_a_new_proposal(store: ProposalStore, polling: bool) -> None:
    woken = threading.Event()
    watcher = InboxWatcher(store.inbox, lambda now: woken.set(), force_polling=polling)
    watcher.start()
    try:
        assert watcher.polling is polling
        (store.inbox / ".tmp").write_text("{}")
        (store.inbox / ".tmp").rename(store.inbox / "new.json")
        assert woken.wait(timeout=10)
    finally:
        watcher.stop()


def test_restart_requests_are_taken_once_with_their_reason(tmp_path: Path) -> None:
    store = ProposalStore(tmp_path / "inbox", tmp_path / "state")
    first = store.enqueue(b'{"reason": "reload"}', suffix=".restart")
    store.enqueue(b"not json", suffix=".restart")
    (tmp_path / "inbox" / ".half.restart").write_text("{}")  # still being written
    taken = store.take_restart_requests()
    assert taken[0] == (first, "reload") and taken[1][1] == "" and len(taken) == 2
    assert store.take_restart_requests() == []
    assert store.waiting() == []  # a restart request is no proposal
