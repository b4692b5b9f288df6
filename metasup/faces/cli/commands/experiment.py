"""`metasup experiment`: try proposals on their own branches; merge the best."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    JsonOpt,
    find_repo,
    load_config_for,
    read_input,
)


def experiment(
    files: Annotated[
        list[str], typer.Argument(metavar="FILE...", help="Proposals to try (JSON); - for stdin.")
    ],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Judge the candidates, merge nothing.")
    ] = False,
) -> None:
    """Try proposals on their own branches and worktrees; merge the best that passes.

    Each candidate is checked, run as a shadow and scored as `experiments:` in the config says,
    against the good commit measured in the same run. Exits 0 when one was merged (with
    --dry-run: when one would be), 1 when none passed.
    """
    from metasup.facts.policy import load_policy
    from metasup.pipelines.experiments import run_offline

    repo = find_repo()
    cfg = load_config_for(repo.workdir, config)
    policy = load_policy(repo.workdir, cfg.path, cfg.protected_paths)
    sources = [(name, read_input(name)) for name in files]
    outcome = run_offline(repo, cfg, policy, sources, dry_run)
    if as_json:
        typer.echo(json.dumps(outcome.as_dict(), indent=2))
    else:
        _print_experiments(outcome)
    ok = outcome.winner is not None if dry_run else outcome.merged is not None
    raise typer.Exit(0 if ok else 1)


def _print_experiments(outcome: Any) -> None:
    rows = []
    for c in outcome.candidates:
        d = c.as_dict()
        checks = [s for s in c.steps if s.name.startswith("check ")]
        shadow = next((s for s in c.steps if s.name == "shadow"), None)
        rows.append(
            (
                d["source"],
                "-" if not checks else ("ok" if all(s.ok for s in checks) else "failed"),
                "-" if shadow is None else ("ok" if shadow.ok else "died"),
                "-" if d["score"] is None else f"{d['score']:.4g}",
                "-" if d["improvement"] is None else f"{d['improvement']:+.1%}",
                d["outcome"],
                d["failure"] or d["archive"] or "",
            )
        )
    header = ("candidate", "checks", "shadow", "score", "vs good", "outcome", "why / archived as")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"experiments on {outcome.base[:12]}")
        for col in header:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in [header, *rows]:
            typer.echo(" | ".join(row))
    if outcome.merged:
        how = "fast-forward" if outcome.fast_forward else "three-way merge"
        typer.echo(f"merged {outcome.winner.source} as {outcome.merged[:12]} ({how})")
    elif outcome.winner is not None:
        typer.echo(f"would merge {outcome.winner.source} (dry run)")
    else:
        typer.echo("no candidate passed; nothing merged")
