"""`metasup experiment`: candidates on branches and worktrees, judged, the best merged."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from testing.fixtures import (
    events,
    git,
    json_written,
    marked_pids,
    names,
    run_metasup,
    supervising,
    wait_for,
)

PY = json.dumps(sys.executable)

CHECK = "import sys; sys.path.insert(0, '.')\nimport app\nassert isinstance(app.VALUE, int)\n"
SCORE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, ".")
    import app
    print("warming up")
    print(json.dumps({"score": app.VALUE / 10, "success_rate": 1.0, "error_rate": 0.0,
                      "response_time_ms": 5}))
    """
)


IDLE_AGENT = "import time\ntime.sleep(30)  # ok: an agent that just stays up\n"


def experiment_repo(repo: Path, extra: str = "", agent: str = IDLE_AGENT) -> Path:
    (repo / "checks").mkdir()
    (repo / "eval").mkdir()
    (repo / "app.py").write_text("VALUE = 1\n")
    (repo / "other.txt").write_text("other\n")
    (repo / "checks" / "check.py").write_text(CHECK)
    (repo / "eval" / "score.py").write_text(SCORE)
    (repo / "agent.py").write_text(agent)
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "metasup.yaml").write_text(
        "supervisor:\n"
        "  min_runtime: 1s\n"
        f"  agent: {{command: [{PY}, agent.py]}}\n"
        "  experiments:\n"
        f"    checks: [[{PY}, checks/check.py]]\n"
        "    shadow_runtime: 300ms\n"
        f"    fitness: [{PY}, eval/score.py]\n"
        "    repeats: 1\n"
        "    timeout: 20s\n"
        "    max_concurrent: 2\n"
        "    success_criteria: {min_improvement: 0.1}\n" + extra
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def proposal(tmp: Path, name: str, *changes: dict[str, Any]) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"reason": name, "changes": list(changes)}))
    return str(path)


def value(tmp: Path, name: str, v: object) -> str:
    return proposal(tmp, name, {"file": "app.py", "content": f"VALUE = {v!r}\n"})


def experiment(repo: Path, *files: str, flags: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    out = run_metasup(repo, "experiment", *files, "--json", *flags, timeout=120)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def by_source(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {Path(c["source"]).stem: c for c in doc["candidates"]}


def test_three_candidates_the_best_is_merged(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    base = git(repo, "rev-parse", "HEAD").strip()
    code, doc = experiment(
        repo, value(tmp_path, "three", 3), value(tmp_path, "five", 5), value(tmp_path, "bad", "x")
    )
    assert code == 0
    c = by_source(doc)
    assert (c["five"]["outcome"], c["three"]["outcome"], c["bad"]["outcome"]) == (
        "merged",
        "lost",
        "failed",
    )
    assert c["five"]["score"] == 0.5 and c["five"]["baseline_score"] == 0.1
    assert c["five"]["improvement"] == pytest.approx(4.0)
    assert "check" in c["bad"]["failure"] and "AssertionError" in c["bad"]["failure"]
    # Fast-forward: the supervised branch moved to the winner, which is now good.
    head = git(repo, "rev-parse", "HEAD").strip()
    assert doc["fast_forward"] is True and doc["merged"] == head == c["five"]["commit"]
    assert git(repo, "rev-parse", "refs/metasup/good").strip() == head
    assert git(repo, "rev-parse", "HEAD^").strip() == base
    assert (repo / "app.py").read_text() == "VALUE = 5\n"
    # The others are archived, every experiment branch is gone.
    for name in ("three", "bad"):
        ref = c[name]["archive"]
        assert ref == f"refs/metasup/archive/exp-{c[name]['id']}-{c[name]['outcome']}"
        assert git(repo, "rev-parse", ref).strip() == c[name]["commit"]
    assert git(repo, "for-each-ref", "refs/heads/metasup") == ""
    assert names(repo).count("experiment_started") == 3
    assert names(repo).count("merged") == 1
    assert git(repo, "status", "--porcelain") == ""


def test_a_first_experiment_approves_the_evaluator_so_run_starts_after_its_merge(
    repo: Path, tmp_path: Path
) -> None:
    experiment_repo(repo, extra="  protected_paths: [eval/]\n")
    code, _ = experiment(repo, value(tmp_path, "five", 5))
    assert code == 0
    approved = [e for e in events(repo) if e["event"] == "approved"]
    assert len(approved) == 1 and approved[0]["by"] == "metasup"
    with supervising(repo):  # the merge's mark_good is no approval without a baseline
        pass
    (repo / "eval" / "score.py").write_text(SCORE.replace("/ 10", "* 100"))
    git(repo, "commit", "-qam", "a generous scorer")
    out = run_metasup(repo, "experiment", value(tmp_path, "six", 6))
    assert out.returncode == 2 and "eval/score.py" in out.stderr


def test_a_candidate_that_edits_its_own_scorer_is_judged_by_the_good_one(
    repo: Path, tmp_path: Path
) -> None:
    experiment_repo(repo)
    cheat = proposal(
        tmp_path,
        "cheat",
        {"file": "eval/score.py", "content": "print('{\"score\": 100}')\n"},
        {"file": "checks/check.py", "content": "pass\n"},
        {"file": "app.py", "content": "VALUE = 'not an int'\n"},
    )
    code, doc = experiment(repo, cheat)
    assert code == 1
    (c,) = doc["candidates"]
    assert c["outcome"] == "failed"
    steps = {s["name"]: s for s in c["steps"]}
    assert steps["evaluator"]["detail"] == "judged by the good checks/check.py, eval/score.py"
    assert "AssertionError" in c["failure"], "the good check ran, not the candidate's"


def test_a_hanging_check_is_killed_with_its_group(repo: Path, tmp_path: Path) -> None:
    hang = textwrap.dedent(
        f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(tmp_path)!r} + "/hung-%d" % os.getpid(), "w").close()  # its pid in the jail
        while True:
            time.sleep(0.05)  # ok: an evaluator that never answers
        """
    )
    experiment_repo(repo, extra=f"  sandbox: {{writable: [{str(tmp_path)!r}]}}\n")
    (repo / "checks" / "hang.py").write_text(hang)
    config = (repo / "metasup.yaml").read_text()
    config = config.replace("checks/check.py]]", "checks/check.py], [" + PY + ", checks/hang.py]]")
    (repo / "metasup.yaml").write_text(config.replace("timeout: 20s", "timeout: 1s"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "hang")
    code, doc = experiment(repo, value(tmp_path, "seven", 7))
    assert code == 1
    (c,) = doc["candidates"]
    assert "timed out" in c["failure"] and "killed with its process group" in c["failure"]
    assert len(list(tmp_path.glob("hung-*"))) == 2, "the check and its child both ran"
    # Seen from outside, by what they run and where: none is left.
    left = [p for p in marked_pids("checks/hang.py") if str(repo) in psutil.Process(p).cwd()]
    assert left == []


def test_three_way_merge_when_the_branch_moved(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    (repo / "other.txt").write_text("changed meanwhile\n")  # uncommitted: snapshotted first
    code, doc = experiment(repo, value(tmp_path, "five", 5))
    assert code == 0 and doc["fast_forward"] is False
    head = doc["merged"]
    parents = git(repo, "rev-list", "--parents", "-n", "1", head).split()[1:]
    assert len(parents) == 2 and parents[1] == doc["candidates"][0]["commit"]
    assert (repo / "app.py").read_text() == "VALUE = 5\n"
    assert (repo / "other.txt").read_text() == "changed meanwhile\n"
    assert git(repo, "status", "--porcelain") == ""


def test_a_merge_conflict_fails_the_candidate_and_changes_nothing(
    repo: Path, tmp_path: Path
) -> None:
    experiment_repo(repo)
    (repo / "app.py").write_text("VALUE = 2\n")  # the operator's own edit, same line
    code, doc = experiment(repo, value(tmp_path, "five", 5))
    assert code == 1 and doc["merged"] is None
    (c,) = doc["candidates"]
    assert c["outcome"] == "failed" and "merge conflict in app.py" in c["failure"]
    assert (repo / "app.py").read_text() == "VALUE = 2\n"
    assert git(repo, "show", "HEAD:app.py") == "VALUE = 2\n", "the edit was snapshotted, kept"
    assert git(repo, "rev-parse", c["archive"]).strip() == c["commit"]


def test_a_shadow_run_that_dies_fails(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo, agent="import sys\nimport app\nsys.exit(3 if app.VALUE == 9 else 0)\n")
    code, doc = experiment(repo, value(tmp_path, "nine", 9))
    assert code == 1
    (c,) = doc["candidates"]
    assert c["failure"].startswith("shadow: died after") and "exit 3" in c["failure"]


def test_noise_guard_with_three_repeats(repo: Path, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    noisy = SCORE.replace(
        "print(json.dumps(",
        f"n = len(open({str(counter)!r}, 'a+').name) and sum(1 for _ in open({str(counter)!r}))\n"
        f"open({str(counter)!r}, 'a').write('x\\n')\n"
        "noise = [0.0, 0.3, -0.3][n % 3] if app.VALUE == 1 else 0.0\n"
        "print(json.dumps(",
    ).replace('"score": app.VALUE / 10', '"score": app.VALUE / 10 + noise')
    # The evaluator counts its calls in a file outside the worktree: the jail lets it write
    # there because the config says so.
    experiment_repo(repo, extra=f"  sandbox: {{writable: [{str(tmp_path)!r}]}}\n")
    (repo / "eval" / "score.py").write_text(noisy)
    config = (repo / "metasup.yaml").read_text().replace("repeats: 1", "repeats: 3")
    (repo / "metasup.yaml").write_text(config.replace("{min_improvement: 0.1}", "{}"))
    git(repo, "commit", "-qam", "noisy")
    code, doc = experiment(repo, value(tmp_path, "two", 2))  # +0.1 against a spread of 0.6
    assert code == 1
    (c,) = doc["candidates"]
    assert len(c["fitness"]) == 3 and len(c["baseline"]) == 3
    assert "does not exceed the baseline's own spread" in c["failure"]


def test_bad_fitness_output_fails(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    (repo / "eval" / "score.py").write_text("print('score: high')\n")
    git(repo, "commit", "-qam", "broken scorer")
    code, doc = experiment(repo, value(tmp_path, "five", 5))
    assert code == 1
    assert "the last line is not JSON" in doc["candidates"][0]["failure"]


def test_dry_run_merges_nothing(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    code, doc = experiment(repo, value(tmp_path, "five", 5), flags=("--dry-run",))
    assert code == 0 and doc["merged"] is None and doc["winner"]
    assert git(repo, "rev-parse", "HEAD").strip() == head
    (c,) = doc["candidates"]
    assert c["outcome"] == "passed" and c["archive"]
    assert git(repo, "for-each-ref", "refs/heads/metasup") == ""


def test_leftovers_of_an_interrupted_experiment_are_archived(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "branch", "metasup/exp/20260101T000000000000Z-dead00", head)
    code, _ = experiment(repo, value(tmp_path, "five", 5))
    assert code == 0
    archives = git(repo, "for-each-ref", "--format=%(refname)", "refs/metasup/archive").split()
    assert "refs/metasup/archive/exp-20260101T000000000000Z-dead00-interrupted" in archives
    assert git(repo, "for-each-ref", "refs/heads/metasup") == ""


def test_a_rejected_proposal_is_not_tried(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo)
    bad = proposal(tmp_path, "unprotect", {"file": "protected/x", "content": "x"})
    code, doc = experiment(repo, bad)
    assert code == 1
    (c,) = doc["candidates"]
    assert c["outcome"] == "rejected" and c["errors"][0]["code"] == "path_protected"
    assert c["commit"] is None


RUNNING_AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, ".")
    import app
    from pathlib import Path
    Path("seen-%s.json" % os.environ["METASUP_RUN"]).write_text(json.dumps(
        {"value": app.VALUE, "strategy": os.environ["METASUP_STRATEGY"],
         "shadow": os.environ.get("METASUP_SHADOW")}))
    time.sleep(60)  # ok: a long-running agent
    """
)


def test_experiment_mode_in_run_merges_a_winner_and_relaunches(repo: Path, tmp_path: Path) -> None:
    experiment_repo(repo, extra="  proposals: {mode: experiment}\n", agent=RUNNING_AGENT)
    (repo / ".gitignore").write_text("__pycache__/\nseen-*.json\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "ignore")
    with supervising(repo):
        wait_for(lambda: json_written(repo / "seen-1.json"))
        bad = run_metasup(repo, "propose", value(tmp_path, "bad", "x"))
        assert bad.returncode == 0, bad.stderr  # valid as a proposal; the experiment judges it
        wait_for(lambda: "experiment_failed" in names(repo), what="the failed experiment")
        assert not (repo / "seen-2.json").exists(), "a failed experiment leaves the agent alone"
        good = run_metasup(repo, "propose", value(tmp_path, "five", 5))
        assert good.returncode == 0, good.stderr
        seen = wait_for(
            lambda: json_written(repo / "seen-2.json"),
            what="the relaunch on the merged code",
        )
        status = json.loads(run_metasup(repo, "status", "--json").stdout)
    assert seen["value"] == 5 and seen["shadow"] is None
    order = [n for n in names(repo) if n in ("experiment_passed", "merged", "snapshot", "launch")]
    # The tree was clean (the agent's files are ignored): no snapshot, straight to the merge.
    assert order[-3:] == ["experiment_passed", "merged", "launch"]
    assert [e["outcome"] for e in status["experiments"]] == ["failed", "merged"]
    rejected = repo / ".git" / "metasup" / "proposals" / "rejected"
    assert len(list(rejected.glob("*.errors.json"))) == 1
    assert (repo / "app.py").read_text() == "VALUE = 5\n"
    assert "rollback" not in names(repo)
