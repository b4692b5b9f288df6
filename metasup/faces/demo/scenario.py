"""`metasup demo`: a scratch repo, the bundled agent, the real loop, then a summary."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import read_json
from metasup.effects.git.lookup import init_repository
from metasup.effects.git.repo import GOOD_REF, GitRepo
from metasup.effects.process.spawn import Reaper
from metasup.effects.records.journal import StateDir, locked_journal, read_events
from metasup.facts.config import load_config
from metasup.facts.errors import UserError
from metasup.facts.policy import load_policy
from metasup.facts.settings import Config
from metasup.pipelines.experiments import Experimenter
from metasup.pipelines.supervisor.loop import Supervisor

FILES = Path(__file__).resolve().parent / "files"

DEMO_CONFIG = """\
# The demo's supervision: quick enough to watch a whole story in a few seconds.
supervisor:
  min_runtime: 700ms        # a run this long marks its commit good
  max_failures: 3           # this many quick failures in a row stop everything
  agent:
    command: [{python}, agent.py]
    env: {{PYTHONDONTWRITEBYTECODE: "1"}}
    stop_timeout: 2s
    restart_backoff: {{initial: 0s, max: 1s}}
  health_checks: {{interval: 250ms, max_memory_mb: 512, heartbeat_timeout: 5s}}
  rollback:
    enabled: true
    preserve: [memory/]     # what the agent learned survives a rollback
  experiments:              # how `metasup experiment` judges a candidate
    checks: [[{python}, checks/check.py]]
    shadow_runtime: 300ms
    fitness: [{python}, eval/score.py]
    timeout: 20s
    max_concurrent: 2
    success_criteria: {{min_improvement: 0.02}}
  api: {{listen: "127.0.0.1:0"}}  # status, metrics, events on a free port (state.json: api_url)
  mcp_servers:              # started before the agent, probed, restarted; the agent reaches
    - {{name: notes, command: {python}, args: [servers/notes.py]}}  # it via `metasup mcp connect`
"""


def make_scratch_repo(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; the demo needs a new or empty directory")
    files = ("agent.py", "brain.py", "params.json", "checks/check.py", "eval/score.py")
    for name in (*files, "servers/notes.py"):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FILES / name, directory / name)
    (directory / ".gitignore").write_text("__pycache__/\n")
    (directory / "metasup.yaml").write_text(DEMO_CONFIG.format(python=_yaml_str(sys.executable)))
    init_repository(directory)
    return directory


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_demo(directory: Path | None, cycles: int) -> int:
    target = directory or Path(tempfile.mkdtemp(prefix="metasup-demo-"))
    make_scratch_repo(target)
    tty = sys.stdout.isatty()
    out = _Out(tty)
    out.title(f"metasup demo in {target}")
    out.line(
        f"Watch it from a second terminal: cd {shlex.quote(str(target))} && "
        f"{_metasup_command()} status --watch"
    )
    out.line(
        "The agent works for a second each run, then rewrites its own code. Twice it makes a "
        "rewrite that kills it at start: watch metasup archive that state and roll back. It also "
        "tries to edit its own supervision config and to erase its good ref (the jail refuses "
        "both) and proposes changes (one protected: refused)."
    )
    repo = GitRepo(target)
    config = load_config(target / "metasup.yaml")
    t0 = time.monotonic()
    code = Supervisor(repo, config, max_cycles=cycles, reporter=out.event).run()
    out.title("an A/B experiment: three rewrites of brain.py compete")
    ab = run_ab(repo, config, out)
    elapsed = time.monotonic() - t0
    summary = summarise(repo)
    summary["ab"] = ab
    out.summary(summary, elapsed, target)
    return code


def run_ab(repo: GitRepo, config: Config, out: _Out) -> dict[str, Any]:
    """Three candidates on their own branches and worktrees; the best is merged. They are
    rewrites of the good commit's brain.py: an experiment starts from what is known good."""
    brain = repo.file_at(GOOD_REF, "brain.py").decode()

    def with_step(expression: str) -> str:
        # The agent itself rewrites GENERATION and STEP_SCALE each run: the candidates change
        # think() instead, so they merge cleanly onto whatever the agent did since.
        return re.sub(r"^    return .*$", f"    return {expression}", brain, flags=re.M)

    candidates = {
        "bold": with_step("x + (target - x) * min(0.9, STEP_SCALE * 2)"),
        "cautious": with_step("x + (target - x) * STEP_SCALE / 4"),
        "typo": with_step("x + (target - x) * STEP_SCALE") + "\ndef oops(:\n",
    }
    sources = [
        (name, json.dumps({"reason": f"{name} steps", "changes": [
            {"file": "brain.py", "content": text}]}).encode())
        for name, text in candidates.items()
    ]  # fmt: skip
    dirs = StateDir.for_git_dir(repo.git_dir)
    policy = load_policy(repo.workdir, config.path, config.protected_paths)
    state = read_json(dirs.state) or {}

    def before_merge() -> None:  # the agent's last edits are committed, not lost
        repo.snapshot(int(state.get("run") or 0))

    with locked_journal(dirs, str(repo.workdir)) as journal:

        def emit(event: Any, **fields: Any) -> None:
            out.event(journal.append(event, **fields))

        runner = Experimenter(repo, config, policy, dirs.root, emit, Reaper())
        outcome = runner.run(sources, before_merge=before_merge)
    return outcome.as_dict()


def _ab_line(ab: dict[str, Any]) -> str:
    win = next((c for c in ab["candidates"] if c["outcome"] == "merged"), None)
    if win is None:
        return "none passed"
    return f"{win['source']} ({win['improvement']:+.1%} over the good commit), merged"


def _ab_detail(c: dict[str, Any]) -> str:
    if c["outcome"] in ("failed", "rejected"):
        return (c["failure"] or "")[:90]
    return ""


def _metasup_command() -> str:
    """A command that reaches this metasup from a new shell: `metasup` when PATH finds this
    one, else its full path (scripts/demo runs it from the venv, which no new shell has on
    PATH), else this Python with `-m metasup`."""
    exe = Path(sys.argv[0])
    if exe.name == "metasup" and exe.is_file():
        found = shutil.which("metasup")
        # scripts/demo puts its venv's bin/ first on PATH for this process only: a venv's own
        # script, its venv not activated by the user, is not on a new shell's PATH.
        venv = sys.prefix != sys.base_prefix and os.environ.get("VIRTUAL_ENV") != sys.prefix
        own_bin = exe.parent.resolve() == (Path(sys.prefix) / "bin").resolve()
        if found and Path(found).resolve() == exe.resolve() and not (venv and own_bin):
            return "metasup"
        return shlex.quote(str(exe.resolve()))
    return f"{shlex.quote(sys.executable)} -m metasup"


def summarise(repo: GitRepo) -> dict[str, Any]:
    dirs = StateDir.for_git_dir(repo.git_dir)
    events = list(read_events(dirs.events))
    kinds = [e["event"] for e in events]
    rollbacks = [e for e in events if e["event"] == "rollback"]
    memory = read_json(repo.workdir / "memory" / "memory.json") or {}
    return {
        "cycles": kinds.count("launch"),
        "snapshots": kinds.count("snapshot"),
        "good_marks": kinds.count("mark_good"),
        "rollbacks": [
            {"run": e["run"], "reason": e["reason"], "archive": e["archive"], "to": e["to"]}
            for e in rollbacks
        ],
        "emergency_stop": "emergency_stop" in kinds,
        "good": repo.good(),
        "head": repo.head(),
        "lessons": memory.get("lessons", []),
        "proposals_applied": [e["files"] for e in events if e["event"] == "proposal_applied"],
        "proposals_rejected": [e["codes"] for e in events if e["event"] == "proposal_rejected"],
        "tamper_restored": [
            p for e in events if e["event"] == "tamper_restored" for p in e["paths"]
        ],
        "jail": next((e.get("sandbox", "off") for e in events if e["event"] == "launch"), "off"),
        "refused": memory.get("refused", []),
        "state": read_json(dirs.state) or {},
        "mcp": _mcp_summary(events, read_json(dirs.state) or {}),
    }


def _mcp_summary(events: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, str]:
    """Each MCP server as the run saw it: healthy all along, or what went wrong."""
    out = {}
    for name, st in (state.get("mcp") or {}).items():
        mine = [e for e in events if e.get("server") == name]
        troubles = [e["event"] for e in mine if e["event"] in ("mcp_unhealthy", "mcp_failed")]
        started = sum(1 for e in mine if e["event"] == "mcp_started")
        if not started:
            out[name] = "never became healthy"
            continue
        word = "healthy throughout" if not troubles else f"healthy after {len(troubles)} failures"
        latency = st.get("latency_ms")
        probe = f", last probe {latency:.1f} ms" if isinstance(latency, int | float) else ""
        out[name] = f"{word} ({st.get('tools')} tools{probe}, {st.get('restarts', 0)} restarts)"
    return out


COLOURS = {
    "mark_good": "green",
    "rollback": "yellow",
    "archive": "yellow",
    "exit": "cyan",
    "emergency_stop": "bold red",
    "health_kill": "red",
    "snapshot": "blue",
    "launch": "cyan",
}


class _Out:
    """Rich on a terminal, plain lines in a pipe or a log."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.console: Any = None
        if tty:
            from rich.console import Console

            self.console = Console(highlight=False)

    def title(self, text: str) -> None:
        if self.console:
            self.console.rule(f"[bold]{text}")
        else:
            print(f"== {text}")

    def line(self, text: str) -> None:
        if self.console:
            self.console.print(text)
        else:
            print(text)
        sys.stdout.flush()

    def event(self, record: dict[str, Any]) -> None:
        name = record.get("event", "")
        if name in ("supervisor_start", "supervisor_stop"):
            return
        parts = []
        for key in (
            "server",
            "tools",
            "run",
            "commit",
            "code",
            "runtime_s",
            "reason",
            "ref",
            "to",
            "files",
            "paths",
            "codes",
            "url",
        ):
            if key in record and record[key] is not None and record[key] != "":
                value = record[key]
                if isinstance(value, str) and len(value) == 40:
                    value = value[:10]
                parts.append(f"{key}={value}")
        text = f"metasup {name:<10} {' '.join(parts)}"
        if self.console:
            colour = COLOURS.get(name, "white")
            self.console.print(f"[{colour}]{text}[/]")
        else:
            print(text)
        sys.stdout.flush()

    def summary(self, s: dict[str, Any], elapsed: float, target: Path) -> None:
        good = (s["good"] or "-")[:12]
        commands = [
            f"cd {shlex.quote(str(target))}",
            "git log --oneline --decorate",
            "git for-each-ref refs/metasup",
        ]
        if s["rollbacks"]:
            commands.append(f"git show --stat {s['rollbacks'][0]['archive']}")
        metasup = _metasup_command()
        commands += [f"{metasup} log", f"{metasup} status"]
        if self.console:
            from rich.panel import Panel
            from rich.table import Table

            table = Table(title="What happened", show_header=False, box=None)
            table.add_row("cycles", str(s["cycles"]))
            table.add_row("snapshots", str(s["snapshots"]))
            table.add_row("good marks", str(s["good_marks"]))
            table.add_row("rollbacks", str(len(s["rollbacks"])))
            table.add_row("proposals applied", str(len(s["proposals_applied"])))
            table.add_row("proposals rejected", str(len(s["proposals_rejected"])))
            table.add_row("protected paths restored", ", ".join(s["tamper_restored"]) or "-")
            table.add_row(f"jail ({s['jail']}) refused the agent", ", ".join(s["refused"]) or "-")
            table.add_row("A/B winner", _ab_line(s["ab"]))
            for name, line in s["mcp"].items():
                table.add_row(f"MCP server {name}", line)
            table.add_row("final good commit", good)
            table.add_row("time", f"{elapsed:.1f}s")
            self.console.print(table)
            rb = Table(title="Rollbacks", show_lines=False)
            for col in ("run", "reason", "archived as", "reset to"):
                rb.add_column(col)
            for r in s["rollbacks"]:
                rb.add_row(str(r["run"]), r["reason"], r["archive"], (r["to"] or "")[:12])
            if s["rollbacks"]:
                self.console.print(rb)
            ab = Table(title="A/B experiment")
            for col in ("candidate", "score", "vs good", "outcome", "why"):
                ab.add_column(col)
            for c in s["ab"]["candidates"]:
                ab.add_row(
                    c["source"],
                    "-" if c["score"] is None else f"{c['score']:.3f}",
                    "-" if c["improvement"] is None else f"{c['improvement']:+.1%}",
                    c["outcome"],
                    _ab_detail(c),
                )
            self.console.print(ab)
            for lesson in s["lessons"]:
                self.console.print(
                    f"[green]the agent remembers[/] (memory/ survived the rollback): rewrite "
                    f"{lesson['kind']!r} at generation {lesson['generation']} broke it"
                )
            self.console.print(Panel("\n".join(commands), title="Look around"))
        else:
            print("== summary")
            print(f"cycles: {s['cycles']}")
            print(f"snapshots: {s['snapshots']}")
            print(f"good marks: {s['good_marks']}")
            print(f"rollbacks: {len(s['rollbacks'])}")
            for r in s["rollbacks"]:
                print(f"  run {r['run']} ({r['reason']}) archived as {r['archive']}")
            print(f"proposals applied: {len(s['proposals_applied'])}")
            print(f"proposals rejected: {len(s['proposals_rejected'])}")
            print(f"protected paths restored: {', '.join(s['tamper_restored']) or '-'}")
            print(f"jail ({s['jail']}) refused the agent: {', '.join(s['refused']) or '-'}")
            print(f"A/B winner: {_ab_line(s['ab'])}")
            for name, line in s["mcp"].items():
                print(f"MCP server {name}: {line}")
            for c in s["ab"]["candidates"]:
                print(f"  {c['source']}: {c['outcome']} {_ab_detail(c)}")
            for lesson in s["lessons"]:
                print(
                    f"lesson kept in memory/: rewrite {lesson['kind']!r} at generation "
                    f"{lesson['generation']} broke it"
                )
            print(f"final good commit: {good}")
            print(f"time: {elapsed:.1f}s")
            print("look around:")
            for c in commands:
                print(f"  {c}")
        sys.stdout.flush()
