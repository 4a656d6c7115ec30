"""The harness cache folder, and content hashes of files and folders cached by path, size and mtime.

``content_hash`` is what run manifests record for checkpoints and benchmark files: a 14 GB checkpoint or the
~500 MB of COCO annotations are read once, then only when a file's size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_PROGRESS_BYTES = 1 << 30  # show a progress bar when hashing more than this


def cache_dir() -> Path:
    """The harness cache: ``$HARNESS_CACHE`` or ``~/.cache/halluc-harness``."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "halluc-harness"


def _checkpoint_files(root: Path, recursive: bool = True) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of the regular files under ``root``, sorted; hidden files and folders
    (``.git``, ``.cache``) are left out. Symbolic links are followed (hub snapshots link to blobs)."""
    if root.is_file():
        return [(root.name, root)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if not recursive:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if full.is_file():
                found.append((full.relative_to(root).as_posix(), full))
    return sorted(found)


def _hash_files(root: Path, files: Sequence[tuple[str, Path]]) -> str:
    sizes = [full.stat().st_size for _, full in files]
    h = hashlib.sha256()
    with _progress(sum(sizes), root.name) as bar:
        for (rel, full), size in zip(files, sizes):
            h.update(rel.encode("utf-8") + b"\0")
            h.update(str(size).encode() + b"\0")
            with open(full, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    bar.update(len(chunk))
    return h.hexdigest()


def _progress(total_bytes: int, name: str) -> Any:
    """A progress bar on stderr for hashing more than :data:`_PROGRESS_BYTES`, else a silent stand-in."""
    from tqdm import tqdm

    return tqdm(
        total=total_bytes,
        desc=f"hashing {name}",
        unit="B",
        unit_scale=True,
        disable=total_bytes < _PROGRESS_BYTES,
        leave=False,
    )


def _hash_cache_path() -> Path:
    return cache_dir() / "hashes.json"


def _read_hash_cache() -> dict[str, Any]:
    try:
        data = json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the cache file (atomically replaced); a cache that cannot be written is skipped: it
    only costs a re-hash next time."""
    path = _hash_cache_path()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_hash_cache()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def content_hash(path: str | Path, recursive: bool = True) -> str:
    """Hex sha256 over the files of ``path`` (a folder, or one file): for each file in sorted relative-path
    order, its path, its size and its bytes. Hidden files and folders are not part of it; with
    ``recursive=False`` neither are subfolders (a checkpoint's loadable files are its top-level ones, while
    ``checkpoints/`` or ``adapter/`` below it may hold much more).

    The result is cached in ``<cache>/hashes.json`` (see :func:`cache_dir`) under the absolute path, with
    the files' sizes and modification times: the files are read again only when one of them changed.
    """
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    files = _checkpoint_files(root, recursive)
    listing = []
    for rel, full in files:
        st = full.stat()
        listing.append([rel, st.st_size, st.st_mtime_ns])
    stamp = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    key = str(root) if recursive else f"{root} (top level)"
    entry = _read_hash_cache().get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _hash_files(root, files)
    _write_hash_cache(key, {"stamp": stamp, "sha256": digest, "files": len(files)})
    return digest
