"""The paths two trees differ at, skipping shared folders whole: the same set libgit2's tree
diff gives (both sides of each change), on random trees that share some folders."""

from __future__ import annotations

from pathlib import Path

import pygit2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasup.effects.git.treeedit import changed_between, edit_tree

PATHS = st.sampled_from(["a", "b", "d/a", "d/b", "d/e/a", "d/e/b", "f/a", "a/x", "d/e"])
SIDE = st.dictionaries(PATHS, st.tuples(st.sampled_from([b"1", b"2"]), st.booleans()), max_size=6)


def _tree(repo: pygit2.Repository, files: dict[str, tuple[bytes, bool]]) -> pygit2.Tree:
    edits: dict[str, tuple[pygit2.Oid, int] | None] = {}
    for path, (data, executable) in sorted(files.items()):
        # a path under another one that is a file: the later one wins, as a tree can hold one
        if any(path.startswith(p + "/") or p.startswith(path + "/") for p in edits):
            continue
        mode = pygit2.enums.FileMode.BLOB_EXECUTABLE if executable else pygit2.enums.FileMode.BLOB
        edits[path] = (repo.create_blob(data), mode)
    tree = repo[edit_tree(repo, None, edits)]
    assert isinstance(tree, pygit2.Tree)
    return tree


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(left=SIDE, right=SIDE)
def test_the_paths_are_those_of_libgit2s_diff(tmp_path: Path, left, right) -> None:  # type: ignore[no-untyped-def]
    repo = pygit2.init_repository(str(tmp_path / "r"), bare=True)
    a, b = _tree(repo, left), _tree(repo, right)
    expected = {p for d in a.diff_to_tree(b).deltas for p in (d.old_file.path, d.new_file.path)}
    assert changed_between(a, b) == expected
    assert changed_between(b, a) == expected
    assert changed_between(a, a) == set()
