"""``evaluate(task, engine, store)``: run a task's pending samples through an engine and score them.

Resumable: finished ids in the run store are skipped. Responses are written in sample order as soon as the
ordered prefix is complete, so a crash loses at most the requests in flight (and the answers that wait for an
earlier one to be written).

Generation streams: the pending requests go to :meth:`~harness.engines.base.Engine.generate_stream`, which draws
them as the engine has room (a vLLM engine keeps a deep queue, the openai engine ``--concurrency`` requests in
flight), so the engine never waits for a batch to drain. Images are decoded ahead of the engine by a small thread
pool, each image once per run while it stays in an :class:`~harness.io.ImageCache` (least recently used out).

A full disk (or quota, read-only file system, permission denied) while writing the run is a
:class:`DiskWriteError` naming the file; an interrupt (Ctrl-C, or SIGTERM as :class:`Terminated`) carries the
invocation's counts so far in ``exc.run_counts``. Either way every finished prediction is kept.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from harness.engines.base import Engine
from harness.errors import EngineError, HarnessError, ImageError
from harness.io import ImageCache
from harness.store import RunStore
from harness.task import Task
from harness.types import Metrics, Request, Response, Sample

log = logging.getLogger(__name__)

MAX_LOGGED_FAILURES = 5  # failures beyond these are summarised in one line (all are in failures.jsonl)
DECODE_WORKERS = min(4, os.cpu_count() or 1)  # threads decoding images ahead of the engine
DECODE_AHEAD = 64  # samples whose images are decoded (or being decoded) before the engine asks for them

#: OSError numbers that mean "the run directory cannot be written" (a user error, not a bug).
DISK_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES") if hasattr(errno, name)
)


class DiskWriteError(HarnessError):
    """A write of the run failed for lack of space, quota or permission; names the file."""

    def __init__(self, exc: OSError, path: str | Path):
        self.path = str(exc.filename or path)
        self.errno = exc.errno
        verb = "cannot access" if exc.errno == errno.EACCES else "cannot write"
        fix = "fix the permissions" if exc.errno in (errno.EACCES, errno.EROFS) else "free some space"
        super().__init__(
            f"{verb} {self.path}: {exc.strerror or exc} (errno {exc.errno}); finished predictions are "
            f"kept; {fix} and rerun the same command to resume"
        )


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn an :data:`DISK_ERRNOS` OSError into a :class:`DiskWriteError` naming the file (``path`` when the
    error does not say which)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise DiskWriteError(exc, path) from exc
        raise


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (``harness run`` exits 143 instead of 130)."""

    signal_name = "SIGTERM"


class _RunState(TypedDict):
    """What :func:`_evaluate` has done so far, for the counts of an interrupted run."""

    resumed: int
    generated: int
    failures: list[dict[str, Any]]


@dataclass
class RunResult:
    task: str
    metrics: Metrics
    n_samples: int
    n_resumed: int
    n_generated: int
    n_failed: int
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.n_generated / self.seconds if self.seconds > 0 else 0.0


def response_from_record(rec: dict[str, Any]) -> Response:
    return Response(
        sample_id=str(rec["id"]),
        text=rec.get("response") or "",
        finish_reason=rec.get("finish_reason") or "stop",
        prompt_tokens=rec.get("prompt_tokens"),
        completion_tokens=rec.get("completion_tokens"),
    )


def build_request(sample: Sample, max_new_tokens: int, images: ImageCache | None = None) -> Request:
    """Decode the sample's images, through ``images`` when given (raises :class:`ImageError` naming the sample)."""
    if images is None:
        decoded = tuple(ref.load(sample.id) for ref in sample.images)
    else:
        decoded = tuple(images.load(ref, sample.id) for ref in sample.images)
    return Request(sample_id=sample.id, prompt=sample.prompt, images=decoded, max_new_tokens=max_new_tokens)


class RequestFeed:
    """The requests of ``samples``, in order, with their images decoded ahead by a thread pool.

    Iterating yields one :class:`Request` per sample whose images decode, and records each yielded sample in
    :attr:`order` (ids handed out and not yet written) and :attr:`prompts`. A sample whose image cannot be
    read goes to ``on_image_error(exc)``; when that returns False the feed ends there and keeps the error in
    :attr:`stopped`. ``workers=0`` decodes in the iterating thread. :meth:`close` abandons the decodes not
    started; it is safe to call more than once.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        budget: Callable[[Sample], int],
        images: ImageCache,
        on_image_error: Callable[[ImageError], bool],
        *,
        workers: int = DECODE_WORKERS,
        ahead: int = DECODE_AHEAD,
    ):
        self._samples = samples
        self._budget = budget
        self._images = images
        self._on_image_error = on_image_error
        self._ahead = max(1, ahead)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="harness-images") if workers > 0 else None
        self._queue: deque[tuple[Sample, Future[Request] | None]] = deque()
        self._next = 0
        self._closed = False
        self.order: deque[str] = deque()
        self.prompts: dict[str, str] = {}
        self.stopped: ImageError | None = None

    def __iter__(self) -> RequestFeed:
        return self

    def _build(self, sample: Sample) -> Request:
        return build_request(sample, self._budget(sample), self._images)

    def _fill(self) -> None:
        while self._next < len(self._samples) and len(self._queue) < self._ahead:
            sample = self._samples[self._next]
            self._next += 1
            # text-only samples and decoding in this thread need no future
            job = self._pool.submit(self._build, sample) if (self._pool and sample.images) else None
            self._queue.append((sample, job))

    def __next__(self) -> Request:
        while not self._closed:
            self._fill()
            if not self._queue:
                break
            sample, job = self._queue.popleft()
            self._fill()
            try:
                request = self._build(sample) if job is None else job.result()
            except ImageError as exc:
                if not self._on_image_error(exc):
                    self.stopped = exc
                    self.close()
                    break
                continue
            self.order.append(request.sample_id)
            self.prompts[request.sample_id] = request.prompt
            return request
        raise StopIteration

    def close(self) -> None:
        self._closed = True
        for _sample, job in self._queue:
            if job is not None:
                job.cancel()
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def evaluate(
    task: Task,
    engine: Engine,
    store: RunStore,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int | None = None,
    on_image_error: str = "skip",
    progress: bool = True,
    judge: Any = None,
) -> RunResult:
    """Generate the pending samples, append them to the store, then score all of them.

    ``max_new_tokens`` overrides the per-sample budget (else ``sample.max_new_tokens`` or the task default).
    ``on_image_error``: ``"skip"`` records the sample as failed and goes on; ``"stop"`` raises.
    """
    started = time.perf_counter()
    state: _RunState = {"resumed": 0, "generated": 0, "failures": []}
    try:
        return _evaluate(task, engine, store, samples, max_new_tokens, on_image_error, progress, judge, started, state)
    except KeyboardInterrupt as exc:
        # An attribute KeyboardInterrupt does not declare; harness.evaluate reads it with getattr.
        vars(exc)["run_counts"] = {
            "seconds": round(time.perf_counter() - started, 3),
            "generated": state["generated"],
            "resumed": state["resumed"],
            "failed": len(state["failures"]),
        }
        raise


def _evaluate(
    task: Task,
    engine: Engine,
    store: RunStore,
    samples: Sequence[Sample],
    max_new_tokens: int | None,
    on_image_error: str,
    progress: bool,
    judge: Any,
    started: float,
    state: _RunState,
) -> RunResult:
    from tqdm import tqdm

    with disk_errors(store.predictions_path):
        finished = store.load_finished()
    for s in samples:
        rec = finished.get(s.id)
        if rec is not None and rec.get("prompt") != s.prompt:
            raise HarnessError(
                f"{store.predictions_path}: sample {s.id} was answered for another prompt ({rec.get('prompt')!r}, now "
                f"{s.prompt!r}); a task option changed the prompts. Use another --output-path, or --overwrite"
            )
    pending = [s for s in samples if s.id not in finished]
    failures: list[dict[str, Any]] = state["failures"]
    state["resumed"] = len(samples) - len(pending)

    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(pending),
        desc=task.name,
        unit="sample",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    with disk_errors(store.predictions_path):
        n_generated = _generate(
            task, engine, store, pending, finished, failures, bar, max_new_tokens, on_image_error, state
        )
    gen_seconds = time.perf_counter() - started

    responses = {sid: response_from_record(rec) for sid, rec in finished.items()}
    task.check_response_lengths(
        {s.id: responses[s.id] for s in samples if s.id in responses}, source=store.predictions_path
    )
    metrics = task.score(samples, responses, judge)
    metrics.counts.setdefault("samples", len(samples))
    metrics.counts["failed"] = sum(1 for s in samples if s.id not in responses)
    with disk_errors(store.dir):
        store.write_failures(failures)
        store.write_metrics(metrics.to_dict(), metrics.records)
    return RunResult(
        task=task.name,
        metrics=metrics,
        n_samples=len(samples),
        n_resumed=len(samples) - len(pending),
        n_generated=n_generated,
        n_failed=len(failures),
        seconds=gen_seconds,
        failures=failures,
    )


def _generate(
    task: Task,
    engine: Engine,
    store: RunStore,
    pending: list[Sample],
    finished: dict[str, dict[str, Any]],
    failures: list[dict[str, Any]],
    bar: Any,
    max_new_tokens: int | None,
    on_image_error: str,
    state: _RunState,
) -> int:
    """Stream ``pending`` through the engine, appending finished records in sample order; the number generated."""
    n_generated = 0

    def budget(s: Sample) -> int:
        return max_new_tokens or s.max_new_tokens or task.default_max_new_tokens

    def image_error(exc: ImageError) -> bool:
        if on_image_error == "stop":
            return False
        if len(failures) < MAX_LOGGED_FAILURES:
            log.warning("%s; skipped (counted as failed)", exc)
        failures.append({"id": exc.sample_id, "error": exc.detail, "kind": "image"})
        bar.update(1)
        return True

    feed = RequestFeed(pending, budget, ImageCache(), image_error)
    order, prompts = feed.order, feed.prompts
    done: dict[str, Response] = {}
    stream = engine.generate_stream(feed)
    try:
        for resp in stream:
            if resp.sample_id not in prompts or resp.sample_id in done:
                raise EngineError(f"engine {engine.name} returned an unexpected response for {resp.sample_id!r}")
            done[resp.sample_id] = resp
            ready = []
            while order and order[0] in done:
                sid = order.popleft()
                ready.append(done.pop(sid).to_record(prompts.pop(sid)))
            if ready:
                store.append(ready)
                for rec in ready:
                    finished[rec["id"]] = rec
                n_generated += len(ready)
                state["generated"] = n_generated
                bar.update(len(ready))
        missing = [sid for sid in order if sid not in done]
        if missing:
            raise EngineError(
                f"engine {engine.name} returned no response for {len(missing)} samples (first: {missing[0]})"
            )
        if feed.stopped is not None:
            raise feed.stopped
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # the engine abandons what it has in flight
        feed.close()
        bar.close()
        store.close()
        if len(failures) > MAX_LOGGED_FAILURES:
            log.warning(
                "%d more samples skipped for unreadable images; all are listed in %s",
                len(failures) - MAX_LOGGED_FAILURES,
                store.dir / "failures.jsonl",
            )
    return n_generated
