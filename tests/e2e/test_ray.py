"""`experiments.executor: {kind: ray}` against a real Ray cluster started here: a head that runs
no tasks and two nodes of one CPU each, all with their own temp dirs, all stopped after."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from testing.fixtures import git, run_metasup, wait_for
from tests.e2e.test_evolve import assert_whole, config, evolution_repo, of_kind

RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_of(dirs: list[str]) -> list[psutil.Process]:
    """The Ray daemons started with one of `dirs`, and every process under them."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        argv = " ".join(proc.info["cmdline"] or [])
        if any(d in argv for d in dirs):
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


class Cluster:
    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dirs: list[str] = []

    def start(self, *args: str) -> str:
        # Short paths: Ray's sockets live in its temp dir, and a socket path has 107 bytes.
        tmp = tempfile.mkdtemp(prefix="msray-", dir="/tmp")
        self.dirs.append(tmp)
        subprocess.run(
            [RAY, "start", "--temp-dir", tmp, "--disable-usage-stats", *args],
            check=True,
            capture_output=True,
            env=ENV,
            timeout=120,
        )
        return tmp

    def node_of(self, pid: int) -> str:
        """The temp dir of the node whose raylet runs `pid` (in its tree)."""
        for proc in psutil.Process(pid).parents():
            argv = " ".join(proc.cmdline())
            if "raylet" in argv:
                return next(d for d in self.dirs if d in argv)
        raise AssertionError(f"{pid} runs under no raylet")

    def stop(self) -> None:
        _kill(_processes_of(self.dirs))
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


# One worker runs them all: each worker that runs one starts a cluster of its own otherwise.
pytestmark = pytest.mark.xdist_group("ray-cluster")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start("--head", "--port", str(c.port), "--num-cpus", "0", "--include-dashboard", "false")
        for _ in range(2):
            c.start("--address", c.address, "--num-cpus", "1")
        yield c
    finally:
        c.stop()
    assert not _processes_of(c.dirs), "a Ray process outlived its test"


def on_ray(body: str, cluster: Cluster) -> str:
    executor = f"    executor: {{kind: ray, address: '{cluster.address}', num_cpus: 1}}\n"
    return body.replace("    max_concurrent: 2\n", "    max_concurrent: 2\n" + executor)


def test_evolve_on_the_cluster_journals_each_candidate_once_with_its_node(
    tmp_path: Path, cluster: Cluster
) -> None:
    repo = evolution_repo(tmp_path / "r", on_ray(config(population=4, generations=2), cluster))
    out = run_metasup(repo, "evolve", "--json", timeout=180)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    doc = json.loads(out.stdout)
    evaluated = of_kind(repo, "candidate_evaluated")
    assert len(evaluated) == doc["evaluated"] >= 3
    nodes = {e["node"] for e in evaluated}
    assert len(nodes) >= 1 and all(isinstance(n, str) and len(n) > 20 for n in nodes)
    assert all(e["passed"] for e in evaluated)
    assert_whole(repo)


SLOT_MUTATOR = """\
import os
from pathlib import Path
g, i, c = (int(part[1:]) for part in os.environ["METASUP_CHILD"].rsplit("-", 3)[1:])
lines = Path("gaps.txt").read_text().splitlines()
slots = [n for n, line in enumerate(lines) if not line.startswith("#")]
lines[slots[(g + i + c) % len(slots)]] = str(5 + 11 * g + 5 * i + 2 * c)
Path("gaps.txt").write_text("\\n".join(lines) + "\\n")
"""


def test_evolve_gives_the_same_outcome_on_the_cluster_as_locally(
    tmp_path: Path, cluster: Cluster
) -> None:
    found = []
    for name, transform in (("local", lambda b: b), ("ray", lambda b: on_ray(b, cluster))):
        body = transform(config(population=6, generations=3, mutator="evolve/slots.py"))
        repo = evolution_repo(tmp_path / name, body)
        (repo / "evolve" / "slots.py").write_text(SLOT_MUTATOR)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "a mutator without chance")
        out = run_metasup(
            repo, "evolve", "--json", timeout=180, env={"METASUP_EVOLUTION_SEED": "7"}
        )
        assert out.returncode in (0, 1), out.stdout + out.stderr
        doc = json.loads(out.stdout)
        # Trees differ by the config file (the executor line); ids may too, where two children
        # of one generation made the same tree (whichever came first is judged): the rest not.
        candidates = sorted(
            (e["generation"], e["score"], e["passed"]) for e in of_kind(repo, "candidate_evaluated")
        )
        found.append((out.returncode, doc["best_score"], doc["promoted"], candidates))
    local, ray = found
    assert local[:3] == ray[:3], [(a, b) for a, b in zip(local[3], ray[3], strict=False) if a != b]
    assert local == ray


GREEDY_SCORE = """\
import json
hoard = bytearray(300 << 20)  # 300 MiB, touched
for i in range(0, len(hoard), 4096):
    hoard[i] = 1
print(json.dumps({"score": 1.0}))
"""


def test_a_candidates_memory_request_is_its_jails_limit_on_the_node(
    tmp_path: Path, cluster: Cluster
) -> None:
    outcomes = {}
    for memory in ("128MiB", "2GiB"):
        body = on_ray(config(population=4, generations=1), cluster).replace(
            "num_cpus: 1}", f"num_cpus: 1, memory: {memory}}}"
        )
        repo = evolution_repo(tmp_path / memory, body)
        (repo / "eval" / "score.py").write_text(GREEDY_SCORE)
        git(repo, "commit", "-qam", "a greedy fitness")
        out = run_metasup(repo, "evolve", "--json", "--no-merge", timeout=180)
        assert out.returncode in (0, 1), out.stdout + out.stderr
        (seed,) = [e for e in of_kind(repo, "candidate_evaluated") if e["operator"] == "seed"]
        outcomes[memory] = seed["passed"]
    assert outcomes == {"128MiB": False, "2GiB": True}


EXPERIMENT_SCORE = """\
import json, sys
sys.path.insert(0, ".")
import shellsort
print(json.dumps({"score": len(shellsort.gaps())}))
"""


def test_an_experiment_gives_the_same_outcome_on_the_cluster_as_locally(
    tmp_path: Path, cluster: Cluster
) -> None:
    outcomes = []
    failures: dict[str, list[str | None]] = {}
    for name, transform in (("local", lambda b: b), ("ray", lambda b: on_ray(b, cluster))):
        repo = evolution_repo(tmp_path / name, transform(config()))
        (repo / "eval" / "score.py").write_text(EXPERIMENT_SCORE)
        git(repo, "commit", "-qam", "a score that counts gaps")
        proposals = []
        for gaps in (["7", "3"], ["9"], ["oops"]):
            text = (repo / "gaps.txt").read_text().replace("\n0\n", f"\n{gaps[0]}\n", 1)
            if len(gaps) > 1:
                text = text.replace("\n0\n", f"\n{gaps[1]}\n", 1)
            path = tmp_path / f"{name}-{len(proposals)}.json"
            change = {"file": "gaps.txt", "content": text}
            path.write_text(json.dumps({"reason": "gaps", "changes": [change]}))
            proposals.append(str(path))
        out = run_metasup(repo, "experiment", *proposals, "--json", timeout=180)
        doc = json.loads(out.stdout)
        outcomes.append(
            (
                out.returncode,
                [(c["outcome"], c["score"], c["baseline_score"]) for c in doc["candidates"]],
            )
        )
        failures[name] = [c["failure"] for c in doc["candidates"]]
    assert outcomes[0] == outcomes[1], failures
    assert outcomes[0][1][0][0] == "merged" and outcomes[0][1][2][0] == "failed"


HOLDING_SCORE = """\
import json, os, sys, time
marker = {marker!r}
open(marker, "a").write(f"{{os.getpid()}}\\n")
while os.path.exists({hold!r}):
    time.sleep(0.05)  # ok: the fitness holds until the test has killed a node
sys.path.insert(0, ".")
import shellsort
print(json.dumps({{"score": 1.0 + len(shellsort.gaps())}}))
"""


def test_a_node_lost_mid_evaluation_loses_nothing_and_counts_once(
    tmp_path: Path, cluster: Cluster
) -> None:
    marker, hold = tmp_path / "fitness-pids", tmp_path / "hold"
    body = on_ray(config(population=4, generations=1), cluster)
    body = body.replace("  evolution:", "  sandbox: {mode: off}\n  evolution:")
    body = body.replace("    max_concurrent: 2\n", "    max_concurrent: 1\n")
    repo = evolution_repo(tmp_path / "r", body)
    (repo / "eval" / "score.py").write_text(
        HOLDING_SCORE.format(marker=str(marker), hold=str(hold))
    )
    git(repo, "commit", "-qam", "a fitness that holds")
    hold.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasup", "evolve", "--json", "--no-merge"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or (marker.exists() and marker.read_text().split()),
            timeout=120,
            what="the first fitness run",
        )
        assert proc.poll() is None, proc.communicate()
        first = marker.read_text().split()
        lost = cluster.node_of(int(first[0]))
        _kill(_processes_of([lost]))  # the whole node: its raylet, workers, and the fitness
        survivor = [d for d in cluster.dirs[1:] if d != lost]
        assert survivor, "no node left to run the candidate again"
        wait_for(lambda: len(marker.read_text().split()) >= 2, timeout=120, what="the retry")
        hold.unlink()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        hold.unlink(missing_ok=True)
    assert proc.returncode in (0, 1), out + err
    seeds = [e for e in of_kind(repo, "candidate_evaluated") if e["operator"] == "seed"]
    assert len(seeds) == 1 and seeds[0]["passed"] is True
    assert_whole(repo)
    # The lost node comes back for the tests after this one.
    cluster.dirs.remove(lost)
    cluster.start("--address", cluster.address, "--num-cpus", "1")
