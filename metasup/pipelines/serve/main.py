"""The front door's process: the proxy and the replicas, on one event loop.

A helper child of the supervisor (see `supervisor.serving`): the listening socket comes bound
(`--fd`), so `serve.listen` port 0 is known before anything starts. Its stdin carries one JSON
object a line from the supervisor: `{"good": COMMIT}` (run the replicas on it) or
`{"candidate": COMMIT, "id": ID}` (put it on live traffic, see `canary`); end of file stops
everything. Its stdout carries one JSON object a line back: events for the journal
(`{"event": ...}`) and the serving status (`{"status": {...}}`) each second and after each event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from metasup.effects.git.repo import GitRepo
from metasup.effects.process.jail import Jail
from metasup.effects.process.spawn import Reaper
from metasup.effects.process.view import make_view
from metasup.facts.config import load_config
from metasup.facts.faults import child_env
from metasup.facts.policy import load_policy
from metasup.pipelines.serve.front import Front
from metasup.pipelines.serve.replicas import ReplicaSet

STATUS_EVERY_S = 1.0


def send(doc: dict[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        os.write(1, (json.dumps(doc, separators=(",", ":")) + "\n").encode())


async def serve(sock: socket.socket, git_dir: Path, workdir: Path, config: Path) -> None:
    cfg = load_config(config)
    assert cfg.serve is not None, "serving without a `serve:` section"
    policy = load_policy(workdir)
    reaper = Reaper()
    jail = Jail(cfg.sandbox, reaper=reaper) if cfg.sandbox.applies("agent") else None

    def view(here: Path) -> Any:
        return make_view(
            here,
            protected_patterns=[p for p, _ in policy.patterns],
            config_path=cfg.path,
            sandbox=cfg.sandbox,
        )

    front = Front(cfg.serve, send)
    log = open(git_dir / "metasup" / "logs" / "serve-replicas.log", "ab")  # noqa: SIM115

    def report(doc: dict[str, Any]) -> None:
        send(doc)
        send({"status": status()})

    replicas = ReplicaSet(
        GitRepo(workdir),
        git_dir / "metasup" / "worktrees",
        cfg.agent.command,
        {**child_env(), **cfg.agent.env},
        cfg.serve,
        front,
        report,
        reaper,
        jail=jail,
        view=view,
        log=log,
    )

    def status() -> dict[str, Any]:
        return {**front.status(), "commit": replicas.commit, "wanted": replicas.wanted}

    await front.start(sock)
    looping = asyncio.create_task(replicas.run())
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    async def tell() -> None:
        while True:
            send({"status": status()})
            await asyncio.sleep(STATUS_EVERY_S)

    telling = asyncio.create_task(tell())
    try:
        while line := await commands.readline():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(line)
                if isinstance(doc.get("good"), str):
                    await replicas.follow(doc["good"])
                elif isinstance(doc.get("candidate"), str):
                    replicas.offer(doc["candidate"], str(doc.get("id") or doc["candidate"][:12]))
    finally:  # the supervisor is gone or stopping: so is every replica
        telling.cancel()
        await replicas.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await looping
        await front.stop()
        if jail is not None:
            jail.close()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metasup.pipelines.serve")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--git-dir", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sock, args.git_dir, args.workdir, args.config))
    return 0
