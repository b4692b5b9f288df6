"""`metasup demo`: the whole loop on a scratch repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to make the scratch repo (default: a new temp dir)."),
    ] = None,
    cycles: Annotated[int, typer.Option("--cycles", min=2, help="Launches of the agent.")] = 9,
) -> None:
    """The whole loop on a scratch repo with the bundled demo agent, then a summary."""
    from metasup.faces.demo.scenario import run_demo

    raise typer.Exit(run_demo(directory, cycles))
