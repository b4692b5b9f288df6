"""Proposals: parse, validate, apply all or nothing.

Validation reads the working tree (symlinks, `expected_sha`, deletes) and writes nothing.
Applying stages every new file beside its target (temp file, fsync), then swaps them in by
rename, keeping what they replace aside; if any step fails, everything done so far is undone.
No step follows a symlink.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metasup.effects.files.safeio import write_all
from metasup.facts.digest import sha1_hex
from metasup.facts.policy import Policy, check_path, fold_key
from metasup.facts.resources import schema_path

CODES = (
    "schema",
    "path_absolute",
    "path_traversal",
    "path_invalid",
    "path_git",
    "path_protected",
    "path_symlink",
    "path_not_normalized",
    "duplicate_file",
    "too_many_changes",
    "content_too_large",
    "proposal_too_large",
    "bad_encoding",
    "bad_mode",
    "stale",
    "delete_missing",
)


@dataclass(frozen=True)
class Rejection:
    index: int | None  # the change it is about; None for the whole proposal
    file: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Change:
    index: int
    path: str
    delete: bool
    data: bytes | None = None
    mode: str | None = None
    expected_sha: str | None = None


@dataclass(frozen=True)
class Proposal:
    reason: str
    steps: tuple[str, ...]
    changes: tuple[Change, ...]


class ApplyError(Exception):
    """Applying failed part way; everything it had done was undone."""


def blob_sha(data: bytes) -> str:
    """The sha git gives a blob of `data` (what `expected_sha` names)."""
    return sha1_hex(b"blob %d\0" % len(data) + data)


@functools.cache
def _schema_validator() -> Any:
    import jsonschema

    schema = json.loads(schema_path("proposal").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


# --- validation -------------------------------------------------------------------------------


def validate(
    raw: bytes, policy: Policy, where: Path | Looker
) -> tuple[Proposal | None, list[Rejection]]:
    """The proposal when every check passes, else None and every reason it does not; the
    tree checks against the working tree at `where`, or a commit's (`Looker`)."""
    proposal, errors = parse(raw, policy)
    if proposal is None or errors:
        return None, errors
    errors = check_against_tree(proposal, where)
    return (None, errors) if errors else (proposal, [])


def parse(raw: bytes, policy: Policy) -> tuple[Proposal | None, list[Rejection]]:
    """Structure, sizes, encodings, paths and protection: everything but the tree."""
    limits = policy.limits
    if len(raw) > limits.max_proposal_bytes:
        return None, [
            Rejection(
                None,
                None,
                "proposal_too_large",
                f"the proposal is {len(raw)} bytes; the limit is {limits.max_proposal_bytes}",
            )
        ]
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # JSON is UTF-8 (RFC 8259)
    except UnicodeDecodeError as e:
        return None, [Rejection(None, None, "schema", f"the proposal is not UTF-8: {e.reason}")]
    try:
        doc = json.loads(text)
    except ValueError as e:
        return None, [Rejection(None, None, "schema", f"the proposal is not JSON: {e}")]
    except RecursionError:
        return None, [Rejection(None, None, "schema", "the proposal is nested too deeply")]
    schema_errors = _schema_errors(doc)
    if schema_errors:
        return None, schema_errors
    items = doc["changes"]
    if len(items) > limits.max_changes:
        return None, [
            Rejection(
                None,
                None,
                "too_many_changes",
                f"{len(items)} changes; the limit is {limits.max_changes}",
            )
        ]
    errors: list[Rejection] = []
    changes: list[Change] = []
    for i, item in enumerate(items):
        change, problem = _parse_change(i, item, policy)
        if problem is not None:
            errors.append(problem)
        elif change is not None:
            changes.append(change)
    errors += _overlaps(changes)
    proposal = Proposal(
        reason=doc["reason"], steps=tuple(doc.get("steps", [])), changes=tuple(changes)
    )
    return proposal, errors


def _schema_errors(doc: Any) -> list[Rejection]:
    errors = []
    for error in sorted(_schema_validator().iter_errors(doc), key=lambda e: list(e.path)):
        at = list(error.absolute_path)
        index = at[1] if len(at) >= 2 and at[0] == "changes" and isinstance(at[1], int) else None
        if index is None:
            where = "/".join(str(p) for p in at) or "the proposal"
            errors.append(Rejection(None, None, "schema", f"{where}: {error.message}"))
            continue
        entry = doc["changes"][index]
        file = entry.get("file") if isinstance(entry, dict) else None
        file = file if isinstance(file, str) else None
        prefix = f"change {index} ({file!r})" if file is not None else f"change {index}"
        if error.validator in ("oneOf", "not") and len(at) == 2:
            message = (
                "give exactly one of content, content_base64, or action: delete "
                "(which takes no content and no mode)"
            )
        else:
            field = "/".join(str(p) for p in at[2:])
            message = f"{field}: {error.message}" if field else error.message
        errors.append(Rejection(index, file, "schema", f"{prefix}: {message}"))
    return errors


def _parse_change(
    i: int, item: dict[str, Any], policy: Policy
) -> tuple[Change | None, Rejection | None]:
    path = item["file"]

    def reject(code: str, message: str) -> tuple[None, Rejection]:
        return None, Rejection(i, path, code, f"change {i} ({path!r}): {message}")

    problem = check_path(path, policy.limits)
    if problem is not None:
        return reject(problem.code, problem.message)
    rule = policy.protecting_rule(path)
    if rule is not None:
        return reject("path_protected", f"protected by {rule}")
    if item.get("action") == "delete":
        return Change(i, path, delete=True, expected_sha=item.get("expected_sha")), None
    mode = item.get("mode")
    if mode is not None and mode not in policy.modes:
        return reject("bad_mode", f"mode {mode!r} is not one of {', '.join(policy.modes)}")
    if "content_base64" in item:
        try:
            data = base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError) as e:
            return reject("bad_encoding", f"content_base64 is not valid base64 ({e})")
    else:
        try:
            data = item["content"].encode("utf-8")
        except UnicodeEncodeError:
            return reject("bad_encoding", "content is not valid Unicode (lone surrogates)")
    if len(data) > policy.limits.max_file_bytes:
        return reject(
            "content_too_large",
            f"{len(data)} bytes; the limit is {policy.limits.max_file_bytes} a file",
        )
    return Change(i, path, False, data, mode, item.get("expected_sha")), None


def _overlaps(changes: list[Change]) -> list[Rejection]:
    """Two changes to one file (as any filesystem git supports would see it), or a file that
    another change needs as a directory."""
    errors = []
    seen: dict[str, Change] = {}
    for ch in changes:
        key = fold_key(ch.path)
        if key in seen:
            first = seen[key]
            errors.append(
                Rejection(
                    ch.index,
                    ch.path,
                    "duplicate_file",
                    f"change {ch.index} ({ch.path!r}): the same file as change {first.index} "
                    f"({first.path!r})",
                )
            )
        else:
            seen[key] = ch
    for ch in changes:
        parts = fold_key(ch.path).split("/")
        for n in range(1, len(parts)):
            other = seen.get("/".join(parts[:n]))
            if other is not None and not other.delete:
                errors.append(
                    Rejection(
                        ch.index,
                        ch.path,
                        "duplicate_file",
                        f"change {ch.index} ({ch.path!r}) needs {other.path!r} as a directory, "
                        f"but change {other.index} writes it as a file",
                    )
                )
                break
    return errors


@dataclass(frozen=True)
class Looker:
    """What stands at a path of a tree (`kind`: missing, link, dir, file or other) and the
    blob sha of a file there: the working tree's, or a commit's read from git."""

    kind: Callable[[str], str]
    sha: Callable[[str], str]


def on_disk(workdir: Path) -> Looker:
    def kind(path: str) -> str:
        try:
            mode = os.lstat(workdir / path).st_mode
        except FileNotFoundError:
            return "missing"
        if stat.S_ISLNK(mode):
            return "link"
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"

    return Looker(kind, lambda path: blob_sha((workdir / path).read_bytes()))


def check_against_tree(proposal: Proposal, where: Path | Looker) -> list[Rejection]:
    """Symlinks, files in the way, deletes of missing files, stale bases. Reads only."""
    look = on_disk(where) if isinstance(where, Path) else where
    errors = []
    for ch in proposal.changes:
        problem = _tree_problem(ch, look)
        if problem is not None:
            code, message = problem
            errors.append(
                Rejection(ch.index, ch.path, code, f"change {ch.index} ({ch.path!r}): {message}")
            )
    return errors


def _tree_problem(ch: Change, look: Looker) -> tuple[str, str] | None:
    parts = ch.path.split("/")
    for n in range(len(parts)):
        shown = "/".join(parts[: n + 1])
        kind = look.kind(shown)
        if kind == "missing":
            if ch.delete:
                return "delete_missing", "there is no such file to delete"
            if ch.expected_sha is not None:
                return "stale", f"expected_sha {ch.expected_sha} but the file does not exist"
            return None
        last = n == len(parts) - 1
        if kind == "link":
            return "path_symlink", f"{shown!r} is a symbolic link; changes never follow one"
        if not last and kind != "dir":
            return "path_invalid", f"{shown!r} is a file, not a directory"
        if last and kind == "dir":
            return "path_invalid", "it is a directory"
        if last and kind != "file":
            return "path_invalid", "it is not a regular file"
    if ch.expected_sha is not None:
        current = look.sha(ch.path)
        if current != ch.expected_sha:
            return "stale", f"expected_sha {ch.expected_sha}, but the file is now {current}"
    return None


# --- applying ---------------------------------------------------------------------------------


def apply(proposal: Proposal, workdir: Path) -> None:
    """Apply every change or none. Raises ApplyError (with everything undone) on failure."""
    tx = _Transaction(workdir)
    try:
        for ch in proposal.changes:
            if not ch.delete:
                tx.stage(ch)
        for ch in proposal.changes:
            tx.swap(ch)
        tx.commit()
    except BaseException as e:
        tx.undo()
        if isinstance(e, OSError):
            raise ApplyError(f"{e.filename or ''}: {e.strerror or e}") from e
        raise


class _Transaction:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.staged: dict[int, Path] = {}  # change index -> temp file
        self.created_dirs: list[Path] = []
        self.swapped: list[tuple[Path, Path | None]] = []  # (target, backup of what it held)

    def _dir_for(self, ch: Change) -> Path:
        """The target's directory, made where missing; never through a symlink."""
        here = self.workdir
        for part in ch.path.split("/")[:-1]:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                os.mkdir(here)
                self.created_dirs.append(here)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(20, "not a directory (or a symbolic link)", str(here))
        return here

    def stage(self, ch: Change) -> None:
        assert ch.data is not None
        directory = self._dir_for(ch)
        target = directory / ch.path.rsplit("/", 1)[-1]
        tmp = directory / f".{target.name[:200]}.metasup-new-{os.urandom(4).hex()}"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self.staged[ch.index] = tmp
        try:
            write_all(fd, ch.data)
            os.fchmod(fd, _file_mode(ch.mode, target))
            os.fsync(fd)
        finally:
            os.close(fd)

    def swap(self, ch: Change) -> None:
        target = self.workdir / ch.path
        backup = None
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise OSError(21, "not a regular file", str(target))
            backup = target.with_name(f".{target.name[:200]}.metasup-old-{os.urandom(4).hex()}")
            os.rename(target, backup)
        self.swapped.append((target, backup))
        if not ch.delete:
            os.rename(self.staged[ch.index], target)
            del self.staged[ch.index]

    def commit(self) -> None:
        for directory in {t.parent for t, _ in self.swapped}:
            with contextlib.suppress(OSError):
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for _, backup in self.swapped:
            if backup is not None:
                backup.unlink()
        self.swapped.clear()

    def undo(self) -> None:
        for target, backup in reversed(self.swapped):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            if backup is not None:
                os.rename(backup, target)
        self.swapped.clear()
        for tmp in self.staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.staged.clear()
        for directory in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        self.created_dirs.clear()


def _file_mode(mode: str | None, target: Path) -> int:
    if mode == "100755":
        return 0o755
    if mode == "100644":
        return 0o644
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(target).st_mode & stat.S_IXUSR:
            return 0o755  # an edit without a mode keeps the file's executable bit
    return 0o644
