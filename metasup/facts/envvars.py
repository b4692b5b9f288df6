"""`${VAR}` and `${VAR:-default}` in MCP server entries, as MCP clients expand them.

Claude Code's `.mcp.json` writes tokens and paths this way; a config copied from it must mean
the same thing here. Only this form is expanded (no `$VAR`, no command substitution), and a
variable that is unset without a default is an error rather than an empty string: an empty token
would fail later, far from its cause.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnsetVariable(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"${{{name}}} is not set and has no default (write ${{{name}:-value}})")
        self.name = name


def expand(text: str, environ: Mapping[str, str]) -> str:
    """`text` with each `${VAR}` replaced by its value and each `${VAR:-default}` by its value,
    or the default when VAR is unset or empty (as the shell does). Raises UnsetVariable."""

    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise UnsetVariable(name)
        return value

    return _REF.sub(one, text)
