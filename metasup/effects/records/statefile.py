"""The supervisor's state files, read as untrusted input.

Without the jail the agent can write `<git-dir>/metasup/` like anything else of its user. What
metasup reads back (`state.json`, the rollback intent) is therefore checked field by field: a
field of the wrong type or shape is dropped, so every reader sees its default, and a document
that is not an object reads as none. Pure: the checks take parsed JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import read_json

Check = Callable[[Any], bool]

_SHA = re.compile(r"[0-9a-f]{40}")
_TOKEN = re.compile(r"[0-9a-f]{32}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nat(v: Any) -> bool:
    return _int(v) and v >= 0


def _num(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool) and v == v  # NaN != NaN


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _sha(v: Any) -> bool:
    return isinstance(v, str) and _SHA.fullmatch(v) is not None


def _pid(v: Any) -> bool:
    return _int(v) and v > 1


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


_AGENT: dict[str, Check] = {
    "pid": _optional(_pid),
    "pgid": _optional(_pid),
    "token": _optional(lambda v: isinstance(v, str) and _TOKEN.fullmatch(v) is not None),
    "state": _optional(_str),
    "rss_mb": _optional(_num),
    "cpu_percent": _optional(_num),
    "started_at": _optional(_num),
    "log": _optional(_str),
}
_TREE: dict[str, Check] = {"pgid": _optional(_pid), "token": _AGENT["token"]}
_EXIT: dict[str, Check] = {"run": _nat, "code": _int, "runtime_s": _num}
_INSTANCE: dict[str, Check] = {
    "handshake": _optional(_str),
    "state": _str,
    "pid": _optional(_pid),
    "clients": _nat,
    "restarts": _nat,
}


def _instances(value: Any) -> bool:
    """An MCP server's extra instances (one per distinct client handshake)."""
    return isinstance(value, list) and all(
        isinstance(v, dict) and all(k in v and _INSTANCE[k](v[k]) for k in _INSTANCE) for v in value
    )


_MCP: dict[str, Check] = {
    "state": _str,
    "restarts": _nat,
    "latency_ms": _optional(_num),
    "tools": _optional(_nat),
    "pid": _optional(_pid),
    "transport": _optional(_str),
    "url": _optional(_str),
    "clients": _optional(_nat),
    "reason": _optional(_str),
    "commit": _optional(_str),
    "socket": _optional(_str),
    "instances": _instances,
}
_EXPERIMENT: dict[str, Check] = {
    "id": _optional(_str),
    "source": _optional(_str),
    "outcome": _optional(_str),
    "score": _optional(_num),
    "improvement": _optional(_num),
}

_EVOLUTION: dict[str, Check] = {
    "evolution": _str,
    "generation": _nat,
    "evaluated": _nat,
    "failed": _nat,
    "best_score": _optional(_num),
    "baseline_score": _optional(_num),
    "running": _bool,
}

_ARM: dict[str, Check] = {
    "requests": _nat,
    "errors": _nat,
    "p50_ms": _optional(_num),
    "p99_ms": _optional(_num),
    "share": _num,
}
_REPLICA: dict[str, Check] = {"id": _str, "arm": _str, "inflight": _nat, "ready": _bool}


def _fits(value: Any, fields: dict[str, Check]) -> bool:
    return isinstance(value, dict) and all(k in value and c(value[k]) for k, c in fields.items())


def _serve(v: Any) -> bool:
    """The front door's status (SPEC, "Serving"): its URL, replicas and arms, whole or not."""
    if not isinstance(v, dict) or not _str(v.get("url")):
        return False
    replicas, arms = v.get("replicas", []), v.get("arms", {})
    return (
        isinstance(replicas, list)
        and all(_fits(r, _REPLICA) for r in replicas)
        and isinstance(arms, dict)
        and all(_fits(a, _ARM) for a in arms.values())
        and _optional(_str)(v.get("stage"))
        and _optional(_sha)(v.get("commit"))
    )


# Every field the supervisor writes, with its shape. Nested objects are cleaned the same way.
STATE_FIELDS: dict[str, Check | dict[str, Check] | tuple[str, dict[str, Check]]] = {
    "status": _str,
    "phase": _str,
    "supervisor_pid": _optional(_pid),
    "repo": _str,
    "branch": _optional(_str),
    "config": _str,
    "started_at": _num,
    "updated_at": _str,
    "current_commit": _optional(_sha),
    "good_commit": _optional(_sha),
    "consecutive_failures": _nat,
    "max_failures": _nat,
    "min_runtime_s": _num,
    "uptime_s": _num,
    "uptime": _str,
    "run": _nat,
    "agent": _AGENT,
    "last_exit": _EXIT,
    "last_archive": _optional(_str),
    "mcp_servers": ("map", {"": _str}),
    "mcp": ("map", _MCP),
    "helper_trees": ("list", _TREE),
    "api_url": _optional(_str),
    "serve_url": _optional(_str),
    "serve": _optional(_serve),
    "last_crash_to_relaunch_s": _optional(_num),
    "experiments": ("list", _EXPERIMENT),
    "experiment_running": _bool,
    "evolution": _EVOLUTION,
    "strategy": _str,
    "counters": ("map", {"": _nat}),
    "note": _optional(_str),
}


def _clean_object(value: Any, fields: dict[str, Check]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if k in fields and fields[k](v)}


def _clean_field(value: Any, shape: Any) -> tuple[bool, Any]:
    if value is None and not callable(shape):
        return True, None  # an absent object (no last exit yet)
    if callable(shape):
        return bool(shape(value)), value
    if isinstance(shape, dict):
        cleaned = _clean_object(value, shape)
        return cleaned is not None, cleaned
    kind, inner = shape
    if kind == "map":
        if not isinstance(value, dict):
            return False, None
        if "" in inner:  # a map of plain values
            return True, {str(k): v for k, v in value.items() if inner[""](v)}
        out = {}
        for k, v in value.items():
            cleaned = _clean_object(v, inner)
            if cleaned is not None:
                out[str(k)] = cleaned
        return True, out
    if not isinstance(value, list):
        return False, None
    items = [_clean_object(v, inner) for v in value]
    return True, [v for v in items if v is not None]


def clean_state(doc: Any) -> dict[str, Any]:
    """`doc` with every known field of the wrong shape dropped; {} when it is no object.
    Fields metasup does not know are kept: nothing reads them."""
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        shape = STATE_FIELDS.get(key)
        if shape is None:
            out[key] = value
            continue
        ok, cleaned = _clean_field(value, shape)
        if ok:
            out[key] = cleaned
    return out


def read_state(path: Path) -> dict[str, Any]:
    """`state.json`, cleaned; {} when missing, unreadable or not JSON."""
    return clean_state(read_json(path))


class Step(StrEnum):
    """How far a rollback got (its intent file says, so a killed supervisor's next start
    finishes it from there)."""

    START = "start"  # planned; nothing done yet
    ARCHIVED = "archived"  # the failed state is committed under an archive ref
    STASHED = "stashed"  # rollback.preserve paths are set aside
    RESET = "reset"  # the tree is the target's, the preserved paths are back


INTENT_STEPS = tuple(Step)

_INTENT: dict[str, Check] = {
    "op": lambda v: v == "rollback",
    "run": _nat,
    "failed": _optional(_sha),
    "target": _sha,
    "reason": _str,
    "staging": _str,
    "step": lambda v: v in INTENT_STEPS,
    "archive": _optional(_str),
    "archived_commit": _optional(_sha),
}


def intent_problem(doc: Any) -> str | None:
    """Why a rollback intent cannot be taken as metasup wrote it; None when its shape is right."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    for key, check in _INTENT.items():
        if key in ("archive", "archived_commit", "failed") and key not in doc:
            continue
        if key not in doc:
            return f"`{key}` is missing"
        if not check(doc[key]):
            return f"`{key}` is {doc[key]!r}"
    return None
