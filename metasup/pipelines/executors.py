"""Where candidates are evaluated (SPEC, "Executors"): the seam experiments and evolution hand
commits to. An executor judges one commit (checks, shadow run, fitness, cheapest first) and
says on which node it did.

`local` judges in this machine's pooled worktrees, in the jail (`Experimenter.assess`); `ray`
on a Ray cluster (`ray_executor`, loaded only when asked for: Ray is an extra).
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
    if kind == "ray":
        from metasup.pipelines.ray_executor import RayExecutor

        return RayExecutor(exp)
    raise UserError(f"experiments.executor.kind: {kind} is not known; use local or ray")
