"""The status document as Prometheus metrics (text format 0.0.4, via prometheus-client).

Built on each scrape from the same document `/supervisor/status` serves, so the two never
disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from metasup.pipelines.mcp.protocol import McpState

# counter in the status document -> (metric name, help)
COUNTERS = {
    "cycles": ("metasup_cycles", "Agent launches."),
    "snapshots": ("metasup_snapshots", "Snapshot commits of the working tree."),
    "good_marks": ("metasup_good_marks", "Commits marked good."),
    "rollbacks": ("metasup_rollbacks", "Rollbacks to the good commit."),
    "quick_failures": ("metasup_quick_failures", "Runs that died before min_runtime."),
    "health_kills": ("metasup_health_kills", "Agents killed for a health limit."),
    "emergency_stops": ("metasup_emergency_stops", "Emergency stops."),
    "tamper_restored": ("metasup_tamper_restored", "Protected paths put back."),
    "refs_restored": ("metasup_refs_restored", "metasup refs put back as the journal has them."),
    "proposals_received": ("metasup_proposals_received", "Proposals taken from the inbox."),
    "proposals_rejected": ("metasup_proposals_rejected", "Proposals rejected."),
    "proposals_applied": ("metasup_proposals_applied", "Proposals applied."),
    "experiments_passed": ("metasup_experiments_passed", "Experiment candidates that passed."),
    "experiments_failed": ("metasup_experiments_failed", "Experiment candidates that failed."),
}
MCP_STATES = tuple(McpState)


EVOLUTION_GAUGES = {
    "generation": "The last evolution's current generation.",
    "evaluated": "Candidates the last evolution evaluated.",
    "failed": "Candidates of the last evolution that failed.",
    "best_score": "The last evolution's best score.",
    "baseline_score": "The good commit's score in the last evolution.",
}


def render(status: dict[str, Any]) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(status))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.status
        counters = s.get("counters") or {}
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(counters.get(key) or 0))
        mcp = s.get("mcp") or {}
        restarts = CounterMetricFamily(
            "metasup_mcp_restarts", "MCP server restarts.", labels=["server"]
        )
        state = GaugeMetricFamily(
            "metasup_mcp_server_state", "1 for each MCP server's state.", labels=["server", "state"]
        )
        for server, d in sorted(mcp.items()):
            restarts.add_metric([server], float(d.get("restarts") or 0))
            for st in MCP_STATES:
                state.add_metric([server, st], 1.0 if d.get("state") == st else 0.0)
        yield restarts
        yield state
        agent = s.get("agent") or {}
        yield _gauge("metasup_agent_rss_bytes", "Agent tree RSS.", _mb(agent.get("rss_mb")))
        yield _gauge("metasup_agent_cpu_percent", "Agent tree CPU.", agent.get("cpu_percent"))
        yield _gauge(
            "metasup_last_crash_to_relaunch_seconds",
            "From the last quick failure's exit to the next launch.",
            s.get("last_crash_to_relaunch_s"),
        )
        yield _gauge("metasup_run", "The current run number.", s.get("run"))
        yield _gauge(
            "metasup_consecutive_failures",
            "Quick failures in a row.",
            s.get("consecutive_failures"),
        )
        yield _gauge(
            "metasup_max_failures", "Quick failures that stop everything.", s.get("max_failures")
        )
        yield _gauge("metasup_uptime_seconds", "Supervisor uptime.", s.get("uptime_s"))
        evolution = s.get("evolution") or {}
        for key, doc in EVOLUTION_GAUGES.items():
            yield _gauge(f"metasup_evolution_{key}", doc, evolution.get(key))
        yield from _serving(s.get("serve") or {})
        up = GaugeMetricFamily(
            "metasup_status", "1 for the supervisor's status.", labels=["status"]
        )
        for status in ("running", "stopped", "emergency_stop"):
            up.add_metric([status], 1.0 if s.get("status") == status else 0.0)
        yield up


# arm figure in the status -> (metric name, help, factor): the front door's arms, counted over
# the current window (a canary step starts a new one), so gauges rather than counters.
ARM_GAUGES = {
    "requests": ("metasup_serve_arm_requests", "Requests the arm answered in this window.", 1.0),
    "errors": ("metasup_serve_arm_errors", "Answers of 500 or more (or none) in this window.", 1.0),
    "p50_ms": ("metasup_serve_arm_p50_seconds", "Median latency of the arm.", 0.001),
    "p99_ms": ("metasup_serve_arm_p99_seconds", "99th percentile latency of the arm.", 0.001),
    "share": ("metasup_serve_arm_share", "Share of the requests routed to the arm.", 1.0),
}


def _serving(serve: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    arms = serve.get("arms") or {}
    for key, (name, doc, factor) in ARM_GAUGES.items():
        g = GaugeMetricFamily(name, doc, labels=["arm"])
        for arm, figures in sorted(arms.items()):
            value = figures.get(key) if isinstance(figures, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                g.add_metric([arm], float(value) * factor)
        yield g
    replicas = serve.get("replicas") or []
    ready = GaugeMetricFamily(
        "metasup_serve_replicas_ready", "Replicas taking requests.", labels=["arm"]
    )
    for arm in ("good", "candidate"):
        ready.add_metric(
            [arm], float(sum(1 for r in replicas if r.get("arm") == arm and r.get("ready")))
        )
    yield ready


def _mb(value: Any) -> float | None:
    return None if value is None else float(value) * (1 << 20)


def _gauge(name: str, doc: str, value: Any) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily(name, doc)
    if isinstance(value, int | float) and not isinstance(value, bool):
        g.add_metric([], float(value))
    return g
