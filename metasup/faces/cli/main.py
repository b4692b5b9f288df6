"""`metasup`: thin commands over the pipelines, one file each in `commands/`. Parse, call, print.

User mistakes (bad config, no repository, a busy repository) print one line and exit 2; a
traceback appears only with `--debug`. A command module imports what it needs when it runs, so
`metasup --help` loads none of the pipelines.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from metasup import __version__
from metasup.faces.cli import options
from metasup.faces.cli.commands import (
    approve,
    config,
    demo,
    doctor,
    evolve,
    experiment,
    hook,
    init,
    log,
    mcp,
    propose,
    recover,
    rollback,
    run,
    status,
    validate,
)
from metasup.facts.errors import UserError

app = typer.Typer(
    name="metasup",
    help=(
        "An immutable outer loop for self-modifying agents: snapshot the working tree, launch the "
        "agent, mark commits good after min_runtime, roll back quick failures."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metasup {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    options.debug = debug


for command in (
    init.init,
    run.run,
    status.status,
    log.log,
    validate.validate,
    propose.propose,
    experiment.experiment,
    evolve.evolve,
    evolve.population,
    rollback.rollback,
    config.config,
    recover.recover,
    approve.approve,
    doctor.doctor,
    demo.demo,
):
    app.command()(command)


def _group(name: str, help: str) -> typer.Typer:
    group = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


mcp_app = _group(
    "mcp",
    "MCP: list and restart the supervised servers, reach them, or serve metasup's own tools to "
    "the agent.",
)
mcp_app.command("list")(mcp.list_servers)
mcp_app.command("restart")(mcp.restart)
mcp_app.command("connect")(mcp.connect)
mcp_app.command("serve")(mcp.serve)
hook_app = _group("hook", "The git pre-commit hook that refuses commits to protected paths.")
hook_app.command("pre-commit")(hook.pre_commit)
hook_app.command("install")(hook.install)


def main() -> None:
    try:
        app(prog_name="metasup")
    except UserError as e:
        if options.debug:
            raise
        print(f"metasup: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
