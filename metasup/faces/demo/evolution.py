"""`metasup demo --evolve`: a population search that improves something real without an LLM.

The scratch repository holds a shell sort whose gap sequence lives in gaps.txt, starting as
[1] (plain insertion sort). The fitness counts comparisons on fixed lists (how many times fewer
than insertion sort: 1.0 to begin with); the mutator edits the gaps at random. Within a few
generations the score climbs several-fold, and the winner is merged.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from metasup.effects.git.lookup import init_repository
from metasup.effects.git.repo import GitRepo
from metasup.faces.evolution import face_for, summary_lines
from metasup.facts.config import load_config
from metasup.facts.errors import UserError
from metasup.facts.policy import load_policy
from metasup.pipelines.evolution.offline import run_offline

FILES = Path(__file__).resolve().parent / "files" / "evolve"
COPIED = (
    "agent.py",
    "shellsort.py",
    "gaps.txt",
    "checks/check.py",
    "eval/score.py",
    "evolve/mutate.py",
)

CONFIG = """\
# The evolution demo: shell sort's gaps, searched by a random mutator, scored in comparisons.
supervisor:
  agent:
    command: [{python}, agent.py]
  experiments:
    checks: [[{python}, checks/check.py]]
    fitness: [{python}, eval/score.py]   # {{"score": times fewer comparisons than insertion sort}}
    repeats: 3                           # three runs each; the final verdict's noise guard
    timeout: 20s
    max_concurrent: 2
  evolution:
    mutator: [{python}, evolve/mutate.py]
    objective: score
    population: 8
    generations: {generations}
    islands: 2
    elite: 1
    crossover_rate: 0.25
    migration: {{every: 2, count: 1}}
    selection: {{method: tournament, size: 3}}
"""


def make_repo(directory: Path, generations: int) -> GitRepo:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; the demo needs a new or empty directory")
    for name in COPIED:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FILES / name, directory / name)
    (directory / ".gitignore").write_text("__pycache__/\n")
    python = '"' + sys.executable.replace("\\", "\\\\").replace('"', '\\"') + '"'
    (directory / "metasup.yaml").write_text(CONFIG.format(python=python, generations=generations))
    init_repository(directory)
    repo = GitRepo(directory)
    repo.snapshot(0)
    return repo


def run_evolve_demo(directory: Path | None, generations: int) -> int:
    target = directory or Path(tempfile.mkdtemp(prefix="metasup-evolve-demo-"))
    repo = make_repo(target, generations)
    print(f"metasup evolution demo in {target}", flush=True)
    print(
        "shell sort starts as insertion sort (gaps.txt holds 1); the score is how many times "
        "fewer comparisons it needs than insertion sort",
        flush=True,
    )
    cfg = load_config(target / "metasup.yaml")
    policy = load_policy(target, cfg.path, cfg.protected_paths)
    face = face_for(as_json=False)
    try:
        result = run_offline(
            repo, cfg, policy, resume=False, generations=None, merge=True, on_record=face.feed
        )
    finally:
        face.close()
    doc = result.as_dict()
    for line in summary_lines(doc):
        print(line)
    climb = " -> ".join(
        "-" if g["best"] is None else f"{g['best']:.3g}" for g in doc["generations"]
    )
    print(f"best score per generation: {climb}")
    if result.merged:
        lines = (target / "gaps.txt").read_text().splitlines()
        gaps = sorted({int(x) for x in lines if x.strip() and not x.startswith("#")} - {0})
        print(f"the merged gaps: {[*reversed(gaps), 1] if 1 not in gaps else gaps[::-1]}")
    print(f"see the population: cd {target} && metasup population --top 5")
    return 0 if result.promoted else 1
