"""The runner's streaming generation loop: requests drawn as the engine has room, answers written in sample
order whatever order they complete in, images decoded ahead and once per run, concurrency kept full."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest
from PIL import Image

from harness.engines.base import Engine, EngineOptions
from harness.errors import EngineError, ImageError
from harness.io import ImageCache, OnceCache
from harness.runner import evaluate
from harness.store import RunStore
from harness.task import Task
from harness.types import Decoding, ImageRef, Metrics, Request, Response, Sample

try:
    from tests.fake_openai_server import OK, FakeOpenAIServer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fake_openai_server import OK, FakeOpenAIServer


class ListTask(Task):
    name = "list_task"
    version = "1"
    description = "test task"

    def __init__(self, samples):
        self._samples = samples
        super().__init__()

    def load_samples(self):
        return self._samples

    def score(self, samples: Sequence[Sample], responses, judge=None):
        got = [s for s in samples if s.id in responses]
        return Metrics(self.name, {"answered": len(got)}, counts={"scored": len(got)})


class ScramblingEngine(Engine):
    """Draws up to ``window`` requests, then completes a random one of those drawn, after a small random delay,
    and draws again: answers come out of order. Before each answer it notes how many predictions the run
    store holds and how many answers form a complete prefix of the drawn order."""

    name = "scrambling"

    def __init__(self, store: RunStore | None = None, window=16, seed=0, fail_after=None, max_delay_s=0.002):
        super().__init__("m", Decoding(), EngineOptions(batch_size=2))
        self.store = store
        self.window = window
        self.rng = random.Random(seed)
        self.fail_after = fail_after
        self.max_delay_s = max_delay_s
        self.drawn: list[str] = []
        self.max_queued = 0
        self.checks: list[tuple[int, int]] = []  # (lines in predictions.jsonl, complete prefix) before each answer

    def generate(self, requests):
        raise AssertionError("the runner streams")

    def _lines(self) -> int:
        path = self.store.predictions_path
        return len(path.read_text().splitlines()) if path.exists() else 0

    def generate_stream(self, requests: Iterable[Request]):
        it = iter(requests)
        queued: list[Request] = []
        answered: set[str] = set()
        exhausted = False
        n = 0
        while True:
            while not exhausted and len(queued) < self.window:
                req = next(it, None)
                if req is None:
                    exhausted = True
                else:
                    queued.append(req)
                    self.drawn.append(req.sample_id)
            self.max_queued = max(self.max_queued, len(queued))
            if not queued:
                return
            req = queued.pop(self.rng.randrange(len(queued)))
            time.sleep(self.rng.uniform(0, self.max_delay_s))
            if self.fail_after is not None and n >= self.fail_after:
                raise EngineError("backend died")
            if self.store is not None:
                prefix = 0
                while prefix < len(self.drawn) and self.drawn[prefix] in answered:
                    prefix += 1
                self.checks.append((self._lines(), prefix))
            answered.add(req.sample_id)
            n += 1
            yield Response(req.sample_id, f"{req.prompt.upper()} {len(req.images)}", "stop", 3, 2)

    def describe(self):
        return {"engine": self.name}


def _image_files(tmp_path, n):
    paths = []
    for k in range(n):
        p = tmp_path / f"img{k}.png"
        Image.new("RGB", (16, 12), (20 * k, 100, 200)).save(p)
        paths.append(str(p))
    return paths


def _samples(tmp_path, n=60, n_images=6, bad=()):
    paths = _image_files(tmp_path, n_images)
    out = []
    for i in range(n):
        ref = ImageRef(path=str(tmp_path / "missing.png")) if i in bad else ImageRef(path=paths[i % n_images])
        out.append(Sample(id=f"s{i}", prompt=f"q{i}", images=(ref,)))
    return out


def _store(path):
    store = RunStore(path)
    store.open({}, {"x": 1})
    return store


def _ids(store):
    return [line.split('"id":"')[1].split('"')[0] for line in store.predictions_path.read_text().splitlines()]


# -- ordering and crash safety ----------------------------------------------------------------------------------


def test_out_of_order_completions_are_written_in_sample_order_as_the_prefix_completes(tmp_path):
    samples = _samples(tmp_path, n=80)
    store = _store(tmp_path / "run")
    engine = ScramblingEngine(store, window=16)
    result = evaluate(ListTask(samples), engine, store, samples, progress=False)
    assert result.n_generated == 80
    assert _ids(store) == [s.id for s in samples]
    assert engine.max_queued == 16  # drawn far beyond the batch size (2): a stream, not chunks
    assert engine.drawn[:16] == [f"s{i}" for i in range(16)]
    # before each answer, exactly the complete prefix of earlier answers is on disk (flushed as it completes)
    assert [lines for lines, _ in engine.checks] == [prefix for _, prefix in engine.checks]
    assert any(prefix < n for n, (_, prefix) in enumerate(engine.checks))  # answers did come out of order
    assert store.load_finished()["s5"]["response"] == "Q5 1"


def test_crash_mid_stream_keeps_the_ordered_prefix_and_resumes_byte_identical(tmp_path):
    samples = _samples(tmp_path, n=40)
    full = _store(tmp_path / "a")
    evaluate(ListTask(samples), ScramblingEngine(seed=1), full, samples, progress=False)

    part = _store(tmp_path / "b")
    with pytest.raises(EngineError, match="backend died"):
        evaluate(ListTask(samples), ScramblingEngine(window=4, seed=2, fail_after=25), part, samples, progress=False)
    kept = list(part.load_finished())
    assert 0 < len(kept) < 25
    assert kept == [s.id for s in samples[: len(kept)]]  # a prefix, in order: nothing after a gap was written
    again = ScramblingEngine(seed=3)
    result = evaluate(ListTask(samples), again, part, samples, progress=False)
    assert result.n_resumed == len(kept)
    assert sorted(again.drawn) == sorted(s.id for s in samples[len(kept) :])
    assert part.predictions_path.read_bytes() == full.predictions_path.read_bytes()


def test_interrupt_mid_stream_closes_the_engine_stream(tmp_path):
    closed = threading.Event()

    class Interrupting(ScramblingEngine):
        def generate_stream(self, requests):
            try:
                for i, resp in enumerate(super().generate_stream(requests)):
                    if i == 10:
                        raise KeyboardInterrupt
                    yield resp
            finally:
                closed.set()

    samples = _samples(tmp_path, n=30)
    store = _store(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt) as info:
        evaluate(ListTask(samples), Interrupting(window=4), store, samples, progress=False)
    assert closed.is_set()
    kept = list(store.load_finished())
    assert info.value.run_counts["generated"] == len(kept) <= 10
    assert kept == [s.id for s in samples[: len(kept)]]


def test_image_error_stop_finishes_the_requests_already_drawn(tmp_path):
    samples = _samples(tmp_path, n=12, bad={5})
    store = _store(tmp_path / "run")
    engine = ScramblingEngine(window=64)  # draws everything before it answers anything
    with pytest.raises(ImageError, match="sample s5"):
        evaluate(ListTask(samples), engine, store, samples, on_image_error="stop", progress=False)
    assert engine.drawn == ["s0", "s1", "s2", "s3", "s4"]
    assert list(store.load_finished()) == ["s0", "s1", "s2", "s3", "s4"]


def test_image_error_skip_in_a_stream(tmp_path):
    samples = _samples(tmp_path, n=20, bad={3, 11})
    store = _store(tmp_path / "run")
    result = evaluate(ListTask(samples), ScramblingEngine(), store, samples, progress=False)
    assert [f["id"] for f in result.failures] == ["s3", "s11"]
    assert _ids(store) == [s.id for s in samples if s.id not in ("s3", "s11")]


def test_missing_and_unexpected_answers_are_engine_errors(tmp_path):
    class Dropping(ScramblingEngine):
        def generate_stream(self, requests):
            for resp in super().generate_stream(requests):
                if resp.sample_id != "s3":
                    yield resp

    class Inventing(ScramblingEngine):
        def generate_stream(self, requests):
            yield from super().generate_stream(requests)
            yield Response("s0", "again", "stop")

    samples = _samples(tmp_path, n=8)
    with pytest.raises(EngineError, match=r"no response for 1 samples \(first: s3\)"):
        evaluate(ListTask(samples), Dropping(), _store(tmp_path / "a"), samples, progress=False)
    with pytest.raises(EngineError, match="unexpected response for 's0'"):
        evaluate(ListTask(samples), Inventing(), _store(tmp_path / "b"), samples, progress=False)


# -- images -----------------------------------------------------------------------------------------------------


@pytest.fixture
def counted_loads(monkeypatch):
    """Counts ``ImageRef.load`` calls by reference (slowed down, so decodes of one image would overlap) and
    records the threads they ran in."""
    counts: Counter = Counter()
    threads: set[str] = set()
    lock = threading.Lock()
    original = ImageRef.load

    def load(self, sample_id):
        with lock:
            counts[self] += 1
            threads.add(threading.current_thread().name)
        time.sleep(0.01)
        return original(self, sample_id)

    monkeypatch.setattr(ImageRef, "load", load)
    return counts, threads


def test_each_unique_image_is_decoded_once_per_run_off_the_main_thread(tmp_path, counted_loads):
    counts, threads = counted_loads
    samples = _samples(tmp_path, n=90, n_images=6)
    blob = ImageRef(data=(tmp_path / "img0.png").read_bytes())  # the same picture, embedded in two samples
    samples += [Sample("e1", "embedded", (blob,)), Sample("e2", "embedded", (ImageRef(data=blob.data),))]
    store = _store(tmp_path / "run")
    result = evaluate(ListTask(samples), ScramblingEngine(), store, samples, progress=False)
    assert result.n_generated == 92
    assert len(counts) == 7 and set(counts.values()) == {1}
    assert threading.main_thread().name not in threads
    assert all(name.startswith("harness-images") for name in threads)


def test_engines_receive_the_same_decoded_image_object(tmp_path):
    seen: dict[str, list[int]] = {}

    class Recording(ScramblingEngine):
        def generate_stream(self, requests):
            def record(reqs):
                for r in reqs:
                    seen.setdefault(r.images[0].size.__repr__() + r.images[0].getpixel((0, 0)).__repr__(), []).append(
                        id(r.images[0])
                    )
                    yield r

            yield from super().generate_stream(record(requests))

    samples = _samples(tmp_path, n=30, n_images=3)
    evaluate(ListTask(samples), Recording(), _store(tmp_path / "run"), samples, progress=False)
    assert len(seen) == 3 and all(len(set(ids)) == 1 for ids in seen.values())


def test_image_cache_is_bounded_and_does_not_keep_failures(tmp_path):
    paths = _image_files(tmp_path, 3)
    refs = [ImageRef(path=p) for p in paths]
    cache = ImageCache(max_images=2)
    a = cache.load(refs[0], "x")
    assert cache.load(refs[0], "y") is a and cache.decoded == 1 and cache.hits == 1
    cache.load(refs[1], "x")
    cache.load(refs[2], "x")  # evicts refs[0], the least recently used
    assert len(cache) == 2 and cache.decoded == 3
    cache.load(refs[0], "x")
    assert cache.decoded == 4

    by_bytes = ImageCache(max_images=10, max_bytes=16 * 12 * 3 * 2)  # room for two 16x12 RGB images
    for ref in refs:
        by_bytes.load(ref, "x")
    assert len(by_bytes) == 2

    missing = ImageRef(path=str(tmp_path / "nope.png"))
    with pytest.raises(ImageError, match="sample a: cannot read image: file not found"):
        cache.load(missing, "a")
    with pytest.raises(ImageError, match="sample b: cannot read image: file not found"):
        cache.load(missing, "b")  # tried again, and named after the sample that asked


def test_once_cache_computes_once_for_concurrent_callers():
    cache: OnceCache[str, int] = OnceCache(8)
    calls = []
    gate = threading.Event()

    def compute():
        calls.append(1)
        gate.wait(2)
        return 42

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", compute))) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == [42] * 5 and len(calls) == 1


# -- the openai engine ------------------------------------------------------------------------------------------


def _server() -> FakeOpenAIServer:
    """A fake server whose listening socket queues enough connections for a hundred clients connecting at once
    (the standard library's HTTP server queues 5; the rest would be reset), and that sends its replies without
    Nagle's delay (headers and body go in two writes: each reply would wait ~40 ms for the client's ACK)."""
    server = FakeOpenAIServer()
    server._httpd.socket.listen(1024)
    server._httpd.RequestHandlerClass.disable_nagle_algorithm = True
    return server


def _openai_engine(server, **overrides):
    from harness.engines.openai import OpenAIEngine

    settings = {"base_url": server.base_url, "api_key": "EMPTY", "timeout_s": 10.0, "max_retries": 1}
    settings.update(overrides)
    return OpenAIEngine("fake-model", Decoding(), EngineOptions(**settings), backoff_s=0.01, backoff_max_s=0.05)


@pytest.mark.parametrize("concurrency", [96, None])
def test_runner_keeps_concurrency_requests_in_flight(tmp_path, concurrency):
    """--concurrency is reached through the runner (not capped by a chunk of 64); the default suits a vLLM
    server."""
    n = 220
    samples = _samples(tmp_path, n=n, n_images=11)
    store = _store(tmp_path / "run")
    with _server() as server:
        expected = concurrency or 64
        server.always("q", OK(delay_s=0.05, hold_until_in_flight=expected))
        options = {} if concurrency is None else {"concurrency": concurrency}
        with _openai_engine(server, **options) as engine:
            assert engine.concurrency == expected
            result = evaluate(ListTask(samples), engine, store, samples, progress=False)
        assert server.max_in_flight == expected
        assert len(server.chat_requests) == n
    assert result.n_generated == n
    assert _ids(store) == [s.id for s in samples]
    assert store.load_finished()["s7"]["response"] == "echo[1]: q7"


def test_a_slow_request_does_not_hold_back_the_others(tmp_path):
    """Requests flow continuously: while one request takes long, the other slots go on with the requests after
    it (handed over in batches of 64, those would wait for it)."""
    samples = _samples(tmp_path, n=200, n_images=4)
    store = _store(tmp_path / "run")
    received_meanwhile = []

    def watch(server):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(
                "q63" in (r.body or {}).get("messages", [{}])[0].get("content", [{}])[-1].get("text", "")
                for r in server.chat_requests
            ):
                time.sleep(1.0)  # the middle of the slow request
                received_meanwhile.append(len(server.chat_requests))
                return
            time.sleep(0.01)

    with _server() as server:
        server.always("q63", OK(delay_s=2.0))
        server.always("q", OK(delay_s=0.01))
        watcher = threading.Thread(target=watch, args=(server,), daemon=True)
        watcher.start()
        with _openai_engine(server, concurrency=4) as engine:
            evaluate(ListTask(samples), engine, store, samples, progress=False)
        watcher.join(5)
    assert received_meanwhile and received_meanwhile[0] > 64 + 20
    assert _ids(store) == [s.id for s in samples]


def test_openai_engine_encodes_each_image_once(monkeypatch):
    from harness.engines import openai as openai_engine

    encoded = Counter()
    original = openai_engine.encode_png_data_url

    def counting(image):
        encoded[id(image)] += 1
        time.sleep(0.01)
        return original(image)

    monkeypatch.setattr(openai_engine, "encode_png_data_url", counting)
    images = [Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(3)]
    requests = [Request(f"s{i}", f"q{i}", (images[i % 3],), 8) for i in range(30)]
    with _server() as server, _openai_engine(server, concurrency=8) as engine:
        out = {r.sample_id: r for r in engine.generate_stream(iter(requests))}
    assert len(out) == 30 and out["s4"].text == "echo[1]: q4"
    assert sorted(encoded.values()) == [1, 1, 1]


def test_openai_concurrency_beyond_the_connection_pool_is_refused():
    from harness.engines.openai import MAX_CONCURRENCY
    from harness.errors import ConfigError

    with _server() as server, pytest.raises(ConfigError, match=f"concurrency {MAX_CONCURRENCY + 1}"):
        _openai_engine(server, concurrency=MAX_CONCURRENCY + 1)


def test_default_stream_draws_batches_for_batch_engines(tmp_path):
    calls = []

    class Batches(Engine):
        name = "batches"

        def generate(self, requests):
            calls.append(len(requests))
            for r in requests:
                yield Response(r.sample_id, "x", "stop")

        def describe(self):
            return {}

    engine = Batches("m", Decoding(), EngineOptions(batch_size=4))
    out = list(engine.generate_stream(Request(f"s{i}", "p", (), 4) for i in range(10)))
    assert [r.sample_id for r in out] == [f"s{i}" for i in range(10)]
    assert calls == [4, 4, 2]
