"""Where the data shipped with metasup lives: the policy (`protected/`) and example configs.

An installed wheel carries them inside the package (`_protected`, `_config`); an editable install
or a checkout reads them from the source tree's top level, where they are maintained.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # metasup/, above facts/


def _shipped(installed: str, source: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / source


def protected_dir() -> Path:
    return _shipped("_protected", "protected")


def config_examples_dir() -> Path:
    return _shipped("_config", "config")


def schema_path(name: str) -> Path:
    return protected_dir() / "schemas" / f"{name}.schema.json"
