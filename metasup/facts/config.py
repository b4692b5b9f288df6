"""The configuration file: YAML in, validated, the frozen `settings` out.

Everything lives under a top-level `supervisor:` key. The JSON schema shipped in
`protected/schemas/config.schema.json` is the single description of what is allowed; this module
adds what a schema cannot say well (line numbers in errors, durations, shell-split commands).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from metasup.facts.envvars import UnsetVariable, expand
from metasup.facts.errors import ConfigError
from metasup.facts.gitpaths import in_git_dir
from metasup.facts.resources import schema_path
from metasup.facts.settings import (
    SANDBOX_TARGETS,
    AgentConfig,
    Backoff,
    CanaryConfig,
    Config,
    Criteria,
    EvolutionConfig,
    ExecutorConfig,
    ExperimentsConfig,
    HealthConfig,
    LogsConfig,
    McpServerConfig,
    RollbackConfig,
    SandboxConfig,
    SandboxLimits,
    ServeConfig,
    is_loopback,
    servers_watch,
    split_listen,
)
from metasup.facts.units import format_duration, parse_duration, parse_size
from metasup.facts.yaml_lines import Path_, fail_at, line_of, load_yaml_lines

CONFIG_CANDIDATES = ("metasup.yaml", "config/metasup.yaml")

# Keys accepted now whose feature arrives with a later part of metasup; `metasup config` lists
# the ones a file sets so nobody believes they are in force.
INACTIVE_KEYS: tuple[str, ...] = ()


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


def parse_config(
    text: str, path: Path, *, validate: bool = True, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate `text` (the content of `path`) and build the frozen settings.

    `validate=False` skips the JSON schema (and the jsonschema import) for text that was
    validated already, byte for byte; the supervisor core uses it. `environ` (default: this
    process's) gives the values of `${VAR}` in MCP server entries.
    """
    doc, lines = load_yaml_lines(text, path.name)
    if validate:
        _validate(doc, lines, path.name)
    return _build(doc, lines, path, os.environ if environ is None else environ, validate)


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


def _build(
    doc: dict[str, Any],
    lines: dict[Path_, int],
    path: Path,
    environ: Mapping[str, str],
    validate: bool,
) -> Config:
    name = path.name
    s: dict[str, Any] = doc["supervisor"]

    def dur(at: Path_, value: Any, default: float | None) -> float | None:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as e:
            raise fail_at(name, lines, at, str(e)) from None

    agent = _agent(s, lines, name, dur)
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
        keep_archives=r.get("keep_archives", {}).get("count"),
        keep_archives_age=dur(
            ("supervisor", "rollback", "keep_archives", "age"),
            r.get("keep_archives", {}).get("age"),
            None,
        ),
    )
    lg = s.get("logs", {})
    logs = LogsConfig(
        keep_runs=lg.get("keep_runs", LogsConfig.keep_runs),
        max_size=parse_size(lg["max_size"]) if "max_size" in lg else LogsConfig.max_size,
    )

    experiments = _experiments(s.get("experiments", {}), dur)
    servers, client = _mcp_servers(s, lines, name, dur, path, environ, validate)
    if agent.servers_only and not servers:
        raise fail_at(
            name,
            lines,
            ("supervisor",),
            "nothing to supervise: give `agent:` (the command to run), or MCP servers "
            "(`mcp_servers`, `mcpServers` or `mcp_config`) to supervise on their own",
        )
    protected = tuple(s.get("protected_paths", []))
    if client is not None:
        protected += ("/" + client[0],)  # it configures supervised processes, as the config

    inactive = tuple(k for k in INACTIVE_KEYS if _has(s, k.split(".")))
    sandbox = _sandbox(s.get("sandbox", {}), lines, name)
    return Config(
        path=path,
        agent=agent,
        min_runtime=dur(("supervisor", "min_runtime"), s.get("min_runtime"), 10.0) or 0.0,
        max_failures=s.get("max_failures", 5),
        health=health,
        rollback=rollback,
        protected_paths=protected,
        mcp_servers=servers,
        proposals_mode=s.get("proposals", {}).get("mode", "direct"),
        experiments=experiments,
        evolution=_evolution(s.get("evolution"), lines, name, dur),
        serve=_serve(s.get("serve"), agent, sandbox, lines, name),
        api_listen=_api_listen(s.get("api", {}), lines, name),
        api_allow_remote=s.get("api", {}).get("allow_remote", False),
        on_tamper=s.get("on_tamper", "restore"),
        sandbox=sandbox,
        logs=logs,
        inactive=inactive,
        mcp_config=client[0] if client else None,
        sources=(client[1],) if client else (),
    )


def _agent(s: Mapping[str, Any], lines: dict[Path_, int], name: str, dur: Any) -> AgentConfig:
    """The agent's settings; without `agent:`, metasup's watch of the MCP servers runs in its
    place (checked later: there must be servers)."""
    if "agent" not in s:
        return AgentConfig(command=servers_watch(sys.executable), servers_only=True)
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
    return AgentConfig(
        command=command,
        env=_env(a.get("env")),
        stop_signal=signal.Signals["SIG" + sig_name.removeprefix("SIG")],
        stop_timeout=dur(("supervisor", "agent", "stop_timeout"), a.get("stop_timeout"), 5.0)
        or 0.0,
        backoff=backoff,
    )


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
        executor=_executor(e.get("executor", {})),
    )


def _executor(x: Mapping[str, Any]) -> ExecutorConfig:
    memory = x.get("memory")
    return ExecutorConfig(
        kind=x.get("kind", "local"),
        address=x.get("address", "auto"),
        num_cpus=float(x.get("num_cpus", 1.0)),
        memory=parse_size(memory) if memory is not None else None,
    )


def _evolution(
    e: Mapping[str, Any] | None, lines: dict[Path_, int], name: str, dur: Any
) -> EvolutionConfig | None:
    if e is None:
        return None
    at = ("supervisor", "evolution")
    try:
        mutator = _command(e["mutator"])
    except ValueError as err:
        raise fail_at(name, lines, (*at, "mutator"), f"cannot split: {err}") from None
    if not mutator or not mutator[0]:
        raise fail_at(name, lines, (*at, "mutator"), "the command is empty")
    population = e.get("population", 16)
    islands = e.get("islands", 2)
    if islands > population:
        raise fail_at(
            name,
            lines,
            (*at, "islands"),
            f"{islands} islands cannot share a population of {population}",
        )
    elite = e.get("elite", 2)
    if elite >= population // islands:
        raise fail_at(
            name,
            lines,
            (*at, "elite"),
            f"{elite} elite on an island of {population // islands} leave no room for children "
            f"(population {population}, {islands} islands)",
        )
    migration = e.get("migration", {})
    selection = e.get("selection", {})
    budget = e.get("budget", {})
    trigger = e.get("trigger", {})
    return EvolutionConfig(
        mutator=mutator,
        objective=e.get("objective", "score"),
        population=population,
        generations=e.get("generations", 20),
        islands=islands,
        migration_every=migration.get("every", 5),
        migration_count=migration.get("count", 1),
        selection=selection.get("method", "tournament"),
        tournament_size=selection.get("size", 3),
        crossover_rate=float(e.get("crossover_rate", 0.25)),
        elite=elite,
        budget_evaluations=budget.get("evaluations", 500),
        budget_wall=dur((*at, "budget", "wall"), budget.get("wall", 7200.0), None),
        mode=e.get("mode", "manual"),
        trigger_every=dur((*at, "trigger", "every"), trigger.get("every"), 3600.0) or 3600.0,
        trigger_min_gain=trigger.get("min_gain"),
    )


def _serve(
    sv: Mapping[str, Any] | None,
    agent: AgentConfig,
    sandbox: SandboxConfig,
    lines: dict[Path_, int],
    name: str,
) -> ServeConfig | None:
    """What the schema cannot say: replicas of an agent (there must be one) that the front
    door can reach, bounds in order, a canary that only ever steps up."""
    if sv is None:
        return None
    at = ("supervisor", "serve")
    if agent.servers_only:
        raise fail_at(name, lines, at, "serving runs replicas of the agent: give `agent:` too")
    if not sandbox.network and sandbox.applies("agent"):
        raise fail_at(
            name,
            lines,
            at,
            "replicas in jails without a network cannot be reached by the front door: "
            "serving needs `sandbox.network: true`",
        )
    d = ServeConfig()
    r = sv.get("replicas", {})
    low, high = r.get("min", d.min_replicas), r.get("max", max(d.max_replicas, r.get("min", 1)))
    if high < low:
        raise fail_at(name, lines, (*at, "replicas", "max"), f"max ({high}) is below min ({low})")
    c = sv.get("canary", {})
    dc = CanaryConfig()
    start = float(c.get("start", dc.start))
    steps = tuple(float(x) for x in c.get("steps", dc.steps))
    for i, (before, step) in enumerate(zip((start, *steps), steps, strict=False)):
        if step <= before:
            raise fail_at(
                name,
                lines,
                (*at, "canary", "steps", i),
                f"{step:g} does not step up from {before:g}: the share only ever grows",
            )
    if steps[-1] != 1.0:
        raise fail_at(
            name,
            lines,
            (*at, "canary", "steps", len(steps) - 1),
            f"the last step is {steps[-1]:g}: a candidate is promoted after taking all the "
            "traffic (1.0)",
        )
    return ServeConfig(
        listen=sv.get("listen", d.listen),
        port_env=sv.get("port_env", d.port_env),
        health_path=sv.get("health_path", d.health_path),
        min_replicas=low,
        max_replicas=high,
        target_inflight=float(r.get("target_inflight", d.target_inflight)),
        mirror=float(sv.get("mirror", d.mirror)),
        canary=CanaryConfig(
            start=start,
            steps=steps,
            step_requests=c.get("step_requests", dc.step_requests),
            max_error_delta=float(c.get("max_error_delta", dc.max_error_delta)),
            max_p99_ratio=float(c.get("max_p99_ratio", dc.max_p99_ratio)),
        ),
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
    s: Mapping[str, Any],
    lines: dict[Path_, int],
    name: str,
    dur: Any,
    path: Path,
    environ: Mapping[str, str],
    validate: bool,
) -> tuple[tuple[McpServerConfig, ...], tuple[str, str] | None]:
    """The servers, enabled ones only, and the `mcp_config` file read: its path in the
    repository and its text."""
    Entry = tuple[str, Path_, Mapping[str, Any], str, dict[Path_, int]]
    entries: list[Entry] = []
    raw = s.get("mcp_servers")
    if isinstance(raw, list):
        entries += [
            (e["name"], ("supervisor", "mcp_servers", i), e, name, lines) for i, e in enumerate(raw)
        ]
    elif isinstance(raw, Mapping):
        entries += [(n, ("supervisor", "mcp_servers", n), e, name, lines) for n, e in raw.items()]
    entries += [
        (n, ("supervisor", "mcpServers", n), e, name, lines)
        for n, e in s.get("mcpServers", {}).items()
    ]
    client: tuple[str, str] | None = None
    if s.get("mcp_config") is not None:
        rel, text, found = _client_config(s["mcp_config"], lines, name, path, validate)
        client = (rel, text)
        entries += found
    seen: dict[str, tuple[str, Path_, dict[Path_, int]]] = {}
    servers = []
    for n, at, e, where, at_lines in entries:
        if n in seen:
            first_file, first_at, first_lines = seen[n]
            first = line_of(first_lines, first_at)
            place = "" if first_file == where else f" in {first_file}"
            prior = f" (first{place}" + (f" at line {first})" if first else ")")
            raise fail_at(where, at_lines, at, f"a server named {n!r} is defined twice{prior}")
        seen[n] = (where, at, at_lines)
        if e.get("disabled"):
            continue
        servers.append(_mcp_server(n, at, e, where, at_lines, dur, environ))
    return tuple(servers), client


def _mcp_server(
    n: str,
    at: Path_,
    e: Mapping[str, Any],
    name: str,
    lines: dict[Path_, int],
    dur: Any,
    environ: Mapping[str, str],
) -> McpServerConfig:
    def expanded(key: Path_, value: str) -> str:
        try:
            return expand(value, environ)
        except UnsetVariable as err:
            raise fail_at(name, lines, (*at, *key), str(err)) from None

    kind = e.get("type")
    url = expanded(("url",), e["url"]) if e.get("url") else None
    if kind == "stdio" and url:
        raise fail_at(name, lines, (*at, "type"), "a stdio server has no url")
    if kind is not None and kind != "stdio" and not url:
        raise fail_at(name, lines, (*at, "url"), f"type {kind} needs a url")
    if url is not None and not re.match(r"https?://[^\s/]+", url):
        raise fail_at(name, lines, (*at, "url"), f"{url!r} is not an http(s) URL")
    if e.get("headers") and not url:
        raise fail_at(name, lines, (*at, "headers"), "headers go with a url")
    b = e.get("restart_backoff", {})
    backoff = Backoff(
        initial=dur((*at, "restart_backoff", "initial"), b.get("initial"), 1.0) or 0.0,
        max=dur((*at, "restart_backoff", "max"), b.get("max"), 30.0) or 0.0,
    )
    if backoff.initial > backoff.max:
        raise fail_at(name, lines, (*at, "restart_backoff", "initial"), "larger than max")
    watch = e.get("watch")
    command = e.get("command")
    return McpServerConfig(
        name=n,
        command=expanded(("command",), command) if command else None,
        args=tuple(expanded(("args", i), a) for i, a in enumerate(e.get("args", []))),
        env={k: expanded(("env", k), v) for k, v in _env(e.get("env")).items()},
        cwd=expanded(("cwd",), e["cwd"]) if e.get("cwd") else None,
        url=url,
        sse=kind == "sse",
        headers={k: expanded(("headers", k), v) for k, v in (e.get("headers") or {}).items()},
        restart_on_failure=e.get("restart_on_failure", True),
        probe_interval=dur((*at, "probe_interval"), e.get("probe_interval"), 5.0) or 0.0,
        probe_timeout=dur((*at, "probe_timeout"), e.get("probe_timeout"), 2.0) or 0.0,
        start_timeout=dur((*at, "start_timeout"), e.get("start_timeout"), 10.0) or 0.0,
        stop_timeout=dur((*at, "stop_timeout"), e.get("stop_timeout"), 5.0) or 0.0,
        backoff=backoff,
        max_restarts=e.get("max_restarts", 5),
        max_handshakes=e.get("max_handshakes", McpServerConfig.max_handshakes),
        restart_period=dur((*at, "restart_period"), e.get("restart_period"), 60.0) or 0.0,
        watch=None
        if watch is None
        else tuple(
            _repo_relative(name, lines, (*at, "watch", i), w, whole_tree=True)
            for i, w in enumerate(watch)
        ),
    )


def _client_config(
    raw: str, lines: dict[Path_, int], name: str, path: Path, validate: bool
) -> tuple[str, str, list[tuple[str, Path_, Mapping[str, Any], str, dict[Path_, int]]]]:
    """`mcp_config`: an MCP client's file (`{"mcpServers": {...}}`, as `.mcp.json`), relative
    to the repository. Its path inside the repository, its text, and its entries with their
    own lines."""
    rel = _repo_relative(name, lines, ("supervisor", "mcp_config"), raw)
    file = _repository_root(path) / rel
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise fail_at(
            name, lines, ("supervisor", "mcp_config"), f"cannot read {rel}: {e}"
        ) from None
    doc, file_lines = load_yaml_lines(text, rel)  # JSON is YAML: the same line numbers
    errors = list(_client_validator().iter_errors(doc)) if validate else []
    if errors:
        at, message = _explain(errors[0], doc)
        raise fail_at(rel, file_lines, at, message)
    return (
        rel,
        text,
        [(n, ("mcpServers", n), e, rel, file_lines) for n, e in doc["mcpServers"].items()],
    )


@functools.cache
def _client_validator() -> Any:
    import jsonschema

    defs = _validator().schema["$defs"]
    return jsonschema.Draft202012Validator(
        {
            "$defs": defs,
            "type": "object",
            "required": ["mcpServers"],
            "properties": {"mcpServers": {"$ref": "#/$defs/mcp_server_map"}},
        }
    )


def _repository_root(config: Path) -> Path:
    """The working tree around the config file (its folder when none is found)."""
    folder = config.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder
