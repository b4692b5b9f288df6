"""`metasup config`: the effective configuration, or the first error."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from metasup.faces.cli.options import (
    ConfigOpt,
    JsonOpt,
    find_repo,
    load_config_for,
)
from metasup.facts.errors import UserError


def config(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration after defaults, or the first error (exit 2)."""
    import yaml

    from metasup.facts.units import format_duration

    try:
        root = find_repo().workdir
    except UserError:
        root = Path.cwd()
    cfg = load_config_for(root, config)
    doc = cfg.to_dict()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    s = doc["supervisor"]
    for key in ("min_runtime",):
        s[key] = format_duration(s[key])
    a = s["agent"]
    a["stop_timeout"] = format_duration(a["stop_timeout"])
    a["restart_backoff"] = {k: format_duration(v) for k, v in a["restart_backoff"].items()}
    h = s["health_checks"]
    for key in ("interval", "heartbeat_timeout"):
        if h[key] is not None:
            h[key] = format_duration(h[key])
    typer.echo(f"# {doc['path']}")
    typer.echo(yaml.safe_dump({"supervisor": s}, sort_keys=False, default_flow_style=False))
    if doc["inactive"]:
        typer.echo(
            "# not active yet (accepted, no effect in this version): " + ", ".join(doc["inactive"])
        )
