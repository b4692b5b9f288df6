"""`metasup propose`: validate a proposal and queue it for the supervisor."""

from __future__ import annotations

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    FileArg,
    find_repo,
    read_input,
    repo_policy,
)


def propose(file: FileArg, config: ConfigOpt = None) -> None:
    """Validate a proposal and queue it for the supervisor; print its id. Exits 0 queued,
    1 rejected (nothing is queued then).

    A running `metasup run` applies it between cycles: it stops the agent, applies the
    proposal all or nothing, snapshots, and relaunches the agent on the new code.
    """
    from metasup.effects.records.journal import StateDir
    from metasup.pipelines import proposals
    from metasup.pipelines.intake import INBOX, ProposalStore

    repo = find_repo()
    raw = read_input(file)
    _, errors = proposals.validate(raw, repo_policy(repo, config), repo.workdir)
    if errors:
        for e in errors:
            typer.echo(f"rejected [{e.code}] {e.message}", err=True)
        raise typer.Exit(1)
    dirs = StateDir.for_git_dir(repo.git_dir)
    store = ProposalStore(repo.workdir / INBOX, dirs.root / "proposals")
    typer.echo(store.enqueue(raw))
