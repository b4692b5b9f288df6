"""The settings metasup runs by: frozen values, made from a config file by `config`.

Durations are seconds, sizes bytes, paths relative to the repository; `to_dict` gives them back
as `metasup config` shows them.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasup.facts.units import format_size


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    max: float = 30.0


@dataclass(frozen=True)
class AgentConfig:
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 5.0
    backoff: Backoff = Backoff()
    # No `agent:` in the config: the MCP servers are the supervised process, and `command` is
    # metasup's own watch of them (`metasup.pipelines.mcp.watch`), run in the agent's place.
    servers_only: bool = False


def servers_watch(python: str) -> tuple[str, ...]:
    """The command run in the agent's place when the MCP servers are the supervised process."""
    return (python, "-I", "-m", "metasup.pipelines.mcp.watch")


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 5.0
    max_memory_mb: float | None = None
    max_cpu_percent: float | None = None
    heartbeat_timeout: float | None = None


@dataclass(frozen=True)
class RollbackConfig:
    enabled: bool = True
    keep_commits: int = 10
    backup_interval: float | None = None
    preserve: tuple[str, ...] = ()
    # An untracked or ignored file over this size is quarantined (moved aside), not hashed;
    # past this many files, the rest of an archive is quarantined too. None: no bound.
    max_file_size: int | None = 100 << 20
    max_files: int | None = 20_000
    # `keep_archives`: archive refs past the newest `count`, or older than `age` seconds, are
    # pruned into a bundle first. None: kept for ever.
    keep_archives: int | None = None
    keep_archives_age: float | None = None


@dataclass(frozen=True)
class LogsConfig:
    """The agent's run logs: those of the newest `keep_runs` runs, and at most `max_size` bytes
    of them in all (the newest run's always kept; None: no bound)."""

    keep_runs: int = 200
    max_size: int | None = 1 << 30


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server: stdio (`command`), streamable HTTP or SSE (`url`), or a command serving
    `url`."""

    name: str
    command: str | None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    restart_on_failure: bool = True
    probe_interval: float = 5.0
    probe_timeout: float = 2.0
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    backoff: Backoff = Backoff(initial=1.0, max=30.0)
    max_restarts: int = 5  # more than this many restarts within restart_period: failed
    restart_period: float = 60.0
    watch: tuple[str, ...] | None = None  # None: the folders of the files the command names
    sse: bool = False  # `type: sse`: the older HTTP+SSE transport, not streamable HTTP
    # Processes besides the first for clients whose handshake differs from metasup's (stdio):
    # past this many distinct handshakes at once, a new one is refused.
    max_handshakes: int = 8
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every HTTP request

    @property
    def transport(self) -> str:
        if not self.url:
            return "stdio"
        return "sse" if self.sse else "http"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.transport,
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "cwd": self.cwd,
            "url": self.url,
            "restart_on_failure": self.restart_on_failure,
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "start_timeout": self.start_timeout,
            "stop_timeout": self.stop_timeout,
            "restart_backoff": {"initial": self.backoff.initial, "max": self.backoff.max},
            "max_restarts": self.max_restarts,
            "restart_period": self.restart_period,
            "watch": list(self.watch) if self.watch is not None else None,
            "max_handshakes": self.max_handshakes,
            # Names only: values are often tokens (`Authorization: Bearer ${TOKEN}`), and this is
            # what `metasup config` prints.
            "headers": {k: "***" for k in self.headers},
        }


@dataclass(frozen=True)
class Criteria:
    """What an experiment must meet to pass (success) or fails on at once (failure)."""

    min_success_rate: float | None = None
    max_error_rate: float | None = None
    max_response_time: float | None = None  # seconds; compared with response_time_ms / 1000
    min_improvement: float | None = None  # relative: 0.1 = the score is 10% above the baseline's


@dataclass(frozen=True)
class ExecutorConfig:
    """Where candidates are evaluated (SPEC, "Executors")."""

    kind: str = "local"  # local | ray
    address: str = "auto"  # ray: the cluster to join
    num_cpus: float = 1.0  # ray: the CPUs a candidate asks for
    memory: int | None = None  # ray: bytes a candidate asks for

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "address": self.address,
            "num_cpus": self.num_cpus,
            "memory": format_size(self.memory) if self.memory else None,
        }


@dataclass(frozen=True)
class ExperimentsConfig:
    checks: tuple[tuple[str, ...], ...] = ()
    shadow_runtime: float = 0.0  # 0: no shadow run
    fitness: tuple[str, ...] | None = None
    repeats: int = 1
    timeout: float = 600.0  # hard, per step
    max_concurrent: int = 1
    success: Criteria = field(default_factory=Criteria)
    failure: Criteria = field(default_factory=Criteria)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def to_dict(self) -> dict[str, Any]:
        def crit(c: Criteria) -> dict[str, float | None]:
            return {k: getattr(c, k) for k in Criteria.__dataclass_fields__}

        return {
            "checks": [list(c) for c in self.checks],
            "shadow_runtime": self.shadow_runtime,
            "fitness": list(self.fitness) if self.fitness else None,
            "repeats": self.repeats,
            "timeout": self.timeout,
            "max_concurrent": self.max_concurrent,
            "success_criteria": crit(self.success),
            "failure_criteria": crit(self.failure),
            "executor": self.executor.to_dict(),
        }


@dataclass(frozen=True)
class EvolutionConfig:
    """`metasup evolve`: the search (SPEC, "Evolution"); candidates are judged by `experiments`."""

    mutator: tuple[str, ...]
    objective: str = "score"
    population: int = 16
    generations: int | None = 20  # None: until the budget or Ctrl-C
    islands: int = 2
    migration_every: int = 5
    migration_count: int = 1
    selection: str = "tournament"  # tournament | weighted
    tournament_size: int = 3
    crossover_rate: float = 0.25
    elite: int = 2
    budget_evaluations: int | None = 500
    budget_wall: float | None = 7200.0
    mode: str = "manual"  # manual | continuous
    trigger_every: float = 3600.0
    trigger_min_gain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mutator": list(self.mutator),
            "objective": self.objective,
            "population": self.population,
            "generations": self.generations,
            "islands": self.islands,
            "migration": {"every": self.migration_every, "count": self.migration_count},
            "selection": {"method": self.selection, "size": self.tournament_size},
            "crossover_rate": self.crossover_rate,
            "elite": self.elite,
            "budget": {"evaluations": self.budget_evaluations, "wall": self.budget_wall},
            "mode": self.mode,
            "trigger": {"every": self.trigger_every, "min_gain": self.trigger_min_gain},
        }


@dataclass(frozen=True)
class CanaryConfig:
    """How a candidate's share of live traffic steps up, and what reverts it."""

    start: float = 0.01
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    step_requests: int = 200
    max_error_delta: float = 0.02
    max_p99_ratio: float = 1.2

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "steps": list(self.steps),
            "step_requests": self.step_requests,
            "max_error_delta": self.max_error_delta,
            "max_p99_ratio": self.max_p99_ratio,
        }


@dataclass(frozen=True)
class ServeConfig:
    """metasup's front door for an agent that serves HTTP (SPEC, "Serving")."""

    listen: str = "127.0.0.1:8080"
    port_env: str = "PORT"
    health_path: str = "/health"
    min_replicas: int = 1
    max_replicas: int = 4
    target_inflight: float = 8.0
    mirror: float = 0.1
    canary: CanaryConfig = CanaryConfig()

    def to_dict(self) -> dict[str, Any]:
        return {
            "listen": self.listen,
            "port_env": self.port_env,
            "health_path": self.health_path,
            "replicas": {
                "min": self.min_replicas,
                "max": self.max_replicas,
                "target_inflight": self.target_inflight,
            },
            "mirror": self.mirror,
            "canary": self.canary.to_dict(),
        }


SANDBOX_TARGETS = ("agent", "mcp_servers", "experiments")


@dataclass(frozen=True)
class SandboxLimits:
    memory: int | None = 4 << 30  # bytes
    cpu: float | None = 2.0  # cores
    processes: int | None = 1024
    file_size: int | None = 1 << 30  # bytes


@dataclass(frozen=True)
class SandboxConfig:
    """The jail every process started on the agent's behalf runs in (see `jail`)."""

    mode: str = "auto"  # auto | bwrap | landlock | off
    required: bool = False
    network: bool = True
    writable: tuple[str, ...] = ("~/.cache", "~/.npm")  # outside the tree, as written
    readonly: tuple[str, ...] = ()  # repo-relative
    limits: SandboxLimits = SandboxLimits()
    applies_to: frozenset[str] = frozenset(SANDBOX_TARGETS)

    def applies(self, target: str) -> bool:
        return self.mode != "off" and target in self.applies_to

    def to_dict(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "mode": self.mode,
            "required": self.required,
            "network": self.network,
            "writable": list(self.writable),
            "readonly": list(self.readonly),
            "limits": {
                "memory": format_size(lim.memory) if lim.memory else None,
                "cpu": lim.cpu,
                "processes": lim.processes,
                "file_size": format_size(lim.file_size) if lim.file_size else None,
            },
            "applies_to": [t for t in SANDBOX_TARGETS if t in self.applies_to],
        }


@dataclass(frozen=True)
class Config:
    path: Path
    agent: AgentConfig
    min_runtime: float = 10.0
    max_failures: int = 5
    health: HealthConfig = HealthConfig()
    rollback: RollbackConfig = RollbackConfig()
    protected_paths: tuple[str, ...] = ()
    mcp_servers: tuple[McpServerConfig, ...] = ()
    proposals_mode: str = "direct"
    experiments: ExperimentsConfig = ExperimentsConfig()
    evolution: EvolutionConfig | None = None  # None: no `evolution:` section
    serve: ServeConfig | None = None  # None: no `serve:` section
    api_listen: str | None = None  # host:port; None: no HTTP API
    api_allow_remote: bool = False
    on_tamper: str = "restore"  # restore | restore_and_restart | stop
    sandbox: SandboxConfig = SandboxConfig()
    logs: LogsConfig = LogsConfig()
    inactive: tuple[str, ...] = ()
    mcp_config: str | None = None  # the MCP client file read, relative to the repository
    sources: tuple[str, ...] = ()  # the texts of the files the config read besides itself

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, durations in seconds, as `metasup config --json` shows."""
        a, h, r = self.agent, self.health, self.rollback
        return {
            "path": str(self.path),
            "supervisor": {
                "min_runtime": self.min_runtime,
                "max_failures": self.max_failures,
                "agent": None
                if a.servers_only
                else {
                    "command": list(a.command),
                    "env": dict(a.env),
                    "stop_signal": a.stop_signal.name.removeprefix("SIG"),
                    "stop_timeout": a.stop_timeout,
                    "restart_backoff": {"initial": a.backoff.initial, "max": a.backoff.max},
                },
                "supervised": "mcp_servers" if a.servers_only else "agent",
                "protected_paths": list(self.protected_paths),
                "on_tamper": self.on_tamper,
                "health_checks": {
                    "interval": h.interval,
                    "max_memory_mb": h.max_memory_mb,
                    "max_cpu_percent": h.max_cpu_percent,
                    "heartbeat_timeout": h.heartbeat_timeout,
                },
                "rollback": {
                    "enabled": r.enabled,
                    "keep_commits": r.keep_commits,
                    "backup_interval": r.backup_interval,
                    "preserve": list(r.preserve),
                    "max_file_size": format_size(r.max_file_size) if r.max_file_size else None,
                    "max_files": r.max_files,
                    "keep_archives": {"count": r.keep_archives, "age": r.keep_archives_age},
                },
                "logs": {
                    "keep_runs": self.logs.keep_runs,
                    "max_size": format_size(self.logs.max_size) if self.logs.max_size else None,
                },
                "mcp_servers": [s.to_dict() for s in self.mcp_servers],
                "mcp_config": self.mcp_config,
                "proposals": {"mode": self.proposals_mode},
                "experiments": self.experiments.to_dict(),
                "evolution": self.evolution.to_dict() if self.evolution else None,
                "serve": self.serve.to_dict() if self.serve else None,
                "api": {"listen": self.api_listen, "allow_remote": self.api_allow_remote},
                "sandbox": self.sandbox.to_dict(),
            },
            "inactive": list(self.inactive),
        }


# The API's listen queue: room for hundreds of clients connecting at once (asyncio's default of
# 100 overflowed under 200 status pollers). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9000) from "127.0.0.1:9000"; IPv6 in brackets: "[::1]:9000"."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
