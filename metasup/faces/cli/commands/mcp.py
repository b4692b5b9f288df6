"""`metasup mcp connect|serve`: reach the supervised MCP servers; serve metasup's tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    JsonOpt,
    RepoOpt,
    find_repo,
    load_config_for,
)


def _configured(workdir: Path, config: Path | None) -> list[str] | None:
    """The server names the config in use gives; None when it cannot be read (the status
    still answers for what ran)."""
    from metasup.facts.errors import UserError

    try:
        return [s.name for s in load_config_for(workdir, config).mcp_servers]
    except UserError:
        return None


def list_servers(repo: RepoOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The supervised MCP servers: state, transport, tools, probe latency, restarts, pid.

    While `metasup run` runs, as it sees them now; otherwise the last recorded state (every
    server `stopped`). Exits 0.
    """
    import json

    from metasup.effects.records.journal import StateDir
    from metasup.faces.mcp.control import lines, servers

    found = find_repo(repo)
    details, running = servers(
        StateDir.for_git_dir(found.git_dir), _configured(found.workdir, config) or []
    )
    if as_json:
        typer.echo(json.dumps({"running": running, "servers": details}, sort_keys=True))
        return
    for line in lines(details, running):
        typer.echo(line)


def restart(
    name: Annotated[str, typer.Argument(help="The server's name in mcp_servers.")],
    repo: RepoOpt = None,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for it to answer again (0: don't)."),
    ] = 30.0,
) -> None:
    """Restart one supervised MCP server now, a `failed` one included (its restart count
    starts afresh); then wait for it to answer.

    Exits 0 when it came back healthy, 1 when it did not (or no such server, or metasup is not
    running). The restart is journalled as any other (`mcp_restarted`).
    """
    from metasup.effects.records.journal import StateDir
    from metasup.faces.mcp.control import restart as do_restart

    found = find_repo(repo)
    raise typer.Exit(do_restart(StateDir.for_git_dir(found.git_dir), name, wait, typer.echo))


def connect(
    name: Annotated[str, typer.Argument(help="The server's name in mcp_servers.")],
    repo: RepoOpt = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the server's socket.")
    ] = 10.0,
) -> None:
    """Bridge stdin/stdout to a stdio MCP server that `metasup run` supervises.

    Put it in the agent's MCP client config as the server's command, e.g.
    {"command": "metasup", "args": ["mcp", "connect", "NAME"]}. The agent then talks to the very
    process metasup starts, probes and restarts; a restart underneath keeps its session.
    """
    from metasup.faces.mcp.connect import connect as open_socket
    from metasup.faces.mcp.connect import pump, socket_dir

    folder = socket_dir(Path.cwd(), repo)
    sock = open_socket(folder, name, wait)
    raise typer.Exit(pump(sock))


def serve(repo: RepoOpt = None, config: ConfigOpt = None) -> None:
    """Serve metasup's tools to an LLM agent over stdio (MCP): status, validate_change,
    propose_change, experiment_results, request_restart.

    Put it in the agent's MCP client config: {"command": "metasup", "args": ["mcp", "serve"]}.
    It reads the supervisor's records and writes to its inbox; it cannot disable metasup,
    change what is protected, or roll back.
    """
    from metasup.faces.mcp.serve import Tools
    from metasup.faces.mcp.serve import serve as serve_tools

    found = find_repo(repo)
    serve_tools(Tools(found.workdir, found.git_dir, config))
