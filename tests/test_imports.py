"""Import contracts: each outside thing has one owner module. A guard for the shape (issue:
one place touches git, one place spawns and watches processes)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "metasup"

# An outside library or stdlib module -> the only modules of metasup that may import it.
OWNERS = {
    "pygit2": {"effects.git.repo"},
    "subprocess": {"effects.process.spawn"},
    "psutil": {"effects.process.spawn"},
}


def imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_each_outside_thing_has_one_owner() -> None:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "faces" / "demo" / "files"):
            continue  # the demo agent's own code, copied into the demo's repository
        name = path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        for lib in imports(path) & set(OWNERS):
            if name not in OWNERS[lib]:
                broken.append(f"metasup.{name} imports {lib} (owner: {', '.join(OWNERS[lib])})")
    assert broken == []


def test_the_contract_sees_imports_at_any_depth(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import pygit2\n    from psutil import Process\n")
    assert imports(module) >= {"pygit2", "psutil"}
