"""A write the watch cannot see (through a hard link from outside the tree) is found by the
verification that runs off the loop's thread, and the next snapshot looks at everything."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from testing.fixtures import git, jail_off, run_metasup


def test_a_write_through_an_outside_hard_link_is_committed_all_the_same(
    repo: Path, tmp_path: Path
) -> None:
    link = tmp_path / "outside" / "data-link"
    link.parent.mkdir()
    (repo / "data.txt").write_text("before\n")
    os.link(repo / "data.txt", link)  # made before metasup starts: no event it could see
    jail_off(
        repo,
        textwrap.dedent(
            f"""
            import os, time
            if os.environ["METASUP_RUN"] == "2":
                with open({str(link)!r}, "r+") as f:  # the same inode, another folder
                    f.write("AFTER!\\n")
            time.sleep(0.6)  # ok: a healthy run outlasts min_runtime
            """
        ),
    )
    out = run_metasup(
        repo, "run", "--max-cycles", "8", env={"METASUP_VERIFY_INTERVAL_S": "0.3"}, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (repo / "data.txt").read_text() == "AFTER!\n"
    assert git(repo, "show", "HEAD:data.txt") == "AFTER!\n"
    assert "changes_missed" in out.stdout + out.stderr
