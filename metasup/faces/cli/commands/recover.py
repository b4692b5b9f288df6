"""`metasup recover`: after an emergency stop, back to the newest good state."""

from __future__ import annotations

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    find_repo,
    load_config_for,
)


def recover(config: ConfigOpt = None) -> None:
    """After an emergency stop: stop everything, archive the tree, reset to the good commit
    (or, when that ref is missing or broken, to the newest one the journal marked good).
    Exits 0, or 1 when there is nothing good to go back to."""
    from metasup.facts.errors import ConfigError
    from metasup.pipelines.recover import recover as do_recover
    from metasup.pipelines.rollback import DEFAULT_BOUNDS

    repo = find_repo()
    bounds = DEFAULT_BOUNDS
    try:
        cfg = load_config_for(repo.workdir, config).rollback
        keep, bounds = cfg.preserve, (cfg.max_file_size, cfg.max_files)
    except ConfigError:
        if config is not None:
            raise
        keep = ()
    done = do_recover(repo, keep, bounds)
    if done.stopped:
        typer.echo(f"stopped {done.stopped} process(es)")
    if done.archive:
        typer.echo(f"archived the current state as {done.archive}")
    typer.echo(f"recovered to {done.target[:12]} (from the {done.source})")
