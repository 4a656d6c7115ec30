"""Model families: one adapter per family holds its quirks (prompt templates, image tokens, processor inputs, how
its vision tower is called, which modules are trained, how a saved checkpoint is finished).

Engines and trainers share the adapters, so a prompt is rendered the same way for generation and for training.
What does not depend on a prompt template (the vision-tower calls, the module groups) is a class method, so that it
also serves code that knows the family by name or by a model's ``config.model_type`` only.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ModelError


class ModelFamily(ABC):
    """Adapter of one model family (LLaVA-1.5, Qwen2-VL, ...)."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json "model_type" values this family serves
    templates: ClassVar[tuple[str, ...]]  # prompt template names; the first is the default
    image_token: ClassVar[str]  # placeholder of one image in a rendered prompt, before processor expansion
    # Extra fields of an OpenAI-compatible chat request that make a vLLM server tokenize the prompt as the
    # offline engines do (e.g. LLaVA's chat template emits no BOS, which the processor adds offline).
    server_request_fields: ClassVar[dict[str, Any]] = {}
    # Whether trainers.logprobs can score rows of this family: the adapter implements encode_images and
    # empty_vision_input.
    supports_logprobs: ClassVar[bool] = False
    # Whether trainers.logprobs may pack rows that share a prompt into one sequence (a 4-D mask and explicit
    # position_ids): true when the language model takes plain one-dimensional positions (LLaVA's Llama decoder),
    # false when the positions are computed by transformers from the images (Qwen2-VL's M-RoPE).
    packs_rows: ClassVar[bool] = False

    def __init__(self, model_path: str | Path, template: str | None = None):
        self.model_path = Path(model_path)
        template = template or self.templates[0]
        if template not in self.templates:
            raise ModelError(
                f"{self.name} has no prompt template {template!r}; expected one of {', '.join(self.templates)}"
            )
        self.template = template

    @abstractmethod
    def render_prompt(self, prompt: str, num_images: int, response: str | None = None) -> str:
        """The full text given to the tokenizer: the template around one user turn with ``num_images``
        image placeholders. Without ``response`` it ends with the assistant's generation prompt; with it,
        the response follows (and the template's end-of-turn marker), as trainers need."""

    @abstractmethod
    def processor_inputs(self, processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        """transformers model inputs for a batch of rendered ``texts`` and their PIL ``images``
        (left padding for generation)."""

    @classmethod
    def encode_images(cls, model: Any, pixel_values: Any, image_grid_thw: Any | None) -> list[Any]:
        """Features of a batch of preprocessed images from ONE vision-tower call, one ``[n_tokens, hidden]`` tensor
        per image. ``model`` is the multimodal base model of a transformers VLM of this family (the one with
        ``get_image_features``); ``pixel_values`` are in the vision tower's dtype; ``image_grid_thw`` is what the
        processor gave with them, or None."""
        raise NotImplementedError(f"{cls.name}: the adapter does not encode images for log-probabilities")

    @classmethod
    def empty_vision_input(cls, config: Any, dtype: Any, device: Any) -> tuple[Any, Any | None]:
        """``(pixel_values, image_grid_thw)`` of one blank (all-zero) image that :meth:`encode_images` accepts, for
        the model whose transformers config is ``config``: sharded training calls the vision tower once per
        forward even when a micro-batch holds no image."""
        raise NotImplementedError(f"{cls.name}: the adapter has no blank vision input")

    @classmethod
    def module_group(cls, name: str) -> str | None:
        """The part of a model of this family that parameter or module ``name`` belongs to: ``language_model``,
        ``vision_tower`` or ``projector``, None for anything else. Here: ``language_model`` for names with a
        ``language_model`` or ``lm_head`` component; the families add their vision tower and projector."""
        parts = name.split(".")
        if "language_model" in parts or "lm_head" in parts:
            return "language_model"
        return None

    @classmethod
    def unused_vision_modules(cls, config: Any) -> list[str]:
        """Name fragments of vision-tower modules whose output a model with transformers config ``config`` never
        uses, so that they never receive a gradient (trainers leave them out of LoRA and freeze them). None by
        default."""
        return []

    def postprocess_checkpoint(self, folder: str | Path) -> None:
        """Finish a model folder a trainer has just saved (``save_pretrained``) so that every engine loads it, e.g.
        key names vLLM expects. Nothing to do by default."""

    def describe(self) -> dict[str, Any]:
        return {"family": self.name, "template": self.template}


_FAMILIES: dict[str, type[ModelFamily]] = {}


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    _FAMILIES[cls.name] = cls
    return cls


def families() -> dict[str, type[ModelFamily]]:
    from harness.models import llava, qwen2vl  # noqa: F401  (registration)

    return dict(_FAMILIES)


def read_config(model_path: str | Path) -> dict[str, Any]:
    path = Path(model_path)
    if not path.exists():
        raise ModelError(f"model path does not exist: {path}")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path} is not a transformers checkpoint: no config.json in it")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def family_class(model_type: str | None) -> type[ModelFamily] | None:
    """The adapter class that serves checkpoints of ``config.json`` ``model_type``, None when no family does."""
    for cls in families().values():
        if model_type in cls.model_types:
            return cls
    return None


def family_for(model_path: str | Path, template: str | None = None) -> ModelFamily:
    """The adapter for the checkpoint at ``model_path``; a clear error for an unsupported architecture."""
    config = read_config(model_path)
    model_type = config.get("model_type")
    found = family_class(model_type)
    if found is not None:
        return found(model_path, template)
    supported = sorted(t for cls in families().values() for t in cls.model_types)
    archs = ", ".join(config.get("architectures") or []) or "unknown"
    raise ModelError(
        f"{model_path}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
        f"supported model types: {', '.join(supported)}"
    )
