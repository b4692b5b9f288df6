"""The status view rendered to text by rich's recording console, one test a state."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from metasup.faces.view.render import event_text, plain, render

NOW = 1_800_000_000.0
GOOD = "a" * 40
BAD = "b" * 40


def doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "status": "running",
        "phase": "running",
        "run": 4,
        "started_at": NOW - 75,
        "current_commit": GOOD,
        "good_commit": GOOD,
        "consecutive_failures": 0,
        "max_failures": 3,
        "min_runtime_s": 10.0,
        "strategy": "hybrid",
        "agent": {
            "pid": 4242,
            "state": "running",
            "rss_mb": 12.5,
            "cpu_percent": 3.0,
            "started_at": NOW - 4.0,
        },
        "mcp": {},
        "experiments": [],
    }
    base.update(over)
    return base


def text(document: dict[str, Any], events: list[dict[str, Any]] | None = None) -> str:
    console = Console(record=True, width=110, color_system="truecolor", force_terminal=True)
    console.print(render(document, events or [], NOW))
    return " ".join(console.export_text().split())  # the words, whatever the alignment


def styled(document: dict[str, Any], events: list[dict[str, Any]] | None = None) -> str:
    console = Console(record=True, width=110, color_system="truecolor", force_terminal=True)
    console.print(render(document, events or [], NOW))
    return console.export_html(inline_styles=True)


def ev(seq: int, name: str, **fields: Any) -> dict[str, Any]:
    return {"ts": f"2026-11-21T10:00:{seq:02d}.000000Z", "seq": seq, "event": name, **fields}


def test_running_shows_the_agent_against_min_runtime() -> None:
    out = text(doc(), [ev(1, "launch", pid=4242, run=4, commit=GOOD)])
    assert "metasup running run 4 uptime 1m15s strategy hybrid" in out
    assert "pid 4242" in out and "4.0s / 10s" in out
    assert "rss 12.5 MB" in out and "cpu 3.0%" in out
    assert "failures 0 in a row (max 3)" in out
    assert f"current {GOOD[:12]}" in out
    assert "10:00:01 launch" in out and "commit=aaaaaaaaaa" in out
    assert "MCP servers" not in out and "experiments" not in out


def test_rollback_shows_the_archive_and_the_failures() -> None:
    archive = "refs/metasup/archive/20261121T100002Z-exit-1"
    events = [
        ev(2, "exit", pid=4242, code=1, runtime_s=0.2, run=4),
        ev(3, "archive", ref=archive, run=4),
        ev(4, "rollback", run=4, reason="exit 1", to=GOOD, archive=archive),
    ]
    document = doc(
        phase="rolling_back",
        consecutive_failures=2,
        current_commit=BAD,
        last_archive=archive,
        last_exit={"run": 4, "code": 1, "runtime_s": 0.2},
        agent={"pid": None, "state": "rolling_back"},
    )
    out = text(document, events)
    assert "failures 2 in a row (max 3)" in out
    assert "archived archive/20261121T100002Z-exit-1" in out
    assert "last exit run 4: code 1 after 0.2s" in out
    assert "rollback" in out and "reason=exit 1" in out
    html = styled(document, events)
    assert "color: #808000" in html  # yellow: the rollback, and one failure from the stop


def test_emergency_stop_is_red() -> None:
    document = doc(status="emergency_stop", consecutive_failures=3, agent={"pid": None})
    events = [ev(9, "emergency_stop", reason="3 quick failures in a row", consecutive_failures=3)]
    out = text(document, events)
    assert "metasup emergency_stop" in out and "reason=3 quick failures in a row" in out
    assert "failures 3 in a row (max 3)" in out
    assert "color: #800000" in styled(document, events)  # red


def test_experiments_and_mcp_servers_have_tables() -> None:
    document = doc(
        experiment_running=True,
        experiments=[
            {"id": "e1", "source": "bold", "outcome": "merged", "score": 0.93, "improvement": 0.05},
            {"id": "e2", "source": "typo", "outcome": "failed", "score": None, "improvement": None},
        ],
        mcp={
            "notes": {"state": "healthy", "tools": 2, "latency_ms": 1.25, "restarts": 0},
            "flaky": {
                "state": "failed",
                "tools": None,
                "latency_ms": None,
                "restarts": 5,
                "reason": "more than 5 restarts within 60s",
            },
        },
    )
    out = text(document, [ev(5, "experiment_passed", id="e1", commit=GOOD)])
    assert "experiments (one running)" in out
    assert "bold" in out and "merged" in out and "0.930" in out and "+5.0%" in out
    assert "typo" in out and "failed" in out
    assert "MCP servers" in out and "notes" in out and "1.2 ms" in out
    assert "flaky" in out and "more than 5 restarts within 60s" in out


def test_no_supervisor_and_no_events() -> None:
    document = {"status": "stopped", "run": 0, "note": "no supervisor has run in this repository"}
    console = Console(record=True, width=100)
    console.print(render(document, [], NOW, running=False))
    out = " ".join(console.export_text().split())
    assert "metasup stopped (no supervisor running)" in out and "no events yet" in out


def test_plain_lines_for_a_pipe() -> None:
    document = doc(
        api_url="http://127.0.0.1:9000",
        mcp={
            "notes": {"state": "healthy", "tools": 2, "latency_ms": 1.25, "restarts": 0, "pid": 7}
        },
    )
    out = plain(document, True, now=NOW)
    assert "\x1b[" not in out
    assert "status:   running" in out and "uptime:   1m15s" in out
    assert "api:      http://127.0.0.1:9000" in out
    assert "mcp:      notes: healthy, 2 tools, probe 1.2 ms, 0 restarts, pid 7" in out


def test_an_event_line_leaves_its_chain_out() -> None:
    record = {
        "ts": "2026-11-27T20:00:00.000000Z",
        "seq": 3,
        "event": "exit",
        "prev": "a" * 64,
        "code": 1,
        "mac": "b" * 64,
    }
    line = event_text(record)
    assert line == "20:00:00 exit               code=1"


def _serve(stage: str | None, candidate: dict[str, Any]) -> dict[str, Any]:
    return {
        "url": "http://127.0.0.1:8080",
        "stage": stage,
        "replicas": [
            {"id": "r0", "arm": "good", "inflight": 1, "ready": True},
            {"id": "r1", "arm": "good", "inflight": 0, "ready": True},
            {"id": "r2", "arm": "candidate", "inflight": 0, "ready": stage is not None},
        ],
        "arms": {
            "good": {"requests": 940, "errors": 3, "p50_ms": 1.2, "p99_ms": 4.8, "share": 0.95},
            "candidate": candidate,
        },
        "mirror": {"requests": 0, "errors": 0, "p50_ms": None, "p99_ms": None, "dropped": 0},
    }


def test_serving_has_a_panel_with_each_arm() -> None:
    canary = {"requests": 50, "errors": 1, "p50_ms": 1.3, "p99_ms": 5.1, "share": 0.05}
    out = text(doc(serve=_serve("canary", canary)), [ev(7, "canary_step", share=0.05)])
    assert "serving http://127.0.0.1:8080 canary" in out
    assert "│ good │ 95% │ 940 │ 3 │ 1.2 ms │ 4.8 ms │ 2 │" in out
    assert "│ candidate │ 5% │ 50 │ 1 │ 1.3 ms │ 5.1 ms │ 1 │" in out
    idle = {"requests": 0, "errors": 0, "p50_ms": None, "p99_ms": None, "share": 0.0}
    quiet = text(doc(serve=_serve(None, idle)))
    assert "good" in quiet and "candidate" not in quiet  # no candidate on: one row
    assert "serve:    good: 940 requests, 3 errors" in plain(doc(serve=_serve(None, idle)), True)
