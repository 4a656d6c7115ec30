"""The vllm engine: the same greedy text as the hf engine, token for token, on the tiny LLaVA.

One ``vllm.LLM`` for the session (its start-up takes tens of seconds on a CPU). Tests marked ``vllm`` are
skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from harness.engines.base import EngineOptions
from harness.errors import ConfigError, EngineError
from harness.types import Decoding, Request

requires_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")

MAX_NEW_TOKENS = 12


def _live_children() -> set[int]:
    """Our live descendant processes, leaving out multiprocessing's resource tracker (it lives as long as
    this process) and exited processes not reaped yet."""
    import psutil

    live = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(proc.cmdline()):
                live.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return live


@pytest.fixture(scope="session")
def vllm_llava(tiny_llava_path):
    """A vllm engine on the tiny LLaVA (float32, eager); closing it must end the processes it started."""
    from harness.engines.vllm import VLLMEngine

    before = _live_children()
    opts = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    engine = VLLMEngine(tiny_llava_path, Decoding(), opts)
    started = _live_children() - before
    yield engine
    engine.close()
    assert not (_live_children() & started), "a vLLM process outlived close()"


@pytest.fixture
def requests(shape_image) -> list[Request]:
    return [
        Request("red", "is there a red circle ?", (shape_image("red"),), MAX_NEW_TOKENS),
        Request("blue", "describe the image .", (shape_image("blue", "square", 64),), MAX_NEW_TOKENS),
        Request(
            "green", "is there a green triangle on the left ?", (shape_image("green", "triangle", 40),), MAX_NEW_TOKENS
        ),
        Request("yellow", "what colour is the shape ?", (shape_image("yellow", "square", 32),), MAX_NEW_TOKENS),
        Request("plain", "how many shapes are there ?", (), MAX_NEW_TOKENS),
        Request("short", "is there a red circle ?", (shape_image("red"),), 3),
    ]


@pytest.mark.vllm
@requires_vllm
def test_vllm_matches_hf_token_for_token(vllm_llava, tiny_llava_path, requests) -> None:
    from harness.engines.hf import HFEngine

    with HFEngine(tiny_llava_path, Decoding(), EngineOptions(dtype="float32", device="cpu")) as hf:
        expected = list(hf.generate(requests))
    got = list(vllm_llava.generate(requests))
    assert got == expected  # text, finish reason, prompt and completion token counts
    assert len({r.text for r in got}) > 1
    assert list(vllm_llava.generate(requests)) == got  # greedy decoding is repeatable


@pytest.mark.vllm
@requires_vllm
def test_checkpoint_chat_template_gives_the_same_prompt(vllm_llava, requests) -> None:
    """What `vllm serve` does with a chat request (the checkpoint's template) equals the adapter's prompt,
    once the server is asked to add the tokenizer's special tokens (LLaVA's <s>), as the offline prompt has."""
    from vllm import SamplingParams

    req = requests[0]
    params = SamplingParams(**vllm_llava.sampling_params(req.max_new_tokens))
    offline = vllm_llava.llm.generate([vllm_llava._prompt(req)], params, use_tqdm=False)[0]
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_pil", "image_pil": req.images[0]}, {"type": "text", "text": req.prompt}],
        }
    ]
    chat = vllm_llava.llm.chat(messages, params, use_tqdm=False, tokenization_kwargs={"add_special_tokens": True})[0]
    assert chat.prompt == vllm_llava.family.render_prompt(req.prompt, 1)
    assert chat.prompt_token_ids == offline.prompt_token_ids
    assert chat.outputs[0].text == offline.outputs[0].text


@pytest.mark.vllm
@requires_vllm
def test_describe(vllm_llava) -> None:
    import vllm

    described = vllm_llava.describe()
    assert described["engine"] == "vllm" and described["engine_version"] == vllm.__version__
    assert described["template"] == "llava_v1" and described["dtype"] == "float32"
    assert described["sampling_params"] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_tokens": Decoding().max_new_tokens,
        "seed": Decoding().seed,
        "skip_special_tokens": True,
    }
    llm = described["llm"]
    assert llm["enforce_eager"] is True and llm["limit_mm_per_prompt"] == {"image": 1}
    assert llm["tensor_parallel_size"] == 1 and llm["seed"] == Decoding().seed


@pytest.mark.vllm
@requires_vllm
def test_too_many_images(vllm_llava, shape_image) -> None:
    two = Request("two", "compare .", (shape_image("red"), shape_image("blue")), 4)
    with pytest.raises(EngineError, match="sample two: 2 images, but llava takes at most 1"):
        list(vllm_llava.generate([two]))


@pytest.mark.vllm
@requires_vllm
def test_stream_keeps_a_bounded_queue_and_matches_generate(vllm_llava, requests, monkeypatch) -> None:
    """generate_stream adds requests as others finish (never more than batch_size queued), gives the same
    answers as generate, and closing it early aborts what is queued."""
    import dataclasses

    expected = {r.sample_id: r for r in vllm_llava.generate(requests)}
    monkeypatch.setattr(vllm_llava, "options", dataclasses.replace(vllm_llava.options, batch_size=2))
    drawn: list[str] = []

    def feed():
        for r in requests:
            drawn.append(r.sample_id)
            yield r

    got = {}
    for resp in vllm_llava.generate_stream(feed()):
        assert len(drawn) - len(got) <= 2
        got[resp.sample_id] = resp
    assert got == expected and len(drawn) == len(requests)

    stream = vllm_llava.generate_stream(iter(requests))
    next(stream)
    stream.close()
    assert not vllm_llava.llm.llm_engine.has_unfinished_requests()
    assert {r.sample_id: r for r in vllm_llava.generate_stream(iter(requests))} == expected


@pytest.mark.vllm
@requires_vllm
def test_stream_finishes_what_is_queued_before_a_bad_request(vllm_llava, requests, shape_image) -> None:
    two = Request("two", "compare .", (shape_image("red"), shape_image("blue")), 4)
    got = []
    with pytest.raises(EngineError, match="sample two: 2 images, but llava takes at most 1"):
        for resp in vllm_llava.generate_stream(iter([requests[0], requests[1], two, requests[2]])):
            got.append(resp.sample_id)
    assert sorted(got) == ["blue", "red"]
    assert not vllm_llava.llm.llm_engine.has_unfinished_requests()


# -- without starting vLLM --------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("17-1a2b3c4d", "17"), ("17", "17"), ("cmpl-x", "cmpl-x")])
def test_external_request_id(given, expected) -> None:
    from harness.engines.vllm import _external_id

    assert _external_id(given) == expected


def test_data_parallel_is_refused(tiny_llava_path) -> None:
    from harness.engines.vllm import VLLMEngine

    with pytest.raises(ConfigError, match="data_parallel_size=2.*vllm serve --data-parallel-size"):
        VLLMEngine(tiny_llava_path, Decoding(), EngineOptions(data_parallel_size=2))


@pytest.mark.parametrize(
    ("needed", "pth", "main_is_harness", "user_value", "expected"),
    [
        (False, False, False, None, None),  # torchvision imports anywhere: keep vLLM's engine process
        (True, True, False, None, None),  # the .pth file installs the hook in spawned processes
        (True, False, True, None, None),  # `python -m harness`: spawned processes re-import harness
        (True, False, False, None, "0"),  # nothing would install the hook: engine core in this process
        (True, False, False, "1", "1"),  # never overrides the user
    ],
)
def test_prepare_environment(monkeypatch, needed, pth, main_is_harness, user_value, expected) -> None:
    from harness import _torchvision_compat
    from harness.engines import vllm as engine_module

    monkeypatch.setattr(_torchvision_compat, "needed", lambda: needed)
    monkeypatch.setattr(engine_module, "_hook_in_every_interpreter", lambda: pth)
    monkeypatch.setattr(engine_module, "_main_imports_harness", lambda: main_is_harness)
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_HOST_IP", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(key, raising=False)
    if user_value is not None:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", user_value)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    engine_module.prepare_environment()
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == expected
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    import torch

    if not torch.cuda.is_available():
        assert os.environ["VLLM_HOST_IP"] == "127.0.0.1"


@pytest.mark.vllm
@requires_vllm
def test_three_engines_give_identical_greedy_text(vllm_llava, tiny_llava_path, requests, tmp_path) -> None:
    """hf == vllm (offline) == openai (a real vLLM OpenAI server on 127.0.0.1) on the same prompts."""
    from harness.engines.hf import HFEngine
    from harness.engines.openai import OpenAIEngine
    from harness.models.llava import LlavaFamily
    from harness.serve import start_vllm_server, stop_server

    with HFEngine(tiny_llava_path, Decoding(), EngineOptions(dtype="float32", device="cpu")) as hf:
        expected = {r.sample_id: r for r in hf.generate(requests)}
    offline = {r.sample_id: r for r in vllm_llava.generate(requests)}
    process, base_url = start_vllm_server(
        tiny_llava_path, extra_args=["--dtype", "float32", "--max-model-len", "1024"], log_file=tmp_path / "server.log"
    )
    try:
        opts = EngineOptions(
            base_url=base_url, served_model=tiny_llava_path, extra_body=LlavaFamily.server_request_fields
        )
        with OpenAIEngine(tiny_llava_path, Decoding(), opts) as api:
            served = {r.sample_id: r for r in api.generate(requests)}
    finally:
        stop_server(process)
    assert len({r.text for r in expected.values()}) > 1
    for sid, exp in expected.items():
        assert offline[sid] == exp
        got = served[sid]
        assert (got.text, got.finish_reason, got.prompt_tokens, got.completion_tokens) == (
            exp.text,
            exp.finish_reason,
            exp.prompt_tokens,
            exp.completion_tokens,
        ), sid


@requires_vllm
@pytest.mark.vllm
def test_a_max_model_len_above_the_models_positions_is_a_one_line_error(tiny_llava_path):
    import json
    from pathlib import Path

    from harness.engines.vllm import VLLMEngine

    config = json.loads((Path(tiny_llava_path) / "config.json").read_text())
    limit = (config.get("text_config") or {}).get("max_position_embeddings") or config["max_position_embeddings"]
    with pytest.raises(ConfigError, match=rf"--max-model-len {limit + 1} is above the model's {limit} positions"):
        VLLMEngine(
            tiny_llava_path, Decoding(), EngineOptions(dtype="float32", enforce_eager=True, max_model_len=limit + 1)
        )
