"""An expected failure of a command: one line on stderr (what is wrong and what to do), a non-zero exit, no traceback."""
from __future__ import annotations


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
