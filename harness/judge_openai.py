"""The OpenAI-compatible LLM judge: MMHal-Bench's GPT-4 rater, Object HalBench's GPT object extraction, MMVP's
grader, LLaVA-Bench and MM-Vet.

:class:`OpenAIJudge` sends each :class:`~harness.judge.JudgeRequest` as one chat completion with the request's own
``temperature`` (MMHal-Bench uses 0, MMVP 0.2) and ``max_tokens`` (when set), and returns the reply text exactly
as the server sent it (the task parses it).

Reliability
-----------
- At most ``concurrency`` requests are in flight.
- Each attempt waits at most ``timeout_s`` for a reply (``--judge-timeout``), and a request is tried at most
  ``max_retries + 1`` times (``--judge-max-retries``): a judge that hangs holds one request for about
  ``timeout_s * (max_retries + 1)`` seconds plus the backoff. Each retry is logged as a warning with its cause
  (HTTP status or exception class) and attempt number.
- Retries follow the policy the ``openai`` engine uses (:mod:`harness.openai_client`): 408/409/429/5xx,
  timeouts, connection errors and malformed replies (including a reply without text) are retried with
  exponential backoff and jitter, up to ``max_retries`` times.
- A 401/403 raises :class:`~harness.errors.EngineError` at once: no judgment of the run can succeed. The message
  names the endpoint and the environment variable the key is read from, never the key.
- Any other failure (retries spent, a request the server rejects) fails closed: that judgment comes back as
  ``JudgeResult(text=None, error=...)``, is logged as a warning with its request id, is counted in the ledger
  and is not cached, so a rerun asks again. The other judgments go on.
- Before its first API request the judge checks ``GET /models``: the endpoint answers, accepts the key and
  serves the model (servers without that route skip the model check). A run answered fully from the cache
  makes no request at all.

Cache
-----
One JSON file per judgment, ``<cache_dir>/<key[:2]>/<key>.json``, written atomically (safe with concurrent
runs, on shared file systems too). The key is :func:`cache_key`: sha256 of the canonical JSON of the model name
and the full request (messages, temperature, max_tokens); the endpoint's URL is not part of it, so the same
model behind another URL or proxy shares the entries. A file holds the request, the reply text, the token usage
and when it was made. A cached reply comes back with ``cached=True`` and costs nothing; failed judgments are
never written. Identical requests in one batch share one API request, so a rerun from the cache reproduces
the first run exactly (also for judges that sample, such as MMVP's at temperature 0.2).

The API key is read from the environment variable ``api_key_env`` only; it is never logged, never part of an
error, of :meth:`OpenAIJudge.describe`, of the ledger or of a cache file. Reply texts are passed through
:func:`harness.redact.redact` before they are cached or returned, so a server that echoes the request's
``Authorization`` header (or the key) back cannot put a credential into the cache or the run's score records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import openai

from harness.cache import cache_dir
from harness.errors import ConfigError
from harness.io import atomic_write_text
from harness.judge import Judge, JudgeRequest, JudgeResult, Ledger
from harness.openai_client import (
    Cancelled,
    ChatReply,
    OpenAIEndpoint,
    RequestFailed,
    Retryable,
    RetryPolicy,
    parse_chat_completion,
)
from harness.redact import redact, redact_obj

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # part of every cache key: a new format never reads old entries


class Price(NamedTuple):
    """USD per 1M tokens."""

    input: float
    output: float


# USD per 1M tokens (input, output), as published by OpenAI on its pricing pages. Prices change: pass
# ``prices={"model": (input, output)}`` to OpenAIJudge to override or extend this table.
PRICES_PER_1M: dict[str, Price] = {
    "gpt-4-0314": Price(30.00, 60.00),
    "gpt-4-1106-preview": Price(10.00, 30.00),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-3.5-turbo-0613": Price(1.50, 2.00),
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def default_cache_dir() -> Path:
    """``<$HARNESS_CACHE or ~/.cache/halluc-harness>/judge``."""
    return cache_dir() / "judge"


def request_payload(request: JudgeRequest) -> dict[str, Any]:
    """What is sent besides the model name: ``messages``, ``temperature`` and (when set) ``max_tokens``."""
    payload: dict[str, Any] = {
        "messages": [dict(m) for m in request.messages],
        "temperature": float(request.temperature),
    }
    if request.max_tokens is not None:
        payload["max_tokens"] = int(request.max_tokens)
    return payload


def cache_key(model: str, request: JudgeRequest) -> str:
    """sha256 of the canonical JSON of the model name and the full request (not its id, not the endpoint)."""
    record = {"format": CACHE_FORMAT, "model": model, **request_payload(request)}
    record.setdefault("max_tokens", None)
    canonical = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None


class JudgeCache:
    """Judge replies on disk: one JSON file per key, ``<root>/<key[:2]>/<key>.json``."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedReply | None:
        """The stored reply, or None (a missing or unreadable entry is a miss; an unreadable one is logged)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("judge cache entry %s is unreadable (%s); asking the judge again", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("text"), str):
            log.warning("judge cache entry %s is malformed; asking the judge again", path)
            return None
        return CachedReply(
            redact(entry["text"]), _int(entry.get("prompt_tokens")), _int(entry.get("completion_tokens"))
        )

    def put(self, key: str, model: str, request: JudgeRequest, reply: ChatReply) -> None:
        assert reply.text is not None
        entry = {
            "format": CACHE_FORMAT,
            "key": key,
            "model": model,
            "request": redact_obj(request_payload(request)),
            "text": redact(reply.text),
            "finish_reason": reply.finish_reason,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, ensure_ascii=False, sort_keys=True, indent=1) + "\n")


class OpenAIJudge(Judge):
    """An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint, with a disk cache and a ledger.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, then to OpenAI's API. The key is read from the environment
    variable named by ``api_key_env`` (unset: no key, for local servers). ``timeout_s`` bounds each attempt;
    ``backoff_s`` is the first retry delay, doubled at each further retry up to ``backoff_max_s``.
    ``cache_dir`` defaults to :func:`default_cache_dir`; ``use_cache=False`` neither reads nor writes it.
    ``prices`` (USD per 1M tokens, ``{"model": (input, output)}``) extends or overrides :data:`PRICES_PER_1M`.
    ``preflight=False`` skips the ``GET /models`` check before the first request.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        cache_dir: Path | str | None = None,
        use_cache: bool = True,
        prices: Mapping[str, Price | Sequence[float] | Mapping[str, float]] | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        preflight: bool = True,
        progress: bool = True,
    ):
        if not model:
            raise ConfigError("the judge needs a model name (--judge-model)")
        if concurrency < 1:
            raise ConfigError(f"judge concurrency must be at least 1, got {concurrency}")
        if not timeout_s > 0:
            raise ConfigError(
                f"the judge's timeout (--judge-timeout) must be a positive number of seconds, got {timeout_s:g}"
            )
        if not _ENV_NAME.fullmatch(api_key_env):
            # the value is not echoed: a key passed here by mistake must not reach a log
            raise ConfigError("api_key_env must be the name of an environment variable (letters, digits, _)")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.progress = progress
        self.prices = {**PRICES_PER_1M, **{name: _price(name, p) for name, p in (prices or {}).items()}}
        self.cache: JudgeCache | None = None
        if use_cache:
            self.cache = JudgeCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
        api_key = os.environ.get(api_key_env) or None
        self._endpoint = OpenAIEndpoint(
            base_url,
            api_key,
            timeout_s=timeout_s,
            policy=RetryPolicy(max_retries=max_retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s),
            auth_hint=f"check ${api_key_env}" + ("" if api_key else " (it is not set)"),
            unreachable_hint="Check the judge's endpoint (--judge-base-url / $OPENAI_BASE_URL).",
            logger=log,
        )
        self.base_url = self._endpoint.base_url
        self._preflight = preflight
        self._checked = False
        self._lock = threading.Lock()
        self._ledger = Ledger(model=model)
        self._without_usage = 0

    # -- Judge interface -------------------------------------------------------------------------------------

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        """Judge every request (from the cache where possible); one result per request id.

        Raises :class:`EngineError` when the endpoint rejects the key or is unreachable at the first request;
        every other failure is a failed result.
        """
        seen: set[str] = set()
        for req in requests:
            if req.id in seen:
                raise ValueError(f"judge request ids must be unique; {req.id!r} appears twice")
            seen.add(req.id)

        groups: dict[str, list[JudgeRequest]] = {}  # identical requests share one reply
        for req in requests:
            groups.setdefault(cache_key(self.model, req), []).append(req)

        results: dict[str, JudgeResult] = {}
        todo: list[tuple[str, list[JudgeRequest]]] = []
        for key, group in groups.items():
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is None:
                todo.append((key, group))
                continue
            for req in group:
                results[req.id] = JudgeResult(
                    req.id,
                    hit.text,
                    cached=True,
                    prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens,
                )
        with self._lock:
            self._ledger.calls += len(requests)
            self._ledger.cached += len(results)
        if todo:
            self._check_endpoint()
            self._ask_all(todo, results)
        return {req.id: results[req.id] for req in requests}

    def describe(self) -> dict[str, Any]:
        return redact_obj(
            {
                "judge": "openai",
                "model": self.model,
                "base_url": self.base_url,
                "temperature policy": "per request",
                "cache": str(self.cache.root) if self.cache is not None else None,
                "api_key_env": self.api_key_env,
                "openai_version": openai.__version__,
                "concurrency": self.concurrency,
                "timeout_s": self._endpoint.timeout_s,
                "max_retries": self._endpoint.policy.max_retries,
            }
        )

    def ledger(self) -> Ledger:
        """A snapshot of the calls, tokens and estimated cost so far."""
        with self._lock:
            ledger = replace(self._ledger, notes=list(self._ledger.notes))
            without_usage = self._without_usage
        price = self.prices.get(self.model)
        if price is None:
            ledger.cost_usd = None
            ledger.notes.append(
                f"no price known for model {self.model!r}: cost not estimated (pass prices= to OpenAIJudge)"
            )
        else:
            ledger.cost_usd = (ledger.prompt_tokens * price.input + ledger.completion_tokens * price.output) / 1e6
            ledger.notes.append(
                f"cost estimated at USD {price.input:g} / {price.output:g} per 1M input / output "
                "tokens (published prices, which may change)"
            )
        if without_usage:
            ledger.notes.append(
                f"{without_usage} repl{'y' if without_usage == 1 else 'ies'} came without token "
                "usage: tokens and cost are a lower bound"
            )
        return ledger

    def close(self) -> None:
        self._endpoint.close()

    # -- API requests ----------------------------------------------------------------------------------------

    def _check_endpoint(self) -> None:
        with self._lock:
            if self._checked or not self._preflight:
                return
        self._endpoint.check_model(self.model, "Choose a judge model it serves (--judge-model).")
        with self._lock:
            self._checked = True

    def _ask_all(self, todo: list[tuple[str, list[JudgeRequest]]], results: dict[str, JudgeResult]) -> None:
        from tqdm import tqdm

        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)), thread_name_prefix="openai-judge")
        # disable=None: a bar only on a terminal
        bar = tqdm(
            total=len(todo),
            desc=f"judge {self.model}",
            unit="request",
            leave=False,
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        try:
            futures: dict[Future[ChatReply], tuple[str, list[JudgeRequest]]] = {
                pool.submit(self._ask, group[0], stop): (key, group) for key, group in todo
            }
            for future in as_completed(futures):
                key, group = futures[future]
                bar.update(1)
                try:
                    reply = future.result()
                except (CancelledError, Cancelled):
                    continue
                except RequestFailed as exc:
                    self._record_failure(group, str(exc), results)
                    continue
                # anything else (an authentication failure, a bug) propagates; the finally block stops the rest
                self._record_reply(key, group, reply, results)
        finally:
            stop.set()
            bar.close()
            # Requests still in flight finish on their own within one timeout; their retries stop now.
            pool.shutdown(wait=False, cancel_futures=True)

    def _ask(self, request: JudgeRequest, stop: threading.Event) -> ChatReply:
        if stop.is_set():
            raise Cancelled
        payload = request_payload(request)

        def attempt() -> ChatReply:
            completion = self._endpoint.client.chat.completions.create(model=self.model, **payload)
            reply = parse_chat_completion(completion)
            if reply.text is None:
                raise Retryable(f"malformed response: the reply has no text (finish_reason {reply.finish_reason})")
            return replace(reply, text=self._endpoint.redact(reply.text))

        try:
            return self._endpoint.call(attempt, f"judge request {request.id}", stop, on_retry=self._count_retry)
        except RequestFailed:
            raise  # this judgment failed; the others go on
        except BaseException:
            stop.set()  # an authentication failure stops the batch, before this worker takes the next request
            raise

    def _count_retry(self, _reason: str) -> None:
        with self._lock:
            self._ledger.retries += 1

    def _record_reply(
        self, key: str, group: list[JudgeRequest], reply: ChatReply, results: dict[str, JudgeResult]
    ) -> None:
        assert reply.text is not None
        with self._lock:
            self._ledger.cached += len(group) - 1  # identical requests answered by this one reply
            self._ledger.prompt_tokens += reply.prompt_tokens or 0
            self._ledger.completion_tokens += reply.completion_tokens or 0
            self._without_usage += reply.prompt_tokens is None or reply.completion_tokens is None
        for i, req in enumerate(group):
            results[req.id] = JudgeResult(
                req.id,
                reply.text,
                cached=i > 0,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
        if self.cache is not None:
            try:
                self.cache.put(key, self.model, group[0], reply)
            except OSError as exc:
                log.warning("cannot write the judge cache entry %s: %s", self.cache.path(key), exc)

    def _record_failure(self, group: list[JudgeRequest], error: str, results: dict[str, JudgeResult]) -> None:
        with self._lock:
            self._ledger.failed += len(group)
        for req in group:
            log.warning("judge request %s failed: %s", req.id, error)
            results[req.id] = JudgeResult(req.id, None, error=error)


def _price(model: str, value: Price | Sequence[float] | Mapping[str, float]) -> Price:
    """A :class:`Price` from ``(input, output)`` or ``{"input": ..., "output": ...}`` (USD per 1M tokens)."""
    try:
        if isinstance(value, Mapping):
            return Price(float(value["input"]), float(value["output"]))
        first, second = value
        return Price(float(first), float(second))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"price of {model!r} must be (input, output) or {{'input': ..., 'output': ...}} in USD per 1M tokens"
        ) from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
