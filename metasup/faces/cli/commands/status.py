"""`metasup status`: the supervisor's status, once or live."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    JsonOpt,
    config_path,
    find_repo,
)


def status(
    as_json: JsonOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep the view live (q or Ctrl-C leaves). Fed by the API when there is one.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between redraws.")
    ] = 0.5,
    config: ConfigOpt = None,
) -> None:
    """The supervisor's status: one screen on a terminal, plain lines in a pipe, one JSON
    document with --json. Exits 0 while a supervisor runs, 1 when none does."""
    from metasup.effects.records.journal import StateDir, current_status

    repo = find_repo()
    if config is not None:
        config_path(repo.workdir, config)  # accepted like everywhere; a missing file is an error
    dirs = StateDir.for_git_dir(repo.git_dir)
    doc, running = current_status(dirs)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        raise typer.Exit(0 if running else 1)
    from metasup.faces.view import render as view

    if watch and sys.stdout.isatty():
        view.watch(view.Source(repo.git_dir), interval=interval)
        raise typer.Exit(0)
    if watch:
        _watch_plain(dirs, interval)
        raise typer.Exit(0)
    if sys.stdout.isatty():
        from rich.console import Console

        source = view.Source(repo.git_dir)
        doc, recent, running = source.fetch()
        Console().print(view.render(doc, recent, time.time(), running))
    else:
        typer.echo(view.plain(doc, running))
    raise typer.Exit(0 if running else 1)


def _watch_plain(dirs: Any, interval: float) -> None:
    """Not a terminal: the summary once, then a line per event while a supervisor runs."""
    from metasup.effects.records.journal import current_status, read_events
    from metasup.faces.view import render as view

    doc, running = current_status(dirs)
    typer.echo(view.plain(doc, running))
    seen = max((int(e.get("seq", 0)) for e in read_events(dirs.events)), default=0)
    try:
        while running:
            time.sleep(interval)  # a follower of a file: polling it is what it does
            for record in read_events(dirs.events):
                if int(record.get("seq", 0)) > seen:
                    typer.echo(view.event_text(record))
                    seen = int(record["seq"])
            sys.stdout.flush()
            _, running = current_status(dirs)
    except KeyboardInterrupt:
        return
