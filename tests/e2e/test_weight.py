"""The resident supervisor stays lean: what only the CLI, the API, the MCP worker or the view
need is never loaded by the supervisor core (a guard for the shape, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testing.fixtures import agent_config, write_config

HEAVY = (
    *("rich", "typer", "click", "jsonschema", "mcp", "pydantic", "pydantic_core", "_hashlib"),
    *("httptools", "prometheus_client", "asyncio"),
)

# The core as `metasup run` execs it, in-process so its modules can be listed at the end.
CORE = """
import json, sys
from pathlib import Path
from metasup.pipelines.supervisor.launch import config_digest, main
repo, cfg = Path(sys.argv[1]), Path(sys.argv[2])
code = main(["--repo", str(repo), "--config", str(cfg), "--digest",
             config_digest(cfg.read_text()), "--max-cycles", "2", "--plain"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_the_supervisor_core_loads_none_of_the_heavy_libraries(repo: Path) -> None:
    (repo / "agent.py").write_text(
        "import os, sys, time\n"
        "if os.environ['METASUP_RUN'] == '2':\n"
        "    sys.exit(1)\n"
        "time.sleep(0.3)  # ok: a short healthy run\n"
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    # The second run fails: the jail, the tamper watch, the journal, a rollback with its
    # archive, the refs guard and the API's helper are all in play before the modules are listed.
    # With the API on, its child is started and stopped by the core.
    write_config(repo, agent_config(min_runtime="100ms") + '  api: {listen: "127.0.0.1:0"}\n')
    out = subprocess.run(
        [sys.executable, "-I", "-c", CORE, str(repo), str(repo / "metasup.yaml")],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["code"] == 0 and "rollback" in out.stderr and "api_listening" in out.stderr
    loaded = {m.split(".")[0] for m in doc["modules"]}
    assert "metasup" in loaded and "pygit2" in loaded, "the probe saw the supervisor's imports"
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
