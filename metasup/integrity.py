"""The approved baseline of the protected files, and what differs from it.

The baseline is `<git-dir>/metasup/baseline.json`: each protected file git would track, as
`mode:blob id`. It is recorded at the first start (the operator's state) and by `metasup
approve`; metasup refuses to start while the working tree differs from it, and stops if the good
commit ever does. Pure apart from reading and writing that one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metasup.journal import read_json, utc_now, write_json_atomic


def load(path: Path) -> dict[str, str] | None:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return None
    return {str(k): str(v) for k, v in doc["files"].items()}


def save(path: Path, files: dict[str, str], reason: str, **extra: Any) -> None:
    write_json_atomic(
        path, {"files": dict(sorted(files.items())), "reason": reason, "at": utc_now(), **extra}
    )


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The paths whose entry differs between two listings (present in one only included)."""
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


def differences(baseline: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs, a line a path: `changed X`, `added Y`, `removed Z`, `mode of X`."""
    out = []
    for path in differing(baseline, current):
        was, now = baseline.get(path), current.get(path)
        if was is None:
            out.append(f"added {path}")
        elif now is None:
            out.append(f"removed {path}")
        elif was.split(":")[1] == now.split(":")[1]:
            out.append(f"mode of {path}")
        else:
            out.append(f"changed {path}")
    return out


def summary(lines: list[str], most: int = 8) -> str:
    shown = ", ".join(lines[:most])
    return shown + (f" and {len(lines) - most} more" if len(lines) > most else "")
