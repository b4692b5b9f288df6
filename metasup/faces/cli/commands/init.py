"""`metasup init`: make a directory a supervised repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def init(
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]", help="The repository to set up (default: here).", file_okay=False
        ),
    ] = None,
    hook: Annotated[
        str,
        typer.Option(
            help="git: install metasup's git hook; framework: leave it to the pre-commit "
            "framework (init prints what to add to .pre-commit-config.yaml); auto: framework "
            "when the repository has a .pre-commit-config.yaml, else git.",
            metavar="auto|git|framework",
        ),
    ] = "auto",
) -> None:
    """Make DIR a supervised repository: git repo, metasup.yaml, the protected/ policy, the
    inbox excluded, the pre-commit hook. Safe to run again."""
    from metasup.faces.init import NEXT_STEPS
    from metasup.faces.init import init as do_init

    for line in do_init(directory or Path.cwd(), hook):
        typer.echo(line)
    typer.echo(NEXT_STEPS)
