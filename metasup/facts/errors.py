"""Errors a user can cause and fix. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A mistake in input or setup: printed without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration file is missing, unreadable or invalid."""


class RepoBusyError(UserError):
    """Another supervisor holds this repository."""


class IntegrityError(UserError):
    """Protected files differ from the approved baseline, and nothing explains it."""


class Refused(UserError):
    """A well-formed request the state refuses (no such server, nothing running): exit 1, as
    a command's ordinary failure, not a usage mistake."""

    exit_code = 1
