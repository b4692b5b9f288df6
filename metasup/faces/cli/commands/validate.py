"""`metasup validate`: check a proposal without applying it."""

from __future__ import annotations

import json

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    FileArg,
    JsonOpt,
    find_repo,
    read_input,
    repo_policy,
)


def validate(file: FileArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check a proposal without applying it. Exits 0 valid, 1 rejected."""
    from metasup.pipelines import proposals

    repo = find_repo()
    policy = repo_policy(repo, config)
    proposal, errors = proposals.validate(read_input(file), policy, repo.workdir)
    if as_json:
        typer.echo(json.dumps({"ok": not errors, "errors": [e.as_dict() for e in errors]}))
    elif errors:
        for e in errors:
            typer.echo(f"rejected [{e.code}] {e.message}", err=True)
    else:
        assert proposal is not None
        typer.echo(f"valid: {len(proposal.changes)} change(s)")
    raise typer.Exit(1 if errors else 0)
