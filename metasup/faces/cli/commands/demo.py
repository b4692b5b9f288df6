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
    evolve: Annotated[
        bool,
        typer.Option(
            "--evolve",
            help="Instead: evolve a shell sort's gaps with a population kept in git "
            "(no LLM needed) and merge the winner.",
        ),
    ] = False,
    generations: Annotated[
        int, typer.Option("--generations", min=1, help="With --evolve: generations to run.")
    ] = 5,
) -> None:
    """The whole loop on a scratch repo with the bundled demo agent, then a summary.

    With --evolve, `metasup evolve` on a scratch repo instead: the score climbs generation by
    generation, and the best candidate is merged when it beats the good commit.
    """
    if evolve:
        from metasup.faces.demo.evolution import run_evolve_demo

        raise typer.Exit(run_evolve_demo(directory, generations))
    from metasup.faces.demo.scenario import run_demo

    raise typer.Exit(run_demo(directory, cycles))
