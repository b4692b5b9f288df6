"""YAML read with the line of every key and item, so an error found later names its line."""

from __future__ import annotations

from typing import Any

import yaml

from metasup.facts.errors import ConfigError

Path_ = tuple[str | int, ...]  # a place in the document: keys and list indexes


def load_yaml_lines(text: str, name: str) -> tuple[Any, dict[Path_, int]]:
    """The document, and the line (1-based) of every key and item in it by its path, so an
    error found later (by the schema, or a check of values) names the line it comes from."""
    lines: dict[Path_, int] = {}
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        doc = _construct(loader, node, (), lines, name) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"{name}: invalid YAML: {first}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc, lines


def _construct(
    loader: yaml.SafeLoader, node: yaml.Node, at: Path_, lines: dict[Path_, int], name: str
) -> Any:
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise ConfigError(
                    f"{name}:{key_node.start_mark.line + 1}: {dotted(at) or '(top)'}: "
                    "keys must be plain strings"
                )
            if key in out:
                raise ConfigError(
                    f"{name}:{key_node.start_mark.line + 1}: {dotted((*at, str(key)))}: "
                    "duplicate key"
                )
            lines[(*at, str(key))] = key_node.start_mark.line + 1
            out[str(key) if not isinstance(key, str) else key] = _construct(
                loader, value_node, (*at, str(key)), lines, name
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, item, (*at, i), lines, name) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def dotted(at: Path_) -> str:
    out = ""
    for part in at:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # A key with a line break or another control character, quoted: the error stays on
        # one line and says what the key is.
        shown = part if part.isprintable() else repr(part)
        out += f".{shown}" if out else shown
    return out


def line_of(lines: dict[Path_, int], at: Path_) -> int | None:
    """The line of `at`, else of its nearest parent that has one (a missing key's mapping)."""
    for n in range(len(at), -1, -1):
        if at[:n] in lines:
            return lines[at[:n]]
    return None


def fail_at(name: str, lines: dict[Path_, int], at: Path_, message: str) -> ConfigError:
    line = line_of(lines, at)
    where = f"{name}:{line}" if line else name
    key = dotted(at)
    return ConfigError(f"{where}: {key}: {message}" if key else f"{where}: {message}")
