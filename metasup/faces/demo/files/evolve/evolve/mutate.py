"""The evolution demo's mutator: one random edit of one gap slot in gaps.txt.

metasup runs it in a worktree holding the parent, with METASUP_CHILD (the child's id, used
here as the random seed, so a rerun after a crash makes the same child), METASUP_PARENT_SCORE
and METASUP_INSPIRATIONS (the best candidates so far). A mutator may instead print a proposal
as its last line; an LLM-backed one usually does (see the README's evolution section).

Each slot sits on its own line between comment lines, so two parents that changed different
slots merge without a conflict: crossover combines their gaps."""

import os
import random
from pathlib import Path

rng = random.Random(os.environ.get("METASUP_CHILD", "x"))
path = Path("gaps.txt")
lines = path.read_text().splitlines()
slots = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
at = rng.choice(slots)
gap = int(lines[at])
move = rng.choice(["set", "set", "scale", "clear"]) if gap else "set"
if move == "set":
    gap = rng.randint(2, 200)
elif move == "scale":
    gap = max(2, round(gap * rng.uniform(0.5, 1.8)))
else:
    gap = 0
lines[at] = str(gap)
path.write_text("\n".join(lines) + "\n")
