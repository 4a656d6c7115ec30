"""LLaVA-1.5 (``llava-hf`` checkpoints, ``model_type: llava``).

Prompt templates:

- ``llava_v1`` (default): the ``conv_llava_v1`` conversation of the original LLaVA code base
  (haotian-liu/LLaVA, ``llava/conversation.py``, ``SeparatorStyle.TWO``: ``sep=" "``, ``sep2="</s>"``), with
  the image token first and a newline before the question, as LLaVA's evaluation scripts
  (``model_vqa_loader.py``) build it::

      {system} USER: <image>\\n{question} ASSISTANT:
      {system} USER: <image>\\n{question} ASSISTANT: {response}</s>

  This is the prompt the published LLaVA-1.5 numbers were measured with.
- ``hub``: the chat template saved with the checkpoint (``processor.apply_chat_template``); for
  ``llava-hf/llava-1.5-*-hf`` that is ``USER: <image>\\n{question} ASSISTANT:`` without a system prompt.

Saved checkpoints keep the ``llava-hf`` key names (``vision_tower.vision_model.*``) that vLLM loads:
:func:`rewrite_llava_keys`, run by :meth:`LlavaFamily.postprocess_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from harness.models import hub_render, processor_batch
from harness.models.base import ModelFamily, register_family
from harness.models.weights import rename_tensor_prefixes

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@register_family
class LlavaFamily(ModelFamily):
    """LLaVA-1.5: CLIP ViT-L/336 vision tower, MLP projector, Vicuna (Llama) decoder; one image per prompt."""

    name: ClassVar[str] = "llava"
    model_types: ClassVar[tuple[str, ...]] = ("llava",)
    templates: ClassVar[tuple[str, ...]] = ("llava_v1", "hub")
    image_token: ClassVar[str] = "<image>"
    server_request_fields: ClassVar[dict[str, Any]] = {"add_special_tokens": True}  # BOS, as offline
    max_images_per_prompt: ClassVar[int] = 1
    supports_logprobs: ClassVar[bool] = True
    packs_rows: ClassVar[bool] = True  # Llama positions are plain 1-D positions

    def render_prompt(self, prompt: str, num_images: int, response: str | None = None) -> str:
        if self.template == "hub":
            return hub_render(self.model_path, prompt, num_images, response)
        text = f"{LLAVA_V1_SYSTEM} USER: " + f"{self.image_token}\n" * num_images + f"{prompt} ASSISTANT:"
        if response is not None:
            text += f" {response}</s>"
        return text

    def processor_inputs(self, processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        return processor_batch(processor, texts, images)

    @classmethod
    def encode_images(cls, model: Any, pixel_values: Any, image_grid_thw: Any | None) -> list[Any]:
        return list(model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output)

    @classmethod
    def empty_vision_input(cls, config: Any, dtype: Any, device: Any) -> tuple[Any, Any | None]:
        """One blank ``[1, channels, image_size, image_size]`` image; no grid."""
        import torch

        size = int(config.vision_config.image_size)
        channels = int(getattr(config.vision_config, "num_channels", 3))
        return torch.zeros((1, channels, size, size), dtype=dtype, device=device), None

    @classmethod
    def module_group(cls, name: str) -> str | None:
        """``multi_modal_projector`` is the projector, ``vision_tower`` the CLIP tower."""
        parts = name.split(".")
        if "multi_modal_projector" in parts:
            return "projector"
        if "vision_tower" in parts:
            return "vision_tower"
        return super().module_group(name)

    @classmethod
    def unused_vision_modules(cls, config: Any) -> list[str]:
        """LLaVA takes the features of ``vision_feature_layer`` (-2 for LLaVA-1.5), so the CLIP layers after it and
        the ``post_layernorm`` are dead weight."""
        n_layers = int(config.vision_config.num_hidden_layers)
        feature_layers = config.vision_feature_layer
        feature_layers = feature_layers if isinstance(feature_layers, (list, tuple)) else [feature_layers]
        # hidden_states[k]: k = 0 is the embeddings, k = i + 1 the output of layer i; negative k counts from the end
        last_used = max(int(k) if int(k) >= 0 else n_layers + 1 + int(k) for k in feature_layers) - 1
        return ["vision_tower.post_layernorm"] + [
            f"vision_tower.encoder.layers.{i}." for i in range(last_used + 1, n_layers)
        ]

    def postprocess_checkpoint(self, folder: str | Path) -> None:
        """A saved full model (a folder with ``config.json``) gets the ``llava-hf`` key names
        (:func:`rewrite_llava_keys`); an adapter-only folder is left as it is."""
        if (Path(folder) / "config.json").is_file():
            rewrite_llava_keys(folder)


def rewrite_llava_keys(out_dir: str | Path) -> None:
    """Give a saved LLaVA checkpoint the ``llava-hf`` key names that vLLM loads (``vision_tower.vision_model.*``);
    a no-op when they are already so (transformers keeps a loaded checkpoint's names when it saves)."""
    from safetensors import safe_open

    out = Path(out_dir)
    rename = {"vision_tower.": "vision_tower.vision_model."}
    changed = False
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            keys = list(f.keys())
        if any(k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") for k in keys):
            rename_tensor_prefixes(shard, rename)
            changed = True
    index = out / "model.safetensors.index.json"
    if changed and index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {
            (
                "vision_tower.vision_model." + k[len("vision_tower.") :]
                if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
                else k
            ): v
            for k, v in data["weight_map"].items()
        }
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
