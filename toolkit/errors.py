"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a file, a field, a flag). The CLI prints its
message as one line and exits with code 2, with no traceback. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""

    def __init__(self, message: str):
        # One line, always: a multi-line message would break the CLI contract.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A field of a config, profile or data file is wrong. Names the file (if any) and the field."""

    def __init__(self, field: str, problem: str, file: str | None = None):
        self.field = field
        self.file = file
        self.problem = problem
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{field}: {problem}")

    def with_file(self, file: str | None) -> "ConfigError":
        """The same error attributed to ``file`` (for checks run deep inside a loader)."""
        if self.file is not None or file is None:
            return self
        return ConfigError(self.field, self.problem, file)
