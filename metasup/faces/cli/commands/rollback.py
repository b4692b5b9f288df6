"""`metasup rollback`: archive the current state, reset to the good commit."""

from __future__ import annotations

from typing import Annotated

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    find_repo,
    load_config_for,
)


def rollback(
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="REF", help="Reset to this commit instead of the good one."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Archive the current state, then reset to the good commit (or REF).

    For an operator, with metasup stopped: the working tree, untracked files included, is
    committed under refs/metasup/archive/ first; rollback.preserve paths are kept.
    """
    from metasup.facts.errors import ConfigError
    from metasup.pipelines import rollback

    repo = find_repo()
    bounds = rollback.DEFAULT_BOUNDS
    try:
        cfg = load_config_for(repo.workdir, config).rollback
        keep, bounds = cfg.preserve, (cfg.max_file_size, cfg.max_files)
    except ConfigError:
        if config is not None or any(
            (repo.workdir / name).exists() for name in ("metasup.yaml", "config/metasup.yaml")
        ):
            raise
        keep = ()  # no config at all: nothing to preserve
    done = rollback.manual(
        repo,
        to,
        keep,
        bounds,
        resumed=lambda target: typer.echo(f"finished an interrupted rollback to {target[:12]}"),
    )
    if done.archive:
        typer.echo(f"archived the current state as {done.archive}")
    typer.echo(f"reset to {done.target[:12]}")
