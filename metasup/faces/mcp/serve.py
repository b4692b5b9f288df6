"""`metasup mcp serve`: metasup's own tools for an LLM agent, as a stdio MCP server.

The agent can read the supervisor's status and experiment results, check a change, propose it
and ask for a restart. Everything goes through what the supervisor already reads from outside:
`state.json` and `events.jsonl` for reading, the inbox for proposals and restart requests. There
is no tool to disable metasup, change what is protected, or roll back: a proposal touching a
protected path is rejected here exactly as the supervisor would reject it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metasup.effects.records.journal import (
    CHAIN_FIELDS,
    StateDir,
    current_status,
    public_status,
    tail_events,
)
from metasup.facts.resources import schema_path
from metasup.pipelines import proposals
from metasup.pipelines.intake import INBOX, RESTART_SUFFIX, ProposalStore
from metasup.pipelines.integrity import load_repo_policy

EXPERIMENT_EVENTS = ("experiment_started", "experiment_passed", "experiment_failed", "merged")


@dataclass
class Answer:
    """A tool's result: structured content, and whether it is an error the agent should read."""

    content: dict[str, Any]
    is_error: bool = False


class Tools:
    """The tools' logic, apart from the MCP wiring (tested directly and through a session)."""

    def __init__(self, workdir: Path, git_dir: Path, config: Path | None = None) -> None:
        self.workdir = workdir
        self.dirs = StateDir.for_git_dir(git_dir)
        self.config = config
        self.store = ProposalStore(workdir / INBOX, self.dirs.root / "proposals")

    def status(self, args: dict[str, Any]) -> Answer:
        doc, running = current_status(self.dirs)
        return Answer({**public_status(doc, time.time()), "supervisor_running": running})

    def validate_change(self, args: dict[str, Any]) -> Answer:
        _, errors = self._check(args)
        return Answer({"ok": not errors, "errors": errors}, is_error=bool(errors))

    def propose_change(self, args: dict[str, Any]) -> Answer:
        raw, errors = self._check(args)
        if errors:
            return Answer({"ok": False, "errors": errors}, is_error=True)
        pid = self.store.enqueue(raw)
        _, running = current_status(self.dirs)
        note = (
            "queued: the supervisor applies it between cycles (or tries it as an experiment)"
            if running
            else "queued: no supervisor is running; the next `metasup run` takes it"
        )
        return Answer({"ok": True, "id": pid, "note": note})

    def experiment_results(self, args: dict[str, Any]) -> Answer:
        limit = args.get("limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100:
            return Answer({"error": "limit must be a whole number from 1 to 100"}, is_error=True)
        doc, _ = current_status(self.dirs)
        recent = [e for e in tail_events(self.dirs.events) if e.get("event") in EXPERIMENT_EVENTS]
        return Answer(
            {
                "experiments": (doc.get("experiments") or [])[-limit:],
                "experiment_running": bool(doc.get("experiment_running")),
                "events": [_without_chain(e) for e in recent[-limit:]],
            }
        )

    def request_restart(self, args: dict[str, Any]) -> Answer:
        reason = args.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            return Answer({"error": "reason must be a string of at most 500 characters"}, True)
        _, running = current_status(self.dirs)
        if not running:
            return Answer({"error": "no supervisor is running in this repository"}, True)
        rid = self.store.enqueue(json.dumps({"reason": reason}).encode(), suffix=RESTART_SUFFIX)
        return Answer({"ok": True, "id": rid, "note": "the agent is restarted between cycles"})

    def _check(self, args: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
        raw = json.dumps(args).encode()
        policy = load_repo_policy(self.workdir, self.config)
        _, errors = proposals.validate(raw, policy, self.workdir)
        return raw, [e.as_dict() for e in errors]


def _without_chain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in CHAIN_FIELDS}


def tool_specs() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, input schema) of each tool."""
    proposal = json.loads(schema_path("proposal").read_text(encoding="utf-8"))
    proposal.pop("$id", None)
    empty: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    return [
        (
            "status",
            "The supervisor's status: running or not, run number, current and good commits, "
            "consecutive quick failures, the agent's pid and resources, MCP servers, strategy.",
            empty,
        ),
        (
            "validate_change",
            "Check a proposed change (reason + changes to files) against the proposal schema, "
            "the protected paths and the working tree, without queuing it. Returns the errors.",
            proposal,
        ),
        (
            "propose_change",
            "Propose a change to the agent's own files. It is validated first (protected paths "
            "are refused), then queued; the supervisor applies it between cycles, or tries it "
            "as an experiment, and keeps it only if the agent still runs.",
            proposal,
        ),
        (
            "experiment_results",
            "Recent experiments: each candidate's outcome, score and improvement over baseline.",
            {
                "type": "object",
                "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                "additionalProperties": False,
            },
        ),
        (
            "request_restart",
            "Ask the supervisor to restart the agent between cycles (for instance to load "
            "changed code). The current working tree is snapshotted first.",
            {
                "type": "object",
                "properties": {"reason": {"type": "string", "maxLength": 500}},
                "additionalProperties": False,
            },
        ),
    ]


def serve(tools: Tools) -> None:
    """Serve the tools on stdin/stdout until the client goes away."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = build(tools)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def build(tools: Tools) -> Any:
    """The MCP server over `tools` (an SDK `Server`), for any transport."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel.server import Server

    from metasup import __version__

    specs = tool_specs()
    listed = [types.Tool(name=n, description=d, input_schema=s) for n, d, s in specs]
    handlers = {n: getattr(tools, n) for n, _, _ in specs}

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        handler = handlers.get(params.name)
        if handler is None:
            answer = Answer({"error": f"no tool named {params.name!r}"}, True)
        else:
            answer = await anyio.to_thread.run_sync(handler, dict(params.arguments or {}))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(answer.content, indent=1))],
            structured_content=answer.content,
            is_error=answer.is_error,
        )

    server: Server[Any] = Server(
        "metasup",
        version=__version__,
        instructions=(
            "metasup supervises you: it snapshots your working tree, restarts you, and rolls "
            "back changes after which you die quickly. Propose edits with propose_change; "
            "protected files (metasup's config and policy) cannot be changed."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    return server
