"""Model checkpoints: which family adapter serves a checkpoint, and its content hash for the run manifest.

``resolve_model(path)`` reads ``config.json``, picks the family adapter (:mod:`harness.models.llava`,
:mod:`harness.models.qwen2vl`) and hashes the checkpoint's files. The hash is cached by path, file sizes and
modification times, so a 14 GB checkpoint is read once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import ModelError
from harness.models.base import ModelFamily, families, family_for, read_config, register_family

_CHUNK = 1 << 20
_PROGRESS_BYTES = 1 << 30  # show a progress bar when hashing more than this


def cache_dir() -> Path:
    """The harness cache: ``$HARNESS_CACHE`` or ``~/.cache/halluc-harness``."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "halluc-harness"


@dataclass(frozen=True)
class ModelInfo:
    """What the manifest records about a model: where it is, what it is, and what exactly it is."""

    path: str  # absolute path of the checkpoint folder
    family: str  # adapter name: "llava", "qwen2_vl"
    architecture: str  # config.json "architectures"[0], e.g. "LlavaForConditionalGeneration"
    content_hash: str  # sha256 of the checkpoint's files (see content_hash)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model(path: str | Path, template: str | None = None) -> tuple[ModelInfo, ModelFamily]:
    """The checkpoint at ``path`` and its family adapter (with prompt template ``template``, or the family's
    default). Raises :class:`ModelError` for a missing path, a folder without ``config.json``, an
    unsupported architecture or an unknown template."""
    family = family_for(path, template)
    config = read_config(path)
    architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    info = ModelInfo(
        path=str(Path(path).resolve()),
        family=family.name,
        architecture=str(architecture),
        content_hash=content_hash(path),
    )
    return info, family


# ---------------------------------------------------------------------------------------------------------
# content hash


def _checkpoint_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of the regular files under ``root``, sorted; hidden files and folders
    (``.git``, ``.cache``) are left out. Symbolic links are followed (hub snapshots link to blobs)."""
    if root.is_file():
        return [(root.name, root)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
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


def content_hash(path: str | Path) -> str:
    """Hex sha256 over the checkpoint's files: for each file in sorted relative-path order, its path, its
    size and its bytes. Hidden files and folders are not part of it.

    The result is cached in ``<cache>/hashes.json`` (see :func:`cache_dir`) under the absolute path, with
    the files' sizes and modification times: the files are read again only when one of them changed.
    """
    root = Path(path).resolve()
    if not root.exists():
        raise ModelError(f"model path does not exist: {path}")
    files = _checkpoint_files(root)
    listing = []
    for rel, full in files:
        st = full.stat()
        listing.append([rel, st.st_size, st.st_mtime_ns])
    stamp = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    key = str(root)
    entry = _read_hash_cache().get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _hash_files(root, files)
    _write_hash_cache(key, {"stamp": stamp, "sha256": digest, "files": len(files)})
    return digest


# ---------------------------------------------------------------------------------------------------------
# helpers shared by the family adapters


@functools.lru_cache(maxsize=8)
def _load_processor(model_path: str) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path)


def hub_render(model_path: str | Path, prompt: str, num_images: int, response: str | None = None) -> str:
    """Render one user turn (``num_images`` images, then ``prompt``) with the chat template saved with the
    checkpoint; with ``response``, the assistant's turn follows instead of the generation prompt."""
    processor = _load_processor(str(Path(model_path).resolve()))
    if not getattr(processor, "chat_template", None):
        raise ModelError(f"{model_path}: the checkpoint has no chat template; choose another --template")
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if response is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=response is None)


def processor_batch(processor: Any, texts: list[str], images: list[list[Any]], **kwargs: Any) -> dict[str, Any]:
    """Run a transformers processor over a batch of rendered prompts and their images (left padding, torch
    tensors). Prompts without images are allowed; the processor gets ``images`` only if there are any."""
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} texts but {len(images)} image lists")
    flat = [img for per_text in images for img in per_text]
    call: dict[str, Any] = {"text": list(texts), "padding": True, "padding_side": "left", "return_tensors": "pt"}
    if flat:
        call["images"] = flat
    return dict(processor(**call, **kwargs))


__all__ = [
    "ModelFamily",
    "ModelInfo",
    "cache_dir",
    "content_hash",
    "families",
    "family_for",
    "hub_render",
    "processor_batch",
    "register_family",
    "resolve_model",
]
