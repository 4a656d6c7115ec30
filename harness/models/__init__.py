"""Model checkpoints: which family adapter serves a checkpoint, and its content hash for the run manifest.

``resolve_model(path)`` reads ``config.json``, picks the family adapter (:mod:`harness.models.llava`,
:mod:`harness.models.qwen2vl`) and hashes the checkpoint's files. The hash is cached by path, file sizes and
modification times, so a 14 GB checkpoint is read once.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.cache import cache_dir
from harness.cache import content_hash as _cached_hash
from harness.errors import ModelError
from harness.models.base import ModelFamily, families, family_for, read_config, register_family


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


def content_hash(path: str | Path) -> str:
    """Hex sha256 over the checkpoint's top-level files, those ``from_pretrained`` reads (see
    :func:`harness.cache.content_hash`), cached. Training checkpoints or adapters in subfolders are not part of it."""
    if not Path(path).exists():
        raise ModelError(f"model path does not exist: {path}")
    return _cached_hash(path, recursive=False)


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
