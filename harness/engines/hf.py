"""The ``hf`` engine: batched generation with transformers, for CPUs and small models.

Prompts are rendered by the model family's adapter (the same text the ``vllm`` engine and the trainers use),
batched with left padding and decoded greedily; only the new tokens are decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any, ClassVar

from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError, ModelError
from harness.models import resolve_model
from harness.types import Decoding, Request, Response

_DTYPES = ("auto", "float32", "bfloat16", "float16")


class HFEngine(Engine):
    """Generation with ``transformers`` (``AutoModelForImageTextToText``).

    ``dtype="auto"`` means float32 on CPU and bfloat16 on CUDA. Decoding is greedy (``do_sample=False``,
    ``num_beams=1``) unless ``decoding.temperature > 0``. Requests are batched in arrival order, a batch
    holding requests with the same token budget.
    """

    name: ClassVar[str] = "hf"
    default_batch_size: ClassVar[int] = 8

    def __init__(self, model: str, decoding: Decoding, options: EngineOptions):
        super().__init__(model, decoding, options)
        import torch
        import transformers

        self.info, self.family = resolve_model(model, options.template)
        self.device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if options.dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {options.dtype!r}; expected one of {', '.join(_DTYPES)}")
        dtype_name = options.dtype
        if dtype_name == "auto":
            dtype_name = "float32" if self.device == "cpu" else "bfloat16"
        self.dtype_name = dtype_name
        self.dtype = getattr(torch, dtype_name)
        self._transformers_version = transformers.__version__

        torch.manual_seed(decoding.seed)
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model)
            self.hf_model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{model}: transformers cannot load the checkpoint: {exc}") from exc
        # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed type does not bind self
        self.hf_model.to(self.device).eval()  # type: ignore[arg-type]

        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        gen_cfg = self.hf_model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids: frozenset[int] = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else tokenizer.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.pad_id = int(pad)

    def generate_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """The exact keyword arguments given to ``model.generate`` (besides the inputs).

        ``repetition_penalty`` (and ``top_k`` when sampling) are set explicitly so that values in the
        checkpoint's ``generation_config.json`` (Qwen2-VL-Instruct ships ``repetition_penalty=1.05``,
        ``top_k=1``) do not apply: the engines all decode with the parameters the manifest records.
        """
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "num_beams": 1,
            "repetition_penalty": 1.0,
            "pad_token_id": self.pad_id,
        }
        if self.decoding.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.decoding.temperature, top_p=self.decoding.top_p, top_k=0)
        else:
            kwargs["do_sample"] = False
        return kwargs

    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        for budget, group in groupby(requests, key=lambda r: r.max_new_tokens):
            chunk: list[Request] = []
            for req in group:
                chunk.append(req)
                if len(chunk) == self.batch_size:
                    yield from self._generate_batch(chunk, budget)
                    chunk = []
            if chunk:
                yield from self._generate_batch(chunk, budget)

    def _generate_batch(self, batch: list[Request], max_new_tokens: int) -> list[Response]:
        import torch

        texts = [self.family.render_prompt(r.prompt, len(r.images)) for r in batch]
        inputs = self.family.processor_inputs(self.processor, texts, [list(r.images) for r in batch])
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in inputs.items()
        }
        torch.manual_seed(self.decoding.seed)
        with torch.inference_mode():
            # transformers types generate's self as a Protocol its own PreTrainedModel does not satisfy for mypy
            out = self.hf_model.generate(**inputs, **self.generate_kwargs(max_new_tokens))  # type: ignore[misc]
        prompt_len = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        tokenizer = self.processor.tokenizer
        responses = []
        for i, req in enumerate(batch):
            new = out[i, prompt_len:].tolist()
            stop_at = next((j for j, tok in enumerate(new) if tok in self.eos_ids), None)
            if stop_at is not None:
                new, finish = new[: stop_at + 1], "stop"
            else:
                finish = "length"
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            responses.append(
                Response(
                    sample_id=req.sample_id,
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=int(prompt_tokens[i]),
                    completion_tokens=len(new),
                )
            )
        return responses

    def describe(self) -> dict[str, Any]:
        params = self.generate_kwargs(self.decoding.max_new_tokens)
        return {
            "engine": self.name,
            "engine_version": self._transformers_version,
            "template": self.family.template,
            "family": self.family.name,
            # max_new_tokens is the default budget; a request may carry its own (a task's default)
            "sampling_params": params,
            "seed": self.decoding.seed,
            "dtype": self.dtype_name,
            "device": self.device,
            "batch_size": self.batch_size,
        }

    def close(self) -> None:
        """Drop the model and free its memory."""
        import gc

        import torch

        if self.__dict__.pop("hf_model", None) is not None:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
