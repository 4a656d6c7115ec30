"""Qwen2-VL (``model_type: qwen2_vl``).

Prompt templates:

- ``qwen2_vl`` (default): the chat template of Qwen2-VL-Instruct with its default system prompt::

      <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
      <|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n

  (one line here; with a response, ``{response}<|im_end|>\\n`` follows).
- ``hub``: the chat template saved with the checkpoint (``processor.apply_chat_template``).

The processor expands each ``<|image_pad|>`` to the image's merged patch count and returns ``image_grid_thw``
and ``mm_token_type_ids``, which transformers 5 needs together to compute M-RoPE positions.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.errors import HarnessError
from harness.models import hub_render, processor_batch
from harness.models.base import ModelFamily, register_family

QWEN2VL_SYSTEM = "You are a helpful assistant."


@register_family
class Qwen2VLFamily(ModelFamily):
    """Qwen2-VL: dynamic-resolution ViT with 2x2 patch merging, Qwen2 decoder with M-RoPE."""

    name: ClassVar[str] = "qwen2_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)
    templates: ClassVar[tuple[str, ...]] = ("qwen2_vl", "hub")
    image_token: ClassVar[str] = "<|vision_start|><|image_pad|><|vision_end|>"
    max_images_per_prompt: ClassVar[int] = 4
    supports_logprobs: ClassVar[bool] = True

    def render_prompt(self, prompt: str, num_images: int, response: str | None = None) -> str:
        if self.template == "hub":
            return hub_render(self.model_path, prompt, num_images, response)
        text = (
            f"<|im_start|>system\n{QWEN2VL_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{self.image_token * num_images}{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        if response is not None:
            text += f"{response}<|im_end|>\n"
        return text

    def processor_inputs(self, processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        return processor_batch(processor, texts, images, return_mm_token_type_ids=True)

    @classmethod
    def encode_images(cls, model: Any, pixel_values: Any, image_grid_thw: Any | None) -> list[Any]:
        """The images' patches go through the tower with their ``image_grid_thw``, which is required."""
        if image_grid_thw is None:
            raise HarnessError("Qwen2-VL rows with images need image_grid_thw; tokenize them with tokenize_rows")
        out = model.get_image_features(pixel_values=pixel_values, image_grid_thw=image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    @classmethod
    def empty_vision_input(cls, config: Any, dtype: Any, device: Any) -> tuple[Any, Any | None]:
        """One blank image of a single merged patch: grid ``[1, merge, merge]``, ``merge**2`` zero patches."""
        import torch

        vc = config.vision_config
        merge = int(vc.spatial_merge_size)
        dim = int(vc.in_channels) * int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
        grid = torch.tensor([[1, merge, merge]], dtype=torch.long, device=device)
        return torch.zeros((merge * merge, dim), dtype=dtype, device=device), grid

    @classmethod
    def module_group(cls, name: str) -> str | None:
        """``visual.merger`` is the projector, the rest of ``visual`` the vision tower."""
        parts = name.split(".")
        if "visual" in parts and "merger" in parts:
            return "projector"
        if "visual" in parts:
            return "vision_tower"
        return super().module_group(name)
