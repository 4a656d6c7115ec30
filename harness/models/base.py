"""Model families: one adapter per family holds its quirks (prompt templates, image tokens, processor inputs).

Engines and trainers share the adapters, so a prompt is rendered the same way for generation and for training.
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


def family_for(model_path: str | Path, template: str | None = None) -> ModelFamily:
    """The adapter for the checkpoint at ``model_path``; a clear error for an unsupported architecture."""
    config = read_config(model_path)
    model_type = config.get("model_type")
    for cls in families().values():
        if model_type in cls.model_types:
            return cls(model_path, template)
    supported = sorted(t for cls in families().values() for t in cls.model_types)
    archs = ", ".join(config.get("architectures") or []) or "unknown"
    raise ModelError(
        f"{model_path}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
        f"supported model types: {', '.join(supported)}"
    )
