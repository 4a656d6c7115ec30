"""The one interface every inference engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

from harness.types import Decoding, Request, Response

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass(frozen=True)
class EngineOptions:
    """Settings shared by the engines; each engine reads the ones that concern it.

    ``api_key`` is read by the openai engine and never written anywhere.
    """

    batch_size: int | None = None  # hf: generate() batch; vllm: requests queued in the engine at once
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
    concurrency: int = 64  # requests in flight at all times (a vLLM server batches them)
    timeout_s: float = 120.0
    max_retries: int = 5
    extra_body: dict[str, Any] | None = None  # extra JSON fields of each request (e.g. vLLM's add_special_tokens)


class Engine(ABC):
    """Generates greedy responses for requests.

    Two entry points, both yielding one :class:`Response` per request, in any order (the runner writes them in
    sample order):

    - :meth:`generate` answers a batch given as a sequence;
    - :meth:`generate_stream` answers a stream: it draws requests from an iterable as it has room for them,
      so that a backend that schedules requests itself (vLLM, a server) never waits for a batch to drain.
      The runner uses it. The default draws ``batch_size`` requests at a time and calls :meth:`generate`;
      engines that keep a queue of their own override it. The iterable is drawn from one thread at a time.

    The images of a request may be shared with other requests (the runner decodes each image once): engines
    must not modify them.
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

    def generate_stream(self, requests: Iterable[Request]) -> Iterator[Response]:
        """Yield one :class:`Response` per request of ``requests``, drawing requests only as they can be run.

        Closing the iterator early (an exception in the caller, Ctrl-C) abandons the requests not answered yet.
        """
        it = iter(requests)
        size = max(1, self.batch_size)
        while chunk := list(islice(it, size)):
            yield from self.generate(chunk)

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records: ``engine``, ``engine_version``, ``template`` and ``sampling_params``
        (the exact parameters sent to the backend), plus engine-specific settings. Never a secret."""

    def close(self) -> None:
        """Release the backend (processes, GPU memory, connections)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
