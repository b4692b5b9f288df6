"""Which MCP servers a change of code touches: the paths each one watches, and the test.

Pure: the fleet asks with the commit's changed paths, then restarts what this names.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence

from metasup.facts.gitpaths import in_git_dir


def default_watch(
    command: str | None,
    args: Sequence[str],
    cwd: str | None,
    root: str,
    kind: Callable[[str], str | None],
) -> tuple[str, ...]:
    """The repository paths whose change restarts a server, when the config names none.

    Every file the command line names inside the repository stands for its whole folder (a
    server imports its neighbours); a folder stands for itself. `python -m pkg.mod` names
    `pkg/mod.py` or `pkg/mod/`. A command that names nothing in the repository (an installed
    server) watches nothing. `kind(path)` says "file", "dir" or None for a repo-relative path.
    """
    base = _inside(cwd or "", "", root)
    if base is None:
        return ()
    words = [w for w in (command, *args) if w]
    found: list[str] = []
    for i, word in enumerate(words):
        candidates = [word]
        if i > 0 and words[i - 1] == "-m" and "/" not in word:
            module = word.replace(".", "/")
            candidates = [module + ".py", module]
        for candidate in candidates:
            rel = _inside(candidate, base, root)
            if rel is None or rel == "":
                continue
            what = kind(rel)
            if what == "file":
                found.append(posixpath.dirname(rel))
                break
            if what == "dir":
                found.append(rel)
                break
    return tuple(dict.fromkeys(found))


def _inside(path: str, base: str, root: str) -> str | None:
    """`path` (relative to `base`, or absolute) as a repo-relative path; None when outside."""
    if posixpath.isabs(path):
        root = root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            return None
        path = path[len(root) :].lstrip("/")
    else:
        path = posixpath.join(base, path)
    norm = posixpath.normpath(path) if path else "."
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../") or in_git_dir(norm):
        return None
    return norm


def touched(watch: Sequence[str], changed: Iterable[str]) -> bool:
    """True when a changed path lies in a watched one ("" watches the whole tree)."""
    for path in changed:
        for w in watch:
            if w == "" or path == w or path.startswith(w + "/"):
                return True
    return False
