"""The MCP fleet worker: a child of the supervisor that runs, probes and restarts MCP servers.

It is a process of its own so that the supervisor never loads the `mcp` SDK (pydantic, anyio,
httpx: some 30 MiB and most of a second), and so that a fault in the SDK cannot take the outer
loop down with it: the supervisor restarts a worker that died.

With the supervisor it speaks `protocol`: a Start, then Restart and Stop commands on stdin
(end of file stops everything too); a Report for each event and a Status whenever a server
changes on stdout.

Each stdio server's one session is the probe's; agents reach the same server through a Unix
socket per server (`<name>.sock`, see `metasup mcp connect`). Each server is run by a
`servers.ServerRunner`. The operator's `metasup mcp restart NAME` reaches the worker through a
socket of its own, in the state folder the jail hides (`control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from metasup.effects.process.jail import Jail, Prepared
from metasup.effects.process.spawn import Reaper
from metasup.effects.process.view import View, sandbox_from_json, view_from_json
from metasup.pipelines.mcp import protocol
from metasup.pipelines.mcp.worker.servers import LINE_LIMIT, ServerRunner


class Worker:
    def __init__(self) -> None:
        self.sockets = Path()
        self.logs = Path()
        self.reaper = Reaper()
        self.seq = 0
        self.stopping = False
        self.runners: dict[str, ServerRunner] = {}
        self.jail: Jail | None = None
        self.view: View | None = None  # the working tree as a jailed server sees it

    # --- to the supervisor --------------------------------------------------------------------

    def send(self, reply: protocol.Reply) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            os.write(1, protocol.encode(reply))  # small lines, read at once by the supervisor

    def event(self, event: str, **fields: Any) -> None:
        self.send(protocol.Report(event, fields))

    def status(self) -> None:
        servers = {n: r.describe() for n, r in self.runners.items()}
        self.send(protocol.Status(self.seq, servers))

    # --- main ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader(limit=LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        first = await commands.readline()
        if not first:
            return
        start = protocol.decode_command(first)
        if not isinstance(start, protocol.Start):
            raise SystemExit("metasup.mcp worker: the first line is not a start")
        self.sockets = Path(start.sockets)
        self.logs = Path(start.logs)
        self.seq = start.seq
        if start.jail:
            self.jail = Jail(sandbox_from_json(start.jail["sandbox"]), reaper=self.reaper)
            self.view = view_from_json(start.jail["view"])
        self.runners = {s["name"]: ServerRunner(s, self) for s in start.servers}
        loop.add_signal_handler(signal.SIGCHLD, self.dispatch_exits)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop)
        self.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(parents=True, exist_ok=True)
        # Socket paths are bound relative to this folder: an absolute one may pass the 107 bytes
        # a Unix socket name can hold. The servers get their own cwd.
        os.chdir(self.sockets)
        self.status()
        control = await control_socket(Path(start.sockets).parent / "secret", self.operator)
        try:
            async with anyio.create_task_group() as tg:
                for runner in self.runners.values():
                    tg.start_soon(runner.run)
                tg.start_soon(self._commands, commands)
        finally:
            control.close()
            for runner in self.runners.values():
                runner.close_socket()
            if self.jail is not None:
                self.jail.close()
        self.status()

    def jailed(self, cwd: Path) -> Prepared | None:
        """The jail for a server started in `cwd`, as the supervisor's config makes it."""
        if self.jail is None or self.view is None:
            return None
        return self.jail.prepare(replace(self.view, cwd=cwd))

    def dispatch_exits(self) -> None:
        """Hand each server its exit. Statuses are taken from the reaper rather than from this
        call's reap: a stop running in a thread may have reaped another server's exit first."""
        self.reaper.reap()
        for primary in list(self.runners.values()):
            for runner in primary.runners():
                c = runner.child
                if c is not None:
                    code = self.reaper.pop(c.pid)
                    if code is not None:
                        runner.child_exited(c.pid, c.exit_code(code))

    def operator(self, request: Any) -> dict[str, Any]:
        """One request on the control socket: `{"restart": NAME}`, from a `failed` state too."""
        name = request.get("restart") if isinstance(request, dict) else None
        if not isinstance(name, str):
            return {"error": 'expected {"restart": NAME}'}
        runner = self.runners.get(name)
        if runner is None:
            known = ", ".join(sorted(self.runners)) or "none"
            return {"error": f"no MCP server named {name!r} (configured: {known})"}
        if self.stopping:
            return {"error": "the MCP servers are stopping"}
        was = str(runner.state)
        runner.request_restart("requested by the operator (metasup mcp restart)")
        self.status()
        return {"ok": True, "server": name, "was": was}

    def stop(self) -> None:
        self.stopping = True
        for runner in self.runners.values():
            runner.interrupt("stop")

    async def _commands(self, reader: asyncio.StreamReader) -> None:
        while not self.stopping:
            line = await reader.readline()
            if not line:
                break  # the supervisor is gone
            cmd = protocol.decode_command(line)
            if isinstance(cmd, protocol.Stop):
                break
            if isinstance(cmd, protocol.Restart):
                self.seq = cmd.seq
                for name in cmd.names:
                    if name in self.runners:
                        self.runners[name].request_restart(cmd.reason)
                self.status()
        self.stop()


async def control_socket(folder: Path, answer: Any) -> asyncio.Server:
    """Listen for the operator's requests, one JSON line in, one out, in `folder` (0700)."""
    import json
    import socket

    path = folder / "mcp-control.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Relative to the sockets folder (this process's cwd): the absolute path may be too long.
    sock.bind(os.path.relpath(path))
    os.chmod(path, 0o600)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            writer.write((json.dumps(answer(request)) + "\n").encode())
            await writer.drain()
        except (ConnectionError, ValueError):
            pass  # the asker went away, or sent a line past the limit
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, sock=sock, limit=1 << 16)


def main() -> int:
    worker = Worker()
    try:
        anyio.run(worker.run)
    except KeyboardInterrupt:
        return 130
    return 0
