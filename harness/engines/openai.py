"""The ``openai`` engine: any OpenAI-compatible chat-completions endpoint.

It serves models behind ``vllm serve`` (or ``python -m harness.serve`` on CPU machines) and hosted models.
Each :class:`~harness.types.Request` becomes one chat request with a single user message: the images, as
lossless base64 PNG data URLs, followed by the prompt text. The server's chat template renders the prompt,
so the manifest records ``template: "server"``.

Reliability policy
------------------
- Requests run on a bounded pool of ``EngineOptions.concurrency`` worker threads; responses are yielded as
  they complete.
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
message and never part of :meth:`OpenAIEngine.describe`.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai

from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError, EngineError
from harness.types import Decoding, Request, Response

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # what local servers started without --api-key accept
RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx
NO_MODELS_ROUTE_STATUSES = frozenset({404, 405, 501})  # GET /models not implemented: skip the preflight check

T = TypeVar("T")


class _Retryable(Exception):
    """A failed attempt that may succeed when repeated; ``delay_s`` is the server's Retry-After, if any."""

    def __init__(self, message: str, delay_s: float | None = None):
        super().__init__(message)
        self.delay_s = delay_s


class _Cancelled(Exception):
    """Raised in a worker whose batch was abandoned (another request failed for good, or the caller left)."""


def public_url(url: str) -> str:
    """``url`` without user:password credentials and without a trailing slash."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def encode_png_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL of a PIL image (lossless; the same pixels give the same bytes)."""
    if not hasattr(image, "save"):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_messages(request: Request) -> list[dict[str, Any]]:
    """One user message: each image as an ``image_url`` part, then the prompt as a ``text`` part."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": encode_png_data_url(image)}} for image in request.images
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
    default_batch_size = 64  # requests handed to generate() at once; ``concurrency`` bounds those in flight

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
        if options.max_retries < 0:
            raise ConfigError(f"max_retries must be at least 0, got {options.max_retries}")
        if options.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {options.timeout_s}")
        raw_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = public_url(raw_url)
        self.served_model = options.served_model or model
        self.concurrency = options.concurrency
        self.timeout_s = float(options.timeout_s)
        self.max_retries = options.max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._api_key = options.api_key or os.environ.get("OPENAI_API_KEY") or NO_KEY
        self._client = openai.OpenAI(
            base_url=raw_url.strip().rstrip("/"),
            api_key=self._api_key,
            timeout=self.timeout_s,
            max_retries=0,  # retries are ours: one policy, logged, with the sample id in the final error
        )
        if preflight:
            try:
                self._preflight()
            except BaseException:
                self._client.close()
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
        return {
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

    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        """Send ``requests`` with at most ``concurrency`` in flight; yield responses as they complete."""
        if not requests:
            return
        stop = threading.Event()
        pool = ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(requests)), thread_name_prefix="openai-engine"
        )
        failure: EngineError | None = None
        try:
            futures: list[Future[Response]] = [pool.submit(self._complete, r, stop) for r in requests]
            for future in as_completed(futures):
                try:
                    response = future.result()
                except (CancelledError, _Cancelled):
                    continue
                except EngineError as exc:
                    if failure is None:
                        failure = exc
                        stop.set()
                        for pending in futures:
                            pending.cancel()
                    continue
                yield response
        finally:
            stop.set()
            # Do not wait for requests still in flight when the caller stops early (Ctrl-C, an exception):
            # their threads finish on their own within one timeout.
            pool.shutdown(wait=False, cancel_futures=True)
        if failure is not None:
            raise failure

    def close(self) -> None:
        self._client.close()

    # -- one request -----------------------------------------------------------------------------------------

    def _complete(self, request: Request, stop: threading.Event) -> Response:
        if stop.is_set():
            raise _Cancelled
        messages = build_messages(request)
        params = self.sampling_params(request.max_new_tokens)

        def attempt() -> Response:
            completion = self._client.chat.completions.create(
                model=self.served_model, messages=messages, **params  # type: ignore[arg-type]
            )
            return self._parse(request.sample_id, completion)

        try:
            return self._with_retries(attempt, f"sample {request.sample_id}", stop)
        except EngineError:
            stop.set()  # before this worker picks up the next request
            raise

    @staticmethod
    def _parse(sample_id: str, completion: Any) -> Response:
        """A :class:`Response` from the SDK's parsed reply; :class:`_Retryable` when the reply is unusable."""
        if isinstance(completion, str):
            snippet = completion[:80].replace("\n", " ")
            raise _Retryable(f"malformed response: not a JSON chat completion: {snippet!r}")
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _Retryable("malformed response: no choices in the reply")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise _Retryable("malformed response: the first choice has no message")
        text = getattr(message, "content", None)
        if text is not None and not isinstance(text, str):
            raise _Retryable(f"malformed response: message content is a {type(text).__name__}, not text")
        usage = getattr(completion, "usage", None)
        return Response(
            sample_id=sample_id,
            text=(text or "").strip(),  # as the hf and vllm engines: LLaVA's eval scripts strip outputs
            finish_reason=str(getattr(choice, "finish_reason", None) or "unknown"),
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
        )

    # -- retry policy ----------------------------------------------------------------------------------------

    def _with_retries(
        self,
        call: Callable[[], T],
        what: str,
        stop: threading.Event | None = None,
        retry_connection_errors: bool = True,
    ) -> T:
        """Run ``call`` and retry transient failures with exponential backoff and jitter.

        Raises :class:`EngineError` naming the endpoint, ``what`` and the last error once ``max_retries``
        retries are spent, or at once for failures that a retry cannot fix.
        """
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise _Cancelled
            try:
                return call()
            except _Retryable as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - classified below; anything unknown is re-raised
                error = self._classify(exc, what, retry_connection_errors)
            attempt += 1
            reason = self._redact(str(error))
            if attempt > self.max_retries:
                raise EngineError(
                    f"{self.base_url}: {what}: giving up after {attempt} attempt(s); last error: {reason}"
                ) from None
            delay = self._backoff_delay(attempt, error.delay_s)
            log.warning(
                "%s: %s: %s; retry %d/%d in %.2fs", self.base_url, what, reason, attempt, self.max_retries, delay
            )
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise _Cancelled

    def _backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _classify(self, exc: Exception, what: str, retry_connection_errors: bool) -> _Retryable:
        """Turn an SDK exception into a :class:`_Retryable`, or raise the final :class:`EngineError`."""
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            raise EngineError(
                f"authentication failed for {self.base_url} (HTTP {exc.status_code}): "
                "check OPENAI_API_KEY / --api-key-env"
            ) from None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self._redact(f"HTTP {status}: {_status_message(exc)}")
            if status in RETRY_STATUSES or status >= 500:
                return _Retryable(detail, _retry_after(exc))
            raise EngineError(f"{self.base_url} rejected {what}: {detail}") from None
        if isinstance(exc, openai.APITimeoutError):
            return _Retryable(f"no reply within {self.timeout_s:g}s (timeout)")
        if isinstance(exc, openai.APIConnectionError):
            reason = self._redact(_connection_reason(exc))
            if not retry_connection_errors:
                raise EngineError(
                    f"cannot reach {self.base_url}: {reason}. Is the server running? "
                    "(start one with `python -m harness.serve MODEL`)"
                ) from None
            return _Retryable(f"cannot reach the server: {reason}")
        if isinstance(exc, ValueError):  # the body was announced as JSON but does not parse
            return _Retryable(f"malformed response: invalid JSON ({self._redact(str(exc))})")
        raise exc

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != NO_KEY:
            text = text.replace(self._api_key, "***")
        return text

    # -- preflight -------------------------------------------------------------------------------------------

    def _preflight(self) -> None:
        """``GET /models``: the endpoint answers, accepts the key and serves ``served_model``."""

        def list_models() -> list[str] | None:
            try:
                page = self._client.models.list()
            except openai.APIStatusError as exc:
                if exc.status_code in NO_MODELS_ROUTE_STATUSES:
                    return None  # a server without /models: nothing to check
                raise
            if isinstance(page, str):
                return None
            return [str(getattr(m, "id", "")) for m in (getattr(page, "data", None) or [])]

        names = self._with_retries(list_models, "GET /models", retry_connection_errors=False)
        if names is None:
            log.info("%s: no /models route; skipping the model check", self.base_url)
            return
        if names and self.served_model not in names:
            raise EngineError(
                f"{self.base_url} does not serve model {self.served_model!r}; it serves: "
                f"{', '.join(sorted(names))}. Set the served model name (EngineOptions.served_model) "
                "to one of these."
            )


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return exc.message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _connection_reason(exc: BaseException) -> str:
    """The root cause of a connection failure in words ("connection refused", a DNS error...)."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause, seen = nxt, seen + 1
    text = str(cause) if cause is not None else ""
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__
