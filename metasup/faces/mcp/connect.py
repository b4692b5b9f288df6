"""`metasup mcp connect NAME`: the agent's stdio MCP server entry for a supervised server.

The agent's MCP client starts this command as if it were the server; it copies bytes between
its own stdin/stdout and the Unix socket the fleet worker serves for NAME. The server behind it
is the one metasup runs, probes and restarts, so the agent gets the same process metasup judged
healthy, and keeps its session when metasup restarts the server underneath.

Light on purpose: no `mcp`, no pygit2, started once per agent session.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import write_all
from metasup.effects.records.journal import StateDir
from metasup.facts.errors import UserError
from metasup.facts.gitpaths import common_dir, git_dir_of

CHUNK = 1 << 16


def socket_dir(start: Path, repo: Path | None = None) -> Path:
    """The sockets of `repo` when given; else `METASUP_MCP_DIR`, else those of the repository
    around `start`."""
    env = os.environ.get("METASUP_MCP_DIR")
    if repo is None and env:
        return Path(env)
    return StateDir.for_git_dir(git_common_dir(repo or start)).mcp


def git_common_dir(start: Path) -> Path:
    """The repository's git dir (the main one, from inside a linked worktree too)."""
    for folder in (start.resolve(), *start.resolve().parents):
        git_dir = git_dir_of(folder)
        if git_dir is not None:
            return common_dir(git_dir)
    raise UserError(f"{start} is not inside a git repository; pass --repo or set METASUP_MCP_DIR")


def known_servers(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The servers a running supervisor has (name -> details), from its status next to the
    sockets; None when none runs (it may be starting: the caller waits for the socket)."""
    from metasup.effects.records.journal import current_status

    doc, running = current_status(StateDir(folder.parent))
    states = doc.get("mcp_servers")
    if not running or not isinstance(states, dict):
        return None
    details: dict[str, Any] = doc["mcp"] if isinstance(doc.get("mcp"), dict) else {}
    return {n: details[n] if isinstance(details.get(n), dict) else {} for n in states}


def connect(folder: Path, name: str, wait: float) -> socket.socket:
    """A connection to NAME's socket, waiting up to `wait` seconds for it to appear. A name the
    running supervisor does not serve fails at once, naming those it does."""
    known = known_servers(folder)
    if known is not None and name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise UserError(
            f"MCP server {name!r} is not served by the running metasup (serving: {listed})"
        )
    if known is not None and known[name].get("transport") not in (None, "stdio"):
        url = known[name].get("url")
        raise UserError(
            f"MCP server {name!r} is served over HTTP at {url}: point the client at that URL "
            "(`metasup mcp connect` bridges stdio servers)"
        )
    path = folder / f"{name}.sock"
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connect_unix(sock, path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() >= deadline:
                there = sorted(p.stem for p in folder.glob("*.sock")) if folder.is_dir() else []
                hint = f"; serving: {', '.join(there)}" if there else ""
                what = "not running" if isinstance(e, ConnectionRefusedError) else "not served"
                raise UserError(
                    f"MCP server {name!r} is {what} at {path} (is `metasup run` running?){hint}"
                ) from None
            time.sleep(0.05)  # metasup may still be starting it; bounded by `wait`


def connect_unix(sock: socket.socket, path: Path) -> None:
    """Connect by a relative name when the absolute path is past what sun_path holds."""
    if len(os.fsencode(path)) < 100:
        sock.connect(str(path))
        return
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir(path.parent)
        sock.connect(path.name)
    finally:
        os.fchdir(here)
        os.close(here)


def pump(sock: socket.socket, stdin: int = 0, stdout: int = 1) -> int:
    """Copy stdin to the socket and the socket to stdout until the socket closes."""
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(stdin, selectors.EVENT_READ, "in")
        sel.register(sock, selectors.EVENT_READ, "sock")
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, CHUNK)
                    if not data:
                        sel.unregister(stdin)
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)  # the client is done asking
                        continue
                    sock.setblocking(True)
                    try:
                        sock.sendall(data)
                    except OSError:
                        return 1
                    finally:
                        sock.setblocking(False)
                else:
                    try:
                        data = sock.recv(CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        return 1
                    if not data:
                        return 0
                    write_all(stdout, data)
