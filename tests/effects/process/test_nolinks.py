"""The filter that denies hard links, on the real kernel: links fail as between two mounts,
in the process and in what it runs, and nothing else it does is touched."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import subprocess
from pathlib import Path

from metasup.effects.process import nolinks


def _in_filtered_child(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "a").write_text("x")
    libc = ctypes.CDLL(None, use_errno=True)
    install = nolinks.installer(libc)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: filter itself, then try
        seen: dict[str, object] = {}
        try:
            os.close(read)
            libc.prctl(38, 1, 0, 0, 0)  # no_new_privs
            install()
            try:
                os.link(tmp_path / "a", tmp_path / "b")
                seen["link"] = "done"
            except OSError as e:
                seen["link"] = e.errno
            ln = subprocess.run(["ln", str(tmp_path / "a"), str(tmp_path / "c")], check=False)
            seen["ln"] = ln.returncode
            os.symlink("a", tmp_path / "s")
            os.rename(tmp_path / "s", tmp_path / "t")
            (tmp_path / "new").write_text("y")
            seen["rest"] = sorted(p.name for p in tmp_path.iterdir())
        finally:
            os.write(write, json.dumps(seen).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    return dict(out)


def test_links_fail_with_exdev_and_nothing_else_does(tmp_path: Path) -> None:
    seen = _in_filtered_child(tmp_path)
    assert seen["link"] == errno.EXDEV
    assert seen["ln"] != 0  # a program it runs is filtered too
    assert seen["rest"] == ["a", "new", "t"]
    os.link(tmp_path / "a", tmp_path / "here")  # the parent was never filtered
    assert (tmp_path / "here").read_text() == "x"


def test_the_program_is_whole_instructions_with_jumps_inside_it() -> None:
    prog = nolinks.program()
    assert len(prog) % 8 == 0
    count = len(prog) // 8
    for i in range(count):
        code, jt, jf, _k = struct.unpack_from("=HBBI", prog, i * 8)
        if code == 0x15:  # a conditional jump lands on an instruction of the program
            assert i + 1 + max(jt, jf) < count
        else:
            assert jt == jf == 0
    # it ends on returns, never running off its end
    assert struct.unpack_from("=HBBI", prog, (count - 1) * 8)[0] == 0x06
