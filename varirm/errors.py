"""Errors a user can act on. The CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class VarirmError(Exception):
    """Base class for errors caused by input or configuration, not by a bug."""


class DataError(VarirmError):
    """A bad row in a data file: names the file, the row (0-based), and the field.

    >>> str(DataError("train.jsonl", 3, "chosen", "is empty"))
    "train.jsonl: row 3: field 'chosen': is empty"
    """

    def __init__(self, source: str, row: int | None, field: str | None, message: str):
        self.source, self.row, self.field, self.message = source, row, field, message
        parts = [source]
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [message]))


class ConfigError(VarirmError, ValueError):
    """A recipe or command-line value that cannot work (caught before any work where possible)."""
