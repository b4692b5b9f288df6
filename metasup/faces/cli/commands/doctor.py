"""`metasup doctor`: check what metasup needs, say what to fix."""

from __future__ import annotations

from pathlib import Path

import typer

from metasup.faces.cli.options import ConfigOpt


def doctor(config: ConfigOpt = None) -> None:
    """Check git, the config, the policy, the hook, the API port, inotify and the jail (the
    mode in force and each of its five guarantees, held or not, and why); print what to fix.
    Exits 0 when all is well, 1 otherwise."""
    from metasup.faces.doctor import report, run_checks

    text, ok = report(run_checks(Path.cwd(), config))
    typer.echo(text)
    raise typer.Exit(0 if ok else 1)
