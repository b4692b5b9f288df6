"""`metasup approve`: record the protected files as they are now."""

from __future__ import annotations

from typing import Annotated

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    find_repo,
)


def approve(
    reason: Annotated[
        str, typer.Option("--reason", help="Why the protected files changed (journalled).")
    ] = "",
    config: ConfigOpt = None,
) -> None:
    """Record the protected files as they are now as the approved baseline (metasup stopped).

    The way an operator changes protected files: stop metasup, edit, run this. Where they
    differ from HEAD they are committed; the good commit gets them too, so metasup restores
    the approved content from now on. The config file in use is pinned: later starts use it
    (an agent's ./metasup.yaml is never taken instead) until an approval with --config names
    another. Exits 0, or 2 while a supervisor runs.
    """
    from metasup.pipelines.approve import approve as do_approve

    done = do_approve(find_repo(), reason, config)
    if done.differ:
        for line in done.differ:
            typer.echo(f"approved: {line}")
    else:
        typer.echo(f"nothing changed; the baseline holds {done.files} protected files")
    if done.commit:
        typer.echo(f"committed as {done.commit[:12]}")
    if done.good:
        typer.echo(f"good is {done.good[:12]}")
