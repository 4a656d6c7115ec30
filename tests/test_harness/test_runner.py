"""The runner with an in-process fake engine and task: ordering, resume, failures, crash safety."""

from collections.abc import Sequence

import pytest
from PIL import Image

from harness.engines.base import Engine, EngineOptions
from harness.errors import EngineError, HarnessError, ImageError
from harness.runner import evaluate
from harness.store import RunStore
from harness.task import Task
from harness.types import Decoding, ImageRef, Metrics, Response, Sample


class EchoEngine(Engine):
    """Answers with the prompt upper-cased and yields each batch in reverse order."""

    name = "echo"

    def __init__(self, batch_size=3, fail_after=None):
        super().__init__("m", Decoding(), EngineOptions(batch_size=batch_size))
        self.calls = []
        self.fail_after = fail_after

    def generate(self, requests):
        self.calls.append([r.sample_id for r in requests])
        for i, r in enumerate(reversed(requests)):
            if self.fail_after is not None and sum(map(len, self.calls)) - len(requests) + i >= self.fail_after:
                raise EngineError("backend died")
            yield Response(r.sample_id, f"{r.prompt.upper()} {len(r.images)}", "stop", 3, 2)

    def describe(self):
        return {"engine": "echo"}


class CountTask(Task):
    name = "count_task"
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


def _png(tmp_path, name="img.png"):
    p = tmp_path / name
    Image.new("RGB", (8, 8), (255, 0, 0)).save(p)
    return str(p)


def _samples(tmp_path, n=7, bad=()):
    good = _png(tmp_path)
    out = []
    for i in range(n):
        ref = ImageRef(path=str(tmp_path / "missing.png")) if i in bad else ImageRef(path=good)
        out.append(Sample(id=f"s{i}", prompt=f"q{i}", images=(ref,)))
    return out


def _store(tmp_path):
    store = RunStore(tmp_path / "run")
    store.open({}, {"x": 1})
    return store


def test_records_written_in_sample_order_even_when_engine_reorders(tmp_path):
    samples = _samples(tmp_path)
    store = _store(tmp_path)
    result = evaluate(CountTask(samples), EchoEngine(), store, samples, progress=False)
    ids = [line.split('"id":"')[1].split('"')[0] for line in store.predictions_path.read_text().splitlines()]
    assert ids == [s.id for s in samples]
    assert result.n_generated == 7 and result.metrics.headline == {"answered": 7}
    first = store.load_finished()["s0"]
    assert first == {
        "id": "s0",
        "prompt": "q0",
        "response": "Q0 1",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }


def test_rerun_resumes_and_is_byte_identical(tmp_path):
    samples = _samples(tmp_path)
    full = _store(tmp_path / "a")
    evaluate(CountTask(samples), EchoEngine(), full, samples, progress=False)

    part = _store(tmp_path / "b")
    with pytest.raises(EngineError):
        evaluate(CountTask(samples), EchoEngine(fail_after=4), part, samples, progress=False)
    kept = part.load_finished()
    assert 0 < len(kept) < 7  # finished work survived the crash
    engine = EchoEngine()
    result = evaluate(CountTask(samples), engine, part, samples, progress=False)
    assert result.n_resumed == len(kept)
    assert sorted(sum(engine.calls, [])) == sorted(s.id for s in samples if s.id not in kept)
    assert part.predictions_path.read_bytes() == full.predictions_path.read_bytes()


def test_unreadable_image_skipped_and_counted(tmp_path):
    samples = _samples(tmp_path, bad={2})
    store = _store(tmp_path)
    result = evaluate(CountTask(samples), EchoEngine(), store, samples, progress=False)
    assert result.metrics.counts["failed"] == 1
    assert result.failures[0]["id"] == "s2" and "missing.png" in result.failures[0]["error"]
    assert "s2" not in store.load_finished()
    assert (store.dir / "failures.jsonl").exists()


def test_unreadable_image_stop(tmp_path):
    samples = _samples(tmp_path, bad={2})
    store = _store(tmp_path)
    with pytest.raises(ImageError, match="sample s2"):
        evaluate(CountTask(samples), EchoEngine(batch_size=1), store, samples, on_image_error="stop", progress=False)
    assert list(store.load_finished()) == ["s0", "s1"]  # finished work kept


def test_corrupt_image_bytes_named(tmp_path):
    p = tmp_path / "corrupt.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ImageError, match="sample 42: cannot read image"):
        ImageRef(path=str(p)).load("42")


def test_max_new_tokens_precedence(tmp_path):
    seen = {}

    class Budget(EchoEngine):
        def generate(self, requests):
            for r in requests:
                seen[r.sample_id] = r.max_new_tokens
                yield Response(r.sample_id, "x", "stop")

    good = _png(tmp_path)
    samples = [Sample("a", "p", (ImageRef(path=good),), max_new_tokens=5), Sample("b", "p", ())]
    evaluate(CountTask(samples), Budget(), _store(tmp_path), samples, progress=False)
    assert seen == {"a": 5, "b": CountTask.default_max_new_tokens}
    evaluate(CountTask(samples), Budget(), _store(tmp_path / "o"), samples, max_new_tokens=9, progress=False)
    assert seen == {"a": 9, "b": 9}


def test_resume_refuses_predictions_made_for_other_prompts(tmp_path):
    samples = _samples(tmp_path, n=3)
    store = _store(tmp_path)
    evaluate(CountTask(samples), EchoEngine(), store, samples, progress=False)
    changed = [Sample(s.id, s.prompt + " Answer with one word.", s.images) for s in samples]
    with pytest.raises(HarnessError, match="sample s0 was answered for another prompt"):
        evaluate(CountTask(changed), EchoEngine(), store, changed, progress=False)


def test_interrupt_carries_counts_and_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    from harness.runner import DiskWriteError

    class Interrupting(EchoEngine):
        def generate(self, requests):
            for resp in super().generate(requests):
                if sum(map(len, self.calls)) > 3:
                    raise KeyboardInterrupt
                yield resp

    samples = _samples(tmp_path)
    with pytest.raises(KeyboardInterrupt) as info:
        evaluate(CountTask(samples), Interrupting(batch_size=3), _store(tmp_path), samples, progress=False)
    assert info.value.run_counts["generated"] == 3 and info.value.run_counts["resumed"] == 0

    store = _store(tmp_path)
    monkeypatch.setattr(RunStore, "sync", lambda self: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(DiskWriteError, match="predictions.jsonl: No space left .*finished predictions are kept"):
        evaluate(CountTask(samples), EchoEngine(), store, samples, progress=False)


def test_overlong_response_refused_before_scoring(tmp_path):
    class Verbose(EchoEngine):
        def generate(self, requests):
            for r in requests:
                yield Response(r.sample_id, "y" * 100_001 if r.sample_id == "s2" else "ok", "stop")

    samples = _samples(tmp_path, n=4)
    store = _store(tmp_path)
    with pytest.raises(HarnessError, match="sample s2: response is 100,001 characters"):
        evaluate(CountTask(samples), Verbose(), store, samples, progress=False)
    assert len(store.predictions_path.read_text().splitlines()) == 4
