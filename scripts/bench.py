"""metasup benchmarks: medians, and ratios against the git CLI measured in the same run.

    scripts/bench [--sizes 1000,10000,50000] [--repeats 7] [--cycles 15] [--json-out FILE]

1. snapshot after 10 changed files: metasup (pygit2) vs `git add -A && git commit`
2. archive + reset (10 changed files, 1 untracked): metasup vs the git CLI equivalent
3. crash-to-relaunch through a real `metasup run`: quick exit -> archived, reset, new process
4. plain restart latency (exit after min_runtime, zero backoff) to the next process
5. idle CPU and RSS of the supervisor while the agent runs
6. proposal validation, 1 and 200 changes
7. experiments: shadow spawn with a warm pool vs `git worktree add`; 4 candidates at
   max_concurrent 1 vs 2
8. the HTTP API: GET /supervisor/status latency from a second process with 200 concurrent
   keep-alive clients while the loop restarts the agent, paced (each client every 100 ms) and
   saturated (no pause); then the supervisor's idle CPU and RSS with the API on (and the API
   process's own, reported apart)
9. the tamper watch on a 10k-file repository: a protected file overwritten while the agent runs,
   to the file holding the good commit's content again
10. MCP: the fleet's stdio probe round trip (tools/list through metasup's session) and the
   agent's round trip through `metasup mcp connect`, each against a direct SDK session to the
   same server; time from a server's death (SIGKILL) to healthy again
12. the Ray executor on a cluster started here: 8 candidates burning 1 s of CPU on one node vs
   two (one CPU each); the dispatch per candidate (bundle, ship, build) on 10k files
11. evolution on the 10k-file repository: metasup's own time per candidate (wall time minus
   what its mutator, check and fitness commands took by their own stamps), jail on and off;
   children per second with a fitness burning 300 ms of CPU, max_concurrent 2 against 1

14. `--only serve`: the front door's added latency on loopback: p50 and p99 at 200 requests a
   second (open loop, 4 keep-alive connections) straight to one replica, through the proxy, and
   through the proxy copying every request to a candidate (mirror 1.0); each in its own process

13. `--only loop`: the loop as users run it, through `metasup run` at each of `--sizes`: crash
   to relaunch with a rollback (10 files changed) against the git CLI loop `add -A; commit;
   update-ref; reset --hard; clean -fd`, the snapshot of a healthy run's 10 changed files (the
   journal's `duration_ms`) against `git add -A && git commit`, a plain restart (jailed, and
   with the jail off) against pm2 when npm can install it and a bare shell respawn loop, and
   `--drift-cycles` crashes in a row at 10k files (early against late). Run it on a quiet
   disk: on ext4 without a journal, files created within a minute or so of many deletions (the
   end of another bench run) skip past the freed inodes and cost ten times as much

The agent for 3-5 is a small C program (built with gcc) that stamps CLOCK_REALTIME as its first
and last instruction, so the latency is exit-to-exec, without any interpreter start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from metasup.effects.git.repo import GitRepo

AGENT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void stamp(const char *what) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    FILE *f = fopen(getenv("BENCH_LOG"), "a");
    fprintf(f, "%s %ld.%09ld\n", what, (long)t.tv_sec, t.tv_nsec);
    fclose(f);
}

int main(int argc, char **argv) {
    stamp("start");
    const char *mode = argc > 1 ? argv[1] : "quick";
    if (strcmp(mode, "idle") == 0) { for (;;) pause(); }
    if (strcmp(mode, "normal") == 0) { usleep(atoi(argv[2]) * 1000); stamp("exit"); return 0; }
    if (strcmp(mode, "edits") == 0) {  /* a healthy run that changed argv[3] files */
        usleep(atoi(argv[2]) * 1000);
        for (int i = 0; i < atoi(argv[3]); i++) {
            char path[64];
            snprintf(path, sizeof path, "d%03d/f%05d.txt", i % 100, i);
            FILE *f = fopen(path, "a");
            if (f) { fprintf(f, "changed by run %d\n", getpid()); fclose(f); }
        }
        stamp("exit");
        return 0;
    }
    if (strcmp(mode, "check") == 0) { usleep(atoi(argv[2]) * 1000); stamp("exit"); return 0; }
    if (strcmp(mode, "mutate") == 0) {  /* an evolution's mutator: one file, a new value */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        FILE *f = fopen("evolved.txt", "w");
        fprintf(f, "%d %ld\n", getpid(), t.tv_nsec);
        fclose(f);
        stamp("exit");
        return 0;
    }
    if (strcmp(mode, "fit") == 0) {  /* a fitness command burning N ms of CPU */
        struct timespec a, b;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
        volatile unsigned long x = 0;
        do {
            for (int i = 0; i < 100000; i++) x += i;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
        } while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < atoi(argv[2]));
        printf("{\"score\": %d}\n", getpid() % 1000);
        stamp("exit");
        return 0;
    }
    int dirty = argc > 2 ? atoi(argv[2]) : 0;
    for (int i = 0; i < dirty; i++) {
        char path[64];
        snprintf(path, sizeof path, "d%03d/f%05d.txt", i % 100, i);
        FILE *f = fopen(path, "a");
        if (f) { fprintf(f, "changed by a failing run %d\n", getpid()); fclose(f); }
    }
    if (dirty) { FILE *f = fopen("untracked-by-agent.txt", "w"); fputs("new\n", f); fclose(f); }
    stamp("exit");
    return 1;
}
"""


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return out.stdout.strip()


def make_repo(root: Path, files: int, seed: int = 1) -> Path:
    repo = root / f"repo-{files}"
    repo.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(files):
        d = repo / f"d{i % 100:03d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(512, 2048)).hex().encode())
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@localhost")
    # Straight into a pack, as a clone has it: `git add` + `gc` would write, then delete, one
    # loose object per file, and on a journal-less ext4 (this machine's) every file created in
    # the next minutes then skips past those freed inodes, which slows whatever runs next.
    stream = [b"commit refs/heads/main\n", b"committer bench <bench@localhost> 0 +0000\n"]
    stream.append(b"data 4\nbase\n")
    for path in sorted(p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts):
        data = path.read_bytes()
        rel = path.relative_to(repo).as_posix().encode()
        stream += [b"M 100644 inline ", rel, b"\ndata %d\n" % len(data), data, b"\n"]
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input=b"".join(stream), check=True
    )  # fmt: skip
    git(repo, "reset", "-q")  # the index, with the files' stat data, as a live repo has it
    git(repo, "status", "--porcelain")
    return repo


def change_files(repo: Path, count: int, files: int, tag: str) -> None:
    for i in range(count):
        n = (i * 7919) % files
        path = repo / f"d{n % 100:03d}" / f"f{n:05d}.txt"
        with path.open("a") as f:
            f.write(f"edit {tag} {i}\n")


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def bench_snapshot(repo: Path, files: int, repeats: int) -> dict[str, float]:
    g = GitRepo(repo)
    ours: list[float] = []
    cli: list[float] = []
    for r in range(repeats):  # interleaved, so both see the same machine state
        change_files(repo, 10, files, f"ms{r}")
        t = time.perf_counter()
        g.snapshot(r)
        ours.append(time.perf_counter() - t)
        change_files(repo, 10, files, f"cli{r}")
        t = time.perf_counter()
        subprocess.run("git add -A && git commit -q -m snapshot", shell=True, cwd=repo, check=True)
        cli.append(time.perf_counter() - t)
    return {"metasup_ms": median_ms(ours), "git_cli_ms": median_ms(cli)}


def bench_archive_reset(repo: Path, files: int, repeats: int) -> dict[str, float]:
    g = GitRepo(repo)
    good = git(repo, "rev-parse", "HEAD")
    ours: list[float] = []
    cli: list[float] = []
    tmp_index = repo / ".git" / "bench-index"
    for r in range(repeats):
        change_files(repo, 10, files, f"a{r}")
        (repo / "untracked.txt").write_text(f"u{r}\n")
        t = time.perf_counter()
        g.archive("bench", r)
        g.reset_to(good)
        ours.append(time.perf_counter() - t)

        change_files(repo, 10, files, f"b{r}")
        (repo / "untracked.txt").write_text(f"v{r}\n")
        t = time.perf_counter()
        shutil.copy(repo / ".git" / "index", tmp_index)
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        git(repo, "add", "-A", env=env)
        tree = git(repo, "write-tree", env=env)
        commit = git(repo, "commit-tree", tree, "-p", "HEAD", "-m", "archive")
        git(repo, "update-ref", f"refs/bench/archive-{r}", commit)
        git(repo, "reset", "-q", "--hard", good)
        git(repo, "clean", "-fdq")
        cli.append(time.perf_counter() - t)
    return {"metasup_ms": median_ms(ours), "git_cli_ms": median_ms(cli)}


def bench_bulk_archive(root: Path, repeats: int = 3) -> dict[str, Any]:
    """A failed run that left a 2 GiB file, or 200k small files, untracked: the archive (and
    the reset after it) against what hashing them would cost the git CLI, in the same run."""
    from metasup.effects.git.sweep import Sweep

    out: dict[str, Any] = {}
    repo = make_repo(root / "bulk", 100)
    g = GitRepo(repo)
    good = git(repo, "rev-parse", "HEAD")
    sweep = Sweep(since_ns=time.time_ns())
    ours, anchor = [], []
    for r in range(repeats):
        big = repo / "big.bin"
        with big.open("wb") as f:
            f.truncate(2 << 30)  # sparse: the disk holds nothing, a hash reads all of it
        t = time.perf_counter()
        g.archive("bench", r, sweep)
        g.reset_to(good)
        ours.append(time.perf_counter() - t)
        with big.open("wb") as f:
            f.truncate(2 << 30)
        t = time.perf_counter()
        git(repo, "hash-object", "big.bin")  # hashing alone, without writing the object
        anchor.append(time.perf_counter() - t)
        big.unlink()
    out["file_2gib"] = {"metasup_ms": median_ms(ours), "git_hash_object_ms": median_ms(anchor)}

    def small_files() -> None:
        for d in range(200):
            folder = repo / "out" / f"d{d:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                (folder / f"{n}.txt").write_text(f"{d}/{n}\n")

    ours, anchor = [], []
    tmp_index = repo / ".git" / "bench-index"
    for r in range(max(1, repeats - 1)):
        small_files()
        t = time.perf_counter()
        g.archive("bench", r, sweep)
        g.reset_to(good)
        ours.append(time.perf_counter() - t)
        small_files()
        t = time.perf_counter()
        shutil.copy(repo / ".git" / "index", tmp_index)
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        git(repo, "add", "-A", env=env)
        git(repo, "write-tree", env=env)
        anchor.append(time.perf_counter() - t)
        shutil.rmtree(repo / "out")
    out["files_200k"] = {"metasup_ms": median_ms(ours), "git_cli_add_ms": median_ms(anchor)}
    shutil.rmtree(repo)
    return out


def print_bulk(b: dict[str, Any]) -> None:
    f, m = b["file_2gib"], b["files_200k"]
    print("\nArchive and reset of what a failed run left untracked (medians)")
    print(
        f"  one 2 GiB file: {f['metasup_ms']:.0f} ms (git hash-object alone: "
        f"{f['git_hash_object_ms']:.0f} ms, {f['metasup_ms'] / f['git_hash_object_ms']:.3f}x)"
    )
    print(
        f"  200k small files: {m['metasup_ms']:.0f} ms (git add -A alone: "
        f"{m['git_cli_add_ms']:.0f} ms, {m['metasup_ms'] / m['git_cli_add_ms']:.3f}x)"
    )


def bench_validation(root: Path, repeats: int) -> dict[str, dict[str, float]]:
    """proposals.validate (schema, paths, policy, the tree) on 1- and 200-change proposals."""
    from metasup.facts.policy import load_policy
    from metasup.pipelines.proposals import validate

    work = root / "validation"
    (work / "src").mkdir(parents=True)
    for i in range(200):
        (work / "src" / f"f{i:03d}.py").write_text(f"v{i}\n")
    policy = load_policy(work)
    out = {}
    for n in (1, 200):
        raw = json.dumps(
            {
                "reason": "bench",
                "changes": [{"file": f"src/f{i:03d}.py", "content": "x" * 2048} for i in range(n)],
            }
        ).encode()
        validate(raw, policy, work)  # warm: the schema is compiled once
        samples = []
        for _ in range(max(repeats, 50 if n == 200 else 500)):
            t = time.perf_counter()
            _, errors = validate(raw, policy, work)
            samples.append(time.perf_counter() - t)
            assert not errors, errors
        ms = median_ms(samples)
        out[f"{n}_change"] = {"median_ms": ms, "per_second": round(1000 / ms) if ms else 0}
    return out


def bench_experiments(repo: Path, agent: Path, log: Path, repeats: int) -> dict[str, Any]:
    """Shadow spawn with a warm worktree pool vs `git worktree add`; 4 candidates at
    max_concurrent 1 vs 2."""
    from metasup.effects.process.spawn import Reaper, become_subreaper
    from metasup.facts.config import parse_config
    from metasup.facts.policy import load_policy
    from metasup.pipelines.experiments import Experimenter

    become_subreaper()
    g = GitRepo(repo)

    def experimenter(check_ms: int, concurrent: int) -> Experimenter:
        text = (
            "supervisor:\n  agent: {command: [/bin/true]}\n  experiments:\n"
            f"    checks: [[{json.dumps(str(agent))}, check, '{check_ms}']]\n"
            f"    max_concurrent: {concurrent}\n    timeout: 60s\n" + writable(log)
        )
        cfg = parse_config(text, repo / "metasup.yaml", validate=True)
        state = repo / ".git" / "metasup"
        return Experimenter(g, cfg, load_policy(repo), state, lambda *a, **k: None, Reaper())

    def proposal(n: int) -> tuple[str, bytes]:
        change = {"file": f"d{n % 100:03d}/f{n:05d}.txt", "content": f"candidate {n}\n"}
        return (f"p{n}", json.dumps({"reason": "bench", "changes": [change]}).encode())

    # Shadow spawn: from the call to the first check's process starting, with the pool warm.
    ex = experimenter(0, 1)
    ex.evaluate([proposal(0)])  # warms the pool: the first slot costs a full checkout
    spawn = []
    for r in range(repeats):
        if log.exists():
            log.unlink()
        os.environ["BENCH_LOG"] = str(log)
        t0 = time.time()
        ex.evaluate([proposal(r + 1)])
        started = float(log.read_text().split()[1])
        spawn.append(started - t0)
    add = []
    for r in range(max(3, repeats // 2)):
        path = repo.parent / f"wt-{r}"
        t = time.perf_counter()
        git(repo, "worktree", "add", "-q", "-b", f"bench-wt-{r}", str(path))
        add.append(time.perf_counter() - t)
        git(repo, "worktree", "remove", "--force", str(path))
        git(repo, "branch", "-q", "-D", f"bench-wt-{r}")
    # Wall time of 4 candidates whose one check takes 300 ms.
    walls = {}
    for concurrent in (1, 2):
        ex = experimenter(300, concurrent)
        ex.evaluate([proposal(90 + k) for k in range(concurrent)])  # warm that many slots
        t = time.perf_counter()
        ex.evaluate([proposal(100 + k) for k in range(4)])
        walls[concurrent] = time.perf_counter() - t
    for ref, _ in g.experiment_branches():
        g.delete_ref(ref)
    return {
        "shadow_spawn_warm_pool_ms": median_ms(spawn),
        "git_worktree_add_ms": median_ms(add),
        "four_candidates_wall_s": {str(k): round(v, 3) for k, v in walls.items()},
        "concurrency_ratio": round(walls[2] / walls[1], 3),
    }


def bench_evolution(repo: Path, agent: Path, log: Path) -> dict[str, Any]:
    """`metasup evolve` on `repo`: its own overhead per candidate (wall time minus the time its
    commands ran, from their own stamps: the jail's start and end of each command count as
    overhead), with the jail and without, once the pool's slots exist; then the throughput of a
    CPU-bound fitness (300 ms) at max_concurrent 1 vs 2."""
    from metasup.effects.records.journal import StateDir, read_events
    from metasup.facts.config import parse_config
    from metasup.facts.policy import load_policy
    from metasup.pipelines.evolution.offline import run_offline

    g = GitRepo(repo)

    def evolve(mode: str, concurrent: int, burn_ms: int, population: int) -> dict[str, float]:
        a = json.dumps(str(agent))
        text = (
            "supervisor:\n  agent: {command: [/bin/true]}\n  experiments:\n"
            f"    checks: [[{a}, check, '0']]\n    fitness: [{a}, fit, '{burn_ms}']\n"
            f"    max_concurrent: {concurrent}\n    timeout: 60s\n"
            f"  evolution:\n    mutator: [{a}, mutate]\n    population: {population}\n"
            "    generations: 2\n    islands: 1\n    elite: 1\n    crossover_rate: 0\n"
            + writable(log, mode)
        )
        cfg = parse_config(text, repo / "metasup.yaml", validate=True)
        if log.exists():
            log.unlink()
        os.environ["BENCH_LOG"] = str(log)
        t = time.perf_counter()
        result = run_offline(g, cfg, load_policy(repo), resume=False, generations=None, merge=False)
        wall = time.perf_counter() - t
        stamps = [line.split() for line in log.read_text().splitlines()]
        commands, started = 0.0, None
        for what, when in stamps:  # one command at a time at max_concurrent 1
            if what == "start":
                started = float(when)
            elif started is not None:
                commands += float(when) - started
                started = None
        candidates = result.history.evaluations
        # The breeding generations alone (no seed, no final verdict): children per second.
        times = {
            (e["event"], e.get("generation")): e["ts"]
            for e in read_events(StateDir.for_git_dir(g.git_dir).events)
            if e.get("evolution") == result.history.evolution
        }
        first = _ts(times[("generation_started", 1)])
        last = _ts(times[("generation_finished", 2)])
        children = sum(
            1 for m in result.history.members.values() if m.generation > 0 and m.operator != "elite"
        )
        return {
            "wall_s": round(wall, 3),
            "candidates": candidates,
            "commands_s": round(commands, 3),
            "overhead_per_candidate_ms": round((wall - commands) / candidates * 1000, 1),
            "children_per_s": round(children / (last - first), 3),
        }

    # The pool's two slots made first: each costs a full checkout once (timed apart), which
    # 15 candidates would otherwise share; and which slots a run makes depends on its verdict.
    from metasup.effects.git.candidates import worktree_at

    pool = StateDir.for_git_dir(g.git_dir).root / "worktrees"
    made = []
    for slot in ("cand-0", "base-0"):
        t = time.perf_counter()
        worktree_at(g, slot, pool, g.head() or "HEAD")
        made.append(time.perf_counter() - t)
    jailed = evolve("auto", 1, 0, 8)
    off = evolve("off", 1, 0, 8)
    one = evolve("auto", 1, 300, 9)  # 8 children a generation: 2 slots stay busy
    two = evolve("auto", 2, 300, 9)
    return {
        "files": sum(1 for _ in repo.rglob("*.txt")),
        "slot_first_checkout_ms": median_ms(made),
        "overhead_jail": jailed,
        "overhead_off": off,
        "cpu_bound_children_per_s": {"1": one["children_per_s"], "2": two["children_per_s"]},
        "throughput_ratio": round(two["children_per_s"] / one["children_per_s"], 3),
    }


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _ray_node(args: list[str], dirs: list[str]) -> None:
    tmp = tempfile.mkdtemp(prefix="msbray-", dir="/tmp")
    dirs.append(tmp)
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "start", "--temp-dir", tmp,
         "--disable-usage-stats", *args],
        check=True, capture_output=True, timeout=120,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip


def _ray_stop(dirs: list[str]) -> None:
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(d in " ".join(proc.info["cmdline"] or []) for d in dirs):
            procs += [proc, *proc.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def bench_ray(repo: Path, agent: Path, log: Path, repeats: int) -> dict[str, Any]:
    """The Ray executor on a cluster started here (a head running no tasks, nodes of one CPU):
    8 candidates whose fitness burns 1 s of CPU, on one node then two; and the dispatch cost
    per candidate on `repo` (the same no-op candidate judged through Ray minus locally)."""
    from metasup.effects.process.spawn import Reaper
    from metasup.facts.config import parse_config
    from metasup.facts.policy import load_policy
    from metasup.pipelines.experiments import Experimenter

    g = GitRepo(repo)
    dirs: list[str] = []
    port = 6500 + os.getpid() % 1000
    a = json.dumps(str(agent))

    def experimenter(kind: str, burn_ms: int) -> Experimenter:
        text = (
            "supervisor:\n  agent: {command: [/bin/true]}\n  experiments:\n"
            f"    checks: [[{a}, check, '0']]\n    fitness: [{a}, fit, '{burn_ms}']\n"
            "    max_concurrent: 8\n    timeout: 60s\n"
            f"    executor: {{kind: {kind}, address: '127.0.0.1:{port}', num_cpus: 1}}\n"
            + writable(log)
        )
        cfg = parse_config(text, repo / "metasup.yaml", validate=True)
        state = repo / ".git" / "metasup"
        return Experimenter(g, cfg, load_policy(repo), state, lambda *a, **k: None, Reaper())

    def proposal(n: int) -> tuple[str, bytes]:
        change = {"file": f"d{n % 100:03d}/f{n:05d}.txt", "content": f"ray candidate {n}\n"}
        return (f"r{n}", json.dumps({"reason": "bench", "changes": [change]}).encode())

    os.environ["BENCH_LOG"] = str(log)
    try:
        _ray_node(["--head", "--port", str(port), "--num-cpus", "0",
                   "--include-dashboard", "false"], dirs)  # fmt: skip
        _ray_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "1"], dirs)
        walls = {}
        for nodes in (1, 2):
            if nodes == 2:
                _ray_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "1"], dirs)
            ex = experimenter("ray", 1000)
            ex.evaluate([proposal(900 + nodes)])  # the nodes' caches hold the base
            t = time.perf_counter()
            ex.evaluate([proposal(1000 + 10 * nodes + k) for k in range(8)])
            walls[nodes] = time.perf_counter() - t
        local, ray = experimenter("local", 0), experimenter("ray", 0)
        local.evaluate([proposal(2000)])
        ray.evaluate([proposal(2001)])
        dispatch = []
        for r in range(repeats):
            t = time.perf_counter()
            local.evaluate([proposal(3000 + r)])
            here = time.perf_counter() - t
            t = time.perf_counter()
            ray.evaluate([proposal(4000 + r)])
            dispatch.append(time.perf_counter() - t - here)
    finally:
        _ray_stop(dirs)
        for ref, _ in g.experiment_branches():
            g.delete_ref(ref)
    return {
        "eight_candidates_wall_s": {str(k): round(v, 3) for k, v in walls.items()},
        "two_nodes_ratio": round(walls[1] / walls[2], 3),
        "dispatch_overhead_ms": median_ms(dispatch),
    }


def print_ray(r: dict[str, Any]) -> None:
    w = r["eight_candidates_wall_s"]
    print("\n## the Ray executor (a cluster started here; nodes of one CPU)")
    print(
        f"8 candidates burning 1 s of CPU: {w['1']} s on one node, {w['2']} s on two "
        f"-> x{r['two_nodes_ratio']}"
    )
    print(
        f"dispatch per candidate (bundle, ship, build), 10k files: {r['dispatch_overhead_ms']} ms"
    )


def print_experiments(e: dict[str, Any]) -> None:
    print("\n## experiments on 10k files")
    print(
        f"shadow spawn, warm pool: {e['shadow_spawn_warm_pool_ms']} ms median; "
        f"git worktree add: {e['git_worktree_add_ms']} ms "
        f"({e['git_worktree_add_ms'] / max(e['shadow_spawn_warm_pool_ms'], 0.001):.0f}x)"
    )
    walls = e["four_candidates_wall_s"]
    print(
        f"4 candidates: {walls['1']} s at max_concurrent 1, {walls['2']} s at 2 "
        f"(ratio {e['concurrency_ratio']})"
    )


def print_evolution(e: dict[str, Any]) -> None:
    print("\n## evolution (metasup evolve, 10k-file repository)")
    print(f"a pooled worktree's first checkout (once per slot): {e['slot_first_checkout_ms']} ms")
    for key, label in (("overhead_jail", "jail on"), ("overhead_off", "mode: off")):
        o = e[key]
        print(
            f"overhead per candidate ({label}): {o['overhead_per_candidate_ms']} ms "
            f"({o['candidates']} candidates, wall {o['wall_s']} s, commands {o['commands_s']} s)"
        )
    w = e["cpu_bound_children_per_s"]
    print(
        f"CPU-bound fitness (300 ms of CPU), children per second: {w['1']} at max_concurrent 1, "
        f"{w['2']} at 2 -> x{e['throughput_ratio']}"
    )


def approve(repo: Path) -> None:
    """A changed config is an operator's change: approved, as an operator would."""
    subprocess.run(
        [sys.executable, "-m", "metasup", "approve", "--reason", "bench config"],
        cwd=repo, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def build_agent(root: Path) -> Path:
    src = root / "agent.c"
    src.write_text(AGENT_C)
    exe = root / "bench-agent"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def writable(log: Path, mode: str = "auto") -> str:
    """The config's sandbox: the jail may write the agent's log, which lies outside the tree."""
    return f"  sandbox: {{mode: {mode}, writable: [{json.dumps(str(log.parent))}]}}\n"


def supervise(
    repo: Path,
    agent: Path,
    args: list[str],
    cycles: int,
    min_runtime: str,
    log: Path,
    sandbox: str = "auto",
) -> list[float]:
    """Run `metasup run` for `cycles` launches; gaps from each exit to the next start (s).
    The agent's log lies outside the tree: the jail is told it may write there."""
    (repo / "metasup.yaml").write_text(
        "supervisor:\n"
        f"  min_runtime: {min_runtime}\n"
        "  max_failures: 100000\n"
        "  agent:\n"
        f"    command: {json.dumps([str(agent), *args])}\n"
        "    restart_backoff: {initial: 0s, max: 1s}\n" + writable(log, sandbox)
    )
    approve(repo)
    if log.exists():
        log.unlink()
    subprocess.run(
        [sys.executable, "-m", "metasup", "run", "--max-cycles", str(cycles)],
        cwd=repo, check=True, env={**os.environ, "BENCH_LOG": str(log)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return _gaps(log)


def journal_durations(repo: Path, event: str) -> list[float]:
    """`duration_ms` of every `event` in the journal, in seconds."""
    path = repo / ".git" / "metasup" / "events.jsonl"
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == event and "duration_ms" in record:
            out.append(record["duration_ms"] / 1000)
    return out


def cli_crash_loop(repo: Path, files: int, cycles: int) -> list[float]:
    """The git CLI doing what a crash costs: commit the run's state aside, reset, clean."""
    good = git(repo, "rev-parse", "HEAD")
    script = (
        "git add -A && git commit -qm archive && git update-ref refs/bench/archive-$1 HEAD && "
        f"git reset -q --hard {good} && git clean -fdq"
    )
    out = []
    for n in range(cycles):
        change_files(repo, 10, files, f"cli{n}")
        (repo / "untracked-by-agent.txt").write_text(f"{n}\n")
        t = time.perf_counter()
        subprocess.run(["bash", "-c", script, "bench", str(n)], cwd=repo, check=True)
        out.append(time.perf_counter() - t)
    return out


def cli_snapshots(repo: Path, files: int, cycles: int) -> list[float]:
    out = []
    for n in range(cycles):
        change_files(repo, 10, files, f"snap{n}")
        t = time.perf_counter()
        subprocess.run("git add -A && git commit -qm snapshot", shell=True, cwd=repo, check=True)
        out.append(time.perf_counter() - t)
    return out


def _gaps(log: Path) -> list[float]:
    """Exit-to-start gaps (s) from the agent's own stamps."""
    gaps, last = [], None
    for line in log.read_text().splitlines():
        what, ts = line.split()
        if what == "exit":
            last = float(ts)
        elif last is not None:
            gaps.append(float(ts) - last)
            last = None
    return gaps


def pm2_loop(root: Path, agent: Path, log: Path, cycles: int) -> list[float] | None:
    """pm2 restarting the same agent, when npm can install it (None otherwise): pm2's own
    daemon, in a home of its own, told to restart at once however short the run."""
    npm = shutil.which("npm")
    if npm is None:
        return None
    prefix, home = root / "pm2", root / "pm2-home"
    try:
        subprocess.run(
            [npm, "install", "--prefix", str(prefix), "pm2@5", "--no-audit", "--no-fund",
             "--silent"],
            check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    pm2 = str(prefix / "node_modules" / ".bin" / "pm2")
    env = {**os.environ, "PM2_HOME": str(home), "BENCH_LOG": str(log)}
    if log.exists():
        log.unlink()
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(
        [pm2, "start", str(agent), "--name", "bench", "--interpreter", "none",
         "--max-restarts", "1000000", "--restart-delay", "0", "--", "normal", "60"],
        check=True, **quiet,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60 + cycles
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("exit") > cycles:
                break
            time.sleep(0.1)  # pm2 has no event to wait on; the count is what ends it
    finally:
        subprocess.run([pm2, "kill"], check=False, **quiet)
    return _gaps(log)[:cycles]


def respawn_loop(agent: Path, log: Path, cycles: int) -> list[float]:
    """The same agent restarted by a bare shell loop: the floor any supervisor adds to."""
    if log.exists():
        log.unlink()
    env = {**os.environ, "BENCH_LOG": str(log)}
    subprocess.run(
        ["bash", "-c", f'for i in $(seq {cycles}); do "$0" normal 60; done', str(agent)],
        env=env, check=True,
    )  # fmt: skip
    return _gaps(log)


def bench_loop(root: Path, sizes: list[int], cycles: int, drift_cycles: int) -> dict[str, Any]:
    """Issue 17's figures, through `metasup run` as users run it, each beside its anchor."""
    agent, log = build_agent(root), root / "agent.log"
    out: dict[str, Any] = {"sizes": {}}
    for files in sizes:
        print(f"[bench] loop at {files} files", file=sys.stderr, flush=True)
        repo = make_repo(root / f"loop-{files}", files)
        crash = supervise(repo, agent, ["quick", "10"], cycles, "10s", log)
        cli = cli_crash_loop(repo, files, cycles)
        git(repo, "reset", "-q", "--hard", "HEAD")
        supervise(repo, agent, ["edits", "60", "10"], cycles, "50ms", log)
        snaps = journal_durations(repo, "snapshot")
        cli_snap = cli_snapshots(repo, files, cycles)
        plain = supervise(repo, agent, ["normal", "60"], cycles, "50ms", log)
        plain_off = supervise(repo, agent, ["normal", "60"], cycles, "50ms", log, "off")
        out["sizes"][files] = {
            "crash_to_relaunch": _dist(crash),
            "cli_crash_loop": _dist(cli),
            "snapshot_10_changed": _dist(snaps),
            "cli_add_commit": _dist(cli_snap),
            "plain_restart": _dist(plain),
            "plain_restart_jail_off": _dist(plain_off),
        }
    out["respawn_anchor"] = {"by": "bash loop", **_dist(respawn_loop(agent, log, cycles))}
    pm2 = pm2_loop(root, agent, log, cycles)
    out["pm2"] = _dist(pm2) if pm2 else None
    print(f"[bench] {drift_cycles} crashes in a row at 10k files", file=sys.stderr, flush=True)
    repo = make_repo(root / "drift", 10000)
    drift = supervise(repo, agent, ["quick", "10"], drift_cycles, "10s", log)
    # Medians of 50 crashes at each end: a median of 10 swings by a quarter here when one
    # background repack (or the disk, see `make_repo`) lands in its window.
    window = max(10, min(50, (len(drift) - 5) // 4))
    out["drift"] = {
        "cycles": len(drift),
        "window": window,
        "early_ms": round(statistics.median(drift[5 : 5 + window]) * 1000, 2),
        "late_ms": round(statistics.median(drift[-window:]) * 1000, 2),
    }
    return out  # the repositories go with the bench's folder: freed inodes slow what follows


def print_loop(r: dict[str, Any]) -> None:
    print("\n== the loop as users run it (medians, ms; the anchor beside each) ==")
    head = ("files", "crash", "git CLI", "snapshot", "add+commit", "restart", "jail off")
    print("{:>7} {:>8} {:>8} {:>9} {:>10} {:>8} {:>9}".format(*head))
    for files, row in r["sizes"].items():
        print(
            f"{files:>7} {row['crash_to_relaunch']['median_ms']:>8} "
            f"{row['cli_crash_loop']['median_ms']:>8} {row['snapshot_10_changed']['median_ms']:>9} "
            f"{row['cli_add_commit']['median_ms']:>10} {row['plain_restart']['median_ms']:>8} "
            f"{row['plain_restart_jail_off']['median_ms']:>9}"
        )
    a = r["respawn_anchor"]
    print(f"restart anchors: {a['by']} {a['median_ms']} ms", end="")
    print(f", pm2 {r['pm2']['median_ms']} ms" if r["pm2"] else ", pm2 not installable here")
    d = r["drift"]
    print(
        f"{d['cycles']} crashes at 10k (medians of {d.get('window', 10)}): "
        f"early {d['early_ms']} ms, late {d['late_ms']} ms"
    )


def cpu_ns(pid: int) -> int:
    """Time on a CPU, all threads, in ns, from the scheduler's own account (/proc/PID/task/*/
    schedstat): user+system times come in 10 ms ticks, too coarse for a process that wakes for
    a millisecond every few seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def bench_idle(repo: Path, agent: Path, log: Path, seconds: float) -> dict[str, float]:
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  min_runtime: 1s\n  agent:\n"
        f"    command: {json.dumps([str(agent), 'idle'])}\n" + writable(log)
    )
    approve(repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasup", "run"], cwd=repo,
        env={**os.environ, "BENCH_LOG": str(log)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (log.exists() and "start" in log.read_text()):
        if time.monotonic() > deadline:
            raise RuntimeError("the idle agent never started")
        time.sleep(0.05)
    time.sleep(1.5)  # let min_runtime pass and start-up work settle before measuring
    sup = psutil.Process(proc.pid)
    before = cpu_ns(proc.pid)
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement window
    after = cpu_ns(proc.pid)
    wall = time.monotonic() - t0
    rss = sup.memory_info().rss / (1 << 20)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    cpu = (after - before) / 1e9 / wall * 100
    return {"cpu_percent": round(cpu, 4), "rss_mib": round(rss, 1), "window_s": seconds}


LOAD_CLIENT = r"""
import asyncio, json, sys, time
host, port, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, pause = float(sys.argv[4]), float(sys.argv[5])
REQUEST = f"GET /supervisor/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
latencies, errors = [], 0

async def client(deadline):
    global errors
    reader, writer = await asyncio.open_connection(host, port)
    while time.monotonic() < deadline:
        t = time.perf_counter()
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = int(next(x for x in lines if x.lower().startswith(b"content-length:"))[15:])
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - t)
        if not head.startswith(b"HTTP/1.1 200") or b'"status"' not in body:
            errors += 1
        if pause:
            await asyncio.sleep(pause)
    writer.close()

async def main():
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    await asyncio.gather(*(client(deadline) for _ in range(clients)))
    print(json.dumps({"latencies": latencies, "errors": errors, "wall": time.monotonic() - t0}))

asyncio.run(main())
"""


def _load(url: str, clients: int, seconds: float, pause: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    out = subprocess.run(
        [sys.executable, "-c", LOAD_CLIENT, parts.hostname or "127.0.0.1", str(parts.port),
         str(clients), str(seconds), str(pause)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    return {
        **_dist(doc["latencies"]),
        "requests_per_s": round(len(doc["latencies"]) / doc["wall"]),
        "errors": doc["errors"],
    }


def _wait_api(repo: Path) -> str:
    state = repo / ".git" / "metasup" / "state.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            url = json.loads(state.read_text()).get("api_url")
        except (OSError, ValueError):
            url = None
        if url:
            return str(url)
        time.sleep(0.05)  # polling for the supervisor to come up, bounded
    raise RuntimeError("the API never came up")


def bench_api(repo: Path, agent: Path, log: Path, idle_seconds: float) -> dict[str, Any]:
    # The loop keeps working: the agent exits every 60 ms and is relaunched at once.
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  min_runtime: 50ms\n  max_failures: 100000\n  agent:\n"
        f"    command: {json.dumps([str(agent), 'normal', '60'])}\n"
        "    restart_backoff: {initial: 0s, max: 1s}\n"
        '  api: {listen: "127.0.0.1:0"}\n' + writable(log)
    )
    approve(repo)
    env = {**os.environ, "BENCH_LOG": str(log)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasup", "run", "--plain"], cwd=repo, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = _wait_api(repo)
        _load(url, 20, 1.0, 0.0)  # warm up
        paced = _load(url, 200, 10.0, 0.1)
        saturated = _load(url, 200, 5.0, 0.0)
        cycles = json.loads((repo / ".git" / "metasup" / "state.json").read_text())["run"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    # Idle, the API on: the agent waits forever.
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  min_runtime: 1s\n  agent:\n"
        f"    command: {json.dumps([str(agent), 'idle'])}\n"
        '  api: {listen: "127.0.0.1:0"}\n' + writable(log)
    )
    approve(repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasup", "run", "--plain"], cwd=repo, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = _wait_api(repo)
        time.sleep(1.5)  # min_runtime passes and start-up work settles before measuring
        sup = psutil.Process(proc.pid)
        (api,) = [p for p in sup.children() if "metasup.faces.api" in " ".join(p.cmdline())]
        before = cpu_ns(sup.pid), cpu_ns(api.pid)
        t0 = time.monotonic()
        time.sleep(idle_seconds)  # the measurement window
        after = cpu_ns(sup.pid), cpu_ns(api.pid)
        wall = time.monotonic() - t0
        rss = sup.memory_info().rss / (1 << 20), api.memory_info().rss / (1 << 20)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    def cpu(i: int) -> float:
        return round((after[i] - before[i]) / 1e9 / wall * 100, 4)

    return {
        "status_paced_200_clients_every_100ms": paced,
        "status_saturated_200_clients": saturated,
        "agent_cycles_during_load": cycles,
        "idle_with_api": {
            "supervisor_cpu_percent": cpu(0),
            "supervisor_rss_mib": round(rss[0], 1),
            "api_process_cpu_percent": cpu(1),
            "api_process_rss_mib": round(rss[1], 1),
            "window_s": idle_seconds,
        },
    }


def _new_events(path: Path, offset: int) -> str:
    """The journal's text written after `offset`: this supervisor's events, not older ones."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def bench_tamper(repo: Path, agent: Path, log: Path, samples: int) -> dict[str, Any]:
    rules = repo / "protected" / "safety_rules.yaml"
    rules.parent.mkdir(exist_ok=True)
    good = "protected: [/secrets]\n"
    rules.write_text(good)
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  min_runtime: 1s\n  agent:\n"
        f"    command: {json.dumps([str(agent), 'idle'])}\n" + writable(log)
    )
    approve(repo)
    events_path = repo / ".git" / "metasup" / "events.jsonl"
    before = events_path.stat().st_size if events_path.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasup", "run", "--plain"], cwd=repo,
        env={**os.environ, "BENCH_LOG": str(log)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    times = []
    try:
        deadline = time.monotonic() + 60
        while '"launch"' not in _new_events(events_path, before):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent was never launched")
            time.sleep(0.05)  # waiting for the first good mark, bounded
        for i in range(samples):
            t0 = time.perf_counter()
            rules.write_text(f"protected: []  # {i}\n")
            limit = time.monotonic() + 10
            while rules.read_text() != good:
                if time.monotonic() > limit:
                    raise RuntimeError("a tampered file was not restored")
            times.append(time.perf_counter() - t0)
            time.sleep(0.05)  # apart, so each sample is one tamper and one restore
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    return _dist(times)


FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mcp" / "healthy.py"


class FleetWorker:
    """The fleet worker (`-m metasup.pipelines.mcp.worker`), driven as the supervisor drives it."""

    def __init__(self, root: Path, **server: Any) -> None:
        from metasup.pipelines.mcp import protocol

        spec = {
            "sockets": str(root / "mcp"),
            "logs": str(root / "logs"),
            "servers": [
                {
                    "name": "bench",
                    "argv": [sys.executable, str(FIXTURE)],
                    "cwd": str(root),
                    "env": dict(os.environ),
                    "url": None,
                    "restart_on_failure": True,
                    "probe_interval": 0.01,
                    "probe_timeout": 1.0,
                    "start_timeout": 10.0,
                    "stop_timeout": 1.0,
                    "restart_backoff": {"initial": 0.0, "max": 0.0},
                    "max_restarts": 1000,
                    "restart_period": 60.0,
                    **server,
                }
            ],
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metasup.pipelines.mcp.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = protocol.Start(0, spec["sockets"], spec["logs"], spec["servers"])  # type: ignore[arg-type]
        self.proc.stdin.write(protocol.encode(start))
        self.proc.stdin.flush()

    def next_status(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the fleet worker ended")
            doc = json.loads(line)
            if doc["type"] == "status":
                return dict(doc["servers"]["bench"])

    def until(self, test: Any) -> dict[str, Any]:
        while True:
            st = self.next_status()
            if test(st):
                return st

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _direct_and_bridged_rtt(root: Path, samples: int) -> dict[str, list[float]]:
    """tools/list round trips (s): a direct SDK session to its own server process, and the
    agent's path through `metasup mcp connect` to the fleet's server."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async def measure(params: StdioServerParameters) -> list[float]:
        async with stdio_client(params) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            for _ in range(20):
                await session.list_tools()  # warm up
            out = []
            for _ in range(samples):
                t = time.perf_counter()
                await session.list_tools()
                out.append(time.perf_counter() - t)
            return out

    direct = StdioServerParameters(command=sys.executable, args=[str(FIXTURE)])
    bridged = StdioServerParameters(
        command=sys.executable,
        args=["-m", "metasup", "mcp", "connect", "bench"],
        env={**os.environ, "METASUP_MCP_DIR": str(root / "mcp")},
    )
    return {"direct": anyio.run(measure, direct), "bridged": anyio.run(measure, bridged)}


def bench_mcp(root: Path, samples: int, deaths: int) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    worker = FleetWorker(root)
    try:
        worker.until(lambda st: st["state"] == "healthy")
        probes: list[float] = []
        while len(probes) < samples:
            st = worker.next_status()
            if st["state"] == "healthy" and st["latency_ms"] is not None:
                probes.append(st["latency_ms"] / 1000)
        # The probe keeps running (every 10 ms) while the other sessions are measured.
        rtt = _direct_and_bridged_rtt(root, samples)
        recoveries = []
        for _ in range(deaths):
            st = worker.until(lambda st: st["state"] == "healthy" and st["pid"])
            pid = st["pid"]
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            worker.until(lambda st, pid=pid: st["state"] == "healthy" and st["pid"] != pid)
            recoveries.append(time.monotonic() - t0)
    finally:
        worker.stop()
    return {
        "probe_fleet": _dist(probes),
        "direct_sdk_session": _dist(rtt["direct"]),
        "agent_via_connect": _dist(rtt["bridged"]),
        "death_to_healthy": {**_dist(recoveries), "backoff_s": 0.0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=15)
    # CPU time ticks are 10 ms: 30 s resolve 0.033%, enough to judge a 0.1% target.
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--drift-cycles", type=int, default=500)
    parser.add_argument(
        "--only",
        choices=[
            "mcp",
            "api",
            "tamper",
            "jail",
            "archive",
            "experiments",
            "evolution",
            "ray",
            "loop",
            "serve",
        ],
        default=None,
        help="Run one part only.",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"sizes": sizes, "repeats": args.repeats, "git": {}, "loop": {}}
    root = Path(tempfile.mkdtemp(prefix="metasup-bench-"))
    if args.only is not None:
        parts = {
            "mcp": (lambda: bench_mcp(root / "mcp", 300, 10), print_mcp),
            "loop": (
                lambda: bench_loop(root, sizes, max(args.cycles, 15), args.drift_cycles),
                print_loop,
            ),
            "tamper": (
                lambda: bench_tamper(
                    make_repo(root / "big", 10000), build_agent(root), root / "agent.log", 50
                ),
                print_tamper,
            ),
            "jail": (lambda: bench_jail(root, args.cycles), print_jail),
            "archive": (lambda: bench_bulk_archive(root), print_bulk),
            "serve": (lambda: bench_serve(), print_serve),
            "experiments": (
                lambda: bench_experiments(
                    make_repo(root / "big", 10000),
                    build_agent(root),
                    root / "agent.log",
                    args.repeats,
                ),
                print_experiments,
            ),
            "evolution": (
                lambda: bench_evolution(
                    make_repo(root / "big", 10000), build_agent(root), root / "agent.log"
                ),
                print_evolution,
            ),
            "ray": (
                lambda: bench_ray(
                    make_repo(root / "big", 10000),
                    build_agent(root),
                    root / "agent.log",
                    args.repeats,
                ),
                print_ray,
            ),
            "api": (
                lambda: bench_api(
                    make_repo(root / "small", 100),
                    build_agent(root),
                    root / "agent.log",
                    args.idle_seconds,
                ),
                print_api,
            ),
        }
        measure, show = parts[args.only]
        try:
            part = measure()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        show(part)
        return 0
    try:
        for files in sizes:
            print(f"[bench] {files} files: generating", file=sys.stderr, flush=True)
            repo = make_repo(root, files)
            repeats = args.repeats if files < 50000 else max(3, args.repeats - 2)
            results["git"][files] = {
                "snapshot_10_changed": bench_snapshot(repo, files, repeats),
                "archive_and_reset": bench_archive_reset(repo, files, repeats),
            }
            shutil.rmtree(repo)

        results["bulk_archive"] = bench_bulk_archive(root)
        results["validation"] = bench_validation(root, args.repeats)
        agent = build_agent(root)
        log = root / "agent.log"
        small = make_repo(root / "small", 100)
        plain = supervise(small, agent, ["normal", "60"], args.cycles, "50ms", log)
        results["loop"]["plain_restart_100_files"] = _dist(plain)
        big = make_repo(root / "big", 10000)
        results["loop"]["plain_restart_10k_files"] = _dist(
            supervise(big, agent, ["normal", "60"], args.cycles, "50ms", log)
        )
        results["loop"]["crash_to_relaunch_10k_clean"] = _dist(
            supervise(big, agent, ["quick", "0"], args.cycles, "10s", log)
        )
        results["loop"]["crash_to_relaunch_10k_10_changed"] = _dist(
            supervise(big, agent, ["quick", "10"], args.cycles, "10s", log)
        )
        results["jail"] = bench_jail(root, args.cycles, agent, small, big)
        results["experiments"] = bench_experiments(big, agent, log, args.repeats)
        results["evolution"] = bench_evolution(big, agent, log)
        results["ray"] = bench_ray(big, agent, log, args.repeats)
        results["tamper"] = bench_tamper(big, agent, log, 50)
        results["idle"] = bench_idle(small, agent, log, args.idle_seconds)
        results["api"] = bench_api(small, agent, log, args.idle_seconds)
        results["mcp"] = bench_mcp(root / "mcp", 300, 10)
        results["serve"] = bench_serve()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print_table(results)
    out = args.json_out or Path("bench-results") / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


def bench_jail(
    root: Path,
    cycles: int,
    agent: Path | None = None,
    small: Path | None = None,
    big: Path | None = None,
) -> dict[str, Any]:
    """The jail's cost: exit to relaunch with `sandbox.mode: off` (the anchor) and jailed, in
    turns in the same run; a plain restart (100 files) and a crash's rollback (10k files)."""
    agent = agent or build_agent(root)
    small = small or make_repo(root / "small", 100)
    big = big or make_repo(root / "big", 10000)
    log = root / "agent.log"
    scenarios = {
        "plain_restart_100_files": (small, ["normal", "60"], "50ms"),
        "crash_to_relaunch_10k": (big, ["quick", "0"], "10s"),
    }
    out: dict[str, Any] = {}
    for name, (repo, agent_args, min_runtime) in scenarios.items():
        gaps: dict[str, list[float]] = {"off": [], "auto": []}
        for _ in range(3):  # interleaved: both see the same machine state
            for mode in gaps:
                gaps[mode] += supervise(repo, agent, agent_args, cycles, min_runtime, log, mode)
        off, jailed = _dist(gaps["off"]), _dist(gaps["auto"])
        out[name] = {
            "off": off,
            "jailed": jailed,
            "added_median_ms": round(jailed["median_ms"] - off["median_ms"], 2),
            "ratio": round(jailed["median_ms"] / max(off["median_ms"], 0.001), 2),
        }
    out["command_spawn_to_exit"] = _command_in_jail(small, 40)
    return out


def _command_in_jail(repo: Path, samples: int) -> dict[str, Any]:
    """A command run to its end (`true`) as checks, fitness and MCP servers are started: no
    jail made ahead, so the cgroup move is paid here. Off and jailed in turns."""
    from metasup.effects.process.jail import Jail
    from metasup.effects.process.spawn import Reaper, run_command
    from metasup.effects.process.view import make_view
    from metasup.facts.settings import SandboxConfig

    reaper = Reaper()
    jail = Jail(SandboxConfig(), reaper=reaper)
    view = make_view(repo, sandbox=SandboxConfig())
    times: dict[str, list[float]] = {"off": [], "auto": []}
    for _ in range(samples):
        for mode in times:
            prepared = jail.prepare(view) if mode == "auto" else None
            t0 = time.perf_counter()
            done = run_command(["true"], cwd=repo, env={"PATH": "/usr/bin:/bin"}, timeout=10,
                               reaper=reaper, jail=prepared)  # fmt: skip
            times[mode].append(time.perf_counter() - t0)
            assert done.ok, done.stderr
    jail.close()
    off, jailed = _dist(times["off"]), _dist(times["auto"])
    return {
        "off": off,
        "jailed": jailed,
        "added_median_ms": round(jailed["median_ms"] - off["median_ms"], 2),
        "ratio": round(jailed["median_ms"] / max(off["median_ms"], 0.001), 2),
    }


def print_jail(j: dict[str, Any]) -> None:
    print(
        "\n## the jail, sandbox off (the anchor) vs jailed, medians in ms: the loop's exit to the"
        " next start; a command's spawn to its exit"
    )
    print(f"| {'scenario':<26} | {'off':>8} | {'jailed':>8} | {'added':>7} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 8}|")
    for name, d in j.items():
        print(
            f"| {name:<26} | {d['off']['median_ms']:>8.2f} | {d['jailed']['median_ms']:>8.2f} |"
            f" {d['added_median_ms']:>7.2f} | {d['ratio']:>6.2f} |"
        )


def _dist(gaps: list[float]) -> dict[str, float]:
    ms = sorted(g * 1000 for g in gaps)

    def pct(p: float) -> float:
        return round(ms[max(0, min(len(ms) - 1, int(len(ms) * p + 0.5) - 1))], 2)

    return {
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "min_ms": round(ms[0], 2),
        "samples": len(ms),
    }


def print_tamper(t: dict[str, Any]) -> None:
    print(
        f"\n## tamper watch, 10k files: overwrite to restored {t['median_ms']} ms median, "
        f"p99 {t['p99_ms']} ms ({t['samples']} samples)"
    )


def print_api(a: dict[str, Any]) -> None:
    print("\n## HTTP API: GET /supervisor/status from a second process (ms)")
    print(f"| {'load':<38} | {'median':>8} | {'p99':>8} | {'req/s':>7} | {'errors':>6} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 8}|")
    for name in ("status_paced_200_clients_every_100ms", "status_saturated_200_clients"):
        d = a[name]
        print(
            f"| {name:<38} | {d['median_ms']:>8.2f} | {d['p99_ms']:>8.2f} | "
            f"{d['requests_per_s']:>7} | {d['errors']:>6} |"
        )
    print(f"(the loop relaunched the agent {a['agent_cycles_during_load']} times meanwhile)")
    i = a["idle_with_api"]
    print(
        f"idle with the API on, over {i['window_s']}s: supervisor cpu "
        f"{i['supervisor_cpu_percent']}%, rss {i['supervisor_rss_mib']} MiB; API process cpu "
        f"{i['api_process_cpu_percent']}%, rss {i['api_process_rss_mib']} MiB"
    )


def print_mcp(m: dict[str, Any]) -> None:
    print("\n## MCP (ms; ratio = metasup / a direct SDK session to the same server)")
    print(f"| {'what':<34} | {'median':>8} | {'p99':>8} | {'ratio':>6} | {'n':>4} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 6}|")
    anchor = m["direct_sdk_session"]["median_ms"]
    for name in ("direct_sdk_session", "probe_fleet", "agent_via_connect", "death_to_healthy"):
        d = m[name]
        ratio = f"{d['median_ms'] / anchor:>6.2f}" if name != "death_to_healthy" else "     -"
        print(
            f"| {name:<34} | {d['median_ms']:>8.2f} | {d['p99_ms']:>8.2f} | {ratio} | "
            f"{d['samples']:>4} |"
        )
    backoff = m["death_to_healthy"]["backoff_s"]
    print(f"death_to_healthy: SIGKILL to answering again, restart backoff {backoff}s")


_REPLICA = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
"""

_PROXY = """
import asyncio, socket, sys
from metasup.facts.settings import ServeConfig
from metasup.pipelines.serve.front import Front, Replica
async def main():
    good, candidate, mirror = sys.argv[1], sys.argv[2], float(sys.argv[3])
    front = Front(ServeConfig(mirror=mirror), lambda event: None)
    front.replicas = [Replica("good", good)]
    if mirror:
        front.replicas.append(Replica("candidate", candidate, arm="candidate"))
        front.stage = "mirror"
    sock = socket.create_server(("127.0.0.1", 0))
    await front.start(sock)
    print(sock.getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""

_LOAD = """
import asyncio, json, sys, time
import aiohttp
async def main():
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    out = []
    conn = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(20):  # warm the connections
            async with session.get(url) as r:
                await r.read()
        async def one():
            t = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
            out.append(time.perf_counter() - t)
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the open loop's pace
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    print(json.dumps(out))
asyncio.run(main())
"""


def bench_serve(seconds: float = 10.0, rate: float = 200.0) -> dict[str, Any]:
    """Added latency of the front door: the same replica straight, proxied, and proxied with
    every request copied to a candidate. Each party in a process of its own."""
    started: list[subprocess.Popen[str]] = []

    def run(code: str, *args: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None
        return f"http://127.0.0.1:{proc.stdout.readline().strip()}"

    try:
        good, candidate = run(_REPLICA), run(_REPLICA)
        proxied = run(_PROXY, good, candidate, "0")
        mirrored = run(_PROXY, good, candidate, "1.0")
        out = {}
        for name, url in (("direct", good), ("proxied", proxied), ("mirror_all", mirrored)):
            load = subprocess.run(
                [sys.executable, "-c", _LOAD, url + "/", str(rate), str(seconds)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            out[name] = _dist(json.loads(load.stdout))
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
    return {
        "rate": rate,
        "seconds": seconds,
        **out,
        "added_p50_ms": round(out["proxied"]["median_ms"] - out["direct"]["median_ms"], 3),
        "added_p99_ms": round(out["proxied"]["p99_ms"] - out["direct"]["p99_ms"], 3),
        "mirror_p99_rise_ms": round(out["mirror_all"]["p99_ms"] - out["proxied"]["p99_ms"], 3),
    }


def print_serve(r: dict[str, Any]) -> None:
    print(f"\n## the front door ({r['rate']:g} req/s for {r['seconds']:g} s, loopback)")
    for name in ("direct", "proxied", "mirror_all"):
        d = r[name]
        print(f"{name:>10}: p50 {d['median_ms']} ms, p99 {d['p99_ms']} ms")
    print(
        f"added by the proxy: p50 {r['added_p50_ms']} ms, p99 {r['added_p99_ms']} ms; "
        f"mirroring every request raises the p99 by {r['mirror_p99_rise_ms']} ms"
    )


def print_table(r: dict[str, Any]) -> None:
    print("\n## git steps (median ms; ratio = metasup / git CLI, below 1 is faster)")
    print(f"| {'step':<28} | {'files':>6} | {'metasup':>9} | {'git CLI':>9} | {'ratio':>6} |")
    print(f"|{'-' * 30}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for files, steps in r["git"].items():
        for name, m in steps.items():
            ratio = m["metasup_ms"] / m["git_cli_ms"] if m["git_cli_ms"] else float("nan")
            print(
                f"| {name:<28} | {files:>6} | {m['metasup_ms']:>9.2f} | "
                f"{m['git_cli_ms']:>9.2f} | {ratio:>6.2f} |"
            )
    print("\n## the loop, exit to next process start (ms)")
    print(f"| {'scenario':<34} | {'median':>8} | {'p90':>8} | {'min':>8} | {'n':>3} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 5}|")
    for name, d in r["loop"].items():
        print(
            f"| {name:<34} | {d['median_ms']:>8.2f} | {d['p90_ms']:>8.2f} | "
            f"{d['min_ms']:>8.2f} | {d['samples']:>3} |"
        )
    print("\n## proposal validation (median ms)")
    for name, v in r["validation"].items():
        print(f"| {name:<10} | {v['median_ms']:>8.3f} ms | {v['per_second']:>7} / s |")
    print_experiments(r["experiments"])
    print_evolution(r["evolution"])
    print_ray(r["ray"])
    idle = r["idle"]
    print(
        f"\n## idle supervisor: cpu {idle['cpu_percent']}% over {idle['window_s']}s, "
        f"rss {idle['rss_mib']} MiB"
    )
    print_jail(r["jail"])
    print_bulk(r["bulk_archive"])
    print_tamper(r["tamper"])
    print_api(r["api"])
    print_mcp(r["mcp"])
    print_serve(r["serve"])


if __name__ == "__main__":
    sys.exit(main())
