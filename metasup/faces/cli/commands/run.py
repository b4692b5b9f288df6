"""`metasup run`: validate the config, then become the supervisor core."""

from __future__ import annotations

from typing import Annotated

import typer

from metasup.faces.cli import options
from metasup.faces.cli.options import (
    ConfigOpt,
    config_path,
    find_repo,
)
from metasup.facts.errors import UserError


def run(
    config: ConfigOpt = None,
    max_cycles: Annotated[
        int | None,
        typer.Option("--max-cycles", min=1, help="End after this many launches of the agent."),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option("--plain", help="One line per event even on a terminal (no live view)."),
    ] = False,
) -> None:
    """Supervise the agent of the repository in the current directory, in the foreground.

    On a terminal it shows the live status view (agent output goes to .git/metasup/logs);
    in a pipe, or with --plain, one line per event and the agent's output as it comes.

    Exits 0 when stopped (Ctrl-C, SIGTERM, --max-cycles), 3 on an emergency stop.
    """
    from metasup.facts.config import parse_config
    from metasup.pipelines.supervisor.launch import config_digest, exec_core

    repo = find_repo()
    path = config_path(repo.workdir, config).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    # Every config error surfaces here, before anything starts.
    sources = parse_config(text, path).sources
    exec_core(repo.workdir, path, config_digest(text, *sources), max_cycles, options.debug, plain)
