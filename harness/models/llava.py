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
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.models import hub_render, processor_batch
from harness.models.base import ModelFamily, register_family

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

    def render_prompt(self, prompt: str, num_images: int, response: str | None = None) -> str:
        if self.template == "hub":
            return hub_render(self.model_path, prompt, num_images, response)
        text = f"{LLAVA_V1_SYSTEM} USER: " + f"{self.image_token}\n" * num_images + f"{prompt} ASSISTANT:"
        if response is not None:
            text += f" {response}</s>"
        return text

    def processor_inputs(self, processor: Any, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        return processor_batch(processor, texts, images)
