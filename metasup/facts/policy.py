"""The safety policy: which paths are protected, the limits, and path checks. Pure: strings in,
verdicts out; nothing here reads the working tree.

Protected patterns are gitignore syntax (pathspec), matched ignoring case after NFC
normalisation, so `Protected/Safety_Rules.yaml` is as protected as `protected/safety_rules.yaml`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec
import yaml

from metasup.facts.errors import ConfigError
from metasup.facts.gitpaths import is_git_dir_name
from metasup.facts.resources import protected_dir


@dataclass(frozen=True)
class Limits:
    max_changes: int = 1000
    max_file_bytes: int = 10 << 20
    max_proposal_bytes: int = 50 << 20
    max_path_bytes: int = 4096
    max_segment_bytes: int = 255


@dataclass(frozen=True)
class PathProblem:
    code: str
    message: str


class Policy:
    """Protected patterns (with where each came from), limits and allowed modes."""

    def __init__(
        self,
        patterns: Sequence[tuple[str, str]],
        limits: Limits = Limits(),
        modes: Sequence[str] = ("100644", "100755"),
    ) -> None:
        self.patterns = tuple(patterns)  # (pattern, source)
        self.limits = limits
        self.modes = tuple(modes)
        self._spec = pathspec.GitIgnoreSpec.from_lines(
            _fold(pattern) for pattern, _ in self.patterns
        )
        # An exception (`!pattern`) holds for its exact spelling only: `.metasup/INBOX/x` is
        # not the inbox, though protection itself matches any case.
        self._exact = {
            i: pathspec.GitIgnoreSpec.from_lines([pattern.lstrip()[1:]])
            for i, (pattern, _) in enumerate(self.patterns)
            if pattern.lstrip().startswith("!")
        }
        self._before: dict[int, pathspec.GitIgnoreSpec] = {}

    def _decide(self, folded: str, exact: str) -> int | None:
        """The index of the pattern protecting a path, or None."""
        result = self._spec.check_file(folded)
        while result.index is not None and not result.include:
            spec = self._exact.get(result.index)
            if spec is None or spec.check_file(exact).include:
                return None
            # Spelled otherwise: decided by the patterns before that exception.
            before = self._before.get(result.index)
            if before is None:
                lines = [_fold(p) for p, _ in self.patterns[: result.index]]
                before = self._before[result.index] = pathspec.GitIgnoreSpec.from_lines(lines)
            result = before.check_file(folded)
        return result.index if result.include else None

    def protecting_rule(self, path: str) -> str | None:
        """The rule protecting `path` (a checked, repo-relative path), or None."""
        folded, exact = _fold(path), unicodedata.normalize("NFC", path)
        index = self._decide(folded, exact)
        if index is None:
            # A directory pattern also covers the directory entry itself.
            index = self._decide(folded + "/", exact + "/")
            if index is None:
                return None
        pattern, source = self.patterns[index]
        return f"{pattern!r} ({source})"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def load_policy(
    workdir: Path,
    config_path: Path | None = None,
    extra_patterns: Iterable[str] = (),
) -> Policy:
    """The shipped policy, the repository's own (if any), the config's `protected_paths`, and
    the always-protected: the config file in use and metasup's installation when it lives in
    the working tree."""
    shipped = _read_rules(protected_dir() / "safety_rules.yaml")
    patterns = [(p, "built-in") for p in shipped.get("protected", [])]
    limits_doc = dict(shipped.get("limits", {}))
    modes = list(shipped.get("modes", ["100644", "100755"]))
    own = workdir / "protected" / "safety_rules.yaml"
    if own.is_file() and own.resolve() != (protected_dir() / "safety_rules.yaml").resolve():
        rules = _read_rules(own)
        patterns += [(p, "protected/safety_rules.yaml") for p in rules.get("protected", [])]
        limits_doc.update(rules.get("limits", {}))
        modes = list(rules.get("modes", modes))
    patterns += [(p, "protected_paths") for p in extra_patterns]
    for path, why in ((config_path, "config in use"), (_installation(), "metasup itself")):
        rel = _inside(workdir, path)
        if rel is not None:
            patterns.append(("/" + rel, why))
    limits = Limits(**{k: int(v) for k, v in limits_doc.items() if k in Limits.__annotations__})
    return Policy(patterns, limits, modes)


def _read_rules(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the safety rules: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the safety rules must be a mapping")
    return doc


def _installation() -> Path:
    return Path(__file__).resolve().parents[1]  # metasup/, above facts/


def _inside(workdir: Path, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(workdir.resolve()).as_posix()
    except ValueError:
        return None


_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}


def check_path(raw: object, limits: Limits = Limits()) -> PathProblem | None:
    """Why `raw` is not an acceptable repo-relative path for a change, or None.

    Checks only the string; symlinks and protected patterns are looked at by the caller.
    """
    if not isinstance(raw, str) or raw == "":
        return PathProblem("path_invalid", "the path is empty")
    if any(ch in _CONTROL for ch in raw):
        return PathProblem("path_invalid", "the path contains NUL or control characters")
    if "\\" in raw:
        return PathProblem("path_invalid", "the path contains a backslash; use '/'")
    drive = len(raw) >= 2 and raw[0].isascii() and raw[0].isalpha() and raw[1] == ":"
    if raw.startswith("/") or (drive and (len(raw) == 2 or raw[2] == "/")):
        return PathProblem("path_absolute", "the path is absolute; give it relative to the repo")
    parts = raw.split("/")
    if ".." in parts:
        return PathProblem("path_traversal", "the path has a '..' component")
    if len(raw.encode("utf-8", "surrogatepass")) > limits.max_path_bytes:
        return PathProblem("path_invalid", f"the path is longer than {limits.max_path_bytes} bytes")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > limits.max_segment_bytes:
            return PathProblem(
                "path_invalid",
                f"a path component is longer than {limits.max_segment_bytes} bytes",
            )
    for part in parts:
        if is_git_dir_name(part):
            return PathProblem("path_git", "the path goes into .git")
    if any(part in ("", ".") for part in parts):
        return PathProblem(
            "path_not_normalized", "the path has an empty or '.' component (write it as a/b)"
        )
    try:
        normal = unicodedata.normalize("NFC", raw)
    except UnicodeError:
        return PathProblem("path_invalid", "the path is not valid Unicode")
    if normal != raw:
        return PathProblem(
            "path_not_normalized", "the path is not in Unicode NFC form (write it as NFC)"
        )
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return PathProblem("path_invalid", "the path is not valid UTF-8")
    return None


def fold_key(path: str) -> str:
    """What two paths that name one file share, on any filesystem git supports."""
    return _fold(path)
