"""Named crash points, so tests can kill -9 the supervisor at an exact step.

`METASUP_CRASHPOINT=<name>` makes the supervisor SIGKILL itself when it reaches that point
(`<name>@N`: the Nth time it does); unset, each point costs one comparison. The kill is a real
SIGKILL: no cleanup runs, as in a crash.
"""

import os
import signal
import threading
import time

_NAME, _, _NTH = (os.environ.get("METASUP_CRASHPOINT") or "").partition("@")
_ARMED: str | None = _NAME or None
_REACHED = [0]
_COUNT_LOCK = threading.Lock()
# `METASUP_HOLDPOINT=<name>:<file>` holds the supervisor at that point until `file` exists: a
# test's way to look at it in the middle of a long step.
_HOLD = os.environ.get("METASUP_HOLDPOINT") or None


def holdpoint(name: str) -> None:
    if _HOLD is None or not _HOLD.startswith(name + ":"):
        return
    release = _HOLD[len(name) + 1 :]
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)  # a test fixture's wait, bounded; never armed in use


def crashpoint(name: str) -> None:
    if _ARMED is not None and name == _ARMED:
        with _COUNT_LOCK:
            _REACHED[0] += 1
            if _REACHED[0] >= int(_NTH or 1):
                os.kill(os.getpid(), signal.SIGKILL)


def child_env() -> dict[str, str]:
    """This process's environment for a child: a crash point is the supervisor's alone."""
    env = dict(os.environ)
    env.pop("METASUP_CRASHPOINT", None)
    env.pop("METASUP_HOLDPOINT", None)
    return env


def is_armed(name: str) -> bool:
    """For points inside a library call, where a callback has to be installed to reach them."""
    return name == _ARMED
