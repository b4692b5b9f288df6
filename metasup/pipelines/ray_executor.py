"""`experiments.executor: {kind: ray}`: candidates judged on a Ray cluster.

What travels: the config and the policy (pickled), and the candidate as git bundles through
Ray's object store: the base once per run (every node fetches it at most once into its cache
repository), then per candidate only `base..commit`. On the node, a Ray task builds the commit
in a pooled worktree of that cache and runs the same `Experimenter.assess` as the local
executor (checks, shadow run, fitness, in the node's jail, with the same hard timeouts), then
sends back the steps and fitness runs and its node's id.

Nothing lost: the task is retried elsewhere when its worker process or its node dies
(`max_retries`); the driver journals a candidate only once it has a result, so a retry is
counted once. Imported only when the config asks for Ray: the supervisor core never loads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasup.facts.errors import UserError
from metasup.facts.settings import ExecutorConfig

if TYPE_CHECKING:
    from metasup.pipelines.experiments import Assessment, Experimenter

# A lost node or worker process: the task runs again on another (the journal sees one result).
MAX_RETRIES = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "experiments.executor.kind: ray needs Ray: pip install 'metasup[ray]'"
        ) from None
    return ray


def _reachable(address: str) -> None:
    """A cluster address nothing answers at is an error now: Ray itself waits minutes."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3.0):
            pass
    except (OSError, ValueError) as e:
        raise UserError(
            f"experiments.executor: cannot reach the Ray cluster at {address} ({e}); "
            "start it with `ray start --head` or fix `address`"
        ) from None


class RayExecutor:
    def __init__(self, exp: Experimenter) -> None:
        self.exp = exp
        self.ray = _ray()
        cfg = exp.ex.executor
        _reachable(cfg.address)
        if not self.ray.is_initialized():
            try:
                self.ray.init(
                    address=cfg.address,
                    logging_level="ERROR",
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(
                    f"experiments.executor: cannot join the Ray cluster at {cfg.address}: {e}"
                ) from None
        self.node = "ray"
        self.key = f"{socket.gethostname()}:{exp.repo.git_dir}"  # names the nodes' cache repo
        self._bases: dict[str, Any] = {}  # base commit -> its bundle in the object store
        self._lock = threading.Lock()
        options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "max_retries": MAX_RETRIES}
        if cfg.memory:
            options["memory"] = cfg.memory
        self._task = self.ray.remote(_evaluate_on_node).options(**options)

    def _base_bundle(self, base: str) -> Any:
        with self._lock:
            if base not in self._bases:
                self._bases[base] = self.ray.put(self._bundle(base, None))
            return self._bases[base]

    def _bundle(self, commit: str, base: str | None) -> bytes:
        from metasup.effects.git.bundle import bundle_bytes

        with self.exp.git_lock:
            return bundle_bytes(self.exp.repo, commit, base, self.exp.reaper)

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
        from metasup.pipelines.experiments import Assessment, StepResult

        base_ref = self._base_bundle(base)
        delta = self._bundle(commit, base) if commit != base else b""
        ref = self._task.remote(
            self.key,
            self.exp.config,
            self.exp.policy,
            [base_ref],  # in a list: fetched by the node only when its cache lacks the base
            delta,
            commit,
            base,
            env_extra,
            baseline,
        )
        while True:
            done, _ = self.ray.wait([ref], timeout=0.1)
            if done:
                break
            if self.exp.cancel.is_set():
                self.ray.cancel(ref, force=True)
                return Assessment([StepResult("ray", False, "cancelled", 0.0)])
        try:
            doc = self.ray.get(ref)
        except Exception as e:  # the task failed for good (retries spent): the candidate failed
            return Assessment([StepResult("ray", False, f"the Ray task failed: {e}", 0.0)])
        found = Assessment([StepResult(**s) for s in doc["steps"]], doc["fitness"], doc["baseline"])
        found.node = doc["node"]
        return found


def _quiet(*_args: Any, **_fields: Any) -> None:
    """A node journals nothing: the driver journals what it sends back."""


def _evaluate_on_node(
    key: str,
    config: Any,
    policy: Any,
    base_bundle: list[Any],
    delta: bytes,
    commit: str,
    base: str,
    env_extra: dict[str, str],
    baseline: bool,
) -> dict[str, Any]:
    """On a Ray node: the commit built in the node's cache repository, judged as locally."""
    import ray

    from metasup.effects.git.bundle import fetch_bundle
    from metasup.effects.git.lookup import init_repository
    from metasup.effects.git.repo import GitRepo
    from metasup.effects.process.spawn import Reaper, become_subreaper
    from metasup.pipelines.experiments import Experimenter

    become_subreaper()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "metasup-ray" / digest
    cache.mkdir(parents=True, exist_ok=True)
    reaper = Reaper()
    with open(cache.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time into a node's cache
        if not (cache / ".git").exists():
            init_repository(cache)
        repo = GitRepo(cache)
        if not repo.commit_exists(base):
            fetch_bundle(cache, ray.get(base_bundle[0]), reaper)
        if not repo.commit_exists(commit):
            fetch_bundle(cache, delta, reaper)
    # The task's resource requests are the jail's limits on the node.
    asked = config.experiments.executor
    limits = replace(
        config.sandbox.limits,
        cpu=asked.num_cpus,
        memory=asked.memory or config.sandbox.limits.memory,
    )
    here = replace(
        config,
        experiments=replace(config.experiments, executor=ExecutorConfig()),
        sandbox=replace(config.sandbox, limits=limits),
    )
    exp = Experimenter(repo, here, policy, cache / ".git" / "metasup", _quiet, reaper)
    try:
        found = exp.assess(commit, base, os.getpid(), env_extra, baseline=baseline)
    finally:
        if exp.jail is not None:
            exp.jail.close()
    return {
        "steps": [s.as_dict() for s in found.steps],
        "fitness": [dict(m) for m in found.fitness],
        "baseline": [dict(m) for m in found.baseline],
        "node": ray.get_runtime_context().get_node_id(),
    }
