"""The one error convention: library code raises `UserError` for bad input; the CLI prints it as one red
line with the fix and exits 2 (tracebacks only with --verbose)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag combination, bad file)."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message
