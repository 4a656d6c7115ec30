"""The ``openai`` engine: any OpenAI-compatible chat-completions endpoint.

It serves models behind ``vllm serve`` (or ``python -m harness.serve`` on CPU machines) and hosted models.
Each :class:`~harness.types.Request` becomes one chat request with a single user message: the images, as
lossless base64 PNG data URLs, followed by the prompt text. The server's chat template renders the prompt,
so the manifest records ``template: "server"``.

Reliability policy (shared with the LLM judge: :mod:`harness.openai_client`)
---------------------------------------------------------------------------
- ``EngineOptions.concurrency`` requests are in flight at all times (default 64, sized for a vLLM server that
  batches them): :meth:`OpenAIEngine.generate_stream` sends the next request as soon as one completes, and
  responses are yielded as they complete. Each image is PNG-encoded once while it is among the last
  :data:`PNG_CACHE_IMAGES` encoded (the runner hands the same image object to every sample that shows it).
- Transient failures are retried up to ``EngineOptions.max_retries`` times with exponential backoff and
  jitter: HTTP 408, 409, 429 and 5xx, client-side timeouts (``EngineOptions.timeout_s`` per attempt),
  connection errors, and malformed replies (a body that is not JSON, or one without a usable choice). A
  ``Retry-After`` header, when the server sends one, sets the delay (capped by ``backoff_max_s``).
- Authentication failures (401/403) stop at once with an :class:`~harness.errors.EngineError`; so do other
  4xx replies (a request the server will never accept), naming the sample.
- When one request fails for good, requests not yet started are cancelled, those in flight stop retrying,
  and the responses that did complete are still yielded (the runner keeps them) before the error is raised.
- At construction a ``GET /models`` preflight checks that the endpoint is reachable, that the key is
  accepted and that the served model exists; servers without ``/models`` (404) skip the model check.

The API key is sent in the ``Authorization`` header only: it is never logged, never part of an error
message and never part of :meth:`OpenAIEngine.describe` (credentials in the base URL are hidden there too).
Reply texts pass through :func:`harness.redact.redact` before they become predictions, so a server that
echoes the ``Authorization`` header or the key back cannot put a credential into the run directory.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Future,
    ThreadPoolExecutor,
    wait,
)
from typing import TYPE_CHECKING, Any

import openai

from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError, EngineError
from harness.io import OnceCache
from harness.openai_client import (
    DEFAULT_BASE_URL,
    NO_KEY,
    Cancelled,
    OpenAIEndpoint,
    RetryPolicy,
    parse_chat_completion,
    public_url,
)
from harness.redact import redact, redact_obj
from harness.types import Decoding, Request, Response

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

__all__ = ["DEFAULT_BASE_URL", "NO_KEY", "OpenAIEngine", "build_messages", "encode_png_data_url", "public_url"]

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 1000  # the openai SDK's HTTP connection pool holds this many connections
PNG_CACHE_IMAGES = 256  # encoded images kept (data URLs), least recently used out ...
PNG_CACHE_CHARS = 256 << 20  # ... and at most this many characters of them


def encode_png_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL of a PIL image (lossless; the same pixels give the same bytes)."""
    if not hasattr(image, "save"):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_messages(request: Request, encode: Any = encode_png_data_url) -> list[ChatCompletionMessageParam]:
    """One user message: each image as an ``image_url`` part (``encode(image)``), then the prompt as a ``text``
    part."""
    content: list[ChatCompletionContentPartParam] = [
        {"type": "image_url", "image_url": {"url": encode(image)}} for image in request.images
    ]
    content.append({"type": "text", "text": request.prompt})
    return [{"role": "user", "content": content}]


class OpenAIEngine(Engine):
    """Greedy generation through an OpenAI-compatible ``/chat/completions`` endpoint.

    ``model`` names the model in the run manifest; ``options.served_model`` (default: ``model``) is the
    name sent to the server. ``options.base_url`` defaults to ``$OPENAI_BASE_URL``, then to OpenAI's API;
    ``options.api_key`` to ``$OPENAI_API_KEY``, then to ``"EMPTY"`` (local servers without a key).

    ``backoff_s`` is the first retry delay, doubled at each further retry up to ``backoff_max_s``, with
    jitter (the delay is drawn in ``[d/2, d]``). ``preflight=False`` skips the ``GET /models`` check.
    """

    name = "openai"
    default_batch_size = 64  # unused: ``concurrency`` sets the requests in flight

    def __init__(
        self,
        model: str,
        decoding: Decoding,
        options: EngineOptions,
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        preflight: bool = True,
    ):
        super().__init__(model, decoding, options)
        if options.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {options.concurrency}")
        if options.concurrency > MAX_CONCURRENCY:
            raise ConfigError(
                f"concurrency {options.concurrency} is more than the {MAX_CONCURRENCY} connections "
                "of the HTTP client; use at most that"
            )
        # id(image) -> (image, data URL); the entry holds the image, so its id is not reused while cached
        self._png: OnceCache[int, tuple[Any, str]] = OnceCache(
            PNG_CACHE_IMAGES, PNG_CACHE_CHARS, lambda entry: len(entry[1])
        )
        self.policy = RetryPolicy(max_retries=options.max_retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        self._endpoint = OpenAIEndpoint(
            options.base_url,
            options.api_key or os.environ.get("OPENAI_API_KEY"),
            timeout_s=options.timeout_s,
            policy=self.policy,
            auth_hint="check OPENAI_API_KEY / --api-key-env",
            unreachable_hint="Is the server running? (start one with `python -m harness.serve MODEL`)",
            logger=log,
        )
        self.base_url = self._endpoint.base_url
        self.served_model = options.served_model or model
        self.concurrency = options.concurrency
        self.timeout_s = self._endpoint.timeout_s
        self.max_retries = options.max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        if preflight:
            try:
                self._endpoint.check_model(
                    self.served_model,
                    "Set the served model name (EngineOptions.served_model) to one of these.",
                )
            except BaseException:
                self._endpoint.close()
                raise

    # -- Engine interface ------------------------------------------------------------------------------------

    def sampling_params(self, max_tokens: int | None = None) -> dict[str, Any]:
        """The parameters sent with every request besides ``model`` and ``messages``.

        ``max_tokens`` is the request's budget (``Request.max_new_tokens``); the manifest records the
        default one, ``decoding.max_new_tokens``.
        """
        params: dict[str, Any] = {
            "temperature": self.decoding.temperature,
            "top_p": self.decoding.top_p,
            "max_tokens": self.decoding.max_new_tokens if max_tokens is None else max_tokens,
            "seed": self.decoding.seed,
        }
        if self.options.extra_body:
            params["extra_body"] = dict(self.options.extra_body)
        return params

    def describe(self) -> dict[str, Any]:
        return redact_obj(
            {
                "engine": self.name,
                "engine_version": openai.__version__,
                "model": self.model,
                "served_model": self.served_model,
                "base_url": self.base_url,
                "template": "server",
                "sampling_params": self.sampling_params(),
                "concurrency": self.concurrency,
                "timeout_s": self.timeout_s,
                "max_retries": self.max_retries,
            }
        )

    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        """Send ``requests`` with at most ``concurrency`` in flight; yield responses as they complete."""
        return self.generate_stream(requests)

    def generate_stream(self, requests: Iterable[Request]) -> Iterator[Response]:
        """Keep ``concurrency`` requests of ``requests`` in flight (drawing the next one as soon as one
        completes) until it is exhausted; yield responses as they complete.

        When a request fails for good, no further request is drawn, those in flight stop retrying, and the
        ones that complete are still yielded before the error is raised.
        """
        it = iter(requests)
        stop = threading.Event()
        pool: ThreadPoolExecutor | None = None
        in_flight: set[Future[Response]] = set()
        failure: EngineError | None = None
        exhausted = False
        try:
            while True:
                while not exhausted and failure is None and len(in_flight) < self.concurrency:
                    request = next(it, None)
                    if request is None:
                        exhausted = True
                        break
                    if pool is None:
                        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-engine")
                    in_flight.add(pool.submit(self._complete, request, stop))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        response = future.result()
                    except (CancelledError, Cancelled):
                        continue
                    except EngineError as exc:
                        if failure is None:
                            failure = exc
                            stop.set()
                        continue
                    yield response
        finally:
            stop.set()
            if pool is not None:
                # Do not wait for requests still in flight when the caller stops early (Ctrl-C, an exception):
                # their threads finish on their own within one timeout.
                pool.shutdown(wait=False, cancel_futures=True)
        if failure is not None:
            raise failure

    def close(self) -> None:
        self._endpoint.close()

    # -- one request -----------------------------------------------------------------------------------------

    def _complete(self, request: Request, stop: threading.Event) -> Response:
        if stop.is_set():
            raise Cancelled
        messages = build_messages(request, self._data_url)
        params = self.sampling_params(request.max_new_tokens)

        def attempt() -> Response:
            completion = self._endpoint.client.chat.completions.create(
                model=self.served_model,
                messages=messages,
                **params,
            )
            return self._parse(request.sample_id, completion)

        try:
            return self._endpoint.call(attempt, f"sample {request.sample_id}", stop)
        except EngineError:
            stop.set()  # before this worker picks up the next request
            raise

    def _data_url(self, image: Any) -> str:
        """The PNG data URL of ``image``, encoded once while cached."""
        return self._png.get(id(image), lambda: (image, encode_png_data_url(image)))[1]

    @staticmethod
    def _parse(sample_id: str, completion: Any) -> Response:
        """A :class:`Response` from the SDK's parsed reply; ``Retryable`` when the reply is unusable."""
        reply = parse_chat_completion(completion)
        return Response(
            sample_id=sample_id,
            # stripped as the hf and vllm engines do (LLaVA's eval scripts strip outputs); no credential kept
            text=redact((reply.text or "").strip()),
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        )
