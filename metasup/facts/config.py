"""The configuration: YAML in, validated and frozen settings out.

Everything lives under a top-level `supervisor:` key. The JSON schema shipped in
`protected/schemas/config.schema.json` is the single description of what is allowed; this module
adds what a schema cannot say well (line numbers in errors, durations, shell-split commands).
"""

from __future__ import annotations

import functools
import json
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from metasup.facts.errors import ConfigError
from metasup.facts.gitpaths import in_git_dir
from metasup.facts.resources import schema_path
from metasup.facts.units import format_duration, format_size, parse_duration, parse_size
from metasup.facts.yaml_lines import Path_, fail_at, line_of, load_yaml_lines

CONFIG_CANDIDATES = ("metasup.yaml", "config/metasup.yaml")

# Keys accepted now whose feature arrives with a later part of metasup; `metasup config` lists
# the ones a file sets so nobody believes they are in force.
INACTIVE_KEYS: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server: stdio (`command`), streamable HTTP (`url`), or a command serving `url`."""

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

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

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
        }


@dataclass(frozen=True)
class Criteria:
    """What an experiment must meet to pass (success) or fails on at once (failure)."""

    min_success_rate: float | None = None
    max_error_rate: float | None = None
    max_response_time: float | None = None  # seconds; compared with response_time_ms / 1000
    min_improvement: float | None = None  # relative: 0.1 = the score is 10% above the baseline's


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
    api_listen: str | None = None  # host:port; None: no HTTP API
    api_allow_remote: bool = False
    on_tamper: str = "restore"  # restore | restore_and_restart | stop
    sandbox: SandboxConfig = SandboxConfig()
    inactive: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration, durations in seconds, as `metasup config --json` shows."""
        a, h, r = self.agent, self.health, self.rollback
        return {
            "path": str(self.path),
            "supervisor": {
                "min_runtime": self.min_runtime,
                "max_failures": self.max_failures,
                "agent": {
                    "command": list(a.command),
                    "env": dict(a.env),
                    "stop_signal": a.stop_signal.name.removeprefix("SIG"),
                    "stop_timeout": a.stop_timeout,
                    "restart_backoff": {"initial": a.backoff.initial, "max": a.backoff.max},
                },
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
                },
                "mcp_servers": [s.to_dict() for s in self.mcp_servers],
                "proposals": {"mode": self.proposals_mode},
                "experiments": self.experiments.to_dict(),
                "api": {"listen": self.api_listen, "allow_remote": self.api_allow_remote},
                "sandbox": self.sandbox.to_dict(),
            },
            "inactive": list(self.inactive),
        }


def find_config(root: Path, explicit: Path | None = None) -> Path:
    """The config file in use: `--config`, else `metasup.yaml`, else `config/metasup.yaml`."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"{explicit}: no such config file")
        return explicit
    for name in CONFIG_CANDIDATES:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {' or '.join(CONFIG_CANDIDATES)} in {root}; create one or pass --config FILE"
    )


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path, *, validate: bool = True) -> Config:
    """Validate `text` (the content of `path`) and build the frozen settings.

    `validate=False` skips the JSON schema (and the jsonschema import) for text that was
    validated already, byte for byte; the supervisor core uses it.
    """
    doc, lines = load_yaml_lines(text, path.name)
    if validate:
        _validate(doc, lines, path.name)
    return _build(doc, lines, path)


# --- schema validation ------------------------------------------------------------------------


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(schema_path("config").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _validate(doc: Any, lines: dict[Path_, int], name: str) -> None:
    if doc is None:
        raise ConfigError(f"{name}: the file is empty; everything goes under `supervisor:`")
    errors = list(_validator().iter_errors(doc))
    if not errors:
        return
    located = [_explain(e, doc) for e in errors]
    located.sort(key=lambda item: (line_of(lines, item[0]) or 0, len(item[0])))
    at, message = located[0]
    raise fail_at(name, lines, at, message)


def _explain(error: Any, doc: Any) -> tuple[Path_, str]:
    """The path and a plain message for one jsonschema error."""
    import jsonschema

    at: Path_ = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        key = extra[0] if extra else "?"
        hint = f" (known: {', '.join(sorted(allowed))})" if allowed else ""
        return (*at, key), f"unknown key{hint}"
    if error.validator == "unevaluatedProperties":
        allowed = set(schema.get("properties", {}))
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            allowed |= set(_validator().schema["$defs"][ref.split("/")[-1]].get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        key = extra[0] if extra else "?"
        return (*at, key), f"unknown key (known: {', '.join(sorted(allowed))})"
    if error.validator == "required":
        return at, error.message.replace("is a required property", "is required")
    if error.validator in ("oneOf", "anyOf", "allOf"):
        if error.context and all(e.validator == "required" for e in error.context):
            needed = [str(e.validator_value[0]) for e in error.context]
            return at, f"needs {' or '.join(needed)}"
        if "description" in schema:
            return at, f"{error.instance!r} is not valid: expected {schema['description']}"
        if error.context:
            # A branch of another type (a list where a mapping was given) says nothing useful.
            fitting = [
                e for e in error.context if not (e.validator == "type" and not e.relative_path)
            ]
            deepest = jsonschema.exceptions.best_match(fitting or error.context)
            if deepest is not None:
                return _explain(deepest, doc)
    if error.validator == "not":
        return at, f"{error.instance!r} is not allowed here (must be more than 0)"
    if error.validator == "pattern" and "description" in schema:
        return at, f"{error.instance!r}: {schema['description']}"
    if error.validator == "pattern" and "supervisor" in at[:1]:
        return at, f"{error.instance!r} does not match {schema.get('pattern', '')!r}"
    return at, error.message


# --- building the settings --------------------------------------------------------------------


def _env(raw: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (raw or {}).items():
        out[str(k)] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def _command(value: str | list[str]) -> tuple[str, ...]:
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _build(doc: dict[str, Any], lines: dict[Path_, int], path: Path) -> Config:
    name = path.name
    s: dict[str, Any] = doc["supervisor"]

    def dur(at: Path_, value: Any, default: float | None) -> float | None:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as e:
            raise fail_at(name, lines, at, str(e)) from None

    a = s["agent"]
    try:
        command = _command(a["command"])
    except ValueError as e:
        raise fail_at(
            name, lines, ("supervisor", "agent", "command"), f"cannot split: {e}"
        ) from None
    if not command or not command[0]:
        raise fail_at(name, lines, ("supervisor", "agent", "command"), "the command is empty")
    b = a.get("restart_backoff", {})
    backoff = Backoff(
        initial=dur(("supervisor", "agent", "restart_backoff", "initial"), b.get("initial"), 1.0)
        or 0.0,
        max=dur(("supervisor", "agent", "restart_backoff", "max"), b.get("max"), 30.0) or 0.0,
    )
    if backoff.initial > backoff.max:
        raise fail_at(
            name,
            lines,
            ("supervisor", "agent", "restart_backoff", "initial"),
            f"initial ({format_duration(backoff.initial)}) is larger than max "
            f"({format_duration(backoff.max)})",
        )
    sig_name = a.get("stop_signal", "TERM")
    agent = AgentConfig(
        command=command,
        env=_env(a.get("env")),
        stop_signal=signal.Signals["SIG" + sig_name.removeprefix("SIG")],
        stop_timeout=dur(("supervisor", "agent", "stop_timeout"), a.get("stop_timeout"), 5.0)
        or 0.0,
        backoff=backoff,
    )

    h = s.get("health_checks", {})
    # Without limits a sample only feeds the status: every 30 s is enough, and an idle agent
    # then costs its supervisor well under 0.1% CPU. Limits are checked every 5 s.
    limited = any(
        h.get(k) is not None for k in ("max_memory_mb", "max_cpu_percent", "heartbeat_timeout")
    )
    default_interval = 5.0 if limited else 30.0
    health = HealthConfig(
        interval=dur(("supervisor", "health_checks", "interval"), h.get("interval"), None)
        or default_interval,
        max_memory_mb=h.get("max_memory_mb"),
        max_cpu_percent=h.get("max_cpu_percent"),
        heartbeat_timeout=dur(
            ("supervisor", "health_checks", "heartbeat_timeout"), h.get("heartbeat_timeout"), None
        ),
    )

    r = s.get("rollback", {})
    preserve = tuple(
        _repo_relative(name, lines, ("supervisor", "rollback", "preserve", i), p)
        for i, p in enumerate(r.get("preserve", []))
    )
    rollback = RollbackConfig(
        enabled=r.get("enabled", True),
        keep_commits=r.get("keep_commits", 10),
        backup_interval=dur(
            ("supervisor", "rollback", "backup_interval"), r.get("backup_interval"), None
        ),
        preserve=preserve,
        max_file_size=parse_size(r["max_file_size"]) if "max_file_size" in r else 100 << 20,
        max_files=r.get("max_files", 20_000),
    )

    experiments = _experiments(s.get("experiments", {}), dur)

    inactive = tuple(k for k in INACTIVE_KEYS if _has(s, k.split(".")))
    return Config(
        path=path,
        agent=agent,
        min_runtime=dur(("supervisor", "min_runtime"), s.get("min_runtime"), 10.0) or 0.0,
        max_failures=s.get("max_failures", 5),
        health=health,
        rollback=rollback,
        protected_paths=tuple(s.get("protected_paths", [])),
        mcp_servers=_mcp_servers(s, lines, name, dur),
        proposals_mode=s.get("proposals", {}).get("mode", "direct"),
        experiments=experiments,
        api_listen=_api_listen(s.get("api", {}), lines, name),
        api_allow_remote=s.get("api", {}).get("allow_remote", False),
        on_tamper=s.get("on_tamper", "restore"),
        sandbox=_sandbox(s.get("sandbox", {}), lines, name),
        inactive=inactive,
    )


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


def _api_listen(api: Mapping[str, Any], lines: dict[Path_, int], name: str) -> str | None:
    listen = api.get("listen")
    if listen is None:
        return None
    host, port = split_listen(listen)
    at = ("supervisor", "api", "listen")
    if port > 65535:
        raise fail_at(name, lines, at, f"port {port} is above 65535")
    if not is_loopback(host) and not api.get("allow_remote", False):
        raise fail_at(
            name,
            lines,
            at,
            f"{host} is not a loopback address; the API takes proposals, so it listens on "
            "127.0.0.1 unless `allow_remote: true` says otherwise",
        )
    return str(listen)


def _experiments(e: Mapping[str, Any], dur: Any) -> ExperimentsConfig:
    at = ("supervisor", "experiments")

    def criteria(key: str) -> Criteria:
        c = e.get(key, {})
        return Criteria(
            min_success_rate=c.get("min_success_rate"),
            max_error_rate=c.get("max_error_rate"),
            max_response_time=dur(
                (*at, key, "max_response_time"), c.get("max_response_time"), None
            ),
            min_improvement=c.get("min_improvement"),
        )

    return ExperimentsConfig(
        checks=tuple(_command(c) for c in e.get("checks", [])),
        shadow_runtime=dur((*at, "shadow_runtime"), e.get("shadow_runtime"), 0.0) or 0.0,
        fitness=_command(e["fitness"]) if e.get("fitness") else None,
        repeats=e.get("repeats", 1),
        timeout=dur((*at, "timeout"), e.get("timeout"), 600.0) or 600.0,
        max_concurrent=e.get("max_concurrent", 1),
        success=criteria("success_criteria"),
        failure=criteria("failure_criteria"),
    )


def _sandbox(sb: Mapping[str, Any], lines: dict[Path_, int], name: str) -> SandboxConfig:
    at = ("supervisor", "sandbox")
    lim = sb.get("limits", {})
    defaults = SandboxLimits()

    def size(key: str, default: int | None) -> int | None:
        if key not in lim:
            return default
        try:
            return parse_size(lim[key])
        except ValueError as e:
            raise fail_at(name, lines, (*at, "limits", key), str(e)) from None

    limits = SandboxLimits(
        memory=size("memory", defaults.memory),
        cpu=lim.get("cpu", defaults.cpu),
        processes=lim.get("processes", defaults.processes),
        file_size=size("file_size", defaults.file_size),
    )
    readonly = tuple(
        _repo_relative(name, lines, (*at, "readonly", i), p)
        for i, p in enumerate(sb.get("readonly", []))
    )
    for i, p in enumerate(sb.get("writable", [])):
        if not (p.startswith("/") or p == "~" or p.startswith("~/")):
            raise fail_at(
                name, lines, (*at, "writable", i), f"{p!r} must be absolute or start with ~/"
            )
    return SandboxConfig(
        mode=sb.get("mode", "auto") or "off",  # YAML 1.1 reads a bare `off` as false
        required=sb.get("required", False),
        network=sb.get("network", True),
        writable=tuple(sb.get("writable", SandboxConfig.writable)),
        readonly=readonly,
        limits=limits,
        applies_to=frozenset(sb.get("applies_to", SANDBOX_TARGETS)),
    )


def _has(d: Mapping[str, Any], keys: list[str]) -> bool:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return False
        d = d[k]
    return True


def _repo_relative(
    name: str, lines: dict[Path_, int], at: Path_, raw: str, whole_tree: bool = False
) -> str:
    """A path inside the working tree, `/`-separated, without a trailing slash ("" for the
    whole tree, where `whole_tree` allows it)."""
    p = PurePosixPath(raw)
    parts = p.parts
    if p.is_absolute() or "\\" in raw:
        raise fail_at(name, lines, at, f"{raw!r} must be relative to the repository")
    if any(part == ".." for part in parts):
        raise fail_at(name, lines, at, f"{raw!r} must not leave the repository ('..')")
    if (not parts or parts == (".",)) and whole_tree:
        return ""
    if not parts or parts == (".",):
        raise fail_at(name, lines, at, f"{raw!r} would preserve the whole working tree")
    if in_git_dir(parts[0]):
        raise fail_at(name, lines, at, f"{raw!r} is inside .git")
    return "/".join(part for part in parts if part != ".")


def _mcp_servers(
    s: Mapping[str, Any], lines: dict[Path_, int], name: str, dur: Any
) -> tuple[McpServerConfig, ...]:
    entries: list[tuple[str, Path_, Mapping[str, Any]]] = []
    raw = s.get("mcp_servers")
    if isinstance(raw, list):
        entries += [(e["name"], ("supervisor", "mcp_servers", i), e) for i, e in enumerate(raw)]
    elif isinstance(raw, Mapping):
        entries += [(n, ("supervisor", "mcp_servers", n), e) for n, e in raw.items()]
    entries += [(n, ("supervisor", "mcpServers", n), e) for n, e in s.get("mcpServers", {}).items()]
    seen: dict[str, Path_] = {}
    servers = []
    for n, at, e in entries:
        if n in seen:
            first = line_of(lines, seen[n])
            where = f" (first at line {first})" if first else ""
            raise fail_at(name, lines, at, f"a server named {n!r} is defined twice{where}")
        seen[n] = at
        kind = e.get("type")
        if kind == "stdio" and e.get("url"):
            raise fail_at(name, lines, (*at, "type"), "a stdio server has no url")
        if kind is not None and kind != "stdio" and not e.get("url"):
            raise fail_at(name, lines, (*at, "url"), f"type {kind} needs a url")
        b = e.get("restart_backoff", {})
        backoff = Backoff(
            initial=dur((*at, "restart_backoff", "initial"), b.get("initial"), 1.0) or 0.0,
            max=dur((*at, "restart_backoff", "max"), b.get("max"), 30.0) or 0.0,
        )
        if backoff.initial > backoff.max:
            raise fail_at(name, lines, (*at, "restart_backoff", "initial"), "larger than max")
        watch = e.get("watch")
        servers.append(
            McpServerConfig(
                name=n,
                command=e.get("command"),
                args=tuple(e.get("args", [])),
                env=_env(e.get("env")),
                cwd=e.get("cwd"),
                url=e.get("url"),
                restart_on_failure=e.get("restart_on_failure", True),
                probe_interval=dur((*at, "probe_interval"), e.get("probe_interval"), 5.0) or 0.0,
                probe_timeout=dur((*at, "probe_timeout"), e.get("probe_timeout"), 2.0) or 0.0,
                start_timeout=dur((*at, "start_timeout"), e.get("start_timeout"), 10.0) or 0.0,
                stop_timeout=dur((*at, "stop_timeout"), e.get("stop_timeout"), 5.0) or 0.0,
                backoff=backoff,
                max_restarts=e.get("max_restarts", 5),
                restart_period=dur((*at, "restart_period"), e.get("restart_period"), 60.0) or 0.0,
                watch=None
                if watch is None
                else tuple(
                    _repo_relative(name, lines, (*at, "watch", i), w, whole_tree=True)
                    for i, w in enumerate(watch)
                ),
            )
        )
    return tuple(servers)
