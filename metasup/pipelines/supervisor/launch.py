"""The supervisor's own process image, exec'd by `metasup run` once the config is validated.

The CLI needs typer and jsonschema to parse arguments and validate the config; the supervisor
does not, and a long-lived process keeps every module it ever imported. So `metasup run`
validates, then replaces itself (same pid, same terminal, same signals) with this lean entry
point, which re-reads the config and checks it is byte for byte the file just validated.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from metasup.effects.process.spawn import python_module
from metasup.facts.digest import sha256_hex
from metasup.facts.errors import ConfigError, UserError


def config_digest(text: str, *sources: str) -> str:
    """The config as validated: its text and the files it read (an `mcp_config`)."""
    return sha256_hex("\0".join((text, *sources)).encode())


def exec_core(
    workdir: Path,
    config: Path,
    digest: str,
    max_cycles: int | None,
    debug: bool,
    plain: bool = False,
) -> None:
    """Replace the current process with the supervisor core. Does not return.

    The core runs in isolated mode, from the filesystem's root: nothing in the working tree
    can be imported by it (see `spawn.python_module`)."""
    argv = python_module(
        "metasup.pipelines.supervisor",
        "--repo",
        str(workdir),
        "--config",
        str(config),
        "--digest",
        digest,
    )
    if plain:
        argv.append("--plain")
    if max_cycles is not None:
        argv += ["--max-cycles", str(max_cycles)]
    if debug:
        argv.append("--debug")
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir("/")
    os.execv(sys.executable, argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metasup run", description="internal: see `metasup run`")
    parser.add_argument("--repo", type=Path, default=None)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--max-cycles", type=int)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args(argv)
    try:
        from metasup.effects.git.repo import GitRepo
        from metasup.facts.config import parse_config
        from metasup.pipelines.supervisor.loop import Supervisor

        repo = GitRepo(args.repo or Path.cwd())
        try:
            text = args.config.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{args.config}: cannot read: {e}") from None
        changed = ConfigError(f"{args.config} changed while metasup started; run it again")
        try:
            # Unvalidated (no jsonschema in the core): anything that then breaks the reading
            # is a file that is no longer the one the command validated.
            config = parse_config(text, args.config, validate=False)
        except ConfigError:
            raise
        except Exception:
            raise changed from None
        if config_digest(text, *config.sources) != args.digest:
            raise changed
        live = sys.stdout.isatty() and not args.plain
        return Supervisor(repo, config, max_cycles=args.max_cycles, live_view=live).run()
    except UserError as e:
        if args.debug:
            raise
        print(f"metasup: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the supervisor took over the signals: nothing was started yet.
        return 130
