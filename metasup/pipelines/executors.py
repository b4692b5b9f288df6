"""Where candidates are evaluated (SPEC, "Executors"): the seam experiments and evolution hand
commits to. An executor judges one commit (checks, shadow run, fitness, cheapest first) and
says on which node it did.

`local` judges in this machine's pooled worktrees, in the jail (`Experimenter.assess`). `ray` is
accepted by the config but not in this version: asking for it is refused, never run locally
instead.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Protocol

from metasup.facts.errors import UserError

if TYPE_CHECKING:
    from metasup.pipelines.experiments import Assessment, Experimenter


class Executor(Protocol):
    node: str

    def assess(
        self,
        commit: str,
        base: str,
        slot: int,
        env_extra: dict[str, str],
        *,
        baseline: bool,
        held: bool = False,
    ) -> Assessment: ...


class LocalExecutor:
    """This machine's pooled worktrees."""

    def __init__(self, exp: Experimenter) -> None:
        self.exp = exp
        self.node = socket.gethostname()

    def assess(
        self,
        commit: str,
        base: str,
        slot: int,
        env_extra: dict[str, str],
        *,
        baseline: bool,
        held: bool = False,
    ) -> Assessment:
        found = self.exp.assess(commit, base, slot, env_extra, baseline=baseline, held=held)
        found.node = self.node
        return found


def executor_for(exp: Experimenter) -> Executor:
    kind = exp.ex.executor.kind
    if kind == "local":
        return LocalExecutor(exp)
    raise UserError(
        f"experiments.executor.kind: {kind} is not available in this version of metasup; "
        "use kind: local (the default)"
    )
