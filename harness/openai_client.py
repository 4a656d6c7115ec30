"""One OpenAI-compatible endpoint, with the retry policy shared by the ``openai`` engine and the LLM judge.

:class:`OpenAIEndpoint` wraps an ``openai.OpenAI`` client (whose own retries are switched off) and runs calls
under one policy:

- Transient failures are retried up to ``RetryPolicy.max_retries`` times with exponential backoff and jitter
  (the n-th retry waits a delay drawn in ``[d/2, d]`` with ``d = backoff_s * 2**(n-1)``, capped by
  ``backoff_max_s``): HTTP 408, 409, 429 and 5xx, client-side timeouts, connection errors, and malformed
  replies (a body that is not JSON, or one without a usable choice). A ``Retry-After`` (or ``retry-after-ms``)
  header, when the server sends one, sets the delay instead (capped by ``backoff_max_s``). Each retry is
  logged as a warning naming the request, the attempt number and the cause (the HTTP status, or the
  exception class).
- Authentication failures (401/403) raise :class:`~harness.errors.EngineError` at once, naming the endpoint
  and where the key comes from; no retry can fix them and no other request will fare better.
- Other 4xx replies (a request the server will never accept) raise :class:`RequestFailed` at once; so does a
  request whose retries are spent. :class:`RequestFailed` is an :class:`~harness.errors.EngineError`: the
  engine stops on it, the judge records that one judgment as failed and goes on.

The API key is sent in the ``Authorization`` header only. The key and the credentials of the base URL are
registered with :mod:`harness.redact` as secrets of the process, and every message this module logs or raises
passes through :meth:`OpenAIEndpoint.redact` (:func:`harness.redact.redact`: the known secrets, header values
such as ``Authorization: Basic ...`` that a server echoes back, credentials in URLs);
:attr:`OpenAIEndpoint.base_url` is the URL without credentials, safe for manifests and logs.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import openai

from harness.errors import ConfigError, EngineError
from harness.redact import add_secret, add_url_credentials, redact

DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # what local servers started without --api-key accept
RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx
NO_MODELS_ROUTE_STATUSES = frozenset({404, 405, 501})  # GET /models not implemented: skip the model check

T = TypeVar("T")

_log = logging.getLogger(__name__)


class Retryable(Exception):
    """A failed attempt that may succeed when repeated; ``delay_s`` is the server's Retry-After, if any.

    ``cause`` names what failed in a word or two, for the retry log: ``"HTTP 503"``, an exception class such as
    ``"APITimeoutError"``, or ``"malformed response"``.
    """

    def __init__(self, message: str, delay_s: float | None = None, cause: str = "malformed response"):
        super().__init__(message)
        self.delay_s = delay_s
        self.cause = cause


class Cancelled(Exception):
    """Raised in a worker whose batch was abandoned (another request failed for good, or the caller left)."""


class RequestFailed(EngineError):
    """One request failed for good: the server rejected it (a 4xx other than 401/403), or its retries are spent.

    ``reason`` is the last error, already redacted; the message also names the endpoint and the request.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be at least 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ConfigError(f"backoff delays must not be negative, got {self.backoff_s} and {self.backoff_max_s}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def public_url(url: str) -> str:
    """``url`` without user:password credentials and without a trailing slash."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def resolve_base_url(base_url: str | None) -> str:
    """``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's API (as given: may hold credentials)."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")


@dataclass(frozen=True)
class ChatReply:
    """The usable part of a chat completion: the first choice's text, why it stopped, and token usage."""

    text: str | None
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_chat_completion(completion: Any) -> ChatReply:
    """The first choice of an SDK chat completion; :class:`Retryable` when the reply is unusable."""
    if isinstance(completion, str):
        snippet = completion[:80].replace("\n", " ")
        raise Retryable(f"malformed response: not a JSON chat completion: {snippet!r}")
    choices = getattr(completion, "choices", None)
    if not choices:
        raise Retryable("malformed response: no choices in the reply")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise Retryable("malformed response: the first choice has no message")
    text = getattr(message, "content", None)
    if text is not None and not isinstance(text, str):
        raise Retryable(f"malformed response: message content is a {type(text).__name__}, not text")
    usage = getattr(completion, "usage", None)
    return ChatReply(
        text=text,
        finish_reason=str(getattr(choice, "finish_reason", None) or "unknown"),
        prompt_tokens=_int_or_none(getattr(usage, "prompt_tokens", None)),
        completion_tokens=_int_or_none(getattr(usage, "completion_tokens", None)),
    )


class OpenAIEndpoint:
    """An OpenAI-compatible endpoint: the SDK client, the retry policy, error classification and redaction.

    ``api_key`` is held privately (``"EMPTY"`` when None: local servers without a key). ``auth_hint`` ends
    the message of an authentication failure (where the key comes from, e.g. ``"check $OPENAI_API_KEY"``);
    ``unreachable_hint`` ends the message when the endpoint cannot be reached and connection errors are not
    retried. Retries are logged as warnings on ``logger``.
    """

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout_s: float,
        policy: RetryPolicy,
        auth_hint: str,
        unreachable_hint: str = "",
        logger: logging.Logger | None = None,
    ):
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s}")
        raw_url = resolve_base_url(base_url)
        self._api_key = api_key or NO_KEY
        self._secrets = [s for s in (self._api_key, urlsplit(raw_url).password) if s and s != NO_KEY]
        if self.has_key:
            add_secret(self._api_key)
        add_url_credentials(raw_url)
        self.base_url = self.redact(public_url(raw_url))
        self.timeout_s = float(timeout_s)
        self.policy = policy
        self.auth_hint = auth_hint
        self.unreachable_hint = unreachable_hint
        self.log = logger or _log
        self.client = openai.OpenAI(
            # credentials of the URL travel in the Authorization header (as HTTP clients send userinfo), never in
            # the URL the HTTP library logs
            base_url=public_url(raw_url),
            default_headers=_basic_auth_header(raw_url),
            api_key=self._api_key,
            timeout=self.timeout_s,
            max_retries=0,  # retries are ours: one policy, logged, with the request named in the final error
        )

    @property
    def has_key(self) -> bool:
        return self._api_key != NO_KEY

    def close(self) -> None:
        self.client.close()

    def redact(self, text: str) -> str:
        """``text`` with the API key, the base URL's credentials and anything else :func:`harness.redact.redact`
        recognises replaced by ``***``."""
        return redact(text, self._secrets)

    # -- retries ---------------------------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[[], T],
        what: str,
        stop: threading.Event | None = None,
        *,
        retry_connection_errors: bool = True,
        on_retry: Callable[[str], None] | None = None,
    ) -> T:
        """Run ``fn`` and retry transient failures under the policy.

        Raises :class:`RequestFailed` naming the endpoint, ``what`` and the last error once the retries are
        spent or when the server rejects the request; :class:`EngineError` at once on authentication
        failures; :class:`Cancelled` when ``stop`` is set. ``on_retry`` is told the reason of each retry.
        Each retry is logged as a warning: the request, the attempt number, the cause and the delay.
        """
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled
            try:
                return fn()
            except Retryable as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - classified below; anything unknown is re-raised
                error = self.classify(exc, what, retry_connection_errors)
            attempt += 1
            reason = self.redact(str(error))
            if attempt > self.policy.max_retries:
                raise RequestFailed(
                    f"{self.base_url}: {what}: giving up after {attempt} attempt(s); last error: {reason}", reason
                ) from None
            delay = self.policy.delay(attempt, error.delay_s)
            self.log.warning(
                "%s: %s: attempt %d/%d failed (%s): %s; retry %d/%d in %.2fs",
                self.base_url,
                what,
                attempt,
                self.policy.max_retries + 1,
                error.cause,
                reason,
                attempt,
                self.policy.max_retries,
                delay,
            )
            if on_retry is not None:
                on_retry(reason)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise Cancelled

    def classify(self, exc: Exception, what: str, retry_connection_errors: bool = True) -> Retryable:
        """Turn an SDK exception into a :class:`Retryable`, or raise the final error."""
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            raise EngineError(
                f"authentication failed for {self.base_url} (HTTP {exc.status_code}): {self.auth_hint}"
            ) from None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self.redact(f"HTTP {status}: {_status_message(exc)}")
            if status in RETRY_STATUSES or status >= 500:
                return Retryable(detail, _retry_after(exc), cause=f"HTTP {status}")
            raise RequestFailed(f"{self.base_url} rejected {what}: {detail}", detail) from None
        if isinstance(exc, openai.APITimeoutError):
            return Retryable(f"no reply within {self.timeout_s:g}s (timeout)", cause=type(exc).__name__)
        if isinstance(exc, openai.APIConnectionError):
            reason = self.redact(_connection_reason(exc))
            if not retry_connection_errors:
                hint = f" {self.unreachable_hint}" if self.unreachable_hint else ""
                raise EngineError(f"cannot reach {self.base_url}: {reason}.{hint}") from None
            return Retryable(f"cannot reach the server: {reason}", cause=type(exc).__name__)
        if isinstance(exc, ValueError):  # the body was announced as JSON but does not parse
            return Retryable(f"malformed response: invalid JSON ({self.redact(str(exc))})", cause=type(exc).__name__)
        raise exc

    # -- preflight -------------------------------------------------------------------------------------------

    def served_models(self) -> list[str] | None:
        """``GET /models``: the names served, or None for servers without that route.

        Connection errors are not retried (an endpoint that is down at the start is a user error).
        """

        def list_models() -> list[str] | None:
            try:
                page = self.client.models.list()
            except openai.APIStatusError as exc:
                if exc.status_code in NO_MODELS_ROUTE_STATUSES:
                    return None
                raise
            if isinstance(page, str):
                return None
            return [str(getattr(m, "id", "")) for m in (getattr(page, "data", None) or [])]

        return self.call(list_models, "GET /models", retry_connection_errors=False)

    def check_model(self, model: str, hint: str) -> None:
        """Raise :class:`EngineError` unless the endpoint answers, accepts the key and serves ``model``.

        ``hint`` ends the message when the model is not served (what to set instead).
        """
        names = self.served_models()
        if names is None:
            self.log.info("%s: no /models route; skipping the model check", self.base_url)
            return
        if names and model not in names:
            raise EngineError(
                f"{self.base_url} does not serve model {model!r}; it serves: {', '.join(sorted(names))}. {hint}"
            )


def _basic_auth_header(url: str) -> dict[str, str] | None:
    """``{"Authorization": "Basic ..."}`` for the userinfo of ``url`` (percent-decoded), or None without one.

    It takes the place of the ``Bearer`` key header, as it does when an HTTP client sends a URL's userinfo.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
    """The server's requested delay in seconds (``retry-after-ms`` or ``Retry-After`` in seconds), if any."""
    headers = exc.response.headers if exc.response is not None else {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) * scale
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


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
