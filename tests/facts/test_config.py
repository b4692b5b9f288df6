"""The configuration: the SPEC's shape loads, mistakes name the key and the line."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from metasup.facts.config import ConfigError, find_config, load_config, parse_config
from metasup.facts.units import format_duration, parse_duration
from metasup.facts.yaml_lines import line_of, load_yaml_lines
from testing.fixtures import ROOT, run_metasup

SPEC_EXAMPLE = ROOT / "config" / "supervisor.yaml"


def parse(text: str) -> object:
    return parse_config(text, Path("metasup.yaml"))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return str(e.value)


def test_meta_supervisor_config_loads_unchanged() -> None:
    cfg = load_config(SPEC_EXAMPLE)
    assert cfg.min_runtime == 10 and cfg.max_failures == 5
    assert cfg.agent.command == ("python", "agent.py")
    assert cfg.agent.env == {"LOG_LEVEL": "info"}
    assert cfg.agent.stop_signal is signal.SIGTERM and cfg.agent.stop_timeout == 5
    assert (cfg.agent.backoff.initial, cfg.agent.backoff.max) == (1, 30)
    assert cfg.protected_paths == ("backend/supervisor/", "config/safety_rules.yaml")
    assert cfg.health.interval == 5 and cfg.health.max_memory_mb == 4096
    assert cfg.health.max_cpu_percent == 90 and cfg.health.heartbeat_timeout == 30
    assert cfg.rollback.preserve == ("data",) and cfg.rollback.backup_interval == 3600
    assert [s.name for s in cfg.mcp_servers] == ["dynamic-thinking"]
    assert cfg.mcp_servers[0].args == ("servers/thinking.py",)
    assert cfg.proposals_mode == "direct"
    ex = cfg.experiments
    assert ex.timeout == 600 and ex.repeats == 3 and ex.max_concurrent == 2
    assert ex.checks == (("python", "-m", "pytest", "-q"),)
    assert ex.fitness == ("python", "eval/score.py") and ex.shadow_runtime == 10
    assert ex.success.max_response_time == 5 and ex.success.min_improvement == 0.1
    assert ex.failure.max_error_rate == 0.1 and ex.failure.max_response_time == 10
    assert cfg.api_listen == "127.0.0.1:9000"
    assert "mcp_servers" not in cfg.inactive and "api" not in cfg.inactive
    assert cfg.inactive == (), "every key of the Meta-Supervisor's config is in force"
    assert cfg.rollback.keep_commits == 10 and cfg.rollback.backup_interval == 3600
    assert "protected_paths" not in cfg.inactive and "proposals" not in cfg.inactive


def test_the_default_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "metasup.yaml")
    assert cfg.inactive == ()
    assert cfg.agent.command == ("python3", "agent.py")


def test_defaults_fill_what_is_left_out() -> None:
    cfg = parse("supervisor:\n  agent: {command: ./run.sh --fast 'a b'}\n")
    assert cfg.agent.command == ("./run.sh", "--fast", "a b")  # type: ignore[attr-defined]
    assert cfg.min_runtime == 10 and cfg.max_failures == 5  # type: ignore[attr-defined]
    assert cfg.health.max_memory_mb is None  # type: ignore[attr-defined]
    assert cfg.health.interval == 30  # type: ignore[attr-defined]  # nothing to check: status only


def test_health_limits_are_checked_every_5s_unless_told() -> None:
    limited = parse("supervisor:\n  agent: {command: x}\n  health_checks: {max_memory_mb: 10}\n")
    assert limited.health.interval == 5  # type: ignore[attr-defined]
    told = parse("supervisor:\n  agent: {command: x}\n  health_checks: {interval: 2s}\n")
    assert told.health.interval == 2  # type: ignore[attr-defined]


def test_mcp_servers_mapping_shape() -> None:
    cfg = parse(
        "supervisor:\n  agent: {command: x}\n  mcpServers:\n"
        "    fs: {command: npx, args: [-y, server], env: {A: 1}}\n"
    )
    (server,) = cfg.mcp_servers  # type: ignore[attr-defined]
    assert (server.name, server.command, server.args, server.env) == (
        "fs",
        "npx",
        ("-y", "server"),
        {"A": "1"},
    )


def test_mcp_server_settings_and_defaults() -> None:
    cfg = parse(
        "supervisor:\n  agent: {command: x}\n  mcp_servers:\n"
        "    - {name: s, command: python, args: [servers/s.py]}\n"
        "    - name: h\n      url: http://127.0.0.1:8123/mcp\n      command: python\n"
        "      probe_interval: 500ms\n      probe_timeout: 100ms\n      max_restarts: 2\n"
        "      restart_backoff: {initial: 50ms, max: 1s}\n      watch: [servers/, .]\n"
    )
    s, h = cfg.mcp_servers  # type: ignore[attr-defined]
    assert (s.transport, s.probe_interval, s.probe_timeout, s.max_restarts) == ("stdio", 5, 2, 5)
    assert s.watch is None and s.restart_on_failure
    assert (h.transport, h.probe_interval, h.probe_timeout) == ("http", 0.5, 0.1)
    assert (h.backoff.initial, h.backoff.max, h.max_restarts) == (0.05, 1.0, 2)
    assert h.watch == ("servers", "")
    assert cfg.to_dict()["supervisor"]["mcp_servers"][1]["watch"] == ["servers", ""]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ("mcp_servers:\n    - {name: a}", "supervisor.mcp_servers[0]: needs command or url"),
        (
            "mcp_servers:\n    - {name: a, command: p, colour: red}",
            "supervisor.mcp_servers[0].colour: unknown key (known: args, command, cwd, disabled, ",
        ),
        ("mcpServers:\n    a b: {command: p}", "supervisor.mcpServers: 'a b': names are"),
        ("mcpServers:\n    a: {command: p, type: http}", "supervisor.mcpServers.a.url: type http"),
        (
            "mcpServers:\n    a: {url: 'http://x/mcp', type: stdio}",
            "supervisor.mcpServers.a.type: a stdio server has no url",
        ),
        ("mcpServers:\n    a: {url: ftp://x}", "supervisor.mcpServers.a.url: 'ftp://x' does not"),
        (
            "mcp_servers:\n    - {name: a, command: p}\n  mcpServers:\n    a: {command: q}",
            "metasup.yaml:6: supervisor.mcpServers.a: a server named 'a' is defined twice "
            "(first at line 4)",
        ),
        (
            "mcp_servers:\n    - {name: a, command: p, probe_timeout: 0}",
            "supervisor.mcp_servers[0].probe_timeout: 0 is not allowed",
        ),
        (
            "mcp_servers:\n    - {name: a, command: p, watch: [../x]}",
            "supervisor.mcp_servers[0].watch[0]: '../x' must not leave",
        ),
    ],
)
def test_mcp_server_errors_name_the_key(servers: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse("supervisor:\n  agent: {command: x}\n  " + servers + "\n")
    assert expected in str(e.value)


_server_entries = st.fixed_dictionaries(
    {},
    optional={
        "command": st.one_of(st.text(max_size=5), st.integers()),
        "url": st.sampled_from(["http://127.0.0.1:1/mcp", "https://h/m", "x", ""]),
        "args": st.one_of(st.lists(st.text(max_size=3), max_size=2), st.text(max_size=2)),
        "type": st.sampled_from(["stdio", "http", "sse"]),
        "probe_interval": st.one_of(st.sampled_from(["1s", "0", "-1s", "5m"]), st.integers(-1, 9)),
        "max_restarts": st.integers(-2, 3),
        "watch": st.lists(st.sampled_from([".", "a/", "/abs", "../up", ".git/x"]), max_size=2),
        "restart_backoff": st.fixed_dictionaries(
            {},
            optional={
                "initial": st.sampled_from(["2s", "1s"]),
                "max": st.sampled_from(["1s", "x"]),
            },
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=0, max_size=6), _server_entries, max_size=3))
def test_any_mcp_server_map_loads_or_fails_with_one_line(servers: dict[str, object]) -> None:
    text = yaml.safe_dump({"supervisor": {"agent": {"command": "x"}, "mcpServers": servers}})
    try:
        cfg = parse(text)
    except ConfigError as e:
        assert str(e).startswith("metasup.yaml") and "\n" not in str(e)
    else:
        for server in cfg.mcp_servers:  # type: ignore[attr-defined]
            assert server.command or server.url
            assert server.backoff.initial <= server.backoff.max


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "supervisor:\n  agent: {command: x}\n  min_runtme: 5s\n",
            "metasup.yaml:3: supervisor.min_runtme: unknown key",
        ),
        (
            "supervisor:\n  agent:\n    command: x\n    stop_timeout: 5x\n",
            "metasup.yaml:4: supervisor.agent.stop_timeout: '5x' is not valid: expected 500ms",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  max_failures: many\n",
            "metasup.yaml:3: supervisor.max_failures: 'many' is not of type 'integer'",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  max_failures: 0\n",
            "metasup.yaml:3: supervisor.max_failures: 0 is less than the minimum of 1",
        ),
        (
            "supervisor:\n  min_runtime: 1s\n",
            "metasup.yaml:1: supervisor: nothing to supervise: give `agent:`",
        ),
        ("agent: {command: x}\n", "metasup.yaml:1: 'supervisor' is required"),
        (
            "supervisor:\n  agent: {command: x}\n  agent: {command: y}\n",
            "metasup.yaml:3: supervisor.agent: duplicate key",
        ),
        ("supervisor:\n  agent: {command: [x}\n", "metasup.yaml:2: invalid YAML"),
        ("", "metasup.yaml: the file is empty"),
        (
            "supervisor:\n  agent: {command: x, stop_signal: TERMINATE}\n",
            "supervisor.agent.stop_signal: 'TERMINATE' does not match",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  rollback: {preserve: [../up]}\n",
            "metasup.yaml:3: supervisor.rollback.preserve[0]: '../up' must not leave",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  rollback: {preserve: [/etc]}\n",
            "supervisor.rollback.preserve[0]: '/etc' must be relative",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  rollback: {preserve: [.git/hooks]}\n",
            "is inside .git",
        ),
        (
            "supervisor:\n  agent:\n    command: x\n    restart_backoff: {initial: 1m, max: 5s}\n",
            "metasup.yaml:4: supervisor.agent.restart_backoff.initial: initial (1m) is larger",
        ),
        ('supervisor:\n  agent: {command: "a \'b"}\n', "supervisor.agent.command: cannot split"),
        ("supervisor:\n  agent: {command: []}\n", "metasup.yaml:2: supervisor.agent.command"),
        (
            "supervisor:\n  agent: {command: x}\n  health_checks: {interval: 0}\n",
            "supervisor.health_checks.interval: 0 is not allowed here",
        ),
        (
            "supervisor:\n  agent: {command: x}\n  api: {listen: nowhere}\n",
            "supervisor.api.listen: 'nowhere': host:port, e.g. 127.0.0.1:9000",
        ),
    ],
)
def test_errors_name_the_key_and_the_line(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600), (7, 7), ("2.5", 2.5), (0, 0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "-1s", "1 d", True, None, [], "ms"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", ""]))
def test_duration_round_trip(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "min_runtime",
                "max_failures",
                "agent",
                "health_checks",
                "rollback",
                "mcp_servers",
                "api",
                "bogus",
            ]
        ),
        _json_values,
    )
)
def test_any_document_loads_or_fails_with_one_clear_line(supervisor: dict[str, object]) -> None:
    text = yaml.safe_dump({"supervisor": supervisor})
    try:
        parse(text)
    except ConfigError as e:
        message = str(e)
        assert message.startswith("metasup.yaml") and "\n" not in message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse(text)


def test_find_config_order(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no metasup\.yaml or config/metasup\.yaml"):
        find_config(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "metasup.yaml").write_text("x")
    assert find_config(tmp_path) == tmp_path / "config" / "metasup.yaml"
    (tmp_path / "metasup.yaml").write_text("x")
    assert find_config(tmp_path) == tmp_path / "metasup.yaml"
    with pytest.raises(ConfigError, match="no such config file"):
        find_config(tmp_path, tmp_path / "other.yaml")


def test_cli_config_error_is_one_line_exit_2(repo: Path) -> None:
    (repo / "metasup.yaml").write_text("supervisor:\n  agent: {command: x}\n  colour: red\n")
    out = run_metasup(repo, "config")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "metasup: error: metasup.yaml:3: supervisor.colour: unknown key (known: agent, api, "
        "evolution, experiments, health_checks, logs, max_failures, mcpServers, mcp_config, "
        "mcp_servers, min_runtime, on_tamper, proposals, protected_paths, rollback, sandbox, "
        "serve)"
    )
    assert "Traceback" not in out.stderr


def test_cli_config_prints_the_effective_config(repo: Path) -> None:
    (repo / "config").mkdir()
    (repo / "config" / "supervisor.yaml").write_text(SPEC_EXAMPLE.read_text())
    out = run_metasup(repo, "config", "--config", "config/supervisor.yaml", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["supervisor"]["min_runtime"] == 10
    assert doc["inactive"] == []
    assert doc["supervisor"]["api"] == {"listen": "127.0.0.1:9000", "allow_remote": False}
    text = run_metasup(repo, "config", "--config", "config/supervisor.yaml")
    assert "min_runtime: 10s" in text.stdout and "not active yet" not in text.stdout


def test_cli_debug_shows_the_traceback(repo: Path) -> None:
    (repo / "metasup.yaml").write_text("supervisor: [\n")
    out = run_metasup(repo, "--debug", "config")
    assert out.returncode != 0 and "Traceback" in out.stderr


_path_tokens = st.sampled_from(["a", "b", ".", "/", "\\", "-", " ", ".git", ".GIT", "..", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_path_tokens, max_size=8).map("".join))
def test_preserve_paths_stay_inside_the_working_tree(raw: str) -> None:
    text = yaml.safe_dump(
        {"supervisor": {"agent": {"command": "x"}, "rollback": {"preserve": [raw]}}}
    )
    try:
        cfg = parse(text)
    except ConfigError as e:
        assert "supervisor.rollback.preserve[0]" in str(e) or "preserve" in str(e)
        return
    (path,) = cfg.rollback.preserve  # type: ignore[attr-defined]
    parts = path.split("/")
    assert not path.startswith("/") and "\\" not in path
    assert ".." not in parts and "." not in parts and "" not in parts
    assert parts[0].lower() != ".git"


KEYS = st.text("abcdefghij_", min_size=1, max_size=6)
LEAVES = st.integers(-5, 5) | st.text("xyz ", max_size=5) | st.booleans()
TREES = st.recursive(
    LEAVES,
    lambda inner: (
        st.dictionaries(KEYS, inner, min_size=1, max_size=3)
        | st.lists(st.dictionaries(KEYS, inner, min_size=1, max_size=2), min_size=1, max_size=2)
    ),
    max_leaves=12,
)


def _paths(doc: object, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += [(*at, k), *_paths(v, (*at, k))]
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, TREES, min_size=1, max_size=4))
def test_every_key_is_mapped_to_the_line_it_is_written_on(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    loaded, lines = load_yaml_lines(text, "x.yaml")
    assert loaded == doc
    rows = text.splitlines()
    for path in _paths(doc):
        line = lines[path]
        key = path[-1]
        written = rows[line - 1].strip().removeprefix("- ")
        if isinstance(key, str):
            assert written.startswith(f"{key}:") or written.startswith(f"'{key}':"), (path, text)
        else:  # a list item: its first line
            assert rows[line - 1].lstrip().startswith("-") or line == 1, (path, text)


def test_a_missing_key_is_placed_at_its_nearest_parent() -> None:
    _, lines = load_yaml_lines("a:\n  b:\n    c: 1\n", "x.yaml")
    assert line_of(lines, ("a", "b", "c")) == 3
    assert line_of(lines, ("a", "b", "missing", "deeper")) == 2
    assert line_of(lines, ("nowhere",)) == 1


def test_mcp_entries_as_mcp_clients_write_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude Code's shapes: `type`, `headers`, `${VAR}` and `${VAR:-default}`, `disabled`."""
    cfg = parse_config(
        "supervisor:\n  agent: {command: x}\n  mcpServers:\n"
        "    remote:\n      type: http\n      url: ${API_BASE:-http://127.0.0.1:9}/mcp\n"
        "      headers: {Authorization: 'Bearer ${TOKEN}'}\n"
        "    old: {type: sse, url: 'http://127.0.0.1:7/sse'}\n"
        "    local: {command: '${HOME_BIN}/server', args: ['--root', '${ROOT:-.}'],"
        " env: {KEY: '${TOKEN}'}}\n"
        "    off: {command: nothing, disabled: true}\n",
        Path("metasup.yaml"),
        environ={"TOKEN": "s3cret", "HOME_BIN": "/opt/bin", "ROOT": ""},
    )
    remote, old, local = cfg.mcp_servers
    assert (remote.transport, remote.url) == ("http", "http://127.0.0.1:9/mcp")
    assert remote.headers == {"Authorization": "Bearer s3cret"}
    assert old.transport == "sse"
    assert (local.command, local.args, local.env) == (
        "/opt/bin/server",
        ("--root", "."),  # set but empty takes the default, as in the shell
        {"KEY": "s3cret"},
    )
    # `metasup config` names the headers without their values (tokens, often).
    assert cfg.to_dict()["supervisor"]["mcp_servers"][0]["headers"] == {"Authorization": "***"}


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        (
            "mcpServers:\n    a: {command: p, env: {K: '${NOPE}'}}",
            "metasup.yaml:4: supervisor.mcpServers.a.env.K: ${NOPE} is not set and has no default",
        ),
        (
            "mcpServers:\n    a: {type: http, url: '${NOPE:-ftp://x}'}",
            "supervisor.mcpServers.a.url: 'ftp://x' is not an http(s) URL",
        ),
        ("mcpServers:\n    a: {command: p, headers: {A: b}}", "a.headers: headers go with a url"),
        ("mcpServers:\n    a: {command: p, disabled: 1}", "a.disabled: 1 is not of type"),
    ],
)
def test_mcp_client_shape_errors_name_the_key(servers: str, expected: str) -> None:
    assert expected in error_of("supervisor:\n  agent: {command: x}\n  " + servers + "\n")


def test_mcp_config_reads_an_mcp_clients_file(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".mcp.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fs": {"command": "npx", "args": ["-y", "server-filesystem", "."]},
                    "web": {"type": "http", "url": "http://127.0.0.1:8/mcp"},
                }
            },
            indent=2,
        )
    )
    config = tmp_path / "metasup.yaml"
    config.write_text("supervisor:\n  agent: {command: x}\n  mcp_config: .mcp.json\n")
    cfg = load_config(config)
    assert [s.name for s in cfg.mcp_servers] == ["fs", "web"]
    assert "/.mcp.json" in cfg.protected_paths, "it configures supervised processes"
    assert cfg.mcp_config == ".mcp.json" and cfg.sources == ((tmp_path / ".mcp.json").read_text(),)
    # Its mistakes name its own file and line.
    (tmp_path / ".mcp.json").write_text(
        '{\n  "mcpServers": {\n    "fs": {"comand": "npx"}\n  }\n}\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert str(e.value).startswith(".mcp.json:3: mcpServers.fs")
    (tmp_path / ".mcp.json").unlink()
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert "metasup.yaml:3: supervisor.mcp_config: cannot read .mcp.json" in str(e.value)
    config.write_text("supervisor:\n  agent: {command: x}\n  mcp_config: ../x.json\n")
    with pytest.raises(ConfigError, match="must not leave the repository"):
        load_config(config)


def test_retention_settings() -> None:
    cfg = parse(
        "supervisor:\n  agent: {command: x}\n"
        "  rollback: {keep_archives: {count: 50, age: 720h}}\n"
        "  logs: {keep_runs: 20, max_size: 64MiB}\n"
    )
    r = cfg.rollback  # type: ignore[attr-defined]
    assert (r.keep_archives, r.keep_archives_age) == (50, 720 * 3600)
    assert (cfg.logs.keep_runs, cfg.logs.max_size) == (20, 64 << 20)  # type: ignore[attr-defined]
    default = parse("supervisor:\n  agent: {command: x}\n")
    assert default.rollback.keep_archives is None, "archives are kept unless asked"  # type: ignore[attr-defined]
    assert error_of(
        "supervisor:\n  agent: {command: x}\n  rollback: {keep_archives: {count: 0}}\n"
    ) == (
        "metasup.yaml:3: supervisor.rollback.keep_archives.count: 0 is less than the minimum of 1"
    )


def test_serve_defaults_and_the_spec_example() -> None:
    cfg = parse(
        "supervisor:\n  agent: {command: x}\n  serve:\n"
        '    listen: "127.0.0.1:8080"\n    port_env: PORT\n    health_path: /health\n'
        "    replicas: {min: 1, max: 4, target_inflight: 8}\n    mirror: 0.1\n"
        "    canary: {start: 0.01, steps: [0.05, 0.25, 0.5, 1.0], step_requests: 200,\n"
        "             max_error_delta: 0.02, max_p99_ratio: 1.2}\n"
    )
    serve = cfg.serve  # type: ignore[attr-defined]
    assert serve.min_replicas == 1 and serve.max_replicas == 4 and serve.target_inflight == 8
    assert serve.canary.steps == (0.05, 0.25, 0.5, 1.0) and serve.canary.step_requests == 200
    assert cfg.inactive == ()  # type: ignore[attr-defined]
    bare = parse('supervisor:\n  agent: {command: x}\n  serve: {listen: "127.0.0.1:0"}\n')
    assert bare.serve.port_env == "PORT" and bare.serve.canary.steps[-1] == 1.0  # type: ignore[attr-defined]
    assert parse("supervisor:\n  agent: {command: x}\n").serve is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        ("replicas: {min: 3, max: 2}", "supervisor.serve.replicas.max: max (2) is below min (3)"),
        ("replicas: {min: 0}", "supervisor.serve.replicas.min: 0 is less than the minimum of 1"),
        ("mirror: 1.5", "supervisor.serve.mirror: 1.5 is greater than the maximum of 1"),
        (
            "canary: {start: 0.2, steps: [0.1, 1.0]}",
            "supervisor.serve.canary.steps[0]: 0.1 does not step up from 0.2",
        ),
        (
            "canary: {steps: [0.5, 0.9]}",
            "supervisor.serve.canary.steps[1]: the last step is 0.9",
        ),
        ("canary: {max_p99_ratio: 0.5}", "supervisor.serve.canary.max_p99_ratio: 0.5 is less"),
        ("port_env: 1PORT", "supervisor.serve.port_env: '1PORT': the variable each replica"),
        ("health_path: health", "supervisor.serve.health_path: 'health': a replica is ready"),
        ("listen: nowhere", "supervisor.serve.listen: 'nowhere': host:port of the front door"),
        ("replica: {min: 1}", "supervisor.serve.replica: unknown key"),
    ],
)
def test_serve_errors_name_the_key(serve: str, expected: str) -> None:
    said = error_of(f"supervisor:\n  agent: {{command: x}}\n  serve:\n    {serve}\n")
    assert expected in said and said.startswith("metasup.yaml:") and "\n" not in said


def test_serving_needs_replicas_the_front_door_can_reach() -> None:
    said = error_of(
        "supervisor:\n  agent: {command: x}\n  sandbox: {network: false}\n"
        "  serve: {listen: '127.0.0.1:0'}\n"
    )
    assert "supervisor.serve: replicas in jails without a network" in said
    parse(  # with the jail off for the agent, the replicas share the host's network
        "supervisor:\n  agent: {command: x}\n  sandbox: {network: false, mode: 'off'}\n"
        "  serve: {listen: '127.0.0.1:0'}\n"
    )


def test_serving_needs_an_agent() -> None:
    said = error_of(
        "supervisor:\n  mcpServers: {a: {command: x}}\n  serve: {listen: '127.0.0.1:0'}\n"
    )
    assert "supervisor.serve: serving runs replicas of the agent" in said


def test_a_key_with_a_line_break_is_quoted_in_its_error() -> None:
    said = error_of('supervisor:\n  agent: {command: x}\n  health_checks: {"a\\nb": 1}\n')
    assert "\n" not in said and "supervisor.health_checks.'a\\nb': unknown key" in said
