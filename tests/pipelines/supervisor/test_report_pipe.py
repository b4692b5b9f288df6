"""A helper's report pipe on a real pipe and selector: lines however the bytes are cut, the last
ones kept when the writer ends, a runaway partial line dropped, a new helper's pipe fresh."""

from __future__ import annotations

import os
import selectors

from hypothesis import given
from hypothesis import strategies as st

from metasup.pipelines.supervisor.helper import ReportPipe


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12), st.data()
)
def test_lines_come_whole_however_the_writes_cut_them(
    lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    sel = selectors.DefaultSelector()
    r, w = _pipe()
    pipe = ReportPipe(sel, "x")
    pipe.watch(r)
    got: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        os.write(w, stream[a:b])
        got += pipe.lines()
    os.close(w)  # the helper's end: what is left is read, then the pipe is out of the selector
    got += pipe.lines()
    assert got == lines and pipe.fd == -1 and sel.get_map() == {}
    os.close(r)
    sel.close()


def test_a_runaway_partial_line_is_dropped_and_a_new_pipe_starts_fresh() -> None:
    sel = selectors.DefaultSelector()
    r, w = _pipe()
    pipe = ReportPipe(sel, "x")
    pipe.watch(r)
    chunk = b"y" * (1 << 16)
    for _ in range((ReportPipe.LINE_LIMIT >> 16) + 1):
        os.write(w, chunk)
        assert pipe.lines() == []
    os.write(w, b"tail\nnext")
    assert pipe.lines() == [b"tail"]  # the runaway's start went, its end is one short line
    r2, w2 = _pipe()
    pipe.watch(r2)  # a new helper: "next" was the old one's half line
    assert sel.get_key(r2).data == "x" and r not in sel.get_map()
    os.write(w2, b"fresh\n")
    assert pipe.lines() == [b"fresh"]
    for fd in (r, w, r2, w2):
        os.close(fd)
    sel.close()
