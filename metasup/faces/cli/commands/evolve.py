"""`metasup evolve` and `metasup population`: the search over a population kept in git."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from metasup.faces.cli.options import ConfigOpt, JsonOpt, find_repo, load_config_for


def evolve(
    generations: Annotated[
        int | None,
        typer.Option(
            "--generations", "-g", min=1, help="Generations to run (default: the config's)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Go on with the last evolution, if it was interrupted."),
    ] = False,
    no_merge: Annotated[
        bool, typer.Option("--no-merge", help="Report the best candidate; merge nothing.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search for a better agent: a population of commits, bred by the config's `mutator`
    and by three-way merges, judged by `experiments:` (checks, shadow run, fitness), the best
    merged when it beats the good commit beyond its noise.

    Every candidate stays reachable from refs/metasup/pop/<id>; the journal records each one.
    Ctrl-C stops at once, and --resume goes on from the journal: nothing evaluated twice,
    nothing lost. Exits 0 when a candidate beat the good commit, 1 when none did, 130 when
    interrupted.
    """
    from metasup.facts.policy import load_policy
    from metasup.pipelines.evolution.offline import run_offline

    repo = find_repo()
    cfg = load_config_for(repo.workdir, config)
    policy = load_policy(repo.workdir, cfg.path, cfg.protected_paths)
    from metasup.faces.evolution import face_for

    face = face_for(as_json)
    try:
        result = run_offline(
            repo,
            cfg,
            policy,
            resume=resume,
            generations=generations,
            merge=not no_merge,
            on_record=face.feed,
            on_open=face.opened,
        )
    finally:
        face.close()
    doc = result.as_dict()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from metasup.faces.evolution import summary_lines

        for line in summary_lines(doc):
            typer.echo(line)
    if result.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(0 if result.promoted else 1)


def population(
    top: Annotated[
        int | None, typer.Option("--top", "-n", min=1, help="Only the N best candidates.")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Candidates of every evolution, not only the last.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The candidates of the last evolution, best first: score, generation, island, operator
    and parents. Each is a commit kept by refs/metasup/pop/<id>."""
    from metasup.decisions import evolution as evo
    from metasup.effects.records.journal import StateDir, read_events
    from metasup.faces.evolution import (
        POPULATION_HEADER,
        member_doc,
        population_rows,
    )

    repo = find_repo()
    found = evo.histories(read_events(StateDir.for_git_dir(repo.git_dir).events))
    chosen = list(found.values()) if every else list(found.values())[-1:]
    pairs = [(m, h.evolution) for h in chosen for m in h.members.values()]
    ranked = evo.ranked(m for m, _ in pairs)
    of = {m.id: e for m, e in pairs}
    if top is not None:
        ranked = ranked[:top]
    if as_json:
        typer.echo(json.dumps([member_doc(m, of[m.id]) for m in ranked], indent=2))
        return
    if not ranked:
        typer.echo("no candidates yet: `metasup evolve` makes them")
        return
    rows = population_rows(ranked)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for col in POPULATION_HEADER:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in [POPULATION_HEADER, *rows]:
            typer.echo(" | ".join(row))
