"""The demo agent: does a little work, then edits its parameters and its own code.

Now and then it tries a risky rewrite of brain.py that kills it at the next start. metasup rolls
that back; memory/ survives the rollback (rollback.preserve), so the agent reads the recovery
note, remembers which rewrite broke it, and does not try it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import brain  # a broken rewrite fails right here, before min_runtime

HERE = Path(__file__).resolve().parent
MEMORY = HERE / "memory"
PARAMS = HERE / "params.json"
RISKY = {1: "syntax", 3: "import"}  # generation -> the risky rewrite it is tempted by
WORK_SECONDS = 1.0


def say(text: str) -> None:
    print(f"  agent[{os.environ.get('METASUP_RUN', '?')}] {text}", flush=True)


def load(path: Path, default: dict[str, object]) -> dict[str, object]:
    try:
        loaded: dict[str, object] = json.loads(path.read_text())
        return loaded
    except (OSError, ValueError):
        return dict(default)


def learn_from_failure(memory: dict[str, object]) -> None:
    note_path = os.environ.get("METASUP_RECOVERY")
    if not note_path or not Path(note_path).exists():
        return
    note = json.loads(Path(note_path).read_text())
    if note.get("ts") == memory.get("last_note"):
        return
    memory["last_note"] = note.get("ts")
    tried = memory.get("pending")
    if isinstance(tried, dict):
        lessons = memory.setdefault("lessons", [])
        assert isinstance(lessons, list)
        lessons.append({**tried, "failure": note.get("reason"), "archive": note.get("archive_ref")})
        say(
            f"learned: rewrite {tried['kind']!r} at generation {tried['generation']} broke run "
            f"{note.get('run')} ({note.get('reason')}); archived as {note.get('archive_ref')}"
        )


def propose(name: str, reason: str, changes: list[dict[str, str]]) -> None:
    """Drop a proposal into metasup's inbox: write it aside, then rename it in."""
    inbox = Path(os.environ["METASUP_INBOX"])
    tmp = inbox / f".{name}.tmp"
    tmp.write_text(json.dumps({"reason": reason, "changes": changes}))
    tmp.rename(inbox / f"{name}.json")
    say(f"proposed: {reason}")


def note_through_mcp(text: str) -> None:
    """Call the `notes` MCP server the way an LLM agent's MCP client would: through metasup,
    which runs that server and keeps it healthy."""
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    bridge = StdioServerParameters(
        command=sys.executable, args=["-m", "metasup", "mcp", "connect", "notes"], cwd=str(HERE)
    )

    async def call() -> str:
        async with stdio_client(bridge) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("remember", {"text": text})
            return str(result.content[0].text)  # type: ignore[union-attr]

    say(f"MCP notes.remember -> {anyio.run(call)}")


def rewrite_brain(generation: int, scale: float, kind: str) -> None:
    body = (
        f'"""The demo agent\'s own code, rewritten by the agent at the end of every run."""\n\n'
        f"GENERATION = {generation}\nSTEP_SCALE = {scale}\n\n\n"
        "def think(x: float, target: float) -> float:\n"
        '    """One step of the agent\'s \'work\': move x toward the target."""\n'
        "    return x + (target - x) * STEP_SCALE\n"
    )
    if kind == "syntax":
        body += "\ndef broken(:\n"  # a typo the agent did not notice
    elif kind == "import":
        body = "import missing_optimizer  # an optimiser it hoped to have\n" + body
    (HERE / "brain.py").write_text(body)


def loosen_supervision(memory: dict[str, object]) -> None:
    """Tempted to loosen its own supervision. In metasup's jail the kernel refuses both (with
    the jail off, the tamper watch puts the config back)."""
    refused = []
    config = HERE / "metasup.yaml"
    try:
        config.write_text(config.read_text().replace("max_failures: 3", "max_failures: 1000"))
        say("edited metasup.yaml directly to allow 1000 failures")
    except OSError as e:
        refused.append("write metasup.yaml")
        say(f"tried to edit metasup.yaml: {e.strerror}")
    erase = ["git", "update-ref", "-d", "refs/metasup/good"]
    done = subprocess.run(erase, cwd=HERE, capture_output=True, text=True)
    if done.returncode != 0:
        refused.append("delete refs/metasup/good")
        say(f"tried to delete refs/metasup/good: {done.stderr.strip().splitlines()[-1]}")
    else:
        say("deleted refs/metasup/good")
    memory["refused"] = refused
    (MEMORY / "memory.json").write_text(json.dumps(memory, indent=2) + "\n")


def main() -> int:
    MEMORY.mkdir(exist_ok=True)
    memory = load(MEMORY / "memory.json", {"lessons": [], "runs": 0})
    learn_from_failure(memory)
    params = load(PARAMS, {"x": 0.0, "target": 42.0})
    x, target = float(params["x"]), float(params["target"])  # type: ignore[arg-type]
    say(f"generation {brain.GENERATION}, step scale {brain.STEP_SCALE}, x={x:.3f}")

    heartbeat = os.environ.get("METASUP_HEARTBEAT")
    deadline = time.monotonic() + WORK_SECONDS
    while time.monotonic() < deadline:
        x = brain.think(x, target)
        if heartbeat:
            Path(heartbeat).touch()
        time.sleep(0.25)  # the agent's pace of work
    params["x"] = round(x, 6)
    PARAMS.write_text(json.dumps(params, indent=2) + "\n")

    generation = brain.GENERATION + 1
    learned = {(d["generation"], d["kind"]) for d in memory["lessons"]}  # type: ignore[attr-defined]
    kind = RISKY.get(brain.GENERATION, "safe")
    if (brain.GENERATION, kind) in learned:
        say(f"not trying the {kind!r} rewrite again: it broke me before")
        kind = "safe"
    scale = round(min(0.9, brain.STEP_SCALE + 0.04), 2)
    rewrite_brain(generation, scale, kind)
    memory["pending"] = {"generation": brain.GENERATION, "kind": kind}
    memory["runs"] = int(memory.get("runs", 0)) + 1  # type: ignore[call-overload]
    (MEMORY / "memory.json").write_text(json.dumps(memory, indent=2) + "\n")
    say(f"x={x:.3f} (target {target}); rewrote brain.py -> generation {generation} ({kind})")
    if os.environ.get("METASUP_RUN") == "1":
        loosen_supervision(memory)
    if brain.GENERATION == 2:
        note_through_mcp(f"generation {generation}: x reached {x:.3f}")
        # metasup stops the agent as soon as a proposal lands; finish proposing first.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        propose(
            "notes",
            "Keep a log of ideas",
            [{"file": "notes/ideas.md", "content": f"- generation {generation}: try momentum\n"}],
        )
        propose(
            "unprotect",
            "Allow myself to edit the safety rules",
            [{"file": "protected/safety_rules.yaml", "content": "protected: []\n"}],
        )
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
