"""The status view: one screen of rich renderables, built from the status document and the
latest events; printed once (`metasup status`), kept live (`metasup status --watch`, and
`metasup run` on a terminal), or as plain text where there is no terminal.

`render` is a pure function of its inputs (and the clock it is given), so every state is tested
by rendering to text with a recording console.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from metasup.effects.records.journal import (
    HEADER_FIELDS,
    StateDir,
    current_status,
    tail_events,
)
from metasup.facts.units import human_duration

EVENT_COLOURS = {
    "mark_good": "green",
    "merged": "green",
    "experiment_passed": "green",
    "mcp_started": "green",
    "rollback": "yellow",
    "archive": "yellow",
    "tamper_restored": "yellow",
    "proposal_rejected": "yellow",
    "mcp_restarted": "yellow",
    "mcp_unhealthy": "red",
    "mcp_failed": "bold red",
    "replica_stopped": "yellow",
    "canary_reverted": "bold red",
    "canary_promoted": "green",
    "experiment_failed": "red",
    "health_kill": "red",
    "emergency_stop": "bold red",
    "exit": "cyan",
    "launch": "cyan",
    "snapshot": "blue",
    "proposal_applied": "green",
}
STATUS_COLOURS = {"running": "bold green", "stopped": "bold", "emergency_stop": "bold red"}
MCP_COLOURS = {
    "healthy": "green",
    "starting": "cyan",
    "unhealthy": "yellow",
    "failed": "bold red",
    "stopped": "dim",
}
EVENTS_SHOWN = 10  # in a one-off `metasup status`
EVENTS_KEPT = 500  # for a live view: as many as a tall terminal has rows for


def short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:10]
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value[:4])
        return f"[{text}{', …' if len(value) > 4 else ''}]"
    if isinstance(value, dict):
        return "{…}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def event_text(record: dict[str, Any]) -> str:
    """One event on one line: time, name, the fields that say what happened."""
    ts = str(record.get("ts", ""))[11:19]
    fields = " ".join(
        f"{k}={short(v)}"
        for k, v in record.items()
        if k not in HEADER_FIELDS and k not in ("stderr_tail", "errors") and v not in (None, "")
    )
    return f"{ts} {record.get('event', '?'):<18} {fields}".rstrip()


def _uptime(doc: dict[str, Any], now: float) -> str:
    started = doc.get("started_at")
    if doc.get("status") == "running" and isinstance(started, int | float):
        return human_duration(now - started)
    return str(doc.get("uptime") or "-")


def render(
    doc: dict[str, Any],
    recent: list[dict[str, Any]],
    now: float,
    running: bool = True,
    max_events: int = EVENTS_SHOWN,
    width: int | None = None,
) -> RenderableType:
    status = str(doc.get("status") or "stopped")
    header = Text.assemble(
        ("metasup ", "bold"),
        (status, STATUS_COLOURS.get(status, "bold")),
        ("" if running else " (no supervisor running)", "dim"),
        f"   run {doc.get('run', 0)}   uptime {_uptime(doc, now)}   ",
        ("strategy ", "dim"),
        str(doc.get("strategy") or "-"),
    )
    if doc.get("api_url"):
        header.append(f"   {doc['api_url']}", style="dim")
    parts: list[RenderableType] = [header]
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(_agent_panel(doc, now), _commits_panel(doc))
    parts.append(top)
    mcp = doc.get("mcp") or {}
    if mcp:
        parts.append(_mcp_table(mcp))
    serve = doc.get("serve")
    if isinstance(serve, dict):
        parts.append(_serve_table(serve))
    experiments = doc.get("experiments") or []
    if experiments or doc.get("experiment_running"):
        parts.append(_experiments_table(experiments, bool(doc.get("experiment_running"))))
    evolution = doc.get("evolution")
    if isinstance(evolution, dict):
        parts.append(_evolution_line(evolution))
    parts.append(_events_panel(recent[-max_events:] if max_events > 0 else [], width))
    return Group(*parts)


def _evolution_line(e: dict[str, Any]) -> Text:
    def score(v: Any) -> str:
        return "-" if v is None else f"{v:.6g}"

    return Text.assemble(
        ("evolution ", "bold"),
        f"{e.get('evolution')}  {'running' if e.get('running') else 'last'}  "
        f"generation {e.get('generation')}  evaluated {e.get('evaluated')}  "
        f"failed {e.get('failed')}  best {score(e.get('best_score'))}  "
        f"good {score(e.get('baseline_score'))}",
    )


def fitted(
    console: Console,
    doc: dict[str, Any],
    recent: list[dict[str, Any]],
    now: float,
    running: bool = True,
    footer: str | None = None,
) -> RenderableType:
    """The view with as many of the latest events as the terminal has rows for, and a line
    of `footer` (a hint, a question) under it."""
    width = console.size.width
    bare = render(doc, [], now, running, max_events=0, width=width)
    used = len(console.render_lines(bare, console.options, pad=False)) + (1 if footer else 0)
    room = console.size.height - used  # the placeholder line becomes the first event
    view = render(doc, recent, now, running, max(1, room), width)
    if footer:
        return Group(view, Text(footer[:width], style="bold"))
    return view


def _agent_panel(doc: dict[str, Any], now: float) -> Panel:
    agent = doc.get("agent") or {}
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column()
    pid = agent.get("pid")
    grid.add_row("pid", str(pid) if pid else "-")
    grid.add_row("state", str(agent.get("state") or doc.get("phase") or "-"))
    started = agent.get("started_at")
    min_runtime = doc.get("min_runtime_s")
    if pid and isinstance(started, int | float) and isinstance(min_runtime, int | float):
        runtime = max(0.0, now - started)
        bar = ProgressBar(
            total=max(min_runtime, 0.001),
            completed=min(runtime, min_runtime),
            width=20,
            complete_style="green" if runtime >= min_runtime else "yellow",
        )
        label = Text(f" {runtime:.1f}s / {min_runtime:g}s", style="dim")
        row = Table.grid()
        row.add_row(bar, label)
        grid.add_row("runtime", row)
    rss, cpu = agent.get("rss_mb"), agent.get("cpu_percent")
    grid.add_row("rss", f"{rss} MB" if rss is not None else "-")
    grid.add_row("cpu", f"{cpu}%" if cpu is not None else "-")
    failures = int(doc.get("consecutive_failures") or 0)
    limit = doc.get("max_failures") or "-"
    style = (
        "green"
        if failures == 0
        else ("bold red" if failures + 1 >= (doc.get("max_failures") or 99) else "yellow")
    )
    grid.add_row("failures", Text(f"{failures} in a row (max {limit})", style=style))
    return Panel(grid, title="agent", title_align="left")


def _commits_panel(doc: dict[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("current", (doc.get("current_commit") or "-")[:12])
    grid.add_row("good", Text((doc.get("good_commit") or "-")[:12], style="green"))
    archived = str(doc.get("last_archive") or "-").removeprefix("refs/metasup/")
    grid.add_row("archived", archived)
    last = doc.get("last_exit") or {}
    if last:
        grid.add_row(
            "last exit",
            f"run {last.get('run')}: code {last.get('code')} after {last.get('runtime_s')}s",
        )
    return Panel(grid, title="commits", title_align="left")


def _mcp_table(mcp: dict[str, Any]) -> Table:
    table = Table(title="MCP servers", title_justify="left", expand=True)
    for col in ("server", "state", "tools", "probe", "restarts", "note"):
        table.add_column(col)
    for name, st in sorted(mcp.items()):
        state = str(st.get("state"))
        latency = st.get("latency_ms")
        table.add_row(
            name,
            Text(state, style=MCP_COLOURS.get(state, "")),
            "-" if st.get("tools") is None else str(st["tools"]),
            f"{latency:.1f} ms" if isinstance(latency, int | float) else "-",
            str(st.get("restarts", 0)),
            short(st.get("reason") or ""),
        )
    return table


def _serve_line(arm: str, figures: dict[str, Any]) -> list[str]:
    def ms(key: str) -> str:
        value = figures.get(key)
        return f"{value:.1f} ms" if isinstance(value, int | float) else "-"

    share = figures.get("share")
    return [
        arm,
        f"{share:.0%}" if isinstance(share, int | float) else "-",
        str(figures.get("requests", 0)),
        str(figures.get("errors", 0)),
        ms("p50_ms"),
        ms("p99_ms"),
    ]


def _serve_table(serve: dict[str, Any]) -> Table:
    """The front door: its arms, and the replicas ready on each."""
    replicas = serve.get("replicas") or []
    ready = {arm: sum(1 for r in replicas if r.get("arm") == arm and r.get("ready"))
             for arm in ("good", "candidate")}  # fmt: skip
    stage = serve.get("stage")
    title = f"serving {serve.get('url', '')}" + (f"   {stage}" if stage else "")
    table = Table(title=title, title_justify="left", expand=True)
    for col in ("arm", "share", "requests", "errors", "p50", "p99", "replicas"):
        table.add_column(col)
    for arm, figures in (serve.get("arms") or {}).items():
        if arm == "candidate" and not ready.get(arm) and not figures.get("requests"):
            continue  # no candidate on: one row
        table.add_row(*_serve_line(arm, figures), str(ready.get(arm, 0)))
    mirror = serve.get("mirror") or {}
    if stage == "mirror":
        table.add_row(*_serve_line("mirrored", mirror), f"{mirror.get('dropped', 0)} dropped")
    return table


def _experiments_table(experiments: list[dict[str, Any]], running: bool) -> Table:
    title = "experiments" + (" (one running)" if running else "")
    table = Table(title=title, title_justify="left", expand=True)
    for col in ("candidate", "outcome", "score", "vs baseline"):
        table.add_column(col)
    for e in experiments[-5:]:
        outcome = str(e.get("outcome"))
        colour = "green" if outcome in ("merged", "passed") else "red"
        score, gain = e.get("score"), e.get("improvement")
        table.add_row(
            str(e.get("source") or e.get("id")),
            Text(outcome, style=colour),
            "-" if score is None else f"{score:.3f}",
            "-" if gain is None else f"{gain:+.1%}",
        )
    return table


def _events_panel(recent: list[dict[str, Any]], width: int | None) -> Panel:
    """The latest events, one line each (cut to the panel's width), newest last."""
    if not recent:
        return Panel(Text("no events yet", style="dim"), title="latest events", title_align="left")
    room = None if width is None else max(10, width - 4)
    lines = Text()
    for i, record in enumerate(recent):
        if i:
            lines.append("\n")
        line = event_text(record)
        if room is not None and len(line) > room:
            line = line[: room - 1] + "…"
        lines.append(line, style=EVENT_COLOURS.get(str(record.get("event")), ""))
    return Panel(lines, title="latest events", title_align="left")


def plain(doc: dict[str, Any], running: bool, now: float | None = None) -> str:
    """The summary as plain lines, for a pipe or a log."""
    now = time.time() if now is None else now
    agent = doc.get("agent") or {}
    lines = [
        f"status:   {doc.get('status')}" + ("" if running else " (no supervisor running)"),
        f"run:      {doc.get('run')}   phase: {doc.get('phase', '-')}   strategy: "
        f"{doc.get('strategy', '-')}",
        f"commit:   {(doc.get('current_commit') or '-')[:12]}   good: "
        f"{(doc.get('good_commit') or '-')[:12]}",
        f"failures: {doc.get('consecutive_failures', 0)} in a row "
        f"(max {doc.get('max_failures', '-')})",
    ]
    if agent.get("pid"):
        lines.append(
            f"agent:    pid {agent['pid']}  rss {agent.get('rss_mb')} MB  "
            f"cpu {agent.get('cpu_percent')}%"
        )
    if doc.get("status") == "running" or doc.get("uptime"):
        lines.append(f"uptime:   {_uptime(doc, now)}")
    if doc.get("last_archive"):
        lines.append(f"archive:  {doc['last_archive']}")
    if doc.get("api_url"):
        lines.append(f"api:      {doc['api_url']}")
    serve = doc.get("serve")
    if isinstance(serve, dict):
        for arm, f in (serve.get("arms") or {}).items():
            if f.get("requests") or arm == "good":
                lines.append(
                    f"serve:    {arm}: {f.get('requests', 0)} requests, {f.get('errors', 0)} "
                    f"errors, p50 {f.get('p50_ms')} ms, p99 {f.get('p99_ms')} ms"
                )
    for name, st in (doc.get("mcp") or {}).items():
        latency = st.get("latency_ms")
        facts = [
            str(st.get("state")),
            f"{st.get('tools')} tools" if st.get("tools") is not None else None,
            f"probe {latency:.1f} ms" if isinstance(latency, int | float) else None,
            f"{st.get('restarts', 0)} restarts",
            f"pid {st['pid']}" if st.get("pid") else None,
        ]
        lines.append(f"mcp:      {name}: " + ", ".join(f for f in facts if f))
    for e in (doc.get("experiments") or [])[-5:]:
        lines.append(f"exp:      {e.get('source') or e.get('id')}: {e.get('outcome')}")
    if isinstance(doc.get("evolution"), dict):
        lines.append(
            "evolve:   " + _evolution_line(doc["evolution"]).plain.removeprefix("evolution ")
        )
    if doc.get("note"):
        lines.append(f"note:     {doc['note']}")
    return "\n".join(lines)


# --- where the view's data comes from -------------------------------------------------------


class Source:
    """The status document and the latest events: from the API when the supervisor serves one,
    else from `state.json` and `events.jsonl` directly."""

    def __init__(self, git_dir: Path) -> None:
        self.dirs = StateDir.for_git_dir(git_dir)
        self.recent: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.last_seq = 0
        self.via = "files"

    def fetch(self) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        doc, running = current_status(self.dirs)
        url = doc.get("api_url") if running else None
        if isinstance(url, str):
            got = self._from_api(url)
            if got is not None:
                self.via = "api"
                return got[0], list(self.recent), True
        self.via = "files"
        for record in tail_events(self.dirs.events, window=1 << 16):
            if isinstance(record.get("seq"), int) and record["seq"] > self.last_seq:
                self.recent.append(record)
                self.last_seq = record["seq"]
        return doc, list(self.recent), running

    def _from_api(self, url: str) -> tuple[dict[str, Any], None] | None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        try:
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
            try:
                conn.request("GET", "/supervisor/status")
                doc = json.loads(conn.getresponse().read())
                conn.request("GET", f"/events?since={self.last_seq}&limit={EVENTS_KEPT}")
                for record in json.loads(conn.getresponse().read()):
                    self.recent.append(record)
                    self.last_seq = max(self.last_seq, int(record.get("seq", 0)))
            finally:
                conn.close()
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return (doc, None) if isinstance(doc, dict) else None


# --- live -----------------------------------------------------------------------------------


def _no_key(timeout: float) -> str | None:
    """No keyboard to read: the refresh interval is all there is to wait for."""
    time.sleep(timeout)  # the refresh interval
    return None


@contextlib.contextmanager
def _keys(fd: int | None = None) -> Iterator[Callable[[float], str | None]]:
    """Single keys from the terminal on `fd` (default: stdin) without Enter and without echo
    (cbreak mode), its settings restored on the way out."""
    fd = sys.stdin.fileno() if fd is None else fd
    if not os.isatty(fd):
        yield _no_key
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # no echo either: a key pressed must not write into the drawing

    def key(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# What a key does in a live view: None to go on, QUIT to leave, or a line to show under it.
QUIT = "\0quit"
KeyHandler = Callable[[str], str | None]


def _quit_on_q(pressed: str) -> str | None:
    return QUIT if pressed in ("q", "Q") else None


def watch(
    source: Source,
    console: Console | None = None,
    interval: float = 0.5,
    until: Callable[[], bool] | None = None,
    keys: Callable[[float], str | None] | None = None,
    on_key: KeyHandler = _quit_on_q,
) -> None:
    """Redraw every `interval` until `on_key` says QUIT, Ctrl-C, or `until()` says so. Keys
    come from `keys` (default: the terminal on stdin)."""
    from rich.live import Live

    console = console or live_console()
    doc, recent, running = source.fetch()
    footer: str | None = None
    with contextlib.ExitStack() as stack:
        key = keys or stack.enter_context(_keys())
        live = stack.enter_context(
            Live(
                fitted(console, doc, recent, time.time(), running),
                console=console,
                auto_refresh=False,
            )
        )
        try:
            while True:
                pressed = key(interval)
                if pressed is not None:
                    said = on_key(pressed)
                    if said == QUIT:
                        break
                    footer = said
                doc, recent, running = source.fetch()
                view = fitted(console, doc, recent, time.time(), running, footer)
                live.update(view, refresh=True)
                if until is not None and until():
                    break
        except KeyboardInterrupt:
            pass


def live_console() -> Console:
    """A console sized by the terminal itself, on every frame: COLUMNS and LINES exported by a
    shell (or a test runner) are a size from some other moment, and a live view follows
    resizes."""
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    return Console()


HINT = "q: stop metasup (asks first)   Ctrl-C: stop it now"
ASK = "Stop metasup and everything it runs? y/N"


class RunKeys:
    """Keys in `metasup run`'s view: `q` asks, `y` then stops the supervisor (SIGTERM, as a
    clean stop); anything else shows what the keys do."""

    def __init__(self, supervisor: int) -> None:
        self.supervisor = supervisor
        self.asking = False

    def __call__(self, pressed: str) -> str | None:
        if self.asking:
            self.asking = False
            if pressed in ("y", "Y"):
                import signal

                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.supervisor, signal.SIGTERM)
                return "stopping metasup…"
            return HINT
        if pressed in ("q", "Q"):
            self.asking = True
            return ASK
        return HINT


def follow_supervisor(git_dir: Path, supervisor: int, interval: float = 0.25) -> int:
    """`metasup run`'s view on its terminal, in a child of the supervisor: live until its stdin
    (a pipe from the supervisor) ends, then one last frame, left on the screen. Keys are read
    from the terminal it draws on, without echo."""
    console = live_console()
    source = Source(git_dir)
    stdin = sys.stdin.fileno()

    def supervisor_done() -> bool:
        ready, _, _ = select.select([stdin], [], [], 0)
        return bool(ready) and not os.read(stdin, 4096)

    with contextlib.ExitStack() as stack:
        keys: Callable[[float], str | None] = _no_key
        try:
            # Its own session has no controlling terminal: the device it draws on, by name.
            tty_fd = os.open(os.ttyname(sys.stdout.fileno()), os.O_RDONLY | os.O_NOCTTY)
        except OSError:
            pass
        else:
            stack.callback(os.close, tty_fd)
            keys = stack.enter_context(_keys(tty_fd))
        watch(
            source,
            console,
            interval=interval,
            until=supervisor_done,
            keys=keys,
            on_key=RunKeys(supervisor),
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="metasup.faces.view", description="internal: metasup run")
    parser.add_argument("--git-dir", type=Path, required=True)
    parser.add_argument("--supervisor", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when the view ends
    return follow_supervisor(args.git_dir, args.supervisor)
