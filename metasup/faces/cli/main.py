"""`metasup`: thin commands over the pipelines. Parse, call, print.

User mistakes (bad config, no repository, a busy repository) print one line and exit 2; a
traceback appears only with `--debug`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from metasup import __version__
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

_DEBUG = False

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
    global _DEBUG
    _DEBUG = debug


def _repo(start: Path | None = None) -> Any:
    from metasup.effects.git.repo import GitRepo

    return GitRepo(start or Path.cwd())


def _config(repo_root: Path, explicit: Path | None) -> Any:
    from metasup.facts.config import load_config

    return load_config(_config_path(repo_root, explicit))


def _config_path(repo_root: Path, explicit: Path | None) -> Path:
    """`--config`, else the config the last approval pinned, else the usual names."""
    from metasup.pipelines.integrity import config_in_use

    return config_in_use(repo_root, explicit)


@app.command()
def init(
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]", help="The repository to set up (default: here).", file_okay=False
        ),
    ] = None,
) -> None:
    """Make DIR a supervised repository: git repo, metasup.yaml, the protected/ policy, the
    inbox excluded, the pre-commit hook. Safe to run again."""
    from metasup.faces.init import NEXT_STEPS
    from metasup.faces.init import init as do_init

    for line in do_init(directory or Path.cwd()):
        typer.echo(line)
    typer.echo(NEXT_STEPS)


@app.command()
def run(
    config: ConfigOpt = None,
    max_cycles: Annotated[
        int | None,
        typer.Option("--max-cycles", min=1, help="End after this many launches of the agent."),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option("--plain", help="One line per event even on a terminal (no live view)."),
    ] = False,
) -> None:
    """Supervise the agent of the repository in the current directory, in the foreground.

    On a terminal it shows the live status view (agent output goes to .git/metasup/logs);
    in a pipe, or with --plain, one line per event and the agent's output as it comes.

    Exits 0 when stopped (Ctrl-C, SIGTERM, --max-cycles), 3 on an emergency stop.
    """
    from metasup.facts.config import parse_config
    from metasup.pipelines.supervisor.launch import config_digest, exec_core

    repo = _repo()
    path = _config_path(repo.workdir, config).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    parse_config(text, path)  # every config error surfaces here, before anything starts
    exec_core(repo.workdir, path, config_digest(text), max_cycles, _DEBUG, plain)


@app.command()
def status(
    as_json: JsonOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep the view live (q or Ctrl-C leaves). Fed by the API when there is one.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between redraws.")
    ] = 0.5,
) -> None:
    """The supervisor's status: one screen on a terminal, plain lines in a pipe, one JSON
    document with --json. Exits 0 while a supervisor runs, 1 when none does."""
    from metasup.effects.records.journal import StateDir, current_status

    repo = _repo()
    dirs = StateDir.for_git_dir(repo.git_dir)
    doc, running = current_status(dirs)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        raise typer.Exit(0 if running else 1)
    from metasup.faces.view import render as view

    if watch and sys.stdout.isatty():
        view.watch(view.Source(repo.git_dir), interval=interval)
        raise typer.Exit(0)
    if watch:
        _watch_plain(dirs, interval)
        raise typer.Exit(0)
    if sys.stdout.isatty():
        from rich.console import Console

        source = view.Source(repo.git_dir)
        doc, recent, running = source.fetch()
        Console().print(view.render(doc, recent, time.time(), running))
    else:
        typer.echo(view.plain(doc, running))
    raise typer.Exit(0 if running else 1)


def _watch_plain(dirs: Any, interval: float) -> None:
    """Not a terminal: the summary once, then a line per event while a supervisor runs."""
    from metasup.effects.records.journal import current_status, read_events
    from metasup.faces.view import render as view

    doc, running = current_status(dirs)
    typer.echo(view.plain(doc, running))
    seen = max((int(e.get("seq", 0)) for e in read_events(dirs.events)), default=0)
    try:
        while running:
            time.sleep(interval)  # a follower of a file: polling it is what it does
            for record in read_events(dirs.events):
                if int(record.get("seq", 0)) > seen:
                    typer.echo(view.event_text(record))
                    seen = int(record["seq"])
            sys.stdout.flush()
            _, running = current_status(dirs)
    except KeyboardInterrupt:
        return


@app.command()
def log(
    as_json: JsonOpt = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain; exit 1 if it is broken.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
) -> None:
    """The event log (events.jsonl)."""
    from metasup.effects.records.journal import StateDir, read_events, verify_chain

    repo = _repo()
    path = StateDir.for_git_dir(repo.git_dir).events
    if verify:
        problems = verify_chain(path)
        count = sum(1 for _ in read_events(path))
        if as_json:
            typer.echo(json.dumps({"ok": not problems, "events": count, "problems": problems}))
        elif problems:
            for p in problems:
                typer.echo(f"broken: {p}", err=True)
        else:
            typer.echo(f"ok: {count} events, chain intact")
        raise typer.Exit(1 if problems else 0)
    events = list(read_events(path))
    if as_json and not follow:
        typer.echo(json.dumps(events))
        return
    show = _event_printer(as_json)
    for record in events:
        show(record)
    if follow:
        _follow(path, show, len(events))


def _event_printer(as_json: bool) -> Any:
    """JSON lines; in colour on a terminal; plain lines in a pipe."""
    if as_json:
        return lambda record: typer.echo(json.dumps(record))
    from metasup.faces.view.render import EVENT_COLOURS, event_text

    if not sys.stdout.isatty():
        return lambda record: typer.echo(event_text(record))
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)

    def show(record: dict[str, Any]) -> None:
        colour = EVENT_COLOURS.get(str(record.get("event")), "")
        console.print(Text(f"#{record.get('seq')} {event_text(record)}", style=colour))

    return show


def _follow(path: Path, show: Any, seen: int) -> None:
    from metasup.effects.records.journal import read_events

    try:
        while True:
            time.sleep(0.25)  # a tail -f: polling the file is what it is for
            events = list(read_events(path))
            for record in events[seen:]:
                show(record)
            sys.stdout.flush()
            seen = len(events)
    except KeyboardInterrupt:
        return


def _policy(repo: Any, config: Path | None) -> Any:
    from metasup.pipelines.integrity import load_repo_policy

    return load_repo_policy(repo.workdir, config)


def _read_input(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise UserError(f"{file}: cannot read: {e.strerror or e}") from None


FileArg = Annotated[str, typer.Argument(metavar="FILE|-", help="The proposal (JSON); - for stdin.")]


@app.command()
def validate(file: FileArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check a proposal without applying it. Exits 0 valid, 1 rejected."""
    from metasup.pipelines import proposals

    repo = _repo()
    policy = _policy(repo, config)
    proposal, errors = proposals.validate(_read_input(file), policy, repo.workdir)
    if as_json:
        typer.echo(json.dumps({"ok": not errors, "errors": [e.as_dict() for e in errors]}))
    elif errors:
        for e in errors:
            typer.echo(f"rejected [{e.code}] {e.message}", err=True)
    else:
        assert proposal is not None
        typer.echo(f"valid: {len(proposal.changes)} change(s)")
    raise typer.Exit(1 if errors else 0)


@app.command()
def propose(file: FileArg, config: ConfigOpt = None) -> None:
    """Validate a proposal and queue it for the supervisor; print its id. Exits 0 queued,
    1 rejected (nothing is queued then).

    A running `metasup run` applies it between cycles: it stops the agent, applies the
    proposal all or nothing, snapshots, and relaunches the agent on the new code.
    """
    from metasup.effects.records.journal import StateDir
    from metasup.pipelines import proposals
    from metasup.pipelines.intake import INBOX, ProposalStore

    repo = _repo()
    raw = _read_input(file)
    _, errors = proposals.validate(raw, _policy(repo, config), repo.workdir)
    if errors:
        for e in errors:
            typer.echo(f"rejected [{e.code}] {e.message}", err=True)
        raise typer.Exit(1)
    dirs = StateDir.for_git_dir(repo.git_dir)
    store = ProposalStore(repo.workdir / INBOX, dirs.root / "proposals")
    typer.echo(store.enqueue(raw))


@app.command()
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
    from metasup.effects.process.spawn import Reaper, become_subreaper
    from metasup.effects.records.journal import StateDir, locked_journal
    from metasup.effects.records.statefile import read_state
    from metasup.facts.policy import load_policy
    from metasup.pipelines.experiments import Experimenter

    repo = _repo()
    cfg = _config(repo.workdir, config)
    policy = load_policy(repo.workdir, cfg.path, cfg.protected_paths)
    sources = [(name, _read_input(name)) for name in files]
    dirs = StateDir.for_git_dir(repo.git_dir)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        become_subreaper()  # so what an evaluator leaves behind is found and stopped
        runner = Experimenter(repo, cfg, policy, dirs.root, journal.append, Reaper())
        runner.clean_leftovers()
        run = int(read_state(dirs.state).get("run") or 0)

        def before_merge() -> None:
            # Nothing uncommitted may be lost to the merge's checkout.
            snap = repo.snapshot(run, protect=lambda p: policy.protecting_rule(p) is not None)
            if snap.commit is not None:
                journal.append("snapshot", commit=snap.commit, run=run, files=snap.changed)

        outcome = runner.run(sources, dry_run=dry_run, before_merge=before_merge)
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


@app.command("rollback")
def rollback_cmd(
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="REF", help="Reset to this commit instead of the good one."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Archive the current state, then reset to the good commit (or REF).

    For an operator, with metasup stopped: the working tree, untracked files included, is
    committed under refs/metasup/archive/ first; rollback.preserve paths are kept.
    """
    from metasup.effects.git.repo import GOOD_REF
    from metasup.effects.records.journal import StateDir, locked_journal, read_events
    from metasup.effects.records.statefile import read_state
    from metasup.facts.errors import ConfigError
    from metasup.pipelines import rollback

    repo = _repo()
    bounds = rollback.DEFAULT_BOUNDS
    try:
        cfg = _config(repo.workdir, config).rollback
        keep, bounds = cfg.preserve, (cfg.max_file_size, cfg.max_files)
    except ConfigError:
        if config is not None or any(
            (repo.workdir / name).exists() for name in ("metasup.yaml", "config/metasup.yaml")
        ):
            raise
        keep = ()  # no config at all: nothing to preserve
    dirs = StateDir.for_git_dir(repo.git_dir)
    with locked_journal(dirs, str(repo.workdir)) as journal:
        left = rollback.resume(
            repo, dirs.intent, dirs.events, dirs.preserve, keep, journal.append, bounds
        )
        if left is not None:
            typer.echo(f"finished an interrupted rollback to {left['target'][:12]}")
        if to is None and repo.good() is None:
            raise UserError(f"no good commit yet ({GOOD_REF}); pass --to REF")
        target = repo.check_rollback_target(to or GOOD_REF, failed=None)
        run = int(read_state(dirs.state).get("run") or 0)
        since = rollback.good_since_ns(read_events(dirs.events))
        intent = rollback.plan(
            run,
            repo.head(),
            target,
            "manual",
            dirs.preserve / "manual",
            by="operator",
            since_ns=since,
        )
        done = rollback.carry_out(repo, intent, keep, dirs.intent, journal.append, bounds)
    if done.get("archive"):
        typer.echo(f"archived the current state as {done['archive']}")
    typer.echo(f"reset to {target[:12]}")


@app.command("config")
def config_cmd(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration after defaults, or the first error (exit 2)."""
    import yaml

    from metasup.facts.config import format_duration

    try:
        root = _repo().workdir
    except UserError:
        root = Path.cwd()
    cfg = _config(root, config)
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


@app.command()
def recover(config: ConfigOpt = None) -> None:
    """After an emergency stop: stop everything, archive the tree, reset to the good commit
    (or, when that ref is missing or broken, to the newest one the journal marked good).
    Exits 0, or 1 when there is nothing good to go back to."""
    from metasup.facts.errors import ConfigError
    from metasup.pipelines.recover import recover as do_recover
    from metasup.pipelines.rollback import DEFAULT_BOUNDS

    repo = _repo()
    bounds = DEFAULT_BOUNDS
    try:
        cfg = _config(repo.workdir, config).rollback
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


@app.command()
def approve(
    reason: Annotated[
        str, typer.Option("--reason", help="Why the protected files changed (journalled).")
    ] = "",
    config: ConfigOpt = None,
) -> None:
    """Record the protected files as they are now as the approved baseline (metasup stopped).

    The way an operator changes protected files: stop metasup, edit, run this. Where they
    differ from HEAD they are committed; the good commit gets them too, so metasup restores
    the approved content from now on. The config file in use is pinned: later starts use it
    (an agent's ./metasup.yaml is never taken instead) until an approval with --config names
    another. Exits 0, or 2 while a supervisor runs.
    """
    from metasup.pipelines.approve import approve as do_approve

    done = do_approve(_repo(), reason, config)
    if done.differ:
        for line in done.differ:
            typer.echo(f"approved: {line}")
    else:
        typer.echo(f"nothing changed; the baseline holds {done.files} protected files")
    if done.commit:
        typer.echo(f"committed as {done.commit[:12]}")
    if done.good:
        typer.echo(f"good is {done.good[:12]}")


@app.command()
def doctor() -> None:
    """Check git, the config, the policy, the hook, the API port, inotify and the jail (the
    mode in force and each of its five guarantees, held or not, and why); print what to fix.
    Exits 0 when all is well, 1 otherwise."""
    from metasup.faces.doctor import report, run_checks

    text, ok = report(run_checks(Path.cwd()))
    typer.echo(text)
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to make the scratch repo (default: a new temp dir)."),
    ] = None,
    cycles: Annotated[int, typer.Option("--cycles", min=2, help="Launches of the agent.")] = 9,
) -> None:
    """The whole loop on a scratch repo with the bundled demo agent, then a summary."""
    from metasup.faces.demo.scenario import run_demo

    raise typer.Exit(run_demo(directory, cycles))


mcp_app = typer.Typer(
    help="MCP: reach the supervised servers, or serve metasup's own tools to the agent.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(mcp_app, name="mcp")

RepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="The supervised repository (default: the one around the current directory).",
        file_okay=False,
    ),
]


@mcp_app.command("connect")
def mcp_connect(
    name: Annotated[str, typer.Argument(help="The server's name in mcp_servers.")],
    repo: RepoOpt = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for the server's socket.")
    ] = 10.0,
) -> None:
    """Bridge stdin/stdout to a stdio MCP server that `metasup run` supervises.

    Put it in the agent's MCP client config as the server's command, e.g.
    {"command": "metasup", "args": ["mcp", "connect", "NAME"]}. The agent then talks to the very
    process metasup starts, probes and restarts; a restart underneath keeps its session.
    """
    from metasup.faces.mcp.connect import connect, pump, socket_dir

    folder = socket_dir(Path.cwd(), repo)
    sock = connect(folder, name, wait)
    raise typer.Exit(pump(sock))


@mcp_app.command("serve")
def mcp_serve(repo: RepoOpt = None, config: ConfigOpt = None) -> None:
    """Serve metasup's tools to an LLM agent over stdio (MCP): status, validate_change,
    propose_change, experiment_results, request_restart.

    Put it in the agent's MCP client config: {"command": "metasup", "args": ["mcp", "serve"]}.
    It reads the supervisor's records and writes to its inbox; it cannot disable metasup,
    change what is protected, or roll back.
    """
    from metasup.faces.mcp.serve import Tools, serve

    found = _repo(repo)
    serve(Tools(found.workdir, found.git_dir, config))


hook_app = typer.Typer(
    help="The git pre-commit hook that refuses commits to protected paths.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(hook_app, name="hook")


@hook_app.command("pre-commit")
def hook_pre_commit() -> None:
    """Fail, listing each staged protected path and the rule protecting it (git's pre-commit
    hook, or the pre-commit framework's `metasup-protected-paths`). Exits 0 clean, 1 refused."""
    from metasup.faces.hook import run_pre_commit

    raise typer.Exit(run_pre_commit(Path.cwd()))


@hook_app.command("install")
def hook_install(repo: RepoOpt = None) -> None:
    """Install the pre-commit hook (honours core.hooksPath; an existing hook is kept and run
    after metasup's check). Idempotent."""
    from metasup.faces.hook import install

    found = _repo(repo)
    hook, chained = install(found.workdir)
    typer.echo(f"installed {hook}" + (f" (then runs {chained.name})" if chained else ""))


def main() -> None:
    try:
        app(prog_name="metasup")
    except UserError as e:
        if _DEBUG:
            raise
        print(f"metasup: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
