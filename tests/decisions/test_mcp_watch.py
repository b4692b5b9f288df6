from __future__ import annotations

from metasup.decisions.mcp_watch import default_watch, touched

FILES = {"servers/s.py": "file", "servers": "dir", "tools/pkg/mod.py": "file", "tools": "dir"}


def kind(path: str) -> str | None:
    return FILES.get(path) or ("dir" if path in ("tools/pkg",) else None)


def test_default_watch_is_the_folder_of_each_named_file() -> None:
    assert default_watch("python", ["servers/s.py"], None, "/r", kind) == ("servers",)
    assert default_watch("python", ["-m", "pkg.mod"], "tools", "/r", kind) == ("tools/pkg",)
    assert default_watch("python", ["/r/servers/s.py"], None, "/r", kind) == ("servers",)
    assert default_watch("npx", ["-y", "@x/server"], None, "/r", kind) == ()
    assert default_watch("python", ["../elsewhere.py", "/etc/x"], None, "/r", kind) == ()
    assert default_watch("python", ["tools"], None, "/r", kind) == ("tools",)
    root_file = default_watch("python", ["s.py"], None, "/r", lambda p: "file")
    assert root_file == ("",)


def test_touched() -> None:
    assert touched(("servers",), ["servers/s.py"])
    assert not touched(("servers",), ["servers2/s.py", "agent.py"])
    assert touched(("",), ["anything"])
    assert not touched((), ["anything"])
