"""`metasup mcp serve`'s tools through the SDK's own client, in process (memory streams): the
MCP wiring without a subprocess. The e2e test drives the same through `metasup mcp serve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from metasup.faces.mcp.serve import Tools, build, tool_specs
from testing.fixtures import make_repo


def session(repo: Path, steps: Any) -> Any:
    async def main() -> Any:
        async with Client(build(Tools(repo, repo / ".git"))) as client:
            return await steps(client)

    return anyio.run(main)


def test_the_tools_are_listed_with_their_schemas(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")

    async def steps(client: Any) -> Any:
        return (await client.list_tools()).tools

    listed = session(repo, steps)
    assert [t.name for t in listed] == [name for name, _, _ in tool_specs()]
    assert {t.name for t in listed} == {
        "status", "validate_change", "propose_change", "experiment_results", "request_restart"
    }  # fmt: skip
    assert all(t.input_schema.get("type") == "object" for t in listed)


def test_a_call_answers_with_structured_content_and_errors_are_flagged(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    good = {"reason": "notes", "changes": [{"file": "notes.txt", "content": "hi\n"}]}
    protected = {"reason": "x", "changes": [{"file": "metasup.yaml", "content": "x"}]}

    async def steps(client: Any) -> Any:
        return [
            await client.call_tool("validate_change", good),
            await client.call_tool("validate_change", protected),
            await client.call_tool("propose_change", good),
            await client.call_tool("status", {}),
            await client.call_tool("request_restart", {"reason": "try"}),
            await client.call_tool("no_such_tool", {}),
        ]

    valid, refused, proposed, status, restart, unknown = session(repo, steps)
    assert not valid.is_error and valid.structured_content == {"ok": True, "errors": []}
    assert refused.is_error
    assert refused.structured_content["errors"][0]["code"] == "path_protected"
    assert not proposed.is_error
    queued = repo / ".metasup" / "inbox" / f"{proposed.structured_content['id']}.json"
    assert json.loads(queued.read_text()) == good, "queued as sent"
    assert status.structured_content["supervisor_running"] is False
    assert restart.is_error and "no supervisor" in restart.structured_content["error"]
    assert unknown.is_error and "no tool named" in unknown.structured_content["error"]
    assert json.loads(valid.content[0].text) == valid.structured_content, "text mirrors it"
