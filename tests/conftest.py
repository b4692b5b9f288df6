"""pytest fixtures over `testing.fixtures`: a real git repository in a temp dir, an agent in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.fixtures import agent_config, make_repo, write_config


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def agent_repo(repo: Path) -> Iterator[Callable[..., Path]]:
    """A repo with `agent.py` (the code given) and a metasup.yaml."""

    def make(code: str, **config: Any) -> Path:
        (repo / "agent.py").write_text(code)
        (repo / ".gitignore").write_text("__pycache__/\n")
        write_config(repo, agent_config(**config))
        return repo

    yield make
