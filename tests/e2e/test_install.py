"""metasup as a user installs it for an agent: a wheel built from this checkout, installed
on its own, brings everything `metasup init` and the hook need (the shipped policy, the
config template) and a `metasup` command that works outside this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testing.fixtures import ROOT, git

WHO = {k: "tester" for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")} | {
    k: "tester@example.org" for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")
}


def test_a_wheel_installs_a_working_metasup(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("metasup-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # Only the wheel's metasup: this checkout is neither the cwd nor on the path first.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site)}

    def metasup(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(site / "bin" / "metasup"), *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import metasup; print(metasup.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    out = metasup("init", "agent", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    agent = tmp_path / "agent"
    assert (agent / "protected" / "schemas" / "proposal.schema.json").is_file()
    assert "agent:" in (agent / "metasup.yaml").read_text()
    assert metasup("config", cwd=agent).returncode == 0
    # The hook init installed runs this metasup, and refuses a protected change.
    (agent / "protected" / "safety_rules.yaml").write_text("protected: []\n")
    refused = subprocess.run(
        ["git", "commit", "-qam", "loosen"], cwd=agent, env={**os.environ, **env, **WHO},
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "modified protected/safety_rules.yaml" in refused.stderr
    assert git(agent, "log", "--format=%s").strip() == "metasup: init"
