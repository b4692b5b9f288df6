"""Proposals: every rejection code, the path defences, applying all or nothing."""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metasup.facts.policy import Limits, Policy, load_policy
from metasup.pipelines import proposals
from metasup.pipelines.proposals import (
    CODES,
    ApplyError,
    Change,
    Proposal,
    apply,
    blob_sha,
    validate,
)


def doc(*changes: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"reason": "test", "changes": list(changes), **extra}).encode()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "src").mkdir()
    (work / "src" / "app.py").write_text("print('v1')\n")
    (work / "README").write_text("readme\n")
    (work / "protected").mkdir()
    (work / "protected" / "safety_rules.yaml").write_text("protected: []\n")
    return work


@pytest.fixture
def policy(tree: Path) -> Policy:
    return load_policy(tree, tree / "metasup.yaml", ["backend/supervisor/", "secrets.txt"])


def codes(raw: bytes, policy: Policy, tree: Path) -> list[str]:
    _, errors = validate(raw, policy, tree)
    return [e.code for e in errors]


def listing(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if p.is_symlink():
                out[str(p.relative_to(root))] = (st.st_mode, os.readlink(p))
            elif p.is_file():
                out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes())
            else:
                out[str(p.relative_to(root))] = (st.st_mode, b"")
    return out


# --- every code -------------------------------------------------------------------------------


CASES: dict[str, list[dict[str, Any]] | bytes] = {
    "schema": [{"file": "a"}],
    "path_absolute": [{"file": "/etc/passwd", "content": "x"}],
    "path_traversal": [{"file": "src/../../x", "content": "x"}],
    "path_invalid": [{"file": "a\\b", "content": "x"}],
    "path_git": [{"file": "sub/.GIT/config", "content": "x"}],
    "path_protected": [{"file": "Protected/Safety_Rules.yaml", "content": "x"}],
    "path_symlink": [{"file": "link/x", "content": "x"}],
    "path_not_normalized": [{"file": "src/./app.py", "content": "x"}],
    "duplicate_file": [{"file": "a.txt", "content": "1"}, {"file": "A.txt", "content": "2"}],
    "too_many_changes": [{"file": f"f{i}", "content": ""} for i in range(4)],
    "content_too_large": [{"file": "big", "content": "x" * 101}],
    "proposal_too_large": b"",
    "bad_encoding": [{"file": "b", "content_base64": "not base64!"}],
    "bad_mode": [{"file": "b", "content": "x", "mode": "100777"}],
    "stale": [{"file": "src/app.py", "content": "x", "expected_sha": "0" * 40}],
    "delete_missing": [{"file": "nope.txt", "action": "delete"}],
}


@pytest.mark.parametrize("code", CODES)
def test_every_rejection_code(tree: Path, code: str) -> None:
    (tree / "link").symlink_to(tree / "src")
    small = Policy(
        [("/protected", "built-in")],
        Limits(max_changes=3, max_file_bytes=100, max_proposal_bytes=4000),
    )
    case = CASES[code]
    raw = (
        doc({"file": "a", "content": "x" * 5000}) if code == "proposal_too_large" else doc(*case)  # type: ignore[arg-type]
    )
    before = listing(tree)
    proposal, errors = validate(raw, small, tree)
    assert proposal is None
    assert code in [e.code for e in errors], errors
    assert listing(tree) == before, "validation writes nothing"
    for e in errors:
        assert e.message and e.code in CODES
        if e.index is not None:
            assert e.message.startswith(f"change {e.index}"), e.message


def test_all_codes_are_covered() -> None:
    assert set(CASES) == set(CODES)


def test_a_valid_proposal(tree: Path, policy: Policy) -> None:
    sha = blob_sha((tree / "src" / "app.py").read_bytes())
    raw = doc(
        {"file": "storage/cache.py", "content": "cache = {}\n"},
        {"file": "bin/tool", "content": "#!/bin/sh\n", "mode": "100755"},
        {"file": "logo.png", "content_base64": base64.b64encode(b"\x89PNG\0").decode()},
        {"file": "src/app.py", "content": "print('v2')\n", "expected_sha": sha},
        {"file": "README", "action": "delete"},
        steps=["one", "two"],
    )
    proposal, errors = validate(raw, policy, tree)
    assert errors == [] and proposal is not None
    assert [c.path for c in proposal.changes][:2] == ["storage/cache.py", "bin/tool"]
    assert proposal.steps == ("one", "two")


def test_blob_sha_matches_git() -> None:
    assert blob_sha(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert blob_sha(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


# --- path defences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/abs", "path_absolute"),
        ("C:/windows", "path_absolute"),
        ("..", "path_traversal"),
        ("a/../b", "path_traversal"),
        ("a/..", "path_traversal"),
        ("", "path_invalid"),
        ("a//b", "path_not_normalized"),
        ("a/", "path_not_normalized"),
        ("./a", "path_not_normalized"),
        ("a\\b", "path_invalid"),
        ("a\0b", "path_invalid"),
        ("a\nb", "path_invalid"),
        ("a\x7fb", "path_invalid"),
        ("x" * 256, "path_invalid"),
        ("/".join(["d" * 200] * 21), "path_invalid"),
        (".git", "path_git"),
        (".git/hooks/pre-commit", "path_git"),
        ("sub/.Git/x", "path_git"),
        ("sub/.git./x", "path_git"),
        (unicodedata.normalize("NFD", "café.txt"), "path_not_normalized"),
        ("protected/schemas/x.json", "path_protected"),
        ("PROTECTED/x", "path_protected"),
        ("protected", "path_protected"),
        (".metasup/state.json", "path_protected"),
        (".metasup/INBOX/x.json", "path_protected"),  # the exception is for the exact path
        (".Metasup/inbox/x.json", "path_protected"),
        ("metasup.yaml", "path_protected"),
        ("backend/supervisor/main.py", "path_protected"),
        ("Backend/Supervisor/main.py", "path_protected"),
        ("deep/secrets.txt", "path_protected"),
        (unicodedata.normalize("NFC", "Protected/é"), "path_protected"),
    ],
)
def test_path_defences(tree: Path, policy: Policy, path: str, code: str) -> None:
    assert codes(doc({"file": path, "content": "x"}), policy, tree) == [code]


@pytest.mark.parametrize("path", ["a:b", "src/protected/x", ".metasup/inbox/p.json", "é.txt"])
def test_paths_that_are_fine(tree: Path, policy: Policy, path: str) -> None:
    assert codes(doc({"file": path, "content": "x"}), policy, tree) == []


def test_symlinks_inside_and_outside_are_refused(tree: Path, policy: Policy) -> None:
    outside = tree.parent / "outside"
    outside.mkdir()
    (tree / "out").symlink_to(outside)
    (tree / "in").symlink_to(tree / "src")
    (tree / "file-link").symlink_to(tree / "README")
    for path in ("out/x", "in/app.py", "file-link"):
        assert codes(doc({"file": path, "content": "x"}), policy, tree) == ["path_symlink"]
    assert not any(outside.iterdir())


def test_a_file_in_the_way_of_a_directory(tree: Path, policy: Policy) -> None:
    assert codes(doc({"file": "README/x", "content": "x"}), policy, tree) == ["path_invalid"]
    assert codes(doc({"file": "src", "content": "x"}), policy, tree) == ["path_invalid"]


def test_a_file_and_a_directory_that_is_its_prefix(tree: Path, policy: Policy) -> None:
    raw = doc({"file": "new", "content": "x"}, {"file": "new/inner", "content": "y"})
    assert codes(raw, policy, tree) == ["duplicate_file"]


def test_duplicates_after_normalisation(tree: Path, policy: Policy) -> None:
    raw = doc({"file": "Café.txt", "content": "1"}, {"file": "CAFÉ.TXT", "content": "2"})
    assert codes(raw, policy, tree) == ["duplicate_file"]


def test_schema_errors_name_the_change(tree: Path, policy: Policy) -> None:
    _, errors = validate(doc({"file": "a", "content": "x", "action": "delete"}), policy, tree)
    (e,) = errors
    assert e.code == "schema" and e.index == 0 and e.file == "a"
    assert "exactly one of content, content_base64, or action: delete" in e.message
    _, errors = validate(b'{"changes": []}', policy, tree)
    assert {e.code for e in errors} == {"schema"}
    _, errors = validate(b"\xff\xfe", policy, tree)
    assert errors[0].code == "schema" and "not UTF-8" in errors[0].message


def test_config_in_use_and_repo_rules_are_protected(tree: Path) -> None:
    (tree / "protected" / "safety_rules.yaml").write_text("protected: [/data/keys/]\n")
    policy = load_policy(tree, tree / "conf" / "agent.yaml")
    for path in ("conf/agent.yaml", "data/keys/k1", "protected/x"):
        assert codes(doc({"file": path, "content": "x"}), policy, tree) == ["path_protected"]


# --- applying ---------------------------------------------------------------------------------


def test_apply_writes_modes_base64_and_deletes(tree: Path, policy: Policy) -> None:
    (tree / "src" / "run.sh").write_text("old\n")
    (tree / "src" / "run.sh").chmod(0o755)
    raw = doc(
        {"file": "storage/deep/cache.py", "content": "cache = {}\n"},
        {"file": "bin/tool", "content": "#!/bin/sh\n", "mode": "100755"},
        {"file": "logo.png", "content_base64": base64.b64encode(b"\x89PNG\0\xff").decode()},
        {"file": "src/run.sh", "content": "new\n"},
        {"file": "README", "action": "delete"},
    )
    proposal, errors = validate(raw, policy, tree)
    assert proposal is not None, errors
    apply(proposal, tree)
    assert (tree / "storage" / "deep" / "cache.py").read_text() == "cache = {}\n"
    assert os.stat(tree / "bin" / "tool").st_mode & 0o777 == 0o755
    assert (tree / "logo.png").read_bytes() == b"\x89PNG\0\xff"
    assert (tree / "src" / "run.sh").read_text() == "new\n"
    assert os.stat(tree / "src" / "run.sh").st_mode & 0o111, "an edit keeps the exec bit"
    assert not (tree / "README").exists()
    leftovers = [p for p in listing(tree) if "metasup-" in p]
    assert leftovers == []


def test_a_failure_while_staging_changes_nothing(tree: Path) -> None:
    before = listing(tree)
    proposal = Proposal(
        "r",
        (),
        (
            Change(0, "new/ok.txt", False, b"ok"),
            Change(1, "README/x", False, b"blocked: README is a file"),
        ),
    )
    with pytest.raises(ApplyError):
        apply(proposal, tree)
    assert listing(tree) == before


def test_a_failure_while_swapping_in_undoes_the_swaps(tree: Path) -> None:
    before = listing(tree)
    proposal = Proposal(
        "r",
        (),
        (
            Change(0, "src/app.py", False, b"changed"),
            Change(1, "README", True),
            Change(2, "src", False, b"src is a directory"),
        ),
    )
    with pytest.raises(ApplyError):
        apply(proposal, tree)
    assert listing(tree) == before


def test_apply_never_follows_a_symlink_that_appeared(tree: Path) -> None:
    outside = tree.parent / "outside"
    outside.mkdir()
    proposal = Proposal("r", (), (Change(0, "evil/x", False, b"x"),))
    (tree / "evil").symlink_to(outside)  # after validation, before applying
    with pytest.raises(ApplyError):
        apply(proposal, tree)
    assert not any(outside.iterdir())


# --- hostile input, generated -----------------------------------------------------------------

_segments = st.sampled_from(
    ["a", "b", "..", ".", "", ".git", ".GIT", "protected", "Protected", "link", "README",
     "src", "é", unicodedata.normalize("NFD", "é"), "x\\y", "\0", "metasup.yaml", ".metasup",
     "inbox"]
)  # fmt: skip
_paths = st.one_of(
    st.lists(_segments, min_size=1, max_size=4).map("/".join),
    st.lists(_segments, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.text(max_size=12),
)
_changes = st.fixed_dictionaries(
    {"file": _paths},
    optional={
        "content": st.text(max_size=8),
        "content_base64": st.sampled_from(["eA==", "!!", "", "eA"]),
        "mode": st.sampled_from(["100644", "100755", "100600", "755", "120000"]),
        "action": st.sampled_from(["delete", "write", "rm"]),
        "expected_sha": st.sampled_from(["0" * 40, "zz", blob_sha(b"readme\n")]),
        "extra": st.integers(),
    },
)
_proposals = st.one_of(
    st.fixed_dictionaries(
        {"reason": st.text(max_size=5), "changes": st.lists(_changes, max_size=5)},
        optional={"steps": st.lists(st.text(max_size=3), max_size=2)},
    ),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.lists(st.integers(), max_size=3),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(_proposals)
def test_hostile_proposals(tmp_path_factory: pytest.TempPathFactory, document: Any) -> None:
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    work.mkdir()
    (work / "README").write_text("readme\n")
    (work / "src").mkdir()
    (work / "protected").mkdir()
    (work / "protected" / "rules").write_text("keep\n")
    (root / "outside").mkdir()
    (work / "link").symlink_to(root / "outside")
    policy = load_policy(work, work / "metasup.yaml")
    raw = json.dumps(document).encode()
    before_work, before_root = listing(work), listing(root)
    proposal, errors = proposals.validate(raw, policy, work)  # must never raise
    assert listing(root) == before_root, "validation writes nothing"
    if errors:
        assert proposal is None and all(e.code in CODES for e in errors)
        return
    assert proposal is not None
    apply(proposal, work)
    after = listing(work)
    assert listing(root / "outside") == {}, "nothing written outside the repo"
    assert after.get("protected/rules") == before_work["protected/rules"]
    changed = {p for p in set(after) | set(before_work) if after.get(p) != before_work.get(p)}
    touched = {c.path for c in proposal.changes}
    for path in changed:
        assert any(path == t or t.startswith(path + "/") for t in touched), path
        assert policy.protecting_rule(path) is None or any(
            t.startswith(path + "/") for t in touched
        )


def test_deep_nesting_is_a_schema_error(tree: Path, policy: Policy) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert codes(raw, policy, tree) == ["schema"]


_IN_TREE = ["a.txt", "d/b.txt", "d", "d/e/c.txt", "link", "link/x", "a.txt/x", "new.txt", "d/new"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(_IN_TREE), st.booleans(), st.sampled_from([None, "right", "wrong"])
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda c: c[0],
    )
)
def test_a_commit_is_judged_as_a_worktree_holding_it_is(tmp_path_factory, changes) -> None:  # type: ignore[no-untyped-def]
    """Experiments check a proposal against the base commit read from git, not against a
    worktree moved there: every answer is the one the worktree gives."""
    from metasup.effects.git.candidates import in_commit
    from metasup.effects.git.repo import GitRepo
    from testing.fixtures import git, make_repo

    repo = make_repo(tmp_path_factory.mktemp("judged") / "repo")
    (repo / "d" / "e").mkdir(parents=True)
    for name in ("a.txt", "d/b.txt", "d/e/c.txt"):
        (repo / name).write_text(name)
    os.symlink("a.txt", repo / "link")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tree")
    entries = []
    for path, delete, sha in changes:
        entry: dict[str, Any] = {"file": path}
        if delete:
            entry["action"] = "delete"
        else:
            entry["content"] = "new\n"
        if sha is not None:
            entry["expected_sha"] = blob_sha(path.encode()) if sha == "right" else "0" * 40
        entries.append(entry)
    proposal, _ = proposals.parse(doc(*entries), load_policy(repo))
    assume(proposal is not None)  # refused before the tree is looked at: the same for both
    assert proposal is not None
    kind, sha = in_commit(GitRepo(repo), git(repo, "rev-parse", "HEAD").strip())
    from_git = proposals.check_against_tree(proposal, proposals.Looker(kind, sha))
    assert from_git == proposals.check_against_tree(proposal, repo)
