"""The one interface every inference engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.types import Decoding, Request, Response


@dataclass(frozen=True)
class EngineOptions:
    """Settings shared by the engines; each engine reads the ones that concern it.

    ``api_key`` is read by the openai engine and never written anywhere.
    """

    batch_size: int | None = None  # hf: generate() batch; vllm: requests handed to LLM.generate at once
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    device: str | None = None  # hf: "cpu" | "cuda" | ...; None picks cuda when available
    template: str | None = None  # prompt template name of the model family; None = family default
    # vllm
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool = False
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    # openai
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    served_model: str | None = None  # model name sent to the server; defaults to --model
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    extra_body: dict[str, Any] | None = None  # extra JSON fields of each request (e.g. vLLM's add_special_tokens)


class Engine(ABC):
    """Generates greedy responses for batches of requests.

    ``generate`` may yield responses in any order; the runner writes them in sample order.
    """

    name: ClassVar[str]
    default_batch_size: ClassVar[int] = 8

    def __init__(self, model: str, decoding: Decoding, options: EngineOptions):
        self.model = model
        self.decoding = decoding
        self.options = options

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.default_batch_size

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        """Yield one :class:`Response` per request."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records: ``engine``, ``engine_version``, ``template`` and ``sampling_params``
        (the exact parameters sent to the backend), plus engine-specific settings. Never a secret."""

    def close(self) -> None:
        """Release the backend (processes, GPU memory, connections)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
