"""Errors the harness reports to users.

A :class:`HarnessError` is a user error (bad input, missing file, unreachable
endpoint): the CLI prints its message and exits with status 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """A user-facing error whose message says what was wrong and what was expected."""


class ConfigError(HarnessError):
    """A flag, option or configuration value that cannot be used."""


class DataError(HarnessError):
    """A data file that is missing or malformed."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


class MissingDataFile(DataError):
    """A benchmark file the task needs is not under the data root."""

    def __init__(self, path: str | Path, source: str):
        super().__init__(f"required file is missing. It comes from: {source}", path=path)
        self.source = source


class ImageError(HarnessError):
    """An image that cannot be read; names the sample it belongs to."""

    def __init__(self, sample_id: str, detail: str):
        super().__init__(f"sample {sample_id}: cannot read image: {detail}")
        self.sample_id = sample_id
        self.detail = detail


class ModelError(HarnessError):
    """A model path that does not exist or holds an unsupported architecture."""


class EngineError(HarnessError):
    """An inference engine that cannot serve the request (unreachable endpoint, auth failure...)."""
