"""`metasup mcp connect|serve`: reach the supervised MCP servers; serve metasup's tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    RepoOpt,
    find_repo,
)


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
