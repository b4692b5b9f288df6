"""An evolution mutator that asks an LLM command-line tool for one improvement.

metasup runs it in a worktree holding the parent (jailed, with the experiments' hard timeout)
and reads the proposal it prints as its last stdout line. Configure it as

    evolution:
      mutator: ["python", "evolve/llm_mutator.py"]

with LLM_CMD naming a tool that reads a prompt on stdin and writes the answer on stdout, e.g.
`LLM_CMD="llm -m gpt-4o-mini"` (simonw/llm) or `LLM_CMD="claude -p"`. The files it shows the
model are the ones in EVOLVE_FILES (space separated; default: every *.py file under 40 KB).
Not needed by metasup's tests; a sketch to adapt.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

PROMPT = """You improve a program by one small, focused change.
Its current score is {score} (higher is better); the best candidates so far scored {best}.
Answer with ONE line of JSON and nothing else:
{{"reason": "<why>", "changes": [{{"file": "<path>", "content": "<the whole new file>"}}]}}

The files:
{files}
"""


def main() -> int:
    command = os.environ.get("LLM_CMD")
    if not command:
        print("set LLM_CMD to an LLM command-line tool (prompt on stdin)", file=sys.stderr)
        return 2
    small = [p for p in Path(".").rglob("*.py") if p.stat().st_size < 40_000]
    names = os.environ.get("EVOLVE_FILES", "").split() or [str(p) for p in small]
    files = "\n".join(f"--- {n}\n{Path(n).read_text()}" for n in sorted(names))
    inspirations = json.loads(Path(os.environ["METASUP_INSPIRATIONS"]).read_text() or "[]")
    prompt = PROMPT.format(
        score=os.environ.get("METASUP_PARENT_SCORE") or "unknown",
        best=[c["score"] for c in inspirations][:5],
        files=files,
    )
    answer = subprocess.run(
        shlex.split(command), input=prompt, capture_output=True, text=True, check=True
    ).stdout
    # The model may wrap its JSON in prose or a code fence: keep the last line that parses.
    for line in reversed(answer.strip().splitlines()):
        try:
            doc = json.loads(line.strip().strip("`"))
        except ValueError:
            continue
        if isinstance(doc, dict) and "changes" in doc:
            print(json.dumps(doc))
            return 0
    print("the model gave no proposal", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
