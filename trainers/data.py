"""Preference records: the canonical :class:`PreferenceExample`, loaders for public formats, rejected images.

The canonical record (one JSON object per line) is::

    {"id": "vtc-000017", "question": "What is on the table?", "image_w": "images/a.jpg", "image_l": "images/b.jpg",
     "y_w": "A red mug.", "y_l": "A blue vase.", "contrast_type": "color", "source": "vtc"}

``image_w`` is the image ``y_w`` is grounded in; ``image_l`` (``null`` outside contrast data) is the paired image
``y_l`` is grounded in. Relative image paths are resolved against ``image_root`` when given, else against the data
file's folder; :func:`read_preferences` returns absolute paths and checks that each image file exists.

Loaders map other formats onto the record (:data:`FORMATS`):

- ``canonical``: the JSONL above;
- ``rlaif_v``: RLAIF-V parquet shards (``question``, ``chosen``, ``rejected``, ``image`` as ``{"bytes", "path"}``,
  ``idx``, ``ds_name``...); the embedded images are written once, content-addressed, under ``image_root`` (default:
  ``<harness cache>/images``) since the record holds paths;
- ``trl``: TRL's preference format, conversational (``prompt``/``chosen``/``rejected`` message lists whose
  content parts are ``{"type": "image"}`` / ``{"type": "text", "text": ...}``) or standard (plain strings), with an
  ``images`` (or ``image``) column; JSONL, a JSON array or parquet;
- ``mdpo``: mDPO's JSON array of ``{"img_path", "prompt", "chosen", "rejected"}`` whose prompt holds the LLaVA chat
  template (``... USER: <image>\\n{question} ASSISTANT:``); the question is taken out of it.

Rejected images (:data:`STRATEGIES`, :func:`rejected_image`) are deterministic per (example id, strategy, seed):
the random numbers come from a generator seeded with a SHA-256 of those three (:func:`strategy_seed`).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import cache_dir
from harness.errors import DataError
from harness.io import atomic_write_text, dumps_record, iter_jsonl, read_json
from harness.types import ImageRef

FORMATS: tuple[str, ...] = ("canonical", "rlaif_v", "trl", "mdpo")
STRATEGIES: tuple[str, ...] = ("crop", "diffusion", "black", "random", "contrast")

CROP_KEEP = (0.8, 1.0)
"""Range of the kept area fraction of a ``crop`` (uniform): a crop removes up to 20% of the image."""
DIFFUSION_STEP = 500
DIFFUSION_STEPS = 1000
DIFFUSION_BETAS = (1e-4, 0.02)
"""DDPM's linear noise schedule: ``beta_t`` from 1e-4 to 0.02 over 1000 steps."""

_FIELDS = ("id", "question", "image_w", "image_l", "y_w", "y_l", "contrast_type", "source")
_REQUIRED = ("id", "question", "y_w", "y_l")


@dataclass(frozen=True)
class PreferenceExample:
    """One preference record: a question, the image ``y_w`` is grounded in, and optionally a contrast image.

    ``image_w`` / ``image_l`` are file paths (``None``: no image). ``contrast_type`` says what differs between the
    two images of a contrast pair (e.g. "color", "count"); ``source`` names the data set the record comes from.
    """

    id: str
    question: str
    image_w: str | None
    image_l: str | None
    y_w: str
    y_l: str
    contrast_type: str | None = None
    source: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The canonical JSON object."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# paths


def _abspath(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def resolve_image_path(path: str, base: str | os.PathLike[str] | None) -> str:
    """``path`` made absolute: kept when absolute, else joined to ``base`` (else to the working directory)."""
    p = os.path.expanduser(path)
    if os.path.isabs(p) or base is None:
        return _abspath(p)
    return _abspath(os.path.join(os.fspath(base), p))


# --------------------------------------------------------------------------------------------------------------------
# reading


class _Where:
    """Where a record came from, for error messages: the file and a line (JSONL) or an item label (row, record)."""

    def __init__(self, path: Path, line: int | None = None, item: str | None = None):
        self.path, self.line, self.item = path, line, item

    def error(self, message: str) -> DataError:
        prefix = f"{self.item}: " if self.item else ""
        return DataError(prefix + message, path=self.path, line=self.line)


def _string(obj: Mapping[str, Any], key: str, where: _Where, *, optional: bool = False, nonempty: bool = True) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise where.error(f"field {key!r} is missing" if key not in obj else f"field {key!r} is null")
    value = obj[key]
    if not isinstance(value, str):
        raise where.error(f"field {key!r}: expected a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise where.error(f"field {key!r} is empty")
    return value


def _canonical(obj: Mapping[str, Any], where: _Where) -> PreferenceExample:
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise where.error(f"unknown field {unknown[0]!r}; a record has fields {', '.join(_FIELDS)}")
    values = {k: _string(obj, k, where, optional=k not in _REQUIRED) for k in _FIELDS}
    return PreferenceExample(**values)


def _detect(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        columns = set(_parquet_columns(path))
        if {"question", "chosen", "rejected"} <= columns:
            return "rlaif_v"
        if {"chosen", "rejected"} <= columns:
            return "trl"
        raise DataError(f"cannot tell the format from the columns {sorted(columns)}; pass fmt=", path=path)
    if suffix == ".jsonl":
        keys: set[str] | None = None
        for _, obj in iter_jsonl(path):
            keys = set(obj)
            break
        if keys is None or "y_w" in keys:
            return "canonical"  # an empty file reads as an empty canonical file
        if "chosen" in keys:
            return "trl"
        raise DataError(f"cannot tell the format from the keys {sorted(keys)}; pass fmt=", path=path)
    if suffix == ".json":
        data = read_json(path)
        first = data[0] if isinstance(data, list) and data else None
        if isinstance(first, dict) and "img_path" in first:
            return "mdpo"
        if isinstance(first, dict) and "chosen" in first:
            return "trl"
        raise DataError("cannot tell the format: expected a JSON array of mDPO or TRL records; pass fmt=", path=path)
    raise DataError(
        f"cannot tell the format of a {suffix or 'suffix-less'} file; pass fmt= one of {FORMATS}", path=path
    )


def read_preferences(
    path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None, fmt: str = "auto"
) -> list[PreferenceExample]:
    """Read preference records from ``path`` in format ``fmt`` (one of :data:`FORMATS`, or ``"auto"``).

    Image paths come back absolute. ``image_root`` is the folder relative image paths are resolved against
    (default: the data file's folder), and where images embedded in a parquet file are written (default:
    ``<harness cache>/images``). A malformed record raises :class:`DataError` naming the file, the line (or row /
    record number) and the field; so do a duplicate id and an image file that does not exist (naming the id).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("preference data file not found", path=path)
    if fmt == "auto":
        fmt = _detect(path)
    readers = {"canonical": _read_canonical, "rlaif_v": _read_rlaif_v, "trl": _read_trl, "mdpo": _read_mdpo}
    if fmt not in readers:
        raise DataError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}", path=path)
    base = Path(image_root) if image_root is not None else path.parent

    examples: list[PreferenceExample] = []
    first_seen: dict[str, str] = {}
    for where, example in readers[fmt](path, image_root):
        label = f"line {where.line}" if where.line is not None else (where.item or "?")
        if example.id in first_seen:
            raise where.error(f"duplicate id {example.id!r} (first seen at {first_seen[example.id]})")
        first_seen[example.id] = label
        resolved = {}
        for key in ("image_w", "image_l"):
            value = getattr(example, key)
            if value is None:
                continue
            full = resolve_image_path(value, base)
            if not os.path.isfile(full):
                raise where.error(f"record {example.id!r}: {key} file not found: {full}")
            resolved[key] = full
        examples.append(replace(example, **resolved) if resolved else example)
    return examples


def _read_canonical(path: Path, image_root: Any) -> Iterator[tuple[_Where, PreferenceExample]]:
    for lineno, obj in iter_jsonl(path):
        where = _Where(path, line=lineno)
        yield where, _canonical(obj, where)


# RLAIF-V ------------------------------------------------------------------------------------------------------------


def _parquet_columns(path: Path) -> list[str]:
    pq = _pyarrow_parquet()
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a file that is not parquet
        raise DataError(f"cannot read as parquet: {exc}", path=path) from exc


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with `datasets`, a TRL dependency
        raise DataError("reading parquet needs pyarrow: pip install pyarrow") from exc
    return pq


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row_number, row)`` from 1, read in batches (RLAIF-V shards are ~1 GB), with a progress bar on big files."""
    from tqdm import tqdm

    pq = _pyarrow_parquet()
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"cannot read as parquet: {exc}", path=path) from exc
    total = pf.metadata.num_rows
    n = 0
    with tqdm(total=total, desc=f"reading {path.name}", unit="rows", leave=False, disable=total < 5000) as bar:
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                n += 1
                yield n, row
                bar.update(1)


_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def _image_suffix(data: bytes) -> str:
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"  # PIL identifies images by content, not by name


def images_dir(image_root: str | os.PathLike[str] | None) -> Path:
    """Where embedded images are written: ``image_root``, else ``<harness cache>/images``."""
    if image_root is not None:
        return Path(image_root)

    return cache_dir() / "images"


def store_image_bytes(data: bytes, folder: str | os.PathLike[str]) -> str:
    """Write encoded image bytes once under ``folder`` as ``<sha256[:32]><suffix>``; return the absolute path.

    Content addressing shares one file among records that reuse an image (RLAIF-V asks several questions about
    one image) and makes a second import of the same data write nothing.
    """
    folder = Path(folder)
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + _image_suffix(data))
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return _abspath(target)


def _embedded_image(value: Any, field: str, where: _Where, image_root: Any) -> str | None:
    """A path for an image cell: ``{"bytes", "path"}`` (datasets' Image feature), raw bytes, or a path string."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return store_image_bytes(bytes(value), images_dir(image_root))
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if isinstance(data, (bytes, bytearray)) and data:
            return store_image_bytes(bytes(data), images_dir(image_root))
        if isinstance(value.get("path"), str) and value["path"]:
            return value["path"]
        raise where.error(f"field {field!r}: an image needs 'bytes' or 'path'")
    raise where.error(
        f"field {field!r}: expected an image (bytes, a path or {{'bytes', 'path'}}), got {type(value).__name__}"
    )


def _read_rlaif_v(path: Path, image_root: Any) -> Iterator[tuple[_Where, PreferenceExample]]:
    for rowno, row in _iter_parquet(path):
        where = _Where(path, item=f"row {rowno}")
        idx = row.get("idx")
        example_id = str(idx) if idx is not None and str(idx).strip() else f"{path.stem}-{rowno}"
        image = _embedded_image(row.get("image"), "image", where, image_root)
        if image is None and isinstance(row.get("image_path"), str):
            image = row["image_path"]
        if image is None:
            raise where.error("field 'image' is missing")
        yield (
            where,
            PreferenceExample(
                id=example_id,
                question=_string(row, "question", where),
                image_w=image,
                image_l=None,
                y_w=_string(row, "chosen", where),
                y_l=_string(row, "rejected", where),
                contrast_type=None,
                source="rlaif-v",
            ),
        )


# TRL ----------------------------------------------------------------------------------------------------------------


def _message_text(message: Any, field: str, where: _Where) -> tuple[str, str, int]:
    """``(role, text, number of image parts)`` of one chat message."""
    if not isinstance(message, Mapping):
        raise where.error(f"field {field!r}: a message must be an object, got {type(message).__name__}")
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        return str(role), content, content.count("<image>")
    if not isinstance(content, list):
        raise where.error(f"field {field!r}: message content must be a string or a list of parts")
    texts, n_images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "image":
            n_images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise where.error(f"field {field!r}: unsupported content part {part!r}")
    return str(role), "".join(texts), n_images


def _trl_turns(value: Any, field: str, where: _Where) -> list[tuple[str, str, int]]:
    if isinstance(value, str):
        return [("", value, 0)]
    if not isinstance(value, list) or not value:
        raise where.error(f"field {field!r}: expected a non-empty message list or a string")
    return [_message_text(m, field, where) for m in value]


def _trl_example(row: Mapping[str, Any], where: _Where, default_id: str, image_root: Any) -> PreferenceExample:
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise where.error(f"field {key!r} is missing")
    chosen = _trl_turns(row["chosen"], "chosen", where)
    rejected = _trl_turns(row["rejected"], "rejected", where)
    if row.get("prompt") is not None:
        prompt = _trl_turns(row["prompt"], "prompt", where)
    else:  # implicit prompt: the shared turns before the last one
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise where.error("field 'prompt' is missing and chosen/rejected share no prompt turns")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if len(prompt) != 1 or prompt[0][0] not in ("user", ""):
        raise where.error("field 'prompt': only a single user turn is supported")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if len(turns) != 1 or turns[0][0] not in ("assistant", ""):
            raise where.error(f"field {key!r}: expected one assistant message")
    question = prompt[0][1].replace("<image>", "").strip()
    if not question:
        raise where.error("field 'prompt' has no text")

    images = row.get("images")
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    images = list(images or [])
    if len(images) > 1:
        raise where.error(f"field 'images': one image per record is supported, got {len(images)}")
    image = _embedded_image(images[0], "images", where, image_root) if images else None
    if image is None and prompt[0][2]:
        raise where.error("field 'images': the prompt has an image placeholder but the record no image")
    for key, text in (("chosen", chosen[0][1]), ("rejected", rejected[0][1])):
        if not text.strip():
            raise where.error(f"field {key!r} is empty")
    example_id = row.get("id")
    return PreferenceExample(
        id=str(example_id) if example_id is not None and str(example_id).strip() else default_id,
        question=question,
        image_w=image,
        image_l=None,
        y_w=chosen[0][1],
        y_l=rejected[0][1],
        contrast_type=None,
        source=row["source"] if isinstance(row.get("source"), str) else "trl",
    )


def _read_trl(path: Path, image_root: Any) -> Iterator[tuple[_Where, PreferenceExample]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for rowno, row in _iter_parquet(path):
            where = _Where(path, item=f"row {rowno}")
            yield where, _trl_example(row, where, f"{path.stem}-{rowno}", image_root)
    elif suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError("expected a JSON array of records", path=path)
        for i, obj in enumerate(data, start=1):
            where = _Where(path, item=f"record {i}")
            if not isinstance(obj, dict):
                raise where.error(f"expected an object, got {type(obj).__name__}")
            yield where, _trl_example(obj, where, f"{path.stem}-{i}", image_root)
    else:
        for lineno, obj in iter_jsonl(path):
            where = _Where(path, line=lineno)
            yield where, _trl_example(obj, where, f"{path.stem}-{lineno}", image_root)


# mDPO ---------------------------------------------------------------------------------------------------------------


def mdpo_question(prompt: str) -> str:
    """The user question inside an mDPO prompt (``<system> USER: <image>\\n{question} ASSISTANT:``)."""
    text = prompt
    if "USER:" in text:
        text = text.split("USER:", 1)[1]
    text = text.rstrip().removesuffix("ASSISTANT:")
    return text.replace("<image>", "").strip()


def _read_mdpo(path: Path, image_root: Any) -> Iterator[tuple[_Where, PreferenceExample]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError("expected a JSON array of mDPO records", path=path)
    for i, obj in enumerate(data, start=1):
        where = _Where(path, item=f"record {i}")
        if not isinstance(obj, dict):
            raise where.error(f"expected an object, got {type(obj).__name__}")
        question = mdpo_question(_string(obj, "prompt", where))
        if not question:
            raise where.error("field 'prompt' holds no question")
        example_id = obj.get("id")
        yield (
            where,
            PreferenceExample(
                id=str(example_id) if example_id is not None else f"{path.stem}-{i}",
                question=question,
                image_w=_string(obj, "img_path", where),
                image_l=None,
                y_w=_string(obj, "chosen", where),
                y_l=_string(obj, "rejected", where),
                contrast_type=None,
                source="mdpo",
            ),
        )


# --------------------------------------------------------------------------------------------------------------------
# writing


def write_preferences(path: str | os.PathLike[str], examples: Iterable[PreferenceExample]) -> None:
    """Write canonical JSONL atomically, one record per line in the given order.

    Image paths inside the output's folder are written relative to it, so a data folder can be moved as a whole;
    others are written as they are. Duplicate ids raise :class:`DataError`.
    """
    path = Path(path)
    folder = _abspath(path.parent)
    seen: set[str] = set()
    lines = []
    for example in examples:
        if example.id in seen:
            raise DataError(f"duplicate id {example.id!r}", path=path)
        seen.add(example.id)
        record = example.to_record()
        for key in ("image_w", "image_l"):
            value = record[key]
            if value is not None and os.path.isabs(value):
                rel = os.path.relpath(_abspath(value), folder)
                if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
                    record[key] = Path(rel).as_posix()
        lines.append(dumps_record(record) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# rejected images


def strategy_seed(example_id: str, strategy: str, seed: int = 0) -> int:
    """A 64-bit seed from SHA-256 of (strategy, seed, example id): stable across processes and Python versions."""
    digest = hashlib.sha256(f"{strategy}\x00{seed}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _rng(example_id: str, strategy: str, seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(strategy_seed(example_id, strategy, seed)))


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random ``(left, top, right, bottom)`` box keeping a uniform fraction ``a`` in :data:`CROP_KEEP` of the area.

    The width fraction ``f_w`` is log-uniform in ``[a, 1]`` and the height fraction is ``a / f_w`` (so the box always
    fits); sizes are rounded up, so the kept area is at least ``a`` of the image; the position is uniform.
    """
    keep = rng.uniform(*CROP_KEEP)
    fw = math.exp(rng.uniform(math.log(keep), 0.0))
    fh = keep / fw
    cw = min(width, max(1, math.ceil(width * fw)))
    ch = min(height, max(1, math.ceil(height * fh)))
    left = int(rng.integers(0, width - cw + 1))
    top = int(rng.integers(0, height - ch + 1))
    return left, top, left + cw, top + ch


def diffusion_alpha_bar(step: int = DIFFUSION_STEP, steps: int = DIFFUSION_STEPS) -> float:
    """``prod_{i=1..step} (1 - beta_i)`` for DDPM's linear schedule (:data:`DIFFUSION_BETAS`), steps counted from 1."""
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps}, got {step}")
    betas = np.linspace(DIFFUSION_BETAS[0], DIFFUSION_BETAS[1], steps, dtype=np.float64)
    return float(np.prod(1.0 - betas[:step]))


def diffusion_noise(image: Any, rng: np.random.Generator, step: int = DIFFUSION_STEP) -> Any:
    """Forward diffusion ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` on pixels scaled to [-1, 1], back to 8 bits."""
    from PIL import Image

    x0 = np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1.0
    abar = diffusion_alpha_bar(step)
    xt = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * rng.standard_normal(x0.shape)
    pixels = np.clip(np.rint((xt + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _load(path: str, example_id: str, image_root: Any) -> Any:
    return ImageRef(path=resolve_image_path(path, image_root)).load(example_id)


def _pick_other(
    example: PreferenceExample, pool: Sequence[PreferenceExample], rng: np.random.Generator, image_root: Any
) -> PreferenceExample:
    own = resolve_image_path(example.image_w, image_root) if example.image_w else None

    def usable(other: PreferenceExample) -> bool:
        return (
            other.id != example.id
            and other.image_w is not None
            and resolve_image_path(other.image_w, image_root) != own
        )

    n = len(pool)
    if n:
        for _ in range(64):  # expected O(1) draws on a real data set
            other = pool[int(rng.integers(0, n))]
            if usable(other):
                return other
        start = int(rng.integers(0, n))
        for k in range(n):
            other = pool[(start + k) % n]
            if usable(other):
                return other
    raise DataError(f"example {example.id!r}: strategy 'random' found no other example with a different image")


def rejected_image(
    example: PreferenceExample,
    strategy: str,
    *,
    seed: int = 0,
    pool: Sequence[PreferenceExample] | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Any:
    """The rejected image of ``example`` under ``strategy`` (one of :data:`STRATEGIES`), as an RGB ``PIL.Image``.

    - ``crop``: a random box keeping 80-100% of the area (:func:`crop_box`), resized back to the original size
      (bilinear), as ``RandomResizedCrop`` does;
    - ``diffusion``: forward diffusion noise at step 500 of 1000 (:func:`diffusion_noise`);
    - ``black``: a black image of the original size (black pixels, before any normalization);
    - ``random``: ``image_w`` of another example of ``pool`` (never the example itself nor the same image file),
      drawn by the example's generator from the pool in its given order;
    - ``contrast``: the record's own ``image_l`` (an error when it has none).

    The same (example id, strategy, seed) gives the same image, byte for byte. Relative paths are resolved against
    ``image_root`` (else the working directory); an unreadable image raises ``ImageError`` naming the example.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown rejected-image strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if strategy == "contrast":
        if example.image_l is None:
            raise DataError(f"example {example.id!r}: strategy 'contrast' needs image_l, and the record has none")
        return _load(example.image_l, example.id, image_root)
    if example.image_w is None:
        raise DataError(f"example {example.id!r}: strategy {strategy!r} needs image_w, and the record has none")
    rng = _rng(example.id, strategy, seed)
    if strategy == "random":
        if pool is None:
            raise ValueError("strategy 'random' needs the data set as pool=")
        other = _pick_other(example, pool, rng, image_root)
        return _load(other.image_w, other.id, image_root)  # type: ignore[arg-type]

    from PIL import Image

    image = _load(example.image_w, example.id, image_root)
    if strategy == "black":
        return Image.new("RGB", image.size, (0, 0, 0))
    if strategy == "crop":
        box = crop_box(image.width, image.height, rng)
        return image.crop(box).resize(image.size, Image.Resampling.BILINEAR)
    return diffusion_noise(image, rng)
