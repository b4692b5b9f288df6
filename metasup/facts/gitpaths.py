"""Where git keeps its folders, what names them, and a step's duration: small facts several
modules need, read from the filesystem without opening the repository.

`.git` is matched ignoring case and trailing dots and spaces, as the filesystems git supports
would resolve it (git itself refuses such paths for the same reason).
"""

from __future__ import annotations

from pathlib import Path


def is_git_dir_name(part: str) -> bool:
    """`part` (one path component) names git's folder on some filesystem git supports."""
    return part.casefold().rstrip(". ") == ".git"


def in_git_dir(rel: str) -> bool:
    """`rel` (relative to the working tree, `/`-separated) is `.git` or inside it."""
    return is_git_dir_name(rel.split("/", 1)[0])


def git_dir_of(tree: Path) -> Path | None:
    """The git dir of the working tree `tree`: its `.git` folder, or the one a linked
    worktree's `.git` file names (`gitdir: PATH`); None when it has neither."""
    dot = tree / ".git"
    if dot.is_dir():
        return dot.resolve()
    if dot.is_file():
        text = dot.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            return (tree / text.removeprefix("gitdir:").strip()).resolve()
    return None


def common_dir(git_dir: Path) -> Path:
    """Where refs, objects, config and hooks live: the common dir a linked worktree's git dir
    names in `commondir`, else the git dir itself."""
    try:
        named = (git_dir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return git_dir
    return (git_dir / named).resolve()
