"""Inference engines behind one interface: ``hf`` (transformers), ``vllm`` (offline LLM), ``openai`` (any
OpenAI-compatible server). Engines are imported lazily: vLLM and the openai SDK are optional."""

from __future__ import annotations

from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError
from harness.types import Decoding

ENGINES = ("hf", "vllm", "openai")


def default_engine() -> str:
    """``vllm`` on a machine with a CUDA GPU and vLLM installed, else ``hf``."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return "vllm"
        except ImportError:
            pass
    return "hf"


def create_engine(name: str, model: str, decoding: Decoding, options: EngineOptions) -> Engine:
    """Build the engine ``name`` for ``model`` (a local checkpoint, or a served model name for ``openai``)."""
    cls: type[Engine]
    if name == "hf":
        from harness.engines.hf import HFEngine as cls
    elif name == "vllm":
        from harness.engines.vllm import VLLMEngine as cls
    elif name == "openai":
        from harness.engines.openai import OpenAIEngine as cls
    else:
        raise ConfigError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    return cls(model, decoding, options)


__all__ = ["ENGINES", "Engine", "EngineOptions", "create_engine", "default_engine"]
