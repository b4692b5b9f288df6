"""`metasup evolve` and `metasup population`: a population kept in git, through the CLI.

The repository is the evolution demo's (a shell sort whose gaps the mutator edits, scored in
comparisons), with a smaller search so each run takes a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testing.fixtures import (
    events,
    git,
    make_repo,
    metasup_cmd,
    run_metasup,
    screen,
    state,
    supervising,
    tmux,
    wait_for,
)

DEMO = Path(__file__).resolve().parents[2] / "metasup" / "faces" / "demo" / "files" / "evolve"
PY = json.dumps(sys.executable)


def config(
    *,
    population: int = 4,
    generations: int = 2,
    repeats: int = 1,
    mutator: str = "evolve/mutate.py",
    sandbox: str = "",
    extra: str = "",
    timeout: str = "20s",
) -> str:
    return f"""\
supervisor:
  agent: {{command: [{PY}, agent.py]}}
  experiments:
    checks: [[{PY}, checks/check.py]]
    fitness: [{PY}, eval/score.py]
    repeats: {repeats}
    timeout: {timeout}
    max_concurrent: 2
  evolution:
    mutator: [{PY}, {mutator}]
    population: {population}
    generations: {generations}
    islands: 2
    elite: 1
    crossover_rate: 0.3
    migration: {{every: 1, count: 1}}
{extra}{sandbox}"""


def evolution_repo(path: Path, body: str) -> Path:
    make_repo(path)
    shutil.copytree(DEMO, path, dirs_exist_ok=True)
    (path / ".gitignore").write_text("__pycache__/\n")
    (path / "metasup.yaml").write_text(body)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "start")
    return path


def of_kind(repo: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in events(repo) if e["event"] == kind]


def trailers(repo: Path, commit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in git(repo, "log", "-1", "--format=%B", commit).splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.startswith("Metasup-"):
            out.setdefault(key, []).append(value)
    return out


def pop_refs(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/metasup/pop/")
    return {
        name.removeprefix("refs/metasup/pop/"): sha
        for name, sha in (line.split() for line in lines.splitlines())
    }


def assert_whole(repo: Path) -> None:
    """What must hold after any run, interrupted or not: each candidate evaluated once, each
    kept by its ref with its trailers, generations counted once, the repository sound."""
    evaluated = of_kind(repo, "candidate_evaluated")
    carried = of_kind(repo, "candidate_carried")
    ids = [e["id"] for e in evaluated]
    assert len(ids) == len(set(ids)), "a candidate was evaluated twice"
    for evolution in {e["evolution"] for e in evaluated}:
        trees = [e["tree"] for e in evaluated if e["evolution"] == evolution]
        assert len(trees) == len(set(trees)), "a tree was evaluated twice"
    refs = pop_refs(repo)
    for e in evaluated + carried:
        assert refs.get(e["id"]) == e["commit"], f"{e['id']} is not kept by its ref"
        t = trailers(repo, e["commit"])
        assert t["Metasup-Generation"] == [str(e["generation"])]
        assert t["Metasup-Island"] == [str(e["island"])]
        assert t["Metasup-Operator"] == [e["operator"]]
        assert t["Metasup-Parent"] == e["parents"]
        assert git(repo, "rev-parse", e["commit"] + "^{tree}").strip() == e["tree"]
    recorded = set(ids) | {e["id"] for e in carried}
    lost = set(refs) - recorded
    assert not lost, f"kept but never evaluated: {lost}"
    for evolution in {e["evolution"] for e in of_kind(repo, "evolution_started")}:
        mine = [e for e in events(repo) if e.get("evolution") == evolution]
        started = [e["generation"] for e in mine if e["event"] == "generation_started"]
        finished = [e["generation"] for e in mine if e["event"] == "generation_finished"]
        assert len(started) == len(set(started)) and len(finished) == len(set(finished))
        assert finished == sorted(finished) == list(range(len(finished)))
    git(repo, "fsck", "--strict", "--no-dangling")


# --- the demo -------------------------------------------------------------------------------


# The tests that read the demo's evolution run on one worker, which runs it once.
ON_THE_DEMO = pytest.mark.xdist_group("evolve-demo")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    where = tmp_path_factory.mktemp("evolve-demo") / "repo"
    out = subprocess.run(
        metasup_cmd("demo", "--evolve", "--dir", str(where)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return where, out


@ON_THE_DEMO
def test_the_demo_beats_its_baseline_within_five_generations_and_merges_it(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, out = demo
    assert out.returncode == 0, out.stdout + out.stderr
    (finished,) = of_kind(repo, "evolution_finished")
    assert finished["best_score"] > finished["baseline_score"] == 1.0
    assert finished["promoted"] is True
    assert finished["merged"] == git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == finished["merged"]
    gens = of_kind(repo, "generation_finished")
    assert [g["generation"] for g in gens] == [0, 1, 2, 3, 4, 5]
    bests = [g["best"] for g in gens]
    assert bests == sorted(bests), "the best score fell although elites carry it"
    assert "best score per generation: 1 ->" in out.stdout
    assert_whole(repo)
    assert git(repo, "status", "--porcelain") == ""
    # The evolution approved the protected files at its first use: the supervisor starts.
    with supervising(repo):
        pass


@ON_THE_DEMO
def test_candidates_events_carry_what_the_spec_lists(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, _ = demo
    evaluated = of_kind(repo, "candidate_evaluated")
    for e in evaluated:
        for key in ("id", "commit", "parents", "operator", "generation", "island", "score"):
            assert key in e
        assert isinstance(e["passed"], bool) and isinstance(e["duration_ms"], int | float)
    assert {e["operator"] for e in evaluated} >= {"seed", "mutate"}
    (seed,) = [e for e in evaluated if e["operator"] == "seed"]
    assert seed["generation"] == 0 and seed["score"] == 1.0
    assert {e["operator"] for e in of_kind(repo, "candidate_carried")} == {"elite"}
    (started,) = of_kind(repo, "evolution_started")
    assert started["base"] == seed["parents"][0]
    for g in of_kind(repo, "generation_finished"):
        assert {"best", "median", "evaluated", "failed"} <= set(g)
    assert {e["node"] for e in evaluated} == {socket.gethostname()}  # the local executor


@ON_THE_DEMO
def test_population_lists_the_candidates_best_first(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    repo, _ = demo
    out = run_metasup(repo, "population", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    scores = [c["score"] for c in doc if c["passed"]]
    assert scores == sorted(scores, reverse=True)
    assert len(doc) == len(of_kind(repo, "candidate_evaluated")) + len(
        of_kind(repo, "candidate_carried")
    )
    first = doc[0]
    assert git(repo, "rev-parse", first["ref"]).strip() == first["commit"]
    assert {"score", "generation", "operator", "parents", "island"} <= set(first)
    top = json.loads(run_metasup(repo, "population", "--json", "--top", "3").stdout)
    assert top == doc[:3]
    plain = run_metasup(repo, "population", "--top", "2")
    lines = plain.stdout.strip().splitlines()
    assert lines[0].startswith("id | score") and len(lines) == 3
    assert first["id"] in lines[1]


# --- no merge, JSON, failures -------------------------------------------------------------


def test_no_merge_reports_the_winner_and_leaves_the_branch(tmp_path: Path) -> None:
    repo = evolution_repo(tmp_path / "r", config(repeats=3))
    head = git(repo, "rev-parse", "HEAD").strip()
    out = run_metasup(repo, "evolve", "--no-merge", "--json", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["promoted"] is True and doc["merged"] is None
    assert doc["best_score"] > doc["baseline_score"]
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert doc["generations"][-1]["generation"] == 2
    assert_whole(repo)


def test_nothing_better_exits_1_and_merges_nothing(tmp_path: Path) -> None:
    repo = evolution_repo(tmp_path / "r", config(mutator="evolve/noop.py"))
    (repo / "evolve" / "noop.py").write_text("print('no idea')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "noop mutator")
    head = git(repo, "rev-parse", "HEAD").strip()
    out = run_metasup(repo, "evolve", timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nothing beat the good commit" in out.stdout
    discarded = of_kind(repo, "child_discarded")
    assert discarded and {d["reason"] for d in discarded} == {"no_change"}
    assert git(repo, "rev-parse", "HEAD").strip() == head


MUTATOR_OF_MANY_FAILURES = """\
import os, time
from pathlib import Path
child = os.environ["METASUP_CHILD"]
kind = int(child.rsplit("c", 1)[1])
assert os.environ["METASUP_PARENT"] and os.environ["METASUP_GENERATION"]
Path("gaps.txt").write_text(Path("gaps.txt").read_text().replace("0", str(10 + kind), 1))
if kind == 0:
    Path("metasup.yaml").write_text("supervisor: {}\\n")   # protected: the config in use
elif kind == 1:
    time.sleep(60)  # ok: a mutator that hangs past the hard timeout
elif kind == 2:
    Path("shellsort.py").write_text("def sort(items):\\n    return items, 0\\n")  # breaks the check
"""


def test_failed_mutators_and_candidates_are_counted_and_a_failing_check_costs_no_fitness(
    tmp_path: Path,
) -> None:
    log = tmp_path / "fitness-runs"
    repo = evolution_repo(
        tmp_path / "r",
        config(
            population=10,
            generations=1,
            mutator="evolve/many.py",
            timeout="2s",
            sandbox="  sandbox: {mode: off}\n",
        ),
    )
    (repo / "evolve" / "many.py").write_text(MUTATOR_OF_MANY_FAILURES)
    score = (repo / "eval" / "score.py").read_text()
    (repo / "eval" / "score.py").write_text(
        f"import os\nopen({str(log)!r}, 'a').write(os.environ['METASUP_CANDIDATE'] + '\\n')\n"
        + score
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a mutator of many failures")
    out = run_metasup(repo, "evolve", "--json", timeout=120)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    discarded = {d["id"].rsplit("-", 1)[1]: d for d in of_kind(repo, "child_discarded")}
    assert discarded["c0"]["reason"] == "rejected" and "path_protected" in discarded["c0"]["detail"]
    assert discarded["c1"]["reason"] == "mutator" and "timed out" in discarded["c1"]["detail"]
    evaluated = {e["id"].rsplit("-", 1)[1]: e for e in of_kind(repo, "candidate_evaluated")}
    broken = evaluated["c2"]
    assert broken["passed"] is False and broken["score"] is None
    assert broken["reason"].startswith("check ")
    assert evaluated["c3"]["passed"] is True
    fitness_for = log.read_text().split()
    assert broken["id"] not in fitness_for
    assert evaluated["c3"]["id"] in fitness_for
    # Both islands' c2 (and c3) make the same tree: the second is not evaluated again.
    assert json.loads(out.stdout)["failed"] == 1
    duplicates = [d for d in of_kind(repo, "child_discarded") if d["reason"] == "duplicate"]
    assert {d["id"].rsplit("-", 1)[1] for d in duplicates} == {"c2", "c3"}
    for d in duplicates:
        assert d["of"] in {e["id"] for e in of_kind(repo, "candidate_evaluated")}
    assert_whole(repo)


FAKE_LLM = """\
import json, sys
prompt = sys.stdin.read()
assert "Its current score is" in prompt and "--- shellsort.py" in prompt
text = open("gaps.txt").read().replace("\\n0\\n", "\\n23\\n", 1)
print("Sure! Here is the change:")
print(json.dumps({"reason": "a gap of 23", "changes": [{"file": "gaps.txt", "content": text}]}))
"""


def test_the_example_llm_mutator_turns_a_models_answer_into_a_child(tmp_path: Path) -> None:
    repo = evolution_repo(
        tmp_path / "r", config(population=4, generations=1, mutator="evolve/llm_mutator.py")
    )
    example = Path(__file__).resolve().parents[2] / "examples" / "evolve" / "llm_mutator.py"
    shutil.copy(example, repo / "evolve" / "llm_mutator.py")
    (repo / "evolve" / "fake_llm.py").write_text(FAKE_LLM)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an LLM mutator")
    env = {"LLM_CMD": f"{sys.executable} evolve/fake_llm.py", "EVOLVE_FILES": "shellsort.py"}
    out = run_metasup(repo, "evolve", "--json", timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    children = [e for e in of_kind(repo, "candidate_evaluated") if e["operator"] == "mutate"]
    assert children and all(e["passed"] for e in children)
    best = json.loads(out.stdout)["best_commit"]
    assert git(repo, "show", f"{best}:gaps.txt").splitlines()[1] == "23"
    assert "a gap of 23" in git(repo, "log", "-1", "--format=%B", best)


def test_evolve_refuses_an_evaluator_changed_since_its_approval(tmp_path: Path) -> None:
    repo = evolution_repo(
        tmp_path / "r",
        config(generations=1).replace("supervisor:\n", "supervisor:\n  protected_paths: [eval/]\n"),
    )
    first = run_metasup(repo, "evolve", "--no-merge", timeout=120)
    assert first.returncode in (0, 1), first.stdout + first.stderr
    assert [e["reason"] for e in of_kind(repo, "approved")] == [
        "first start: the protected files as the operator left them"
    ]
    (repo / "eval" / "score.py").write_text("print('{\"score\": 1000}')\n")
    git(repo, "commit", "-qam", "a generous scorer")
    before = len(events(repo))
    out = run_metasup(repo, "evolve")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "protected files differ from the approved baseline" in out.stderr
    assert "eval/score.py" in out.stderr
    assert [e["event"] for e in events(repo)[before:]] == []


def test_an_unreachable_cluster_or_an_unknown_executor_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executor = f"    executor: {{kind: ray, address: '127.0.0.1:{port}'}}\n"
    body = config().replace("    max_concurrent: 2\n", "    max_concurrent: 2\n" + executor)
    repo = evolution_repo(tmp_path / "r", body)
    shown = json.loads(run_metasup(repo, "config", "--json").stdout)
    assert shown["supervisor"]["experiments"]["executor"]["kind"] == "ray"
    for command in (["evolve"], ["experiment", "-"]):
        out = run_metasup(repo, *command, input='{"reason": "r", "changes": []}', timeout=60)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in out.stderr
        assert "Traceback" not in out.stderr
    assert events(repo) == [], "a config error changed something"
    bad = evolution_repo(tmp_path / "b", body.replace("kind: ray", "kind: slurm"))
    out = run_metasup(bad, "config")
    assert out.returncode == 2 and "executor.kind" in out.stderr and "Traceback" not in out.stderr


def test_evolve_without_an_evolution_section_is_a_clear_error(tmp_path: Path) -> None:
    repo = evolution_repo(tmp_path / "r", config().split("  evolution:")[0])
    out = run_metasup(repo, "evolve")
    assert out.returncode == 2
    assert "no `evolution:` section" in out.stderr and "Traceback" not in out.stderr
    assert events(repo) == []


def test_status_the_api_and_metrics_carry_the_evolution_figures(tmp_path: Path) -> None:
    repo = evolution_repo(
        tmp_path / "r", config(generations=1, extra='  api: {listen: "127.0.0.1:0"}\n')
    )
    out = run_metasup(repo, "evolve", "--no-merge", "--json", timeout=120)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    doc = json.loads(out.stdout)
    status = json.loads(run_metasup(repo, "status", "--json").stdout)
    figures = status["evolution"]
    assert figures["evolution"] == doc["evolution"] and figures["running"] is False
    assert figures["evaluated"] == doc["evaluated"] == len(of_kind(repo, "candidate_evaluated"))
    assert figures["best_score"] == doc["best_score"] and figures["generation"] == 1
    assert figures["baseline_score"] == 1.0
    assert "evolve:" in run_metasup(repo, "status").stdout
    with supervising(repo):
        url = wait_for(lambda: state(repo).get("api_url"), what="the API's URL")
        with urllib.request.urlopen(url + "/supervisor/status", timeout=10) as r:
            assert json.load(r)["evolution"]["evaluated"] == doc["evaluated"]
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
    assert f"metasup_evolution_evaluated {float(doc['evaluated'])}" in metrics
    assert f"metasup_evolution_best_score {float(doc['best_score'])}" in metrics


def test_continuous_rounds_run_inside_metasup_run_and_merge_between_runs(tmp_path: Path) -> None:
    body = config(generations=2, repeats=3).replace(
        "  evolution:\n", "  evolution:\n    mode: continuous\n    trigger: {every: 500ms}\n"
    )
    repo = evolution_repo(
        tmp_path / "r", body.replace("supervisor:\n", "supervisor:\n  min_runtime: 300ms\n")
    )
    (repo / "agent.py").write_text("import time\ntime.sleep(120)  # ok: an agent that stays up\n")
    git(repo, "commit", "-qam", "a long-running agent")
    with supervising(repo):
        merged = wait_for(lambda: of_kind(repo, "merged"), timeout=90, what="a round's merge")
        (finished,) = of_kind(repo, "evolution_finished")[:1]
        assert finished["promoted"] is True and finished["merged"] is None  # merged between runs
        commit = merged[0]["commit"]
        assert merged[0]["evolution"] == finished["evolution"]
        wait_for(
            lambda: any(
                e["event"] == "mark_good" and e.get("commit") == commit for e in events(repo)
            ),
            timeout=30,
            what="the merged winner marked good after min_runtime",
        )
        launches = [e for e in of_kind(repo, "launch") if e.get("commit") == commit]
        assert launches, "the agent was not relaunched on the winner"
        # The status shows the latest round: this one, or one that started after it.
        shown = state(repo)["evolution"]["evolution"]
        started = [e["evolution"] for e in of_kind(repo, "evolution_started")]
        assert shown in started and started.index(shown) >= started.index(finished["evolution"])
    assert git(repo, "rev-parse", "HEAD").strip() == commit
    assert_whole(repo)


def held_mutator(repo: Path, generation: int) -> Path:
    """The demo's mutator, hanging in `generation` while the file returned exists. It lies in
    the git dir, which the jail binds (read-only): the jail's /tmp is an overlay of the host's,
    where a file the host deletes may still be seen."""
    hold = repo / ".git" / "hold-mutator"
    hold.write_text("")
    (repo / "evolve" / "slow.py").write_text(
        "import os, runpy, time\nrunpy.run_path('evolve/mutate.py')\n"
        f"while os.environ['METASUP_GENERATION'] == '{generation}' "
        f"and os.path.exists({str(hold)!r}):\n"
        "    time.sleep(0.05)  # ok: the fixture mutator hangs until released\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a slow mutator")
    return hold


def test_on_a_terminal_evolve_shows_a_live_panel(tmp_path: Path) -> None:
    repo = evolution_repo(
        tmp_path / "r", config(population=4, generations=3, mutator="evolve/slow.py")
    )
    hold = held_mutator(repo, 3)
    done = tmp_path / "exit"
    # `cat` keeps the pane (and what the run printed last) until the test is done with it.
    command = (
        f"{shlex.quote(sys.executable)} -m metasup evolve; echo $? > {shlex.quote(str(done))}; cat"
    )
    with tmux(repo, command) as (base, target):
        drawn = wait_for(
            lambda: "generation 3" in (s := screen(base, target)) and "top candidates" in s and s,
            timeout=60,
            what="the panel in generation 3",
        )
        assert "evaluated" in drawn and "failed" in drawn
        chart = next(line for line in drawn.splitlines() if line.startswith("best"))
        assert any(bar in chart for bar in "▁▂▃▄▅▆▇█"), chart
        assert any(" g2-i" in line for line in drawn.splitlines()), drawn
        hold.unlink()
        wait_for(lambda: done.exists() and done.read_text().strip(), timeout=60, what="the end")
        final = screen(base, target)
    assert done.read_text().strip() in ("0", "1")
    assert "best" in final and "good commit" in final
    assert not [d for d in of_kind(repo, "child_discarded") if d["reason"] == "mutator"]


def test_a_rounds_winner_a_crash_kept_from_its_merge_is_merged_at_the_next_start(
    tmp_path: Path,
) -> None:
    body = config(generations=1, repeats=3).replace(
        "  evolution:\n", "  evolution:\n    mode: continuous\n    trigger: {every: 200ms}\n"
    )
    repo = evolution_repo(tmp_path / "r", body)
    (repo / "agent.py").write_text("import time\ntime.sleep(120)  # ok: an agent that stays up\n")
    git(repo, "commit", "-qam", "a long-running agent")
    killed = subprocess.run(
        metasup_cmd("run"),
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "METASUP_CRASHPOINT": "evolve_round_held"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (finished,) = of_kind(repo, "evolution_finished")
    assert finished["promoted"] is True and of_kind(repo, "merged") == []
    with supervising(repo):
        merged = wait_for(lambda: of_kind(repo, "merged"), timeout=60, what="the merge")[0]
    assert merged["evolution"] == finished["evolution"]
    assert merged["candidate"] == finished["best_commit"]
    # Later rounds may have merged more by the stop; the held winner is in the history.
    head = git(repo, "rev-parse", "HEAD").strip()
    assert head == of_kind(repo, "merged")[-1]["commit"]
    git(repo, "merge-base", "--is-ancestor", merged["commit"], head)
    assert_whole(repo)


# --- crashes and stops ----------------------------------------------------------------------

# Each point is one every run reaches: generation 1 always makes two children (its parents are
# all the seed: mutations), while generation 2's may both be crossovers that conflict (a run with
# "@3" or "@4" past generation 1 then finished without reaching it).
POINTS = [
    "evolve_generation_started",
    "evolve_child_made@2",
    "evolve_ref_kept@2",
    "evolve_evaluated@2",
    "evolve_journalled@3",
    "evolve_elite_kept",
    "evolve_generation_done@2",
    "evolve_merged",
]


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_a_named_point_loses_nothing_and_evaluates_nothing_twice(
    tmp_path: Path, point: str
) -> None:
    repo = evolution_repo(tmp_path / "r", config(repeats=3))
    killed = run_metasup(repo, "evolve", timeout=120, env={"METASUP_CRASHPOINT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert of_kind(repo, "evolution_finished") == []
    before = {e["id"] for e in of_kind(repo, "candidate_evaluated")}
    resumed = run_metasup(repo, "evolve", "--resume", timeout=120)
    assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
    assert "resuming the interrupted evolution" in resumed.stdout
    again = run_metasup(repo, "evolve", "--resume", timeout=60)
    assert again.returncode == resumed.returncode
    assert "finished already; nothing to resume" in again.stdout
    assert len(of_kind(repo, "evolution_started")) == 1
    (finished,) = of_kind(repo, "evolution_finished")
    assert before <= {e["id"] for e in of_kind(repo, "candidate_evaluated")}
    assert [g["generation"] for g in of_kind(repo, "generation_finished")] == [0, 1, 2]
    if finished["promoted"]:
        assert git(repo, "rev-parse", "HEAD").strip() == finished["merged"]
        assert len(of_kind(repo, "merged")) == 1
    assert_whole(repo)


def test_locks_a_killed_run_left_in_a_pooled_worktree_do_not_stop_the_next(
    tmp_path: Path,
) -> None:
    repo = evolution_repo(tmp_path / "r", config(generations=1))
    assert run_metasup(repo, "evolve", "--no-merge", timeout=120).returncode in (0, 1)
    pooled = repo / ".git" / "worktrees"
    left = [pooled / "cand-0" / "index.lock", pooled / "cand-1" / "HEAD.lock"]
    for lock in left:  # as a kill -9 in the middle of moving a worktree leaves them
        lock.write_text("")
    out = run_metasup(repo, "evolve", "--no-merge", timeout=120)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert not any(lock.exists() for lock in left)
    assert len(of_kind(repo, "evolution_finished")) == 2
    assert_whole(repo)


def test_kills_at_random_moments_then_resumes_finish_the_same_evolution(tmp_path: Path) -> None:
    repo = evolution_repo(tmp_path / "r", config(population=6, generations=3, repeats=3))
    rng = random.Random(11)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(
            metasup_cmd("evolve", *(["--resume"] if kills else [])),
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            code = proc.wait(timeout=rng.uniform(0.3, 2.5))  # the moment of the kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            kills += 1
            continue
        assert code in (0, 1), proc.stderr.read() if proc.stderr else ""
        break
    else:
        out = run_metasup(repo, "evolve", "--resume", timeout=120)
        assert out.returncode in (0, 1), out.stdout + out.stderr
    assert kills >= 1
    assert len(of_kind(repo, "evolution_started")) == 1
    assert len(of_kind(repo, "evolution_finished")) == 1
    assert [g["generation"] for g in of_kind(repo, "generation_finished")] == [0, 1, 2, 3]
    assert_whole(repo)


def test_ctrl_c_stops_at_once_and_resume_goes_on(tmp_path: Path) -> None:
    repo = evolution_repo(
        tmp_path / "r", config(population=4, generations=3, mutator="evolve/slow.py")
    )
    hold = held_mutator(repo, 2)
    proc = subprocess.Popen(
        metasup_cmd("evolve"), cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(
        lambda: any(e.get("generation") == 2 for e in of_kind(repo, "generation_started")),
        timeout=60,
        what="generation 2",
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, out + err
    assert "--resume" in out and "Traceback" not in err
    assert of_kind(repo, "evolution_finished") == []
    hold.unlink()
    resumed = run_metasup(repo, "evolve", "--resume", "--no-merge", timeout=120)
    assert resumed.returncode in (0, 1), resumed.stdout + resumed.stderr
    assert [g["generation"] for g in of_kind(repo, "generation_finished")] == [0, 1, 2, 3]
    assert_whole(repo)
