"""Exit codes and the error that carries one (README.md, "Using it")."""

from __future__ import annotations

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
