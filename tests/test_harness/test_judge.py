"""The LLM judge: :class:`OpenAIJudge` against a scripted local OpenAI-compatible server, and :class:`ReplayJudge`."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError, DataError, EngineError
from harness.judge import JudgeRequest, JudgeResult, ReplayJudge
from harness.judge_openai import PRICES_PER_1M, OpenAIJudge, cache_key, default_cache_dir

try:
    from tests.fake_openai_server import OK, Fail, FakeOpenAIServer, Malformed, Slow, echo_text
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fake_openai_server import OK, Fail, FakeOpenAIServer, Malformed, Slow, echo_text

SECRET = "sk-test-Judge9SECRETkey0123456789"
MODEL = "gpt-4o-mini"
FAST = {"backoff_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5.0, "max_retries": 3, "progress": False}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=(MODEL, "judge-x")) as srv:
        yield srv


def make_judge(server: FakeOpenAIServer, cache_dir: Path | None, model: str = MODEL, **overrides: Any) -> OpenAIJudge:
    settings: dict[str, Any] = {**FAST, "base_url": server.base_url}
    if cache_dir is None:
        settings["use_cache"] = False
    else:
        settings["cache_dir"] = cache_dir
    settings.update(overrides)
    return OpenAIJudge(model, **settings)


def req(i: int | str, text: str | None = None, temperature: float = 0.0, max_tokens: int | None = None) -> JudgeRequest:
    messages = (
        {"role": "system", "content": "You are a careful grader."},
        {"role": "user", "content": text if text is not None else f"Rate answer number {i}."},
    )
    return JudgeRequest(f"q{i}", messages, temperature, max_tokens)


def expected_text(request: JudgeRequest) -> str:
    return echo_text({"messages": list(request.messages)})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


# -- replies, parameters, description ------------------------------------------------------------------------


def test_replies_by_id_and_parameters_sent(server: FakeOpenAIServer, tmp_path: Path) -> None:
    reqs = [req(0), req(1, temperature=0.2), req(2, max_tokens=3)]
    with make_judge(server, tmp_path) as judge:
        out = judge.judge(reqs)
    assert list(out) == ["q0", "q1", "q2"]
    assert out["q0"] == JudgeResult("q0", "echo[0]: Rate answer number 0.", None, False, 5, 5)
    assert out["q1"].text == "echo[0]: Rate answer number 1."
    assert out["q2"].text == "echo[0]: Rate answer"  # max_tokens=3 words on the fake server
    assert not any(r.failed or r.cached for r in out.values())

    bodies = {b["messages"][-1]["content"]: b for b in (r.body for r in server.chat_requests)}
    assert len(bodies) == 3
    for r in reqs:
        body = bodies[r.messages[-1]["content"]]
        assert body["model"] == MODEL
        assert body["messages"] == list(r.messages)
        assert body["temperature"] == r.temperature and isinstance(body["temperature"], float)
        expected_keys = {"model", "messages", "temperature"} | ({"max_tokens"} if r.max_tokens is not None else set())
        assert set(body) == expected_keys
    assert bodies["Rate answer number 2."]["max_tokens"] == 3


def test_empty_batch_makes_no_request(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with make_judge(server, tmp_path) as judge:
        assert judge.judge([]) == {}
    assert server.requests == []


def test_duplicate_ids_are_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with make_judge(server, tmp_path) as judge, pytest.raises(ValueError, match="'q1' appears twice"):
        judge.judge([req(1), req(1)])


def test_describe(server: FakeOpenAIServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    judge = OpenAIJudge(MODEL, base_url=f"http://user:pw-{SECRET}@127.0.0.1:{server.port}/v1/", cache_dir=tmp_path)
    info = judge.describe()
    judge.close()
    assert info["judge"] == "openai"
    assert info["model"] == MODEL
    assert info["base_url"] == server.base_url
    assert info["temperature policy"] == "per request"
    assert info["cache"] == str(tmp_path)
    assert info["api_key_env"] == "OPENAI_API_KEY"
    assert SECRET not in json.dumps(info) and "pw-" not in json.dumps(info)
    assert make_judge(server, None).describe()["cache"] is None


def test_default_cache_dir_follows_harness_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "judge"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    judge = OpenAIJudge(MODEL, preflight=False)
    assert judge.describe()["cache"] == str(tmp_path / "judge")
    assert judge.describe()["base_url"] == "http://127.0.0.1:9/v1"
    judge.close()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        OpenAIJudge(MODEL, concurrency=0)
    with pytest.raises(ConfigError) as info:
        OpenAIJudge(MODEL, api_key_env=SECRET)  # a key passed where the variable's name belongs
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="price of 'x'"):
        OpenAIJudge(MODEL, prices={"x": (1.0,)})


# -- cache ---------------------------------------------------------------------------------------------------


def test_cache_hit_on_second_call_and_across_instances(server: FakeOpenAIServer, tmp_path: Path) -> None:
    reqs = [req(i) for i in range(3)]
    with make_judge(server, tmp_path) as judge:
        first = judge.judge(reqs)
        n_sent = len(server.requests)
        second = judge.judge(reqs)
        assert len(server.requests) == n_sent  # no second request, not even /models
        ledger = judge.ledger()
    assert all(second[k].cached and second[k].text == first[k].text for k in first)
    assert second["q0"].prompt_tokens == first["q0"].prompt_tokens
    assert (ledger.calls, ledger.cached, ledger.failed) == (6, 3, 0)
    assert ledger.prompt_tokens == sum(r.prompt_tokens for r in first.values())  # cached replies cost nothing

    # a new instance, even behind another URL, answers from the same cache and sends nothing
    with FakeOpenAIServer(models=(MODEL,)) as other:
        with make_judge(other, tmp_path) as fresh:
            third = fresh.judge(list(reversed(reqs)))
            fresh_ledger = fresh.ledger()
        assert other.requests == []
    assert {k: r.text for k, r in third.items()} == {k: r.text for k, r in first.items()}
    assert all(r.cached for r in third.values())
    assert (fresh_ledger.calls, fresh_ledger.cached, fresh_ledger.prompt_tokens) == (3, 3, 0)
    assert fresh_ledger.cost_usd == 0.0


def test_cache_file_format(server: FakeOpenAIServer, tmp_path: Path) -> None:
    r = req(7, temperature=0.2, max_tokens=40)
    with make_judge(server, tmp_path) as judge:
        (result,) = judge.judge([r]).values()
    key = cache_key(MODEL, r)
    (path,) = cache_files(tmp_path)
    assert path == tmp_path / key[:2] / f"{key}.json"
    entry = json.loads(path.read_text())
    assert entry["key"] == key and entry["model"] == MODEL and entry["format"] == 1
    assert entry["request"] == {"messages": list(r.messages), "temperature": 0.2, "max_tokens": 40}
    assert entry["text"] == result.text
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (result.prompt_tokens, result.completion_tokens)
    assert entry["finish_reason"] == "stop"


def test_cache_key_covers_the_request_not_its_id() -> None:
    base = req(1)
    assert cache_key(MODEL, base) == cache_key(MODEL, JudgeRequest("other-id", base.messages, 0.0, None))
    assert cache_key(MODEL, base) == cache_key(MODEL, JudgeRequest("q1", base.messages, 0, None))  # 0 == 0.0
    assert cache_key(MODEL, base) != cache_key("gpt-4o", base)
    assert cache_key(MODEL, base) != cache_key(MODEL, req(1, temperature=0.2))
    assert cache_key(MODEL, base) != cache_key(MODEL, req(1, max_tokens=10))
    assert cache_key(MODEL, base) != cache_key(MODEL, req(1, text="Rate answer number 1.!"))


def test_unreadable_cache_entry_is_a_miss(server: FakeOpenAIServer, tmp_path: Path, caplog) -> None:
    r = req(1)
    with make_judge(server, tmp_path) as judge:
        judge.judge([r])
        (path,) = cache_files(tmp_path)
        path.write_text("{ truncated")
        with caplog.at_level(logging.WARNING, logger="harness.judge_openai"):
            out = judge.judge([r])
    assert not out["q1"].cached and out["q1"].text == expected_text(r)
    assert "unreadable" in caplog.text
    assert json.loads(path.read_text())["text"] == expected_text(r)  # rewritten


def test_no_cache_reads_and_writes_nothing(server: FakeOpenAIServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    with make_judge(server, None) as judge:
        judge.judge([req(1)])
        judge.judge([req(1)])
        assert judge.ledger().cached == 0
    assert len(server.chat_requests) == 2
    assert list(tmp_path.iterdir()) == []


def test_identical_requests_share_one_call(server: FakeOpenAIServer, tmp_path: Path) -> None:
    messages = req(1, temperature=0.2).messages
    reqs = [JudgeRequest("a", messages, 0.2), JudgeRequest("b", messages, 0.2), req(2)]
    with make_judge(server, tmp_path) as judge:
        out = judge.judge(reqs)
        ledger = judge.ledger()
    assert len(server.chat_requests) == 2
    assert out["a"].text == out["b"].text
    assert [out["a"].cached, out["b"].cached] == [False, True]
    assert (ledger.calls, ledger.cached) == (3, 1)


# -- failures and retries ------------------------------------------------------------------------------------


def test_failure_after_retries_fails_closed(server: FakeOpenAIServer, tmp_path: Path, caplog) -> None:
    server.always("answer number 2.", Fail(503, "overloaded"))
    reqs = [req(i) for i in range(4)]
    caplog.set_level(logging.WARNING, logger="harness.judge_openai")
    with make_judge(server, tmp_path, max_retries=2, concurrency=2) as judge:
        out = judge.judge(reqs)
        ledger = judge.ledger()
    assert sorted(out) == ["q0", "q1", "q2", "q3"]
    bad = out["q2"]
    assert bad.failed and bad.text is None and not bad.cached
    assert "judge request q2: giving up after 3 attempt(s)" in bad.error and "HTTP 503: overloaded" in bad.error
    assert all(out[f"q{i}"].text == expected_text(reqs[i]) for i in (0, 1, 3))
    assert (ledger.calls, ledger.failed, ledger.retries) == (4, 1, 2)
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("judge request q2 failed")]
    assert len(failures) == 1 and caplog.records[-1].levelno == logging.WARNING
    # not cached: the failed judgment is asked again on the next run, the others come from the cache
    assert len(cache_files(tmp_path)) == 3
    n_before = len(server.chat_requests)
    with make_judge(server, tmp_path, max_retries=0) as judge:
        again = judge.judge(reqs)
    assert len(server.chat_requests) == n_before + 1
    assert again["q2"].failed and all(again[k].cached for k in ("q0", "q1", "q3"))


def test_500_then_success_is_retried(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(Fail(500), Fail(429, retry_after=0.01))
    with make_judge(server, tmp_path) as judge:
        (result,) = judge.judge([req(1)]).values()
        ledger = judge.ledger()
    assert result.text == "echo[0]: Rate answer number 1." and not result.failed
    assert len(server.chat_requests) == 3
    assert (ledger.calls, ledger.failed, ledger.retries) == (1, 0, 2)


def test_timeout_then_success(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(Slow(2.0))
    with make_judge(server, tmp_path, timeout_s=0.3) as judge:
        start = time.monotonic()
        (result,) = judge.judge([req(1)]).values()
        elapsed = time.monotonic() - start
    assert result.text == "echo[0]: Rate answer number 1."
    assert len(server.chat_requests) == 2
    assert elapsed < 1.5


@pytest.mark.parametrize(
    "bad",
    [Malformed(), Malformed(body='{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}')],
    ids=["invalid-json", "no-text"],
)
def test_malformed_reply_is_retried(server: FakeOpenAIServer, tmp_path: Path, bad: Malformed) -> None:
    server.script(bad)
    with make_judge(server, tmp_path) as judge:
        (result,) = judge.judge([req(1)]).values()
    assert result.text == "echo[0]: Rate answer number 1."
    assert len(server.chat_requests) == 2


def test_rejected_request_fails_without_retry(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.always("answer number 1.", Fail(400, "context length exceeded"))
    with make_judge(server, tmp_path) as judge:
        out = judge.judge([req(0), req(1)])
        assert judge.ledger().failed == 1
    assert out["q1"].failed and "rejected judge request q1: HTTP 400: context length exceeded" in out["q1"].error
    assert out["q0"].text == expected_text(req(0))
    assert len(server.chat_requests) == 2
    assert len(cache_files(tmp_path)) == 1


def test_auth_failure_raises_without_the_key(server: FakeOpenAIServer, tmp_path: Path, monkeypatch, caplog) -> None:
    server.api_key = "the-right-key"
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    judge = make_judge(server, tmp_path, api_key_env="JUDGE_KEY")
    start = time.monotonic()
    with judge, pytest.raises(EngineError) as info:
        judge.judge([req(i) for i in range(3)])
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert message.startswith(f"authentication failed for {server.base_url} (HTTP 401)")
    assert "$JUDGE_KEY" in message and "not set" not in message
    assert SECRET not in message and SECRET not in caplog.text
    assert len(server.requests) == 1  # the preflight; no retry, no judgment sent
    assert cache_files(tmp_path) == []


def test_auth_failure_during_judging_stops_at_once(server: FakeOpenAIServer, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(Fail(401, f"Incorrect API key provided: {SECRET}"))
    expected = r"authentication failed.*check \$OPENAI_API_KEY \(it is not set\)"
    judge = make_judge(server, tmp_path, preflight=False, concurrency=1)
    with judge, pytest.raises(EngineError, match=expected):
        judge.judge([req(i) for i in range(5)])
    assert len(server.chat_requests) == 1
    assert SECRET not in caplog.text


def test_key_never_leaks(server: FakeOpenAIServer, tmp_path: Path, monkeypatch, caplog) -> None:
    server.api_key = SECRET
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server.always("answer number 0.", Fail(500, f"upstream rejected key {SECRET}"))
    server.script(Fail(503, f"try again, {SECRET}"))
    with make_judge(server, tmp_path, max_retries=2, concurrency=1) as judge:
        out = judge.judge([req(0), req(1), req(2)])
        info, ledger = judge.describe(), judge.ledger()
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"  # sent, and only there
    assert out["q0"].failed and "upstream rejected key ***" in out["q0"].error
    assert out["q1"].text and out["q2"].text
    assert SECRET not in caplog.text
    assert "***" in caplog.text  # the retried errors were logged, redacted
    assert SECRET not in json.dumps(info) + json.dumps(ledger.to_dict()) + repr(out)
    assert len(cache_files(tmp_path)) == 2
    assert all(SECRET not in p.read_text() for p in cache_files(tmp_path))


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    judge = OpenAIJudge(MODEL, base_url=url, cache_dir=tmp_path, **FAST)
    start = time.monotonic()
    with judge, pytest.raises(EngineError, match=rf"^cannot reach {url}: connection refused\. Check the judge"):
        judge.judge([req(1)])
    assert time.monotonic() - start < 2


def test_unserved_model_is_reported_before_judging(server: FakeOpenAIServer, tmp_path: Path) -> None:
    expected = r"does not serve model 'gpt-4-0314'; it serves: gpt-4o-mini, judge-x"
    with make_judge(server, tmp_path, model="gpt-4-0314") as judge, pytest.raises(EngineError, match=expected):
        judge.judge([req(1)])
    assert server.chat_requests == []


# -- concurrency ---------------------------------------------------------------------------------------------


def test_concurrency_bound_is_respected(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(*[OK(delay_s=0.1)] * 9)
    with make_judge(server, tmp_path, concurrency=3) as judge:
        out = judge.judge([req(i) for i in range(9)])
    assert all(out[f"q{i}"].text == f"echo[0]: Rate answer number {i}." for i in range(9))
    assert server.max_in_flight == 3


# -- ledger --------------------------------------------------------------------------------------------------


def test_ledger_tokens_and_cost_for_a_known_model(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with make_judge(server, tmp_path) as judge:
        out = judge.judge([req(i, max_tokens=3 if i == 2 else None) for i in range(4)])
        ledger = judge.ledger()
    prompt = sum(r.prompt_tokens for r in out.values())
    completion = sum(r.completion_tokens for r in out.values())
    assert (prompt, completion) == (4 * 5, 3 * 5 + 3)
    assert (ledger.model, ledger.calls, ledger.cached, ledger.failed) == (MODEL, 4, 0, 0)
    assert (ledger.prompt_tokens, ledger.completion_tokens) == (prompt, completion)
    price = PRICES_PER_1M[MODEL]
    assert ledger.cost_usd == pytest.approx((prompt * price.input + completion * price.output) / 1e6)
    assert ledger.cost_usd == pytest.approx((20 * 0.15 + 18 * 0.60) / 1e6)
    assert any("per 1M" in note for note in ledger.notes)
    assert json.loads(json.dumps(ledger.to_dict()))["cost_usd"] == ledger.cost_usd


def test_ledger_unknown_model_and_custom_prices(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with make_judge(server, tmp_path, model="judge-x") as judge:
        judge.judge([req(1)])
        ledger = judge.ledger()
    assert ledger.cost_usd is None and ledger.prompt_tokens == 5
    assert any("no price known for model 'judge-x'" in note for note in ledger.notes)

    with make_judge(server, None, model="judge-x", prices={"judge-x": {"input": 1e6, "output": 2e6}}) as judge:
        judge.judge([req(1)])
        assert judge.ledger().cost_usd == pytest.approx(5 * 1 + 5 * 2)


def test_ledger_notes_replies_without_usage(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.script(OK(usage=False))
    with make_judge(server, tmp_path) as judge:
        (result,) = judge.judge([req(1)]).values()
        ledger = judge.ledger()
    assert result.text and result.prompt_tokens is None
    assert ledger.prompt_tokens == 0
    assert any("1 reply came without token usage" in note for note in ledger.notes)


# -- ReplayJudge ---------------------------------------------------------------------------------------------


def test_replay_list_in_order() -> None:
    judge = ReplayJudge(["first", None, "third"], source="reviews.json")
    out = judge.judge([req("a"), req("b"), req("c")])
    assert [out[k].text for k in ("qa", "qb", "qc")] == ["first", None, "third"]
    assert out["qb"].failed and out["qb"].error == "no reply supplied"
    ledger = judge.ledger()
    assert (ledger.calls, ledger.failed) == (3, 1)
    assert judge.describe() == {"judge": "replay", "model": "replay", "source": "reviews.json"}


def test_replay_mapping_by_id() -> None:
    judge = ReplayJudge({"q2": "two", "q1": "one"}, source="reviews.json")
    out = judge.judge([req(1), req(2)])
    assert (out["q1"].text, out["q2"].text) == ("one", "two")
    with pytest.raises(DataError, match=r"^reviews\.json: no reply for q3"):
        judge.judge([req(3)])
    lenient = ReplayJudge({"q1": "one"}, source="reviews.json", strict=False)
    assert lenient.judge([req(1), req(3)])["q3"].failed


def test_replay_wrong_length_names_the_source() -> None:
    judge = ReplayJudge(["only one"], source="runs/x/reviews.json")
    with pytest.raises(DataError, match=r"^runs/x/reviews\.json: holds 1 replies for 2 judgments"):
        judge.judge([req(1), req(2)])


def test_replay_rejects_non_text_replies() -> None:
    with pytest.raises(DataError, match=r"reply 1 \(q1\) is a int"):
        ReplayJudge([5], source="r.json").judge([req(1)])  # type: ignore[list-item]


# -- secrets in replies, hung judges -------------------------------------------------------------------------


def test_echoed_authorization_never_reaches_results_cache_or_logs(tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAIServer(models=(MODEL,), echo_auth=True) as server:
        server.script(Fail(500, "overloaded"))
        with make_judge(server, tmp_path, concurrency=1) as judge:
            out = judge.judge([req(0), req(1)])
        assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert all(r.text.endswith("[Authorization: Bearer ***]") for r in out.values())
    assert "overloaded [Authorization: Bearer ***]" in caplog.text  # the retried error body, redacted
    assert SECRET not in caplog.text + repr(out)
    assert len(cache_files(tmp_path)) == 2
    assert all(SECRET not in p.read_text() and "Bearer ***" in p.read_text() for p in cache_files(tmp_path))


def test_cached_reply_with_a_credential_comes_back_redacted(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with make_judge(server, tmp_path) as judge:
        judge.judge([req(0)])
    (path,) = cache_files(tmp_path)
    entry = json.loads(path.read_text())
    entry["text"] += f" Authorization: Bearer {SECRET}"  # an entry written before replies were redacted
    path.write_text(json.dumps(entry))
    with make_judge(server, tmp_path) as judge:
        (result,) = judge.judge([req(0)]).values()
    assert result.cached and result.text.endswith("Authorization: Bearer ***") and SECRET not in result.text


def test_describe_hides_url_credentials_and_secret_query_parameters(server: FakeOpenAIServer, tmp_path: Path) -> None:
    url = f"http://judge:{SECRET}@127.0.0.1:{server.port}/v1?api_key=Q{SECRET}"
    judge = OpenAIJudge(MODEL, base_url=url, cache_dir=tmp_path, preflight=False, **FAST)
    info = judge.describe()
    judge.close()
    assert info["base_url"] == f"http://127.0.0.1:{server.port}/v1?api_key=***"
    assert SECRET not in json.dumps(info)


def test_hung_judge_is_bounded_by_timeout_and_retries(server: FakeOpenAIServer, tmp_path: Path, caplog) -> None:
    server.always("", Slow(30.0))  # every judge request hangs
    caplog.set_level(logging.WARNING, logger="harness.judge_openai")
    start = time.monotonic()
    with make_judge(server, tmp_path, timeout_s=0.3, max_retries=1) as judge:
        (result,) = judge.judge([req(0)]).values()
        info, ledger = judge.describe(), judge.ledger()
    elapsed = time.monotonic() - start
    assert elapsed < 3, elapsed  # 2 attempts of 0.3 s, not 7 of 120 s
    assert result.failed and "giving up after 2 attempt(s)" in result.error and "no reply within 0.3s" in result.error
    assert len(server.chat_requests) == 2
    assert (info["timeout_s"], info["max_retries"]) == (0.3, 1)
    assert (ledger.failed, ledger.retries) == (1, 1)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 1 and retries[0].levelno == logging.WARNING
    message = retries[0].getMessage()
    assert "judge request q0: attempt 1/2 failed (APITimeoutError)" in message


def test_each_retry_is_logged_with_its_cause_and_attempt(server: FakeOpenAIServer, tmp_path: Path, caplog) -> None:
    server.script(Fail(503, "overloaded"), Slow(2.0), Malformed())
    caplog.set_level(logging.WARNING, logger="harness.judge_openai")
    with make_judge(server, tmp_path, timeout_s=0.3, max_retries=3) as judge:
        (result,) = judge.judge([req(0)]).values()
    assert result.text == expected_text(req(0))
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert "attempt 1/4 failed (HTTP 503): HTTP 503: overloaded" in retries[0]
    assert "attempt 2/4 failed (APITimeoutError)" in retries[1]
    assert "attempt 3/4 failed (JSONDecodeError): malformed response" in retries[2]


def _mmhal_images(root: Path, n: int) -> Path:
    from PIL import Image

    data = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "mmhal_bench"
    records = json.loads((data / "mmhal-bench_answer_template.json").read_text())
    root.mkdir()
    for rec in records[:n]:
        Image.new("RGB", (8, 8), (0, 0, 0)).save(root / rec["image_src"].rsplit("/", 1)[1], format="JPEG")
    return root


def test_judge_timeout_flags_bound_a_hung_judge_in_harness_run(tmp_path: Path, capsys, caplog) -> None:
    from harness.cli import main

    data = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "mmhal_bench"
    images = _mmhal_images(tmp_path / "images", 2)
    caplog.set_level(logging.WARNING)
    with FakeOpenAIServer(models=("fake-model",)) as engine, FakeOpenAIServer(models=(MODEL,)) as judge_server:
        judge_server.always("", Slow(30.0))
        start = time.monotonic()
        code = main(
            [
                "run",
                "--tasks",
                "mmhal",
                "--data-root",
                str(data),
                "--image-root",
                str(images),
                "--limit",
                "2",
                "--engine",
                "openai",
                "--model",
                "fake-model",
                "--base-url",
                engine.base_url,
                "--judge-model",
                MODEL,
                "--judge-base-url",
                judge_server.base_url,
                "--judge-timeout",
                "0.3",
                "--judge-max-retries",
                "1",
                "--no-judge-cache",
                "--output-path",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        elapsed = time.monotonic() - start
        n_judge_requests = len(judge_server.chat_requests)
    assert code == 0, capsys.readouterr().err
    assert elapsed < 20, elapsed
    assert n_judge_requests == 4  # 2 judgments x 2 attempts
    info = json.loads((tmp_path / "out" / "fake-model" / "mmhal" / "judge.json").read_text())
    assert (info["timeout_s"], info["max_retries"]) == (0.3, 1)
    assert (info["ledger"]["failed"], info["ledger"]["retries"]) == (2, 2)
    retries = [r.getMessage() for r in caplog.records if "failed (APITimeoutError)" in r.getMessage()]
    assert len(retries) == 2 and all("attempt 1/2" in m for m in retries)


@pytest.mark.parametrize("flags", [["--judge-max-retries", "-1"], ["--judge-timeout", "soon"]])
def test_bad_judge_timeout_flags_are_usage_errors(flags: list[str], capsys) -> None:
    from harness.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--tasks", "mmhal", *flags])
    assert info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_non_positive_judge_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--judge-timeout.*got 0"):
        OpenAIJudge(MODEL, base_url="http://127.0.0.1:9/v1", timeout_s=0, preflight=False)
