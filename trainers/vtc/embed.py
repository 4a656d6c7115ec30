"""Stage 1 of ``harness build-vtc``: the image pool, and its CLIP and DINOv2 embeddings in resumable shards.

Image sources (:func:`open_source`)
-----------------------------------
- a **folder**: every image file below it (``.jpg .jpeg .png .webp .bmp .gif .tif .tiff``, hidden files and folders
  left out), sorted by relative path; the id is the relative path, the *source* the top-level folder (``coco/...``
  -> ``coco``; images directly in the folder take the folder's own name);
- a **file list** (any text file): one image path per line, relative paths resolved against the list's folder,
  optionally followed by a tab and a source name; blank lines and ``#`` comments are skipped; the id is the path as
  written, the default source its first folder;
- a **Hugging Face dataset saved to disk** (``datasets.Dataset.save_to_disk``; a ``DatasetDict`` needs ``split``
  unless it has one split): the image column is the first ``Image`` feature (or ``image_column``), the id the ``id``
  column or the row number, the source a column (``source_column``) or the dataset folder's name.

The pool is written to ``DIR/embed/images.jsonl`` (one line per image: index, id, source, path or dataset row), so
later stages read images without the original command line.

Shards
------
Images are cut, in pool order, into shards of ``shard_size``. Shard ``k`` writes, under ``DIR/embed/shards/``,
``shard-0000k.clip.npy`` and ``shard-0000k.dino.npy`` (L2-normalised float32 rows, one per readable image) and last
``shard-0000k.json`` (its ids, their SHA-256 file hashes, and the unreadable images with the reason). Every file is
written to a temporary name and renamed, so **a shard is finished exactly when its ``.json`` exists**; a rerun skips
finished shards and redoes the others (left-over temporary files are removed). An unreadable image is never fatal: it
is counted, listed in the shard and, once every shard is finished, in ``DIR/embed/unreadable.jsonl``.
``DIR/embed/manifest.json`` records the settings that decide the numbers (the source, its image list, the models and
their content hashes, the pooling, the shard size); a rerun with other settings is refused rather than mixing shards.

Models
------
CLIP: ``CLIPVisionModelWithProjection`` (``image_embeds``, the same vector as ``CLIPModel.get_image_features``),
loaded from a full CLIP checkpoint (e.g. ``openai/clip-vit-large-patch14-336``, the LLaVA-1.5 vision tower) or a
vision-only one. DINOv2: ``AutoModel`` of the ``dinov2`` family, pooled as the CLS token after the final layer norm
(``pooler_output``; ``dino_pooling="cls"``, the default) or the mean of the patch tokens (``"mean"``). Both come from
local paths or the hub, with their own image processors. ``dtype="auto"`` is float16 on CUDA, float32 on CPU.
Two runs with the same settings and batch size write identical arrays (also with several ``workers``); another batch
size changes the last bits (batched matrix products), so ``batch_size`` is not part of the manifest's settings.

Many GPUs
---------
``accelerate launch --num_processes 8 -m harness build-vtc --stage embed --images SRC --output DIR`` runs one process
per GPU: rank ``r`` of ``W`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, as accelerate and torchrun set them)
embeds shards ``r, r + W, r + 2W, ...`` on ``cuda:LOCAL_RANK``. The ranks share nothing but the output folder (no
collective calls), so a killed rank only costs its unfinished shards. Then run the other stages in one process
(``--stage all`` skips the finished embedding). Slurm array jobs can do the same with ``RANK`` and ``WORLD_SIZE`` set
per task.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.cache import content_hash
from harness.errors import ConfigError, DataError, ModelError
from harness.io import (
    atomic_write_json,
    atomic_write_text,
    dumps_record,
    iter_jsonl,
    read_json,
)

log = logging.getLogger("harness.vtc.embed")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14-336"
DEFAULT_DINO_MODEL = "facebook/dinov2-large"
EMBED_FORMAT = 1

SourceKind = Literal["folder", "list", "dataset"]


# --------------------------------------------------------------------------------------------------------------------
# the image pool


@dataclass(frozen=True)
class ImageItem:
    """One image of the pool: its id, its source (data set), and where it is (a file, or a dataset row)."""

    index: int
    id: str
    source: str
    path: str | None = None
    row: int | None = None


@dataclass
class ImagePool:
    """The images of one source, in a fixed order; reads an image's bytes by item."""

    kind: SourceKind
    location: str
    items: list[ImageItem]
    image_column: str | None = None
    split: str | None = None
    _dataset: Any = field(default=None, repr=False, compare=False)
    _by_id: dict[str, ImageItem] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the dataset themselves
        state = dict(self.__dict__)
        state["_dataset"] = None
        state["_by_id"] = None
        return state

    def item(self, image_id: str) -> ImageItem:
        """The item with id ``image_id`` (a :class:`DataError` when the pool has none)."""
        if self._by_id is None:
            self._by_id = {it.id: it for it in self.items}
        try:
            return self._by_id[image_id]
        except KeyError:
            raise DataError(f"image {image_id!r} is not in the image pool", path=self.location) from None

    def read_bytes(self, item: ImageItem) -> bytes:
        """The encoded bytes of an image (OSError / DataError when they cannot be read)."""
        if item.path is not None:
            return Path(item.path).read_bytes()
        assert item.row is not None
        cell = self._rows()[item.row][self.image_column]
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            if cell.get("path"):
                return Path(self._dataset_path(cell["path"])).read_bytes()
        if isinstance(cell, str) and cell:
            return Path(self._dataset_path(cell)).read_bytes()
        if isinstance(cell, (bytes, bytearray)) and cell:
            return bytes(cell)
        raise DataError(f"row {item.row}: column {self.image_column!r} holds no image", path=self.location)

    def open(self, item: ImageItem) -> Any:
        """The image as an RGB PIL image."""
        return decode_image(self.read_bytes(item))

    def file_for(self, item: ImageItem, folder: str | os.PathLike[str]) -> str:
        """An image file path for records: the file itself, or (dataset rows) a content-addressed copy in ``folder``."""
        if item.path is not None:
            return item.path
        from trainers.data import store_image_bytes

        return store_image_bytes(self.read_bytes(item), folder)

    def subset(self, items: Sequence[ImageItem]) -> ImagePool:
        """The same source with only ``items`` (what DataLoader workers receive: small to pickle)."""
        return ImagePool(self.kind, self.location, list(items), self.image_column, self.split)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "location": self.location,
            "image_column": self.image_column,
            "split": self.split,
            "images": len(self.items),
        }

    def ids_digest(self) -> str:
        """SHA-256 of the ordered ids: two pools with the same images in the same order share it."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(it.id.encode("utf-8") + b"\0")
        return h.hexdigest()

    # -- HF datasets -------------------------------------------------------------------------------------------

    def _rows(self) -> Any:
        if self._dataset is None:
            self._dataset = _load_dataset(Path(self.location), self.split, self.image_column, decode=False)[0]
        return self._dataset

    def _dataset_path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.location, path)

    # -- saving ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the pool as JSONL: a header line (kind, location...), then one line per image."""
        header = {
            "format": EMBED_FORMAT,
            "kind": self.kind,
            "location": self.location,
            "image_column": self.image_column,
            "split": self.split,
            "images": len(self.items),
        }
        lines = [dumps_record({"pool": header})]
        lines += [dumps_record({k: v for k, v in asdict(it).items() if v is not None}) for it in self.items]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImagePool:
        """Read a pool written by :meth:`save`."""
        header: dict[str, Any] | None = None
        items: list[ImageItem] = []
        for lineno, obj in iter_jsonl(path):
            if header is None:
                if "pool" not in obj:
                    raise DataError("the first line must be the pool header", path=path, line=lineno)
                header = obj["pool"]
                continue
            try:
                items.append(
                    ImageItem(int(obj["index"]), str(obj["id"]), str(obj["source"]), obj.get("path"), obj.get("row"))
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"malformed image entry ({exc})", path=path, line=lineno) from exc
        if header is None:
            raise DataError("empty image index", path=path)
        return cls(header["kind"], header["location"], items, header.get("image_column"), header.get("split"))


def decode_image(data: bytes) -> Any:
    """Decode image bytes into an RGB PIL image (raises on anything PIL cannot fully decode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def open_source(
    source: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    source_column: str | None = None,
    split: str | None = None,
) -> ImagePool:
    """The image pool of ``source``: a folder, a file list or a Hugging Face dataset saved to disk."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            "image source not found (expected a folder, a file list or a dataset saved with datasets' save_to_disk)",
            path=path,
        )
    path = path.resolve()
    if path.is_dir() and _is_hf_dataset(path):
        return _dataset_pool(path, image_column, source_column, split)
    if image_column or source_column or split:
        raise ConfigError(
            "--image-column, --source-column and --split apply to a Hugging Face dataset on disk; "
            f"{path} is a {'folder' if path.is_dir() else 'file list'}"
        )
    if path.is_dir():
        return _folder_pool(path)
    return _list_pool(path)


def _is_hf_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _folder_pool(root: Path) -> ImagePool:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    found.sort()
    items = []
    for i, rel in enumerate(found):
        parts = rel.split("/")
        items.append(ImageItem(i, rel, parts[0] if len(parts) > 1 else root.name, path=str(root / rel)))
    if not items:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under the folder", path=root)
    return ImagePool("folder", str(root), items)


def _list_pool(list_path: Path) -> ImagePool:
    base = list_path.parent
    items: list[ImageItem] = []
    seen: dict[str, int] = {}
    try:
        text = list_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError("a file list must be UTF-8 text, one image path per line", path=list_path) from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, _, source = line.partition("\t")
        image, source = image.strip(), source.strip()
        if image in seen:
            raise DataError(
                f"image {image!r} is listed twice (first at line {seen[image]})", path=list_path, line=lineno
            )
        seen[image] = lineno
        full = Path(image).expanduser()
        if not full.is_absolute():
            full = base / full
        if not source:
            parts = Path(image).parts
            relative = not Path(image).is_absolute()
            source = parts[0] if relative and len(parts) > 1 else (full.parent.name or "images")
        items.append(ImageItem(len(items), image, source, path=os.path.normpath(str(full))))
    if not items:
        raise DataError("the file list names no images", path=list_path)
    return ImagePool("list", str(list_path), items)


def _load_dataset(
    path: Path, split: str | None, image_column: str | None, *, decode: bool
) -> tuple[Any, str | None, str]:
    """(dataset, split, image column) of a dataset on disk; with ``decode=False`` the images stay bytes."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets comes with trl
        raise ConfigError("reading a Hugging Face dataset needs the datasets package: pip install datasets") from exc
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if len(names) != 1:
                raise ConfigError(f"{path} holds the splits {names}; choose one with --split")
            split = names[0]
        if split not in ds:
            raise ConfigError(f"{path} has no split {split!r}; its splits: {names}")
        ds = ds[split]
    elif split is not None:
        raise ConfigError(f"{path} is a single dataset without splits; leave out --split")
    features = ds.features
    if image_column is None:
        image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_column is None and "image" in features:
            image_column = "image"
        if image_column is None:
            raise ConfigError(f"{path}: no Image column among {list(features)}; name it with --image-column")
    elif image_column not in features:
        raise ConfigError(f"{path}: no column {image_column!r}; columns: {list(features)}")
    if not decode and isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds, split, image_column


def _dataset_pool(path: Path, image_column: str | None, source_column: str | None, split: str | None) -> ImagePool:
    ds, split, image_column = _load_dataset(path, split, image_column, decode=False)
    n = len(ds)
    if n == 0:
        raise DataError("the dataset has no rows", path=path)
    ids = [str(v) for v in ds["id"]] if "id" in ds.column_names else [str(i) for i in range(n)]
    if len(set(ids)) != n:
        raise DataError("the dataset's 'id' column repeats ids", path=path)
    if source_column is not None:
        if source_column not in ds.column_names:
            raise ConfigError(f"{path}: no column {source_column!r} for --source-column; columns: {ds.column_names}")
        sources = [str(v) for v in ds[source_column]]
    else:
        sources = [path.name] * n
    items = [ImageItem(i, ids[i], sources[i], row=i) for i in range(n)]
    pool = ImagePool("dataset", str(path), items, image_column=image_column, split=split)
    pool._dataset = ds
    return pool


# --------------------------------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of the embed stage. ``shard_size`` images per shard, ``batch_size`` images per forward pass,
    ``workers`` image-decoding processes (0: in the main process)."""

    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    dino_pooling: Literal["cls", "mean"] = "cls"
    shard_size: int = 10_000
    batch_size: int = 64
    workers: int = 0
    device: str | None = None
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dino_pooling not in ("cls", "mean"):
            raise ConfigError(f"DINOv2 pooling must be cls or mean, got {self.dino_pooling!r}")
        if self.shard_size < 1 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("shard size and batch size must be positive, workers non-negative")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")


class Preprocessor:
    """The CLIP and DINOv2 image processors (picklable: DataLoader workers run them)."""

    def __init__(self, clip_model: str, dino_model: str):
        from transformers import AutoImageProcessor

        self.clip = _load(AutoImageProcessor.from_pretrained, clip_model, "CLIP image processor")
        self.dino = _load(AutoImageProcessor.from_pretrained, dino_model, "DINOv2 image processor")

    def __call__(self, image: Any) -> tuple[Any, Any]:
        """(CLIP pixels, DINOv2 pixels) of one image, each a (3, H, W) tensor."""
        clip = self.clip(images=[image], return_tensors="pt")["pixel_values"][0]
        dino = self.dino(images=[image], return_tensors="pt")["pixel_values"][0]
        return clip, dino


def _load(loader: Any, path: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as exc:
        hint = "" if Path(path).exists() else " (not a local folder, and not loadable from the hub)"
        raise ModelError(f"cannot load the {what} from {path}{hint}: {exc}") from exc


def _load_weights(cls: Any, path: str, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` without transformers' load report (a full CLIP checkpoint's text tower is expected to
    be left out); weights the model needs but the checkpoint lacks are a :class:`ModelError`, never random."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = _load(cls.from_pretrained, path, what, output_loading_info=True, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelError(
            f"{path}: the {what} checkpoint lacks {len(missing)} weights (first: {missing[0]}); "
            "expected a CLIP or DINOv2 checkpoint in the transformers layout"
        )
    return model


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class ImageEncoders:
    """CLIP (``image_embeds``) and DINOv2 (CLS or mean-pooled) image encoders on one device."""

    def __init__(
        self,
        clip_model: str,
        dino_model: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        dino_pooling: str = "cls",
    ):
        import torch
        from transformers import AutoConfig, AutoModel, CLIPVisionModelWithProjection

        self.device = device or default_device()
        self.dtype = _torch_dtype(dtype, self.device)
        self.dino_pooling = dino_pooling

        config = _load(AutoConfig.from_pretrained, clip_model, "CLIP config")
        if config.model_type == "clip":  # a full CLIP checkpoint: its vision tower, with the projection's width
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
            self.clip = _load_weights(
                CLIPVisionModelWithProjection, clip_model, "CLIP model", config=vision, dtype=self.dtype
            )
        elif config.model_type == "clip_vision_model":
            self.clip = _load_weights(CLIPVisionModelWithProjection, clip_model, "CLIP model", dtype=self.dtype)
        else:
            raise ModelError(
                f"{clip_model}: expected a CLIP checkpoint (model_type clip or clip_vision_model), "
                f"found {config.model_type!r}"
            )
        dconfig = _load(AutoConfig.from_pretrained, dino_model, "DINOv2 config")
        if not str(dconfig.model_type).startswith("dinov2"):
            raise ModelError(
                f"{dino_model}: expected a DINOv2 checkpoint (model_type dinov2...), found {dconfig.model_type!r}"
            )
        self.dino = _load_weights(AutoModel, dino_model, "DINOv2 model", dtype=self.dtype)
        self._registers = int(getattr(dconfig, "num_register_tokens", 0) or 0)
        self.clip.to(self.device).eval()
        self.dino.to(self.device).eval()
        self._torch = torch

    def encode(self, clip_pixels: Any, dino_pixels: Any) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised float32 (CLIP, DINOv2) embeddings of a batch of preprocessed images."""
        torch = self._torch
        with torch.inference_mode():
            c = self.clip(pixel_values=clip_pixels.to(self.device, self.dtype)).image_embeds
            out = self.dino(pixel_values=dino_pixels.to(self.device, self.dtype))
            if self.dino_pooling == "cls":
                d = out.pooler_output
            else:
                d = out.last_hidden_state[:, 1 + self._registers :].mean(dim=1)
            c = torch.nn.functional.normalize(c.float(), dim=-1)
            d = torch.nn.functional.normalize(d.float(), dim=-1)
        return c.cpu().numpy(), d.cpu().numpy()


def default_device() -> str:
    """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


# --------------------------------------------------------------------------------------------------------------------
# shards


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


_TMP = re.compile(r"^\.(shard-(\d{5})\.[a-z]+\.(?:npy|json))\..*\.tmp$")


def _save_npy(path: Path, array: np.ndarray) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: the ids of its embedded rows, their file hashes, and its unreadable images."""

    index: int
    ids: list[str]
    sha256: list[str]
    unreadable: list[dict[str, str]]
    clip_dim: int | None
    dino_dim: int | None


def read_shard_info(shards_dir: Path, k: int) -> ShardInfo | None:
    """The shard's ``.json`` if it is finished (exists and parses), else None."""
    path = shards_dir / f"{shard_name(k)}.json"
    if not path.is_file():
        return None
    obj = read_json(path)
    return ShardInfo(k, obj["ids"], obj["sha256"], obj["unreadable"], obj.get("clip_dim"), obj.get("dino_dim"))


class _ShardImages:
    """A torch-style dataset over one shard's items: (position, CLIP pixels, DINOv2 pixels, sha256, error)."""

    def __init__(self, pool: ImagePool, items: Sequence[ImageItem], preprocess: Preprocessor):
        self.items = list(items)
        self.pool = pool.subset(self.items)  # workers get the shard's items, not the whole pool
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, Any, Any, str | None, str | None]:
        item = self.items[k]
        try:
            data = self.pool.read_bytes(item)
            digest = hashlib.sha256(data).hexdigest()
            image = decode_image(data)
            clip, dino = self.preprocess(image)
        except Exception as exc:  # noqa: BLE001 - an unreadable image is listed, never fatal
            return k, None, None, None, f"{type(exc).__name__}: {exc}"
        return k, clip, dino, digest, None


def _collate(batch: list[tuple[int, Any, Any, str | None, str | None]]) -> list[Any]:
    return batch


@dataclass
class EmbedResult:
    """What one embed run did: shards embedded here, shards found finished, and whether all are finished now."""

    shards_total: int
    shards_done: list[int]
    shards_skipped: list[int]
    images_embedded: int
    images_unreadable: int
    complete: bool
    summary: dict[str, Any] | None = None


def embed_settings(pool: ImagePool, config: EmbedConfig) -> dict[str, Any]:
    """What decides the embeddings (the manifest's ``settings``): source, image list, models, pooling, shards."""

    def model_hash(path: str) -> str | None:
        return content_hash(path) if Path(path).exists() else None

    return {
        "format": EMBED_FORMAT,
        "source": pool.describe(),
        "ids_sha256": pool.ids_digest(),
        "clip_model": config.clip_model,
        "clip_model_hash": model_hash(config.clip_model),
        "dino_model": config.dino_model,
        "dino_model_hash": model_hash(config.dino_model),
        "dino_pooling": config.dino_pooling,
        "shard_size": config.shard_size,
    }


def _check_manifest(embed_dir: Path, settings: dict[str, Any]) -> None:
    path = embed_dir / "manifest.json"
    if path.is_file():
        old = read_json(path).get("settings")
        if old != settings:
            diff = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
            raise ConfigError(
                f"{embed_dir} holds embeddings made with other settings (differing: "
                f"{', '.join(diff)}); use another --output, or delete {embed_dir} to start over"
            )
    else:
        atomic_write_json(path, {"settings": settings})


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from ``RANK`` / ``WORLD_SIZE`` (set by accelerate launch and torchrun), else (0, 1)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def embed_images(
    pool: ImagePool,
    out_dir: str | os.PathLike[str],
    config: EmbedConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    encoders: ImageEncoders | None = None,
) -> EmbedResult:
    """Embed the pool's images into ``out_dir/embed``: this rank's unfinished shards, then the summary if all are done.

    ``rank`` / ``world_size`` default to :func:`rank_and_world`. ``encoders`` may be passed to reuse loaded models.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    embed_dir = Path(out_dir) / "embed"
    shards_dir = embed_dir / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(embed_dir, embed_settings(pool, config))
    index_path = embed_dir / "images.jsonl"
    if not index_path.is_file() or rank == 0:
        pool.save(index_path)

    n_shards = (len(pool) + config.shard_size - 1) // config.shard_size
    mine = [k for k in range(n_shards) if k % world_size == rank]
    _remove_tmp_files(shards_dir, set(mine))
    todo = [k for k in mine if read_shard_info(shards_dir, k) is None]
    skipped = [k for k in mine if k not in todo]
    if skipped:
        log.info("embed: %d of %d shards already finished, skipped", len(skipped), len(mine))
    embedded = unreadable = 0
    if todo:
        from tqdm import tqdm

        preprocess = Preprocessor(config.clip_model, config.dino_model)
        if encoders is None:
            encoders = ImageEncoders(
                config.clip_model,
                config.dino_model,
                device=config.device,
                dtype=config.dtype,
                dino_pooling=config.dino_pooling,
            )
        total = sum(len(_shard_items(pool, k, config.shard_size)) for k in todo)
        with tqdm(total=total, desc="embed", unit="img", file=sys.stderr, disable=None if progress else True) as bar:
            for k in todo:
                info = _embed_shard(pool, k, config, shards_dir, preprocess, encoders, bar)
                embedded += len(info.ids)
                unreadable += len(info.unreadable)
    result = EmbedResult(n_shards, todo, skipped, embedded, unreadable, complete=False)
    summary = finalize_embeddings(Path(out_dir), n_shards)
    if summary is not None:
        result.complete, result.summary = True, summary
    return result


def _shard_items(pool: ImagePool, k: int, shard_size: int) -> list[ImageItem]:
    return pool.items[k * shard_size : (k + 1) * shard_size]


def _remove_tmp_files(shards_dir: Path, shards: set[int]) -> None:
    """Delete temporary files left by a killed run, for this rank's shards only (other ranks may be writing)."""
    for entry in shards_dir.iterdir():
        m = _TMP.match(entry.name)
        if m and int(m.group(2)) in shards:
            entry.unlink(missing_ok=True)


def _embed_shard(
    pool: ImagePool,
    k: int,
    config: EmbedConfig,
    shards_dir: Path,
    preprocess: Preprocessor,
    encoders: ImageEncoders,
    bar: Any,
) -> ShardInfo:
    import torch
    from torch.utils.data import DataLoader

    items = _shard_items(pool, k, config.shard_size)
    loader = DataLoader(
        _ShardImages(pool, items, preprocess),
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=_collate,
        shuffle=False,
    )
    clip_parts: list[np.ndarray] = []
    dino_parts: list[np.ndarray] = []
    ids: list[str] = []
    hashes: list[str] = []
    bad: list[dict[str, str]] = []
    for batch in loader:
        good = [b for b in batch if b[4] is None]
        for pos, _, _, _, error in batch:
            if error is not None:
                bad.append({"id": items[pos].id, "source": items[pos].source, "error": error})
                log.warning("unreadable image %s: %s", items[pos].id, error)
        if good:
            c, d = encoders.encode(torch.stack([b[1] for b in good]), torch.stack([b[2] for b in good]))
            clip_parts.append(c)
            dino_parts.append(d)
            ids += [items[b[0]].id for b in good]
            hashes += [str(b[3]) for b in good]
        bar.update(len(batch))
    if not ids and len(items) >= 8:
        raise DataError(
            f"shard {k}: none of its {len(items)} images could be read or preprocessed; the first "
            f"error: {bad[0]['error']}",
            path=pool.location,
        )
    clip = np.concatenate(clip_parts) if clip_parts else np.zeros((0, 0), np.float32)
    dino = np.concatenate(dino_parts) if dino_parts else np.zeros((0, 0), np.float32)
    name = shard_name(k)
    _save_npy(shards_dir / f"{name}.clip.npy", clip.astype(np.float32))
    _save_npy(shards_dir / f"{name}.dino.npy", dino.astype(np.float32))
    info = {
        "shard": k,
        "ids": ids,
        "sha256": hashes,
        "unreadable": bad,
        "clip_dim": int(clip.shape[1]) if ids else None,
        "dino_dim": int(dino.shape[1]) if ids else None,
    }
    atomic_write_json(shards_dir / f"{name}.json", info)  # last: the shard is finished now
    return ShardInfo(k, ids, hashes, bad, info["clip_dim"], info["dino_dim"])


def finalize_embeddings(out_dir: Path, n_shards: int) -> dict[str, Any] | None:
    """When every shard is finished: write ``unreadable.jsonl`` and ``summary.json`` (per-source counts) and return
    the summary; else None."""
    embed_dir = out_dir / "embed"
    infos = [read_shard_info(embed_dir / "shards", k) for k in range(n_shards)]
    if any(i is None for i in infos):
        return None
    pool = ImagePool.load(embed_dir / "images.jsonl")
    sources = {it.id: it.source for it in pool.items}
    bad = [b for i in infos if i is not None for b in i.unreadable]
    embedded = Counter(sources[x] for i in infos if i is not None for x in i.ids)
    unreadable = Counter(b["source"] for b in bad)
    per_source = {
        s: {"images": embedded[s] + unreadable[s], "embedded": embedded[s], "unreadable": unreadable[s]}
        for s in sorted(set(embedded) | set(unreadable))
    }
    summary = {
        "images": len(pool),
        "embedded": sum(embedded.values()),
        "unreadable": len(bad),
        "shards": n_shards,
        "per_source": per_source,
    }
    atomic_write_text(embed_dir / "unreadable.jsonl", "".join(dumps_record(b) + "\n" for b in bad))
    atomic_write_json(embed_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------------------------------------
# reading the embeddings back


class ShardedRows:
    """The rows of several ``.npy`` shards, memory-mapped, read as one float32 matrix without loading it whole."""

    def __init__(self, paths: Iterable[Path]):
        self.parts = [np.load(p, mmap_mode="r") for p in paths]
        self.parts = [p for p in self.parts if p.shape[0] > 0]
        dims = {p.shape[1] for p in self.parts}
        if len(dims) > 1:
            raise DataError(f"shards of different widths {sorted(dims)}")
        self.dim = dims.pop() if dims else 0
        self.offsets = np.cumsum([0] + [p.shape[0] for p in self.parts])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), self.dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a float32 array (crossing shard boundaries as needed)."""
        out = []
        for part, lo in zip(self.parts, self.offsets[:-1]):
            hi = lo + part.shape[0]
            if hi <= start or lo >= stop:
                continue
            out.append(np.asarray(part[max(start, lo) - lo : min(stop, hi) - lo], dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def take(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index`` (any order) as a float32 array."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.dim), np.float32)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(which):
            mask = which == s
            out[mask] = self.parts[s][index[mask] - self.offsets[s]]
        return out


@dataclass
class Embeddings:
    """All embedded images, in pool order: ids, sources, file hashes, and the CLIP and DINOv2 rows."""

    ids: list[str]
    sources: list[str]
    sha256: list[str]
    clip: ShardedRows
    dino: ShardedRows


def load_embeddings(out_dir: str | os.PathLike[str]) -> Embeddings:
    """The embeddings of ``out_dir/embed``; an unfinished embedding is a :class:`ConfigError` saying what to run."""
    embed_dir = Path(out_dir) / "embed"
    manifest = embed_dir / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"no embeddings in {embed_dir}: run `harness build-vtc --stage embed` first")
    settings = read_json(manifest)["settings"]
    n_images, shard_size = settings["source"]["images"], settings["shard_size"]
    n_shards = (n_images + shard_size - 1) // shard_size
    shards_dir = embed_dir / "shards"
    infos = [read_shard_info(shards_dir, k) for k in range(n_shards)]
    missing = [k for k, i in enumerate(infos) if i is None]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {n_shards} embedding shards in {shards_dir} are unfinished (first: "
            f"{shard_name(missing[0])}); rerun `harness build-vtc --stage embed` to finish them"
        )
    if not (embed_dir / "summary.json").is_file():
        finalize_embeddings(Path(out_dir), n_shards)
    pool = ImagePool.load(embed_dir / "images.jsonl")
    sources = {it.id: it.source for it in pool.items}
    ids = [x for i in infos if i is not None for x in i.ids]
    hashes = [x for i in infos if i is not None for x in i.sha256]
    clip = ShardedRows(shards_dir / f"{shard_name(k)}.clip.npy" for k in range(n_shards))
    dino = ShardedRows(shards_dir / f"{shard_name(k)}.dino.npy" for k in range(n_shards))
    if len(clip) != len(ids) or len(dino) != len(ids):
        raise DataError(
            f"the shards hold {len(clip)} CLIP and {len(dino)} DINOv2 rows for {len(ids)} ids; "
            "delete the damaged shard's .json to redo it",
            path=shards_dir,
        )
    return Embeddings(ids, [sources[x] for x in ids], hashes, clip, dino)


def load_pool(out_dir: str | os.PathLike[str]) -> ImagePool:
    """The image pool recorded by the embed stage."""
    path = Path(out_dir) / "embed" / "images.jsonl"
    if not path.is_file():
        raise ConfigError(f"no image index at {path}: run `harness build-vtc --stage embed` first")
    return ImagePool.load(path)


__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "EmbedConfig",
    "EmbedResult",
    "Embeddings",
    "ImageEncoders",
    "ImageItem",
    "ImagePool",
    "Preprocessor",
    "ShardedRows",
    "decode_image",
    "embed_images",
    "load_embeddings",
    "load_pool",
    "open_source",
    "rank_and_world",
]
