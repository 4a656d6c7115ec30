"""The hf engine on the tiny checkpoints: greedy, deterministic, batch-invariant."""

from __future__ import annotations

import pytest

from harness.engines import create_engine
from harness.engines.base import EngineOptions
from harness.engines.hf import HFEngine
from harness.errors import ConfigError
from harness.types import Decoding, Request


@pytest.fixture(scope="module")
def llava(tiny_llava_path):
    with HFEngine(tiny_llava_path, Decoding(), EngineOptions(dtype="float32", device="cpu")) as engine:
        yield engine


@pytest.fixture
def requests(shape_image) -> list[Request]:
    return [
        Request("red", "is there a red circle ?", (shape_image("red"),), 12),
        Request("blue", "describe the image .", (shape_image("blue", "square", 64),), 12),
        Request("green", "what colour is the shape on the left ?", (shape_image("green", "triangle", 40),), 12),
    ]


def test_greedy_output_is_deterministic(llava, requests) -> None:
    first = list(llava.generate(requests))
    again = list(llava.generate(requests))
    assert first == again
    assert [r.sample_id for r in first] == ["red", "blue", "green"]
    for resp in first:
        assert resp.text and resp.text == resp.text.strip()
        assert resp.finish_reason in ("stop", "length")
        assert 0 < resp.completion_tokens <= 12
        assert resp.prompt_tokens > 16  # the 16 image tokens and the template
    assert len({r.text for r in first}) > 1  # the random model does not say the same thing to every image


def test_batch_equals_single_requests(tiny_llava_path, requests) -> None:
    opts = EngineOptions(dtype="float32", device="cpu", batch_size=3)
    with HFEngine(tiny_llava_path, Decoding(), opts) as engine:
        batched = list(engine.generate(requests))
        singles = [resp for req in requests for resp in engine.generate([req])]
    assert batched == singles


def test_stream_draws_batches_and_matches_generate(tiny_llava_path, requests) -> None:
    """generate_stream (what the runner calls) draws batch_size requests at a time from a lazy iterable."""
    opts = EngineOptions(dtype="float32", device="cpu", batch_size=2)
    drawn: list[str] = []

    def feed():
        for r in requests:
            drawn.append(r.sample_id)
            yield r

    with HFEngine(tiny_llava_path, Decoding(), opts) as engine:
        expected = list(engine.generate(requests))
        got = []
        for resp in engine.generate_stream(feed()):
            assert len(drawn) - len(got) <= 2
            got.append(resp)
    assert got == expected


def test_text_only_request(llava, requests) -> None:
    text_only = Request("plain", "how many shapes are there ?", (), 8)
    mixed = list(llava.generate([requests[0], text_only]))
    alone = list(llava.generate([text_only]))
    assert mixed[1] == alone[0]
    assert alone[0].text and alone[0].completion_tokens <= 8


def test_requests_with_different_budgets(llava, requests) -> None:
    short = Request("short", requests[0].prompt, requests[0].images, 3)
    out = {r.sample_id: r for r in llava.generate([requests[0], short, requests[1]])}
    assert set(out) == {"red", "short", "blue"}
    assert out["short"].completion_tokens <= 3
    if out["short"].finish_reason == "length":
        assert out["red"].text.split()[:1] == out["short"].text.split()[:1]


def test_stop_at_end_of_sequence(tiny_llava_path, requests) -> None:
    with HFEngine(tiny_llava_path, Decoding(), EngineOptions(dtype="float32", device="cpu")) as engine:
        engine.eos_ids = frozenset(range(len(engine.processor.tokenizer)))  # any first token ends the answer
        resp = next(iter(engine.generate(requests[:1])))
    assert resp.finish_reason == "stop" and resp.completion_tokens == 1


def test_describe(llava) -> None:
    import transformers

    described = llava.describe()
    assert described["engine"] == "hf"
    assert described["engine_version"] == transformers.__version__
    assert described["template"] == "llava_v1"
    assert described["sampling_params"] == {
        "max_new_tokens": Decoding().max_new_tokens,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "do_sample": False,
        "pad_token_id": llava.processor.tokenizer.pad_token_id,
    }
    assert (described["dtype"], described["device"]) == ("float32", "cpu")


def test_qwen2vl_generates_with_an_image(tiny_qwen2vl_path, shape_image) -> None:
    reqs = [
        Request("q1", "is there a red circle ?", (shape_image("red", size=64),), 8),
        Request("q2", "describe the image .", (shape_image("blue", "square", 100),), 8),
        Request("q3", "how many shapes are there ?", (), 8),
    ]
    engine = create_engine("hf", tiny_qwen2vl_path, Decoding(), EngineOptions(dtype="auto", device="cpu"))
    with engine:
        assert isinstance(engine, HFEngine) and engine.describe()["dtype"] == "float32"
        batched = list(engine.generate(reqs))
        singles = [resp for req in reqs for resp in engine.generate([req])]
    assert batched == singles
    assert all(0 < r.completion_tokens <= 8 and r.finish_reason in ("stop", "length") for r in batched)
    assert any(r.text for r in batched)


def test_bad_dtype(tiny_llava_path) -> None:
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        HFEngine(tiny_llava_path, Decoding(), EngineOptions(dtype="fp8"))
