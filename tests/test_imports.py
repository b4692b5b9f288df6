"""Import contracts: the floors of the design and the owners of outside things, so the shape holds.

Floors, lowest first: facts, effects, decisions, pipelines, faces. A module imports from its own
floor and the floors below, never above; decisions are pure, so they import facts only. Each
outside thing has its owners: git the git family's modules, starting processes `spawn`, looking
at them (psutil) `trees`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "metasup"

FLOORS = ("facts", "effects", "decisions", "pipelines", "faces")
# A floor -> the floors it may import from, when that is not simply "this one and below".
ONLY = {"decisions": {"facts", "decisions"}}

# An outside library or stdlib module -> the only modules of metasup that may import it.
OWNERS = {
    "pygit2": {
        f"effects.git.{m}"
        for m in (
            "repo",
            "lookup",
            "files",
            "candidates",
            "protected",
            "population",
            "scoped",
            "treeedit",
        )
    },
    "subprocess": {"effects.process.spawn"},
    "psutil": {"effects.process.trees"},
}


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module `path` imports, at any depth of its code ("from a import b"
    yields a: its floor is b's)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports."""
    return {name.split(".")[0] for name in imported_modules(path)}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "faces" / "demo" / "files"):
            continue  # the demo agent's own code, copied into the demo's repository
        found[path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")] = path
    return found


def floor_of(dotted: str) -> str | None:
    """The floor of `metasup.<dotted>`, None for the package's own top (its version, its main)."""
    first = dotted.split(".")[0]
    return first if first in FLOORS else None


def allowed(floor: str) -> set[str]:
    return ONLY.get(floor, set(FLOORS[: FLOORS.index(floor) + 1]))


def floor_breaches(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for each import that goes up a floor, or out of the pure floor."""
    broken = []
    for name, targets in sorted(graph.items()):
        floor = floor_of(name)
        if floor is None:
            continue
        for target in sorted(targets):
            if not target.startswith("metasup."):
                continue
            other = floor_of(target.removeprefix("metasup."))
            if other is not None and other not in allowed(floor):
                broken.append(f"metasup.{name} ({floor}) imports {target} ({other})")
    return broken


def test_the_floors_are_imported_downward_only() -> None:
    graph = {name: imported_modules(path) for name, path in modules().items()}
    assert floor_breaches(graph) == []


def test_every_module_lives_on_a_floor() -> None:
    strays = [n for n in modules() if floor_of(n) is None and n not in {"__init__", "__main__"}]
    assert strays == []


def test_each_outside_thing_has_one_owner() -> None:
    broken = []
    for name, path in modules().items():
        for lib in imports(path) & set(OWNERS):
            if name not in OWNERS[lib]:
                broken.append(f"metasup.{name} imports {lib} (owner: {', '.join(OWNERS[lib])})")
    assert broken == []


def test_the_contract_sees_imports_at_any_depth(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import pygit2\n    from psutil import Process\n")
    assert imports(module) >= {"pygit2", "psutil"}


def test_the_floor_check_refuses_an_upward_import_and_an_impure_decision() -> None:
    graph = {
        "facts.config": {"metasup.decisions.verdict", "yaml"},
        "decisions.lifecycle": {"metasup.effects.git.repo", "metasup.facts.events"},
        "faces.cli.main": {"metasup.pipelines.rollback", "metasup.effects.git.repo"},
        "pipelines.rollback": {"metasup.decisions.lifecycle"},
    }
    assert floor_breaches(graph) == [
        "metasup.decisions.lifecycle (decisions) imports metasup.effects.git.repo (effects)",
        "metasup.facts.config (facts) imports metasup.decisions.verdict (decisions)",
    ]
