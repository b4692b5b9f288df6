"""The status document (`state.json`): its type, and how the supervisor's parts make it.

Written after every transition and whenever a figure shown changes; read by `metasup status`,
the live view, the API (status and `/metrics`) and `metasup mcp serve`, each through
`statefile.read_state`, which checks it field by field (`STATE_FIELDS`) as untrusted input.
"""

from __future__ import annotations

from typing import Any, TypedDict


class AgentStatus(TypedDict):
    pid: int | None
    pgid: int | None
    token: str | None
    state: str
    rss_mb: float | None
    cpu_percent: float | None
    started_at: float | None
    log: str | None


class ExitStatus(TypedDict):
    run: int
    code: int
    runtime_s: float


class StatusDocument(TypedDict):
    status: str  # running | stopped | emergency_stop
    phase: str  # lifecycle.Phase
    supervisor_pid: int | None
    repo: str
    branch: str | None
    config: str
    started_at: float
    updated_at: str
    current_commit: str | None
    good_commit: str | None
    consecutive_failures: int
    max_failures: int
    min_runtime_s: float
    uptime_s: float
    uptime: str
    run: int
    agent: AgentStatus
    last_exit: ExitStatus | None
    last_archive: str | None
    mcp_servers: dict[str, str]
    mcp: dict[str, dict[str, Any]]
    helper_trees: list[dict[str, Any]]
    api_url: str | None
    serve_url: str | None
    serve: dict[str, Any] | None  # {"url", "replicas", "arms", ...} (SPEC, "Serving")
    last_crash_to_relaunch_s: float | None
    experiments: list[dict[str, Any]]
    experiment_running: bool
    evolution: dict[str, Any] | None  # the last evolution's figures (decisions.evolution)
    strategy: str
    counters: dict[str, int]
