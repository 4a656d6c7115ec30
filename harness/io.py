"""File helpers: JSON/JSONL readers that name the file and line of a bad record, atomic writes, and a bounded
cache of decoded images (:class:`ImageCache`)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from harness.errors import ConfigError, DataError, ImageError

if TYPE_CHECKING:
    from harness.types import ImageRef

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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


class OnceCache(Generic[K, V]):
    """A thread-safe LRU cache that computes each key's value once while the key stays cached.

    :meth:`get` returns the cached value, or computes it with ``compute()``; threads asking for a key whose
    value is being computed wait for that computation instead of starting their own. A computation that raises
    is not cached: its waiters get the exception and the next :meth:`get` computes again. The cache holds at
    most ``max_items`` values and, as measured by ``size_of``, at most ``max_size`` in all; the least recently
    used values go first (the newest value stays even when it alone is larger than ``max_size``).
    """

    def __init__(self, max_items: int, max_size: float = float("inf"), size_of: Callable[[V], float] | None = None):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.max_size = max_size
        self._size_of = size_of or (lambda _value: 0)
        self._entries: OrderedDict[K, tuple[Future[V], list[float]]] = OrderedDict()
        self._size = 0.0
        self._lock = threading.Lock()
        self.computed = 0  # computations started (misses)
        self.hits = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size(self) -> float:
        """The total ``size_of`` of the values held now."""
        with self._lock:
            return self._size

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            found = self._entries.get(key)
            owner = found is None
            if found is None:
                entry: tuple[Future[V], list[float]] = (Future(), [0.0])
                self._entries[key] = entry
                self.computed += 1
                self._evict()
            else:
                entry = found
                self._entries.move_to_end(key)
                self.hits += 1
        future, size = entry
        if not owner:
            return future.result()
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            future.set_exception(exc)
            raise
        future.set_result(value)
        with self._lock:
            if self._entries.get(key) is entry:
                size[0] = float(self._size_of(value))
                self._size += size[0]
                self._evict()
        return value

    def _evict(self) -> None:
        """Drop the least recently used entries beyond the bounds (the lock is held)."""
        while len(self._entries) > 1 and (len(self._entries) > self.max_items or self._size > self.max_size):
            _key, (_future, size) = self._entries.popitem(last=False)
            self._size -= size[0]


def _pixel_bytes(image: Any) -> float:
    try:
        return float(image.width * image.height * len(image.getbands()))
    except (AttributeError, TypeError):
        return 0.0


class ImageCache:
    """Decoded images by :class:`~harness.types.ImageRef`: each image is decoded once while it stays cached.

    Thread-safe (several decoding threads may ask for the same image at once; one decodes it, the others wait).
    Bounded by ``max_images`` images and ``max_bytes`` bytes of decoded pixels, least recently used first out.
    An image that cannot be decoded is not cached, and the :class:`~harness.errors.ImageError` names the sample
    that asked for it. The images returned are shared between samples: callers must not modify them.
    """

    def __init__(self, max_images: int = 1024, max_bytes: int = 1 << 30):
        self._cache: OnceCache[ImageRef, Any] = OnceCache(max_images, max_bytes, _pixel_bytes)

    @property
    def decoded(self) -> int:
        """How many decodes were started (one per image, unless it was evicted or failed)."""
        return self._cache.computed

    @property
    def hits(self) -> int:
        return self._cache.hits

    def __len__(self) -> int:
        return len(self._cache)

    def load(self, ref: ImageRef, sample_id: str) -> Any:
        """``ref.load(sample_id)``, decoded at most once while cached."""
        try:
            return self._cache.get(ref, lambda: ref.load(sample_id))
        except ImageError as exc:
            if exc.sample_id == sample_id:
                raise
            raise ImageError(sample_id, exc.detail) from None
