"""`metasup log`: the event log, its chain checked, or followed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    JsonOpt,
    config_path,
    find_repo,
)


def log(
    as_json: JsonOpt = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain; exit 1 if it is broken.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """The event log (events.jsonl)."""
    from metasup.effects.records.journal import StateDir, events_since, read_events, verify_chain

    repo = find_repo()
    if config is not None:
        config_path(repo.workdir, config)  # accepted like everywhere; a missing file is an error
    path = StateDir.for_git_dir(repo.git_dir).events
    if verify:
        problems = verify_chain(path)
        count = sum(1 for _ in read_events(path))
        if as_json:
            typer.echo(json.dumps({"ok": not problems, "events": count, "problems": problems}))
        elif problems:
            for p in problems:
                typer.echo(f"broken: {p}", err=True)
        else:
            typer.echo(f"ok: {count} events, chain intact")
        raise typer.Exit(1 if problems else 0)
    events, offset = events_since(path)
    if as_json and not follow:
        typer.echo(json.dumps(events))
        return
    show = _event_printer(as_json)
    for record in events:
        show(record)
    if follow:
        _follow(path, show, offset)


def _event_printer(as_json: bool) -> Any:
    """JSON lines; in colour on a terminal; plain lines in a pipe."""
    if as_json:
        return lambda record: typer.echo(json.dumps(record))
    from metasup.faces.view.render import EVENT_COLOURS, event_text

    if not sys.stdout.isatty():
        return lambda record: typer.echo(event_text(record))
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)

    def show(record: dict[str, Any]) -> None:
        colour = EVENT_COLOURS.get(str(record.get("event")), "")
        console.print(Text(f"#{record.get('seq')} {event_text(record)}", style=colour))

    return show


def _follow(path: Path, show: Any, offset: int) -> None:
    from metasup.effects.records.journal import events_since

    try:
        while True:
            time.sleep(0.25)  # a tail -f: polling the file is what it is for
            events, offset = events_since(path, offset)
            for record in events:
                show(record)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
