"""The ``openai`` engine against a scripted local server, and (marked ``vllm``) against a real vLLM server."""

from __future__ import annotations

import base64
import io
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from harness.engines import EngineOptions, create_engine
from harness.engines.openai import OpenAIEngine, encode_png_data_url, public_url
from harness.errors import ConfigError, EngineError
from harness.types import Decoding, Request, Response

try:
    from tests.fake_openai_server import OK, Fail, FakeOpenAIServer, Malformed, Slow, echo_text
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fake_openai_server import OK, Fail, FakeOpenAIServer, Malformed, Slow, echo_text

SECRET = "sk-test-Zq9SECRETkey0123456789"
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=("fake-model", "other-model")) as srv:
        yield srv


def options(base_url: str, **overrides: Any) -> EngineOptions:
    settings: dict[str, Any] = {"base_url": base_url, "api_key": "EMPTY", "timeout_s": 5.0, "max_retries": 3}
    settings.update(overrides)
    return EngineOptions(**settings)


def engine_for(server: FakeOpenAIServer, decoding: Decoding | None = None, **overrides: Any) -> OpenAIEngine:
    return OpenAIEngine("fake-model", decoding or Decoding(), options(server.base_url, **overrides), **FAST)


def image(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Image.Image:
    img = Image.new("RGB", size, color)
    img.putpixel((1, 2), (255 - color[0], 7, 200))
    return img


def request(i: int, n_images: int = 1, max_new_tokens: int = 32) -> Request:
    images = tuple(image((10 * i + k, 40, 90)) for k in range(n_images))
    return Request(f"s{i}", f"Describe picture number {i}.", images, max_new_tokens)


def run(engine: OpenAIEngine, requests: list[Request]) -> dict[str, Response]:
    return {r.sample_id: r for r in engine.generate(requests)}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- success and what is sent --------------------------------------------------------------------------------


def test_replies_and_parameters_sent(server: FakeOpenAIServer) -> None:
    decoding = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=64, seed=77)
    reqs = [request(0), request(1, n_images=2), request(2, n_images=0, max_new_tokens=12)]
    with engine_for(server, decoding, served_model="other-model") as engine:
        out = run(engine, reqs)
    assert sorted(out) == ["s0", "s1", "s2"]
    assert out["s0"].text == "echo[1]: Describe picture number 0."
    assert out["s1"].text == "echo[2]: Describe picture number 1."
    assert out["s2"].text == "echo[0]: Describe picture number 2."
    assert out["s0"].finish_reason == "stop"
    assert out["s0"].prompt_tokens == 5 and out["s0"].completion_tokens == 5

    bodies = {b["messages"][0]["content"][-1]["text"]: b for b in (r.body for r in server.chat_requests)}
    assert len(bodies) == 3
    for req in reqs:
        body = bodies[req.prompt]
        assert body["model"] == "other-model"
        assert body["temperature"] == 0.0
        assert body["top_p"] == 1.0
        assert body["seed"] == 77
        assert body["max_tokens"] == req.max_new_tokens
        assert set(body) == {"model", "messages", "temperature", "top_p", "max_tokens", "seed"}
        (message,) = body["messages"]
        assert message["role"] == "user"
        *image_parts, text_part = message["content"]
        assert text_part == {"type": "text", "text": req.prompt}
        assert len(image_parts) == len(req.images)
        for part, sent in zip(image_parts, req.images):
            assert part["type"] == "image_url"
            url = part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert decoded.format == "PNG"
            assert decoded.convert("RGB").tobytes() == sent.tobytes()  # lossless


def test_describe_matches_what_is_sent_and_has_no_secret(server: FakeOpenAIServer) -> None:
    import openai

    server.api_key = SECRET
    engine = OpenAIEngine("fake-model", Decoding(seed=5), options(server.base_url + "/", api_key=SECRET), **FAST)
    with engine:
        info = engine.describe()
        run(engine, [request(0, max_new_tokens=Decoding().max_new_tokens)])
    assert info["engine"] == "openai"
    assert info["engine_version"] == openai.__version__
    assert info["template"] == "server"
    assert info["served_model"] == "fake-model"
    assert info["base_url"] == server.base_url
    (body,) = [r.body for r in server.chat_requests]
    sent = {k: v for k, v in body.items() if k not in ("model", "messages")}
    assert info["sampling_params"] == sent
    assert SECRET not in repr(info)
    assert SECRET not in repr(engine.options)


def test_public_url_drops_credentials() -> None:
    assert public_url("https://user:pw@example.org:8000/v1/ ") == "https://example.org:8000/v1"


def test_length_finish_reason_is_passed_through(server: FakeOpenAIServer) -> None:
    with engine_for(server) as engine:
        (resp,) = engine.generate([request(0, max_new_tokens=2)])
    assert resp.finish_reason == "length"
    assert resp.text == "echo[1]: Describe"


def test_png_encoding_is_deterministic() -> None:
    assert encode_png_data_url(image((1, 2, 3))) == encode_png_data_url(image((1, 2, 3)))


def test_create_engine_and_environment_defaults(server: FakeOpenAIServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.api_key = SECRET
    with create_engine("openai", "fake-model", Decoding(), EngineOptions()) as engine:
        assert isinstance(engine, OpenAIEngine)
        assert engine.describe()["base_url"] == server.base_url
        (resp,) = engine.generate([request(3)])
    assert resp.text.startswith("echo[1]")
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_empty_batch(server: FakeOpenAIServer) -> None:
    with engine_for(server) as engine:
        assert list(engine.generate([])) == []


def test_bad_options_are_config_errors(server: FakeOpenAIServer) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        engine_for(server, concurrency=0)


# -- retries -------------------------------------------------------------------------------------------------


def test_retries_after_500_and_429(server: FakeOpenAIServer, caplog) -> None:
    server.script(Fail(500), Fail(429), Fail(503))
    caplog.set_level(logging.WARNING, logger="harness.engines.openai")
    with engine_for(server, max_retries=3) as engine:
        (resp,) = engine.generate([request(0)])
    assert resp.text == "echo[1]: Describe picture number 0."
    assert len(server.chat_requests) == 4  # three failures, then the success
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and "sample s0" in retries[0] and "HTTP 500" in retries[0]


def test_retry_after_header_sets_the_delay(server: FakeOpenAIServer) -> None:
    server.script(Fail(429, retry_after=0.3))
    opts = options(server.base_url)
    with OpenAIEngine("fake-model", Decoding(), opts, backoff_s=0.01, backoff_max_s=5.0) as engine:
        start = time.monotonic()
        (resp,) = engine.generate([request(0)])
        elapsed = time.monotonic() - start
    assert resp.text.startswith("echo")
    assert 0.3 <= elapsed < 3


def test_timeout_then_success(server: FakeOpenAIServer) -> None:
    server.script(Slow(2.0))
    with engine_for(server, timeout_s=0.3) as engine:
        start = time.monotonic()
        (resp,) = engine.generate([request(0)])
        elapsed = time.monotonic() - start
    assert resp.text.startswith("echo[1]")
    assert len(server.chat_requests) == 2
    assert elapsed < 1.5


@pytest.mark.parametrize(
    "bad",
    [
        Malformed(),  # announced as JSON, does not parse
        Malformed(body='{"id": "chatcmpl-x", "object": "chat.completion"}'),  # no choices
        Malformed(body='{"choices": [{"index": 0, "finish_reason": "stop"}]}'),  # a choice without message
        Malformed(body="<html>gateway</html>", content_type="text/html"),
    ],
    ids=["invalid-json", "no-choices", "no-message", "html"],
)
def test_malformed_reply_is_retried(server: FakeOpenAIServer, bad: Malformed) -> None:
    server.script(bad)
    with engine_for(server) as engine:
        (resp,) = engine.generate([request(0)])
    assert resp.text.startswith("echo[1]")
    assert len(server.chat_requests) == 2


def test_malformed_replies_exhaust_retries(server: FakeOpenAIServer) -> None:
    server.script(*[Malformed()] * 5)
    with engine_for(server, max_retries=2) as engine:
        with pytest.raises(EngineError) as info:
            list(engine.generate([request(7)]))
    message = str(info.value)
    assert server.base_url in message
    assert "sample s7" in message
    assert "3 attempt(s)" in message
    assert "malformed response" in message
    assert len(server.chat_requests) == 3


def test_client_error_is_not_retried_and_partial_results_are_kept(server: FakeOpenAIServer) -> None:
    server.script(OK(), Fail(400, "too many images"))
    got: list[Response] = []
    with engine_for(server, concurrency=1) as engine:
        with pytest.raises(EngineError, match=r"rejected sample s1: HTTP 400: too many images"):
            for resp in engine.generate([request(0), request(1), request(2)]):
                got.append(resp)
    assert [r.sample_id for r in got] == ["s0"]
    assert len(server.chat_requests) == 2  # no retry of the 400, s2 never sent


# -- authentication and reachability -------------------------------------------------------------------------


def test_auth_failure_at_preflight_hides_the_key(server: FakeOpenAIServer, caplog) -> None:
    server.api_key = "the-right-key"
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(EngineError) as info:
        OpenAIEngine("fake-model", Decoding(), options(server.base_url, api_key=SECRET), **FAST)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert message.startswith(f"authentication failed for {server.base_url}")
    assert "OPENAI_API_KEY" in message and "--api-key" in message
    assert SECRET not in message
    assert len(server.requests) == 1  # no retry
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text


def test_auth_failure_during_generation_stops_at_once(server: FakeOpenAIServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    engine = OpenAIEngine("fake-model", Decoding(), options(server.base_url, api_key=SECRET), preflight=False, **FAST)
    server.script(Fail(401, f"Incorrect API key provided: {SECRET}"))
    with engine, pytest.raises(EngineError, match="authentication failed") as info:
        list(engine.generate([request(0)]))
    assert SECRET not in str(info.value)
    assert len(server.chat_requests) == 1
    assert SECRET not in caplog.text


def test_key_is_redacted_from_retried_errors_and_logs(server: FakeOpenAIServer, caplog) -> None:
    server.api_key = SECRET
    caplog.set_level(logging.DEBUG)
    server.script(*[Fail(500, f"upstream rejected key {SECRET}")] * 3)
    engine = OpenAIEngine("fake-model", Decoding(), options(server.base_url, api_key=SECRET, max_retries=2), **FAST)
    with engine, pytest.raises(EngineError) as info:
        list(engine.generate([request(0)]))
    assert "upstream rejected key ***" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(engine.describe())
    assert SECRET not in caplog.text


def test_unreachable_endpoint_fails_fast() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(EngineError) as info:
        OpenAIEngine("m", Decoding(), options(url), **FAST)
    assert time.monotonic() - start < 2
    assert str(info.value).startswith(f"cannot reach {url}: connection refused")


def test_endpoint_down_during_generation_is_retried() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    engine = OpenAIEngine("m", Decoding(), options(url, max_retries=2), preflight=False, **FAST)
    with engine, pytest.raises(EngineError, match="sample s0: giving up after 3 attempt.*connection refused"):
        list(engine.generate([request(0)]))


def test_unknown_model_lists_the_served_ones(server: FakeOpenAIServer) -> None:
    with pytest.raises(EngineError, match=r"does not serve model 'nope'; it serves: fake-model, other-model"):
        OpenAIEngine("nope", Decoding(), options(server.base_url), **FAST)


def test_server_without_models_route_is_accepted() -> None:
    with FakeOpenAIServer(models_route=False) as srv:
        with OpenAIEngine("anything", Decoding(), options(srv.base_url), **FAST) as engine:
            (resp,) = engine.generate([request(0)])
    assert resp.text.startswith("echo[1]")


# -- concurrency ---------------------------------------------------------------------------------------------


def test_concurrency_bound_is_respected(server: FakeOpenAIServer) -> None:
    server.script(*[OK(delay_s=0.15)] * 10)
    with engine_for(server, concurrency=3) as engine:
        start = time.monotonic()
        out = run(engine, [request(i) for i in range(10)])
        elapsed = time.monotonic() - start
    assert sorted(out) == sorted(f"s{i}" for i in range(10))
    assert all(out[f"s{i}"].text == f"echo[1]: Describe picture number {i}." for i in range(10))
    assert server.max_in_flight == 3
    assert elapsed >= 4 * 0.15  # ceil(10 / 3) waves


def test_echo_helper_matches_the_engine_messages() -> None:
    from harness.engines.openai import build_messages

    assert echo_text({"messages": build_messages(request(4, n_images=3))}) == "echo[3]: Describe picture number 4."


# -- a real vLLM server --------------------------------------------------------------------------------------


def test_serve_module_is_import_safe() -> None:
    """Spawned vLLM processes re-import ``__main__``: importing harness.serve must start nothing."""
    code = "import sys, harness.serve; assert 'vllm' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.vllm
def test_server_that_dies_reports_its_log(tmp_path) -> None:
    pytest.importorskip("vllm")
    from harness.serve import start_vllm_server

    missing = tmp_path / "no-such-model"
    missing.mkdir()
    with pytest.raises(EngineError, match=r"exited with status \d+ before it answered; last lines of"):
        start_vllm_server(missing, timeout_s=300, log_file=tmp_path / "server.log")


# -- retry logs and credentials --------------------------------------------------------------------------------


def test_each_retry_is_logged_with_attempt_and_cause(server: FakeOpenAIServer, caplog) -> None:
    server.script(Fail(500), Slow(2.0), Malformed(body='{"id": "x"}'))
    caplog.set_level(logging.WARNING, logger="harness.engines.openai")
    with engine_for(server, timeout_s=0.3, max_retries=3) as engine:
        (resp,) = engine.generate([request(0)])
    assert resp.text.startswith("echo[1]")
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING] * 3
    messages = [r.getMessage() for r in retries]
    assert "sample s0: attempt 1/4 failed (HTTP 500)" in messages[0]
    assert "sample s0: attempt 2/4 failed (APITimeoutError)" in messages[1]
    assert "sample s0: attempt 3/4 failed (malformed response)" in messages[2]


def test_echoed_credentials_never_reach_responses_or_describe(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(models=("fake-model",), echo_auth=True) as srv:
        url = f"http://evaluser:{SECRET}@127.0.0.1:{srv.port}/v1"
        srv.script(Fail(503, "busy"))
        with OpenAIEngine("fake-model", Decoding(), options(url), **FAST) as engine:
            (resp,) = engine.generate([request(0)])
            info = engine.describe()
        sent = srv.chat_requests[-1].headers["authorization"]
    assert sent.startswith("Basic ") and resp.text.endswith("[Authorization: Basic ***]")
    assert sent.split()[1] not in resp.text
    assert info["base_url"] == srv.base_url
    assert "busy [Authorization: Basic ***]" in caplog.text
    assert SECRET not in caplog.text and sent.split()[1] not in caplog.text
    assert SECRET not in repr(info) + resp.text


def test_describe_hides_secret_query_parameters(server: FakeOpenAIServer) -> None:
    url = f"{server.base_url}?key={SECRET}"
    engine = OpenAIEngine("fake-model", Decoding(), options(url), preflight=False, **FAST)
    with engine:
        assert engine.describe()["base_url"] == f"{server.base_url}?key=***"
