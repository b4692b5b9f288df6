"""`metasup hook pre-commit|install`: the git hook that refuses protected changes."""

from __future__ import annotations

from pathlib import Path

import typer

from metasup.faces.cli.options import (
    RepoOpt,
    find_repo,
)


def pre_commit() -> None:
    """Fail, listing each staged protected path and the rule protecting it (git's pre-commit
    hook, or the pre-commit framework's `metasup-protected-paths`). Exits 0 clean, 1 refused."""
    from metasup.faces.hook import run_pre_commit

    raise typer.Exit(run_pre_commit(Path.cwd()))


def install(repo: RepoOpt = None) -> None:
    """Install the pre-commit hook (honours core.hooksPath; an existing hook is kept and run
    after metasup's check). Idempotent."""
    from metasup.faces.hook import install as install_hook

    found = find_repo(repo)
    hook, chained = install_hook(found.workdir)
    typer.echo(f"installed {hook}" + (f" (then runs {chained.name})" if chained else ""))
