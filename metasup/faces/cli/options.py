"""What the commands share: their common options, and finding the repository and its config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from metasup.facts.errors import UserError

debug = False  # --debug: tracebacks instead of one line (set by the root callback)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: metasup.yaml, then config/metasup.yaml at the repo root).",
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
RepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="The supervised repository (default: the one around the current directory).",
        file_okay=False,
    ),
]
FileArg = Annotated[str, typer.Argument(metavar="FILE|-", help="The proposal (JSON); - for stdin.")]


def find_repo(start: Path | None = None) -> Any:
    from metasup.effects.git.repo import GitRepo

    return GitRepo(start or Path.cwd())


def load_config_for(repo_root: Path, explicit: Path | None) -> Any:
    from metasup.facts.config import load_config

    return load_config(config_path(repo_root, explicit))


def config_path(repo_root: Path, explicit: Path | None) -> Path:
    """`--config`, else the config the last approval pinned, else the usual names."""
    from metasup.pipelines.integrity import config_in_use

    return config_in_use(repo_root, explicit)


def repo_policy(repo: Any, config: Path | None) -> Any:
    from metasup.pipelines.integrity import load_repo_policy

    return load_repo_policy(repo.workdir, config)


def read_input(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise UserError(f"{file}: cannot read: {e.strerror or e}") from None
