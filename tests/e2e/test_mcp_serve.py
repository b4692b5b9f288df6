"""`metasup mcp serve` through a real SDK client session, against a running supervisor."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from testing.fixtures import (
    ROOT,
    SLEEPER,
    agent_config,
    events,
    supervising,
    wait_for,
    write_config,
)


@asynccontextmanager
async def metasup_tools(repo: Path) -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup", "mcp", "serve"], cwd=str(repo)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: Any, name: str, **args: Any) -> tuple[dict[str, Any], bool]:
    result = await session.call_tool(name, args)
    return result.structured_content, result.is_error


def test_the_agent_reads_proposes_and_asks_for_a_restart(repo: Path) -> None:
    (repo / "agent.py").write_text(SLEEPER)
    write_config(repo, agent_config(min_runtime="200ms"))

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with metasup_tools(repo) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            seen["tools"] = sorted(tools)
            seen["schema"] = tools["propose_change"].input_schema
            seen["status"], _ = await call(session, "status")
            seen["protected"] = await call(
                session,
                "propose_change",
                reason="loosen the supervisor",
                changes=[{"file": "metasup.yaml", "content": "supervisor: {}\n"}],
            )
            seen["bad"] = await call(session, "validate_change", reason="no changes")
            seen["valid"] = await call(
                session,
                "validate_change",
                reason="notes",
                changes=[{"file": "notes.txt", "content": "hello\n"}],
            )
            seen["queued"] = await call(
                session,
                "propose_change",
                reason="notes",
                changes=[{"file": "notes.txt", "content": "hello\n"}],
            )
            await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: (repo / "notes.txt").exists(), what="the proposal")
            )
            await anyio.to_thread.run_sync(
                lambda: wait_for(
                    lambda: any(e["event"] == "mark_good" and e["run"] == 2 for e in events(repo)),
                    what="run 2 good",
                )
            )
            seen["restart"] = await call(session, "request_restart", reason="load new code")
            await anyio.to_thread.run_sync(
                lambda: wait_for(
                    lambda: any(e["event"] == "launch" and e["run"] == 3 for e in events(repo)),
                    what="the restart",
                )
            )
            seen["results"] = await call(session, "experiment_results", limit=5)
            seen["bad_limit"] = await call(session, "experiment_results", limit=0)
        return seen

    with supervising(repo):
        seen = anyio.run(scenario)
    assert seen["tools"] == [
        "experiment_results",
        "propose_change",
        "request_restart",
        "status",
        "validate_change",
    ]
    shipped = json.loads((ROOT / "protected" / "schemas" / "proposal.schema.json").read_text())
    assert seen["schema"]["properties"] == shipped["properties"]
    assert seen["schema"]["required"] == ["reason", "changes"]
    status = seen["status"]
    assert status["status"] == "running" and status["supervisor_running"] and status["run"] == 1
    assert "token" not in status["agent"] and "helper_trees" not in status
    protected, is_error = seen["protected"]
    assert is_error and [e["code"] for e in protected["errors"]] == ["path_protected"]
    bad, is_error = seen["bad"]
    assert is_error and bad["errors"][0]["code"] == "schema"
    assert seen["valid"] == ({"ok": True, "errors": []}, False)
    queued, is_error = seen["queued"]
    assert not is_error and queued["ok"] and queued["id"]
    restart, is_error = seen["restart"]
    assert not is_error and restart["ok"]
    results, is_error = seen["results"]
    assert not is_error and results["experiments"] == [] and results["events"] == []
    assert seen["bad_limit"][1] is True
    log = events(repo)
    applied = [e for e in log if e["event"] == "proposal_applied"]
    assert [e["id"] for e in applied] == [queued["id"]]
    assert [e["reason"] for e in log if e["event"] == "restart_requested"] == ["load new code"]
    # A requested restart is no failure, and the protected config was never touched.
    assert not any(e["event"] == "rollback" for e in log)
    assert "supervisor: {}" not in (repo / "metasup.yaml").read_text()


def test_request_restart_needs_a_running_supervisor(repo: Path) -> None:
    write_config(repo, agent_config())

    async def scenario() -> tuple[dict[str, Any], bool]:
        async with metasup_tools(repo) as session:
            return await call(session, "request_restart", reason="x")

    answer, is_error = anyio.run(scenario)
    assert is_error and answer["error"] == "no supervisor is running in this repository"
    inbox = repo / ".metasup" / "inbox"
    assert not inbox.exists() or not list(inbox.glob("*.restart"))
