"""Exit codes (README.md, "Using it") and the one place exceptions become exit codes."""

from __future__ import annotations

from harvest_async.errors import ConfigError, HarvestError, PermissionDenied, RedisUnavailable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REDIS = 3


class CliError(Exception):
    """Ends the command with `code` after printing `harvest-async: <message>` on stderr."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code_for(exc: BaseException) -> int | None:
    """The exit status a project exception ends the command with (None: not ours)."""
    if isinstance(exc, ConfigError | PermissionDenied):
        return EXIT_USAGE  # a missing ACL permission is a configuration error too
    if isinstance(exc, RedisUnavailable):
        return EXIT_REDIS
    if isinstance(exc, HarvestError):
        return EXIT_ERROR
    return None


def describe(exc: BaseException) -> str:
    """The one line printed for `exc`."""
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}"
    return str(exc)


def project_error(exc: BaseException) -> HarvestError | None:
    """The project exception that ended a command, looking inside task-group wrappers:
    a group whose every leaf is ours stands for its first leaf."""
    if isinstance(exc, HarvestError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        ours, rest = exc.split(HarvestError)
        if ours is not None and rest is None:
            first: BaseException = ours
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            assert isinstance(first, HarvestError)
            return first
    return None
