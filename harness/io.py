"""File helpers: JSON/JSONL readers that name the file and line of a bad record, and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.errors import DataError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError("file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise DataError("is a directory; expected a JSON file", path=path) from exc
    except PermissionError as exc:
        raise DataError("cannot be read: permission denied", path=path) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=exc.lineno) from exc


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    A line that is not a JSON object raises :class:`DataError` naming the file and line.
    """
    path = Path(path)
    try:
        fh = path.open("r", encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError("file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise DataError("is a directory; expected a JSONL file", path=path) from exc
    except PermissionError as exc:
        raise DataError("cannot be read: permission denied", path=path) from exc
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno) from exc
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
            yield lineno, obj


def dumps_record(obj: Any) -> str:
    """One JSONL line, canonical: sorted keys, no ASCII escaping, compact separators."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def iter_parquet_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file as dicts (Hugging Face datasets saved to disk); a bad file names itself."""
    path = Path(path)
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with pandas and datasets
        from harness.errors import ConfigError

        raise ConfigError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", path=path) from exc
    yield from table.to_pylist()


def first_glob(root: str | Path, patterns: Sequence[str]) -> list[Path]:
    """The sorted matches of the first of ``patterns`` (relative to ``root``) that matches anything; [] if none."""
    for pattern in patterns:
        found = sorted(Path(root).glob(pattern))
        if found:
            return found
    return []


def read_yaml_mapping(path: str | Path, what: str = "configuration") -> dict[str, Any]:
    """A YAML file holding a mapping (``{}`` when empty); a missing file, bad YAML (with its line) or another
    top-level type is a :class:`ConfigError` naming the file."""
    import yaml

    from harness.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of settings, got {type(raw).__name__}")
    return raw
