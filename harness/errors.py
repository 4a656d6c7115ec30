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


def install_command(*specs: str) -> str:
    """A pip command that installs ``specs`` into the running interpreter's environment, in backticks.

    ``extra:NAME`` stands for the project's optional extra NAME: from a source checkout it is installed from the
    checkout at the lock file's versions, otherwise from the package index.
    """
    import shlex
    import sys

    root = Path(__file__).resolve().parents[1]
    checkout = (root / "pyproject.toml").is_file()
    args: list[str] = []
    for spec in specs:
        if spec.startswith("extra:"):
            extra = spec.split(":", 1)[1]
            if checkout:
                lock = root / "requirements" / "lock.txt"
                args += [*(["-c", str(lock)] if lock.is_file() else []), "-e", f"{root}[{extra}]"]
            else:
                args.append(f"halluc-harness[{extra}]")
        else:
            args.append(spec)
    return "`" + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "pip", "install", *args]) + "`"


class MissingPackage(ConfigError):
    """An optional package a feature needs is not installed (or cannot be imported)."""

    def __init__(self, package: str, needed_for: str, *specs: str, detail: str = ""):
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"{needed_for} needs the package {package}, which is not installed{why}; install it with "
            f"{install_command(*(specs or (package,)))}"
        )
        self.package = package
