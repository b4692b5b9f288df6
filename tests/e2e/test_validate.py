"""`metasup validate` as a user and an agent call it."""

from __future__ import annotations

import json
from pathlib import Path

from testing.fixtures import run_metasup


def test_validate_json_output_and_exit_codes(repo: Path) -> None:
    (repo / "proposal.json").write_text(
        json.dumps({"reason": "r", "changes": [{"file": "ok.txt", "content": "x"}]})
    )
    ok = run_metasup(repo, "validate", "proposal.json", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"ok": True, "errors": []}
    bad = json.dumps(
        {"reason": "r", "changes": [{"file": "ok.txt", "content": "x"},
                                    {"file": "protected/x", "content": "x"}]}
    )  # fmt: skip
    out = run_metasup(repo, "validate", "-", "--json", input=bad)
    assert out.returncode == 1
    assert json.loads(out.stdout) == {
        "ok": False,
        "errors": [
            {
                "index": 1,
                "file": "protected/x",
                "code": "path_protected",
                "message": "change 1 ('protected/x'): protected by '/protected' (built-in)",
            }
        ],
    }
    text = run_metasup(repo, "validate", "-", input=bad)
    assert text.returncode == 1 and "rejected [path_protected] change 1" in text.stderr
    assert not (repo / "ok.txt").exists() and not (repo / "protected").exists()


def test_validate_uses_the_configs_protected_paths(repo: Path) -> None:
    (repo / "metasup.yaml").write_text(
        "supervisor:\n  agent: {command: x}\n  protected_paths: [eval/]\n"
    )
    for path in ("eval/score.py", "metasup.yaml"):
        raw = json.dumps({"reason": "r", "changes": [{"file": path, "content": "x"}]})
        out = run_metasup(repo, "validate", "-", "--json", input=raw)
        assert out.returncode == 1
        assert json.loads(out.stdout)["errors"][0]["code"] == "path_protected"


def test_validate_a_missing_file_is_a_usage_error(repo: Path) -> None:
    out = run_metasup(repo, "validate", "nope.json")
    assert out.returncode == 2 and out.stderr.startswith("metasup: error: nope.json: cannot read")
