"""MMHal-Bench: the golden numbers and prompts of the official eval_gpt4.py, its rating quirks, failed judgments,
review formats and bad input."""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.errors import ConfigError, DataError
from harness.judge import Judge, JudgeRequest, JudgeResult, ReplayJudge
from harness.task import _TASKS
from harness.types import Response
from tasks.mmhal import (
    DEFAULT_JUDGE_MODEL,
    JUDGE_PROMPT_TEMPLATE,
    N_QUESTIONS,
    QUESTION_TYPES,
    TEMPLATE_FILES,
    MMHalBench,
    judge_prompt,
    parse_rating,
    ratings_found,
    read_records,
    read_reviews,
    replay_judge,
    score_response_file,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATA = FIXTURES / "data" / "mmhal_bench"
GOLDEN = FIXTURES / "golden" / "mmhal_bench"
RESPONSES = GOLDEN / "mmhal_responses_synthetic.json"
FAKE_REPLIES = GOLDEN / "fake_judge_outputs.json"
SAVED_EVALUATION = GOLDEN / "mmhal_eval_fakejudge.json"

GOLDEN_HEADLINE = {"Score": 2.78, "HalRate": 0.46, "Informativeness": 38.54}
GOLDEN_PER_TYPE = [3.42, 3.0, 2.17, 2.58, 2.42, 2.58, 2.75, 3.33]
#: Replies the official parser scores 0 with "Warning: multiple or zero scores found" (printed in the golden stdout).
GOLDEN_UNPARSED = ["14", "21", "28"]


class RecordingJudge(Judge):
    """Answers from a list of replies in request order, and keeps the requests it was sent."""

    def __init__(self, replies: Sequence[str | None], model: str = "recording"):
        self.replies = list(replies)
        self.model = model
        self.requests: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        self.requests += requests
        return {
            r.id: JudgeResult(r.id, text, None if text is not None else "timeout")
            for r, text in zip(requests, self.replies)
        }

    def describe(self) -> dict[str, Any]:
        return {"judge": "recording"}


def golden_replies() -> list[str]:
    return json.loads(FAKE_REPLIES.read_text())


def expected_scores() -> list[int]:
    """The official score of each golden reply, worked out by hand from the replies themselves."""
    # 7 "rating: 5" (lower case), 14 two ratings, 21 none, 28 "Rating:3" (no space), 35 "**Rating: 4**",
    # 42 "Rating: 10" (contains "rating: 1" only)
    special = {7: 5, 14: 0, 21: 0, 28: 0, 35: 4, 42: 1}
    out = []
    for i, reply in enumerate(golden_replies()):
        if i in special:
            out.append(special[i])
        else:
            m = re.fullmatch(rf"Explanation: synthetic judge output #{i}\.\n- Rating: (\d), synthetic", reply)
            assert m, reply
            out.append(int(m.group(1)))
    return out


def stdout_numbers(name: str) -> dict[str, Any]:
    text = (GOLDEN / name).read_text()
    out: dict[str, Any] = {}
    if m := re.search(r"Average score: ([\d.]+)", text):
        out["Score"] = float(m.group(1))
    if m := re.search(r"Hallucination rate: ([\d.]+)", text):
        out["HalRate"] = float(m.group(1))
    if m := re.search(r"Informativeness: ([\d.]+)", text):
        out["Informativeness"] = float(m.group(1))
    if m := re.search(r"Average score for each question type: ([\d.,]+)", text):
        out["per_type"] = [float(x) for x in m.group(1).split(",")]
    out["warnings"] = re.findall(r"Warning: multiple or zero scores found\n(\d+) ", text)
    return out


def per_type(metrics) -> list[float]:
    return [metrics.breakdown[name]["Score"] for name in QUESTION_TYPES]


@pytest.fixture()
def task(tmp_path) -> MMHalBench:
    return MMHalBench(data_root=DATA, image_root=tmp_path)


def responses_for(task: MMHalBench, limit: int | None = None) -> tuple[list, dict[str, Response]]:
    samples = task.samples(limit)
    answers = json.loads(RESPONSES.read_text())
    return samples, {s.id: Response(s.id, answers[int(s.id)]["model_answer"], "stop") for s in samples}


# ------------------------------------------------------------------------------------------ golden parity
def test_embedded_judge_prompt_is_the_official_template_byte_for_byte():
    assert JUDGE_PROMPT_TEMPLATE == (DATA / "judge_prompt_template.txt").read_text(encoding="utf-8")
    assert JUDGE_PROMPT_TEMPLATE.count("{}") == 4


def test_task_prompts_equal_the_official_ones_byte_for_byte(task):
    golden = json.loads((GOLDEN / "judge_prompts_llava-rlhf.json").read_text())
    samples, responses = responses_for(task)
    judge = RecordingJudge(golden_replies())
    task.score(samples, responses, judge)
    assert len(judge.requests) == len(golden) == N_QUESTIONS
    for req, gold in zip(judge.requests, golden):
        assert req.id == str(gold["i"])
        assert list(req.messages) == gold["messages"]  # one user message, the exact text
        assert req.temperature == gold["kwargs"]["temperature"] == 0.0
        assert req.max_tokens is None  # the official call sends nothing else
        assert gold["model"] == DEFAULT_JUDGE_MODEL


def test_response_file_prompts_equal_the_official_ones():
    golden = json.loads((GOLDEN / "judge_prompts_llava-rlhf.json").read_text())
    judge = RecordingJudge(golden_replies())
    score_response_file(RESPONSES, None, judge)
    assert [req.messages[0]["content"] for req in judge.requests] == [g["messages"][0]["content"] for g in golden]


@pytest.mark.parametrize("reviews", [FAKE_REPLIES, SAVED_EVALUATION], ids=["reply-list", "openai-responses"])
def test_golden_numbers_from_the_response_file(reviews):
    metrics = score_response_file(RESPONSES, DATA, replay_judge(reviews))
    assert metrics.headline == GOLDEN_HEADLINE
    assert per_type(metrics) == GOLDEN_PER_TYPE
    for name in (
        "eval_gpt_mmhal_llava-rlhf.stdout.txt",
        "summarize_gpt_mmhal_llava-rlhf.stdout.txt",
        "summarize_gpt_mmhal_review_rlaif-v.stdout.txt",
    ):
        printed = stdout_numbers(name)
        for key in ("Score", "HalRate", "Informativeness"):
            if key in printed:
                assert metrics.headline[key] == printed[key], (name, key)
        if "per_type" in printed:
            assert per_type(metrics) == printed["per_type"]
        # the summarizers parse the replies twice (Informativeness, then the scores), so warn twice
        assert printed["warnings"] in (GOLDEN_UNPARSED, GOLDEN_UNPARSED * 2)
    assert metrics.counts["unparsed"] == 3 and metrics.counts["judge_failed"] == 0 and metrics.counts["scored"] == 96
    assert any("14, 21, 28" in note for note in metrics.notes)


def test_golden_per_record_results(task):
    samples, responses = responses_for(task)
    evaluation = json.loads(SAVED_EVALUATION.read_text())
    metrics = task.score(samples, responses, replay_judge(SAVED_EVALUATION))
    assert metrics.headline == GOLDEN_HEADLINE and per_type(metrics) == GOLDEN_PER_TYPE
    scores = expected_scores()
    assert [r["id"] for r in metrics.records] == [str(i) for i in range(96)]
    for i, (rec, saved) in enumerate(zip(metrics.records, evaluation)):
        assert rec["judge"] == saved["choices"][0]["message"]["content"]
        assert rec["rating"] == scores[i]
        assert rec["question_type"] == QUESTION_TYPES[i % 8]
        assert rec["hallucination"] == (scores[i] < 3)
        assert rec["parsed"] == (str(i) not in GOLDEN_UNPARSED)
    # the unrounded values behind the printed ones
    assert metrics.breakdown["unrounded"]["Score"] == sum(scores) / 96
    assert metrics.breakdown["unrounded"]["HalRate"] == sum(s < 3 for s in scores) / 96
    assert metrics.breakdown["attribute"]["n"] == 12


def test_review_records_with_gpt4_review_field(tmp_path):
    merged = json.loads(RESPONSES.read_text())
    for rec, reply in zip(merged, golden_replies()):
        rec["gpt4_review"] = reply
    path = tmp_path / "answer.mmhal_test_eval.json.merge_gpt4_score.json"
    path.write_text(json.dumps(merged))
    assert read_reviews(path) == golden_replies()
    metrics = score_response_file(RESPONSES, DATA, replay_judge(path))
    assert metrics.headline == GOLDEN_HEADLINE


def test_replay_judge_takes_the_model_from_saved_responses():
    assert replay_judge(SAVED_EVALUATION).model == "gpt-4-0314"
    assert replay_judge(FAKE_REPLIES).model == "replay"


def test_jsonl_answers_merged_onto_the_template(tmp_path):
    """RLAIF-V's --is_jsonl path: answers in line order, "Assistant:" removed and stripped."""
    answers = json.loads(RESPONSES.read_text())
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question_id": i, "text": f"Assistant: {a['model_answer']}  "}) + "\n"
            for i, a in enumerate(answers)
        )
    )
    judge = RecordingJudge(golden_replies())
    metrics = score_response_file(path, DATA, judge)
    golden = json.loads((GOLDEN / "judge_prompts_llava-rlhf.json").read_text())
    assert [r.messages[0]["content"] for r in judge.requests] == [g["messages"][0]["content"] for g in golden]
    assert metrics.headline == GOLDEN_HEADLINE
    with pytest.raises(ConfigError, match="data root"):
        score_response_file(path, None, judge)


# ------------------------------------------------------------------------------------------ quirks
@pytest.mark.parametrize(
    ("reply", "score", "parsed"),
    [
        ("Explanation.\n- Rating: 6, very informative", 6, True),
        ("The response is fine. rating: 5", 5, True),  # case-insensitive
        ("RATING: 2", 2, True),
        ("**Rating: 4**", 4, True),
        ("Rating: 0", 0, True),
        ("Rating: 10", 1, True),  # contains "rating: 1" and nothing else
        ("Rating: 16", 1, True),
        ("Rating: 65", 6, True),  # contains "rating: 6"
        ("Rating: 3. Again, Rating: 3.", 3, True),  # the same rating twice is one hit
        ("Rating: 6 would be too high. Final: Rating: 4", 0, False),  # two ratings
        ("Rating:3 (no space)", 0, False),
        ("Rating: 7", 0, False),
        ("Rating 5", 0, False),
        ("No explicit score given.", 0, False),
        ("", 0, False),
    ],
)
def test_rating_parser_quirks(reply, score, parsed):
    assert parse_rating(reply) == (score, parsed)


def test_ratings_found_lists_every_hit():
    assert ratings_found("Rating: 6 would be too high. Final: Rating: 4") == [4, 6]


def test_hand_computed_subset(task):
    """--limit 10: means over the questions present, types by index % 8."""
    samples, responses = responses_for(task, limit=10)
    replies = [
        "Rating: 6",
        "Rating: 5",
        "Rating: 4",
        "Rating: 3",
        "Rating: 2",
        "Rating: 1",
        "Rating: 0",
        "no rating here",
        "Rating: 6",
        "Rating: 10",
    ]
    metrics = task.score(samples, responses, RecordingJudge(replies))
    # scores 6 5 4 3 2 1 0 0 6 1: sum 28; < 3: 5 of 10; informativeness 3 2 1 0 2 1 0 0 3 1 = 13
    assert metrics.headline == {"Score": 2.8, "HalRate": 0.5, "Informativeness": 43.33}
    assert {k: v["Score"] for k, v in metrics.breakdown.items() if k != "unrounded"} == {
        "attribute": 6.0,
        "adversarial": 3.0,
        "comparison": 4.0,
        "counting": 3.0,
        "relation": 2.0,
        "environment": 1.0,
        "holistic": 0.0,
        "other": 0.0,
    }
    assert metrics.breakdown["attribute"]["n"] == 2 and metrics.breakdown["other"]["n"] == 1
    assert metrics.counts["unparsed"] == 1 and metrics.counts["scored"] == 10 and metrics.counts["questions"] == 10
    assert any("scored 10 of the 96" in note for note in metrics.notes)


def test_per_type_rounding_is_round_not_format(task):
    """Per-type averages are ``round(x, 2)`` printed with str(): 3.0 stays 3.0, 2.1666.. is 2.17."""
    samples, responses = responses_for(task, limit=24)
    replies = ["Rating: 3"] * 24
    replies[2], replies[10], replies[18] = "Rating: 2", "Rating: 2", "Rating: 3"  # comparison: 2, 2, 3
    metrics = task.score(samples, responses, RecordingJudge(replies))
    assert metrics.breakdown["comparison"]["Score"] == 2.33
    assert metrics.breakdown["adversarial"]["Score"] == 3.0


# ------------------------------------------------------------------------------------------ failed judgments
def test_failed_judgment_is_excluded_and_counted():
    replies: list[str | None] = list(golden_replies())
    replies[0] = None  # rating 6, question type attribute
    replies[14] = None  # an unparsed reply: no longer counted as unparsed
    metrics = score_response_file(RESPONSES, DATA, ReplayJudge(replies, source="reviews.json"))
    scores = expected_scores()
    kept = [s for i, s in enumerate(scores) if i not in (0, 14)]
    assert metrics.counts["judge_failed"] == 2 and metrics.counts["scored"] == 94 and metrics.counts["unparsed"] == 2
    assert metrics.breakdown["unrounded"]["Score"] == sum(kept) / 94
    assert metrics.headline["Score"] == float(f"{sum(kept) / 94:.2f}")
    attribute = [s for i, s in enumerate(scores) if i % 8 == 0 and i != 0]
    assert metrics.breakdown["attribute"] == {"Score": round(sum(attribute) / 11, 2), "n": 11}
    assert metrics.records[0]["rating"] is None and metrics.records[0]["judge_error"]
    assert any("2 judgments failed" in n and "not scored 0" in n for n in metrics.notes)


def test_judge_without_a_result_counts_as_failed(task):
    class Forgetful(RecordingJudge):
        def judge(self, requests):
            return {r.id: JudgeResult(r.id, "Rating: 5") for r in requests[1:]}

    samples, responses = responses_for(task, limit=3)
    metrics = task.score(samples, responses, Forgetful([]))
    assert metrics.counts["judge_failed"] == 1 and metrics.headline["Score"] == 5.0


def test_all_judgments_failed_gives_no_numbers(task):
    samples, responses = responses_for(task, limit=2)
    metrics = task.score(samples, responses, RecordingJudge([None, None]))
    assert metrics.headline == {} and metrics.counts["judge_failed"] == 2
    assert any("no judgment succeeded" in n for n in metrics.notes)


def test_samples_without_a_response_are_not_judged(task):
    samples, responses = responses_for(task, limit=4)
    del responses["1"]
    judge = RecordingJudge(["Rating: 4"] * 3)
    metrics = task.score(samples, responses, judge)
    assert [r.id for r in judge.requests] == ["0", "2", "3"]
    assert metrics.counts["no_response"] == 1 and metrics.headline["Score"] == 4.0


def test_no_judge_is_a_config_error(task):
    samples, responses = responses_for(task, limit=1)
    for call in (lambda: task.score(samples, responses, None), lambda: score_response_file(RESPONSES, DATA, None)):
        with pytest.raises(ConfigError, match="mmhal needs a judge") as err:
            call()
        assert "--judge-model" in str(err.value) and "--reviews" in str(err.value)


# ------------------------------------------------------------------------------------------ the task
def test_samples_ids_prompts_types_and_images(tmp_path):
    records = json.loads((DATA / TEMPLATE_FILES[1]).read_text())
    (tmp_path / "images").mkdir()
    first = records[0]["image_src"].rsplit("/", 1)[1]
    Image.new("RGB", (16, 12), (0, 90, 200)).save(tmp_path / "images" / first)
    second = tmp_path / records[1]["image_src"].rsplit("/", 1)[1]
    Image.new("RGB", (8, 8), (200, 0, 0)).save(second, format="JPEG")
    task = MMHalBench(data_root=DATA, image_root=tmp_path)
    assert _TASKS["mmhal"] is MMHalBench
    assert task.default_max_new_tokens >= 512
    samples = task.samples()
    assert [s.id for s in samples] == [str(i) for i in range(96)]
    assert [s.prompt for s in samples] == [r["question"] for r in records]
    assert [s.meta["question_type"] for s in samples] == [QUESTION_TYPES[i % 8] for i in range(96)]
    assert samples[0].images[0].path == str(tmp_path / "images" / first)
    assert samples[1].images[0].path == str(second)
    assert samples[0].images[0].load("0").size == (16, 12)
    assert samples[2].images[0].path == str(tmp_path / records[2]["image_src"].rsplit("/", 1)[1])
    assert [s.id for s in task.samples(limit=5)] == ["0", "1", "2", "3", "4"]


def test_task_finds_either_file_name_and_the_option(tmp_path):
    data = json.loads((DATA / TEMPLATE_FILES[1]).read_text())
    (tmp_path / "response_template.json").write_text(json.dumps(data))
    assert MMHalBench(data_root=tmp_path).check_files() == [tmp_path / "response_template.json"]
    (tmp_path / "mine.json").write_text(json.dumps(data[:8] * 12))
    task = MMHalBench(data_root=tmp_path, options={"mmhal_file": "mine.json"})
    assert task.check_files() == [tmp_path / "mine.json"]
    with pytest.raises(DataError, match="required file is missing"):
        MMHalBench(data_root=tmp_path, options={"mmhal_file": "nope.json"}).check_files()


def test_missing_question_file_names_both_names(tmp_path):
    with pytest.raises(DataError) as err:
        MMHalBench(data_root=tmp_path).samples()
    assert all(name in str(err.value) for name in TEMPLATE_FILES) and str(tmp_path) in str(err.value)


def test_no_data_root_is_a_config_error():
    with pytest.raises(ConfigError, match="--data-root"):
        MMHalBench().check_files()  # the data root is resolved on first use


# ------------------------------------------------------------------------------------------ bad input
def _write(tmp_path: Path, records: Any, name: str = "responses.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_not_96_records_is_a_data_error_naming_the_file(tmp_path):
    records = json.loads(RESPONSES.read_text())
    path = _write(tmp_path, records[:95])
    with pytest.raises(DataError, match="holds 95 records") as err:
        score_response_file(path, None, RecordingJudge([]))
    assert str(path) in str(err.value)
    (tmp_path / "response_template.json").write_text(json.dumps(records + records[:1]))
    with pytest.raises(DataError, match="holds 97 records"):
        MMHalBench(data_root=tmp_path).samples()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gt_answer", None, "record 3: missing or non-string field 'gt_answer'"),
        ("question", 7, "record 3: missing or non-string field 'question'"),
        ("image_content", "Dog", "record 3: field 'image_content' must be a list of strings"),
        ("model_answer", None, "record 3: missing or non-string field 'model_answer'"),
    ],
)
def test_missing_fields_name_the_file_and_record(tmp_path, field, value, message):
    records = json.loads(RESPONSES.read_text())
    if value is None:
        del records[3][field]
    else:
        records[3][field] = value
    path = _write(tmp_path, records)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        score_response_file(path, None, RecordingJudge([]))
    assert str(path) in str(err.value)


def test_response_file_that_is_not_a_list(tmp_path):
    path = _write(tmp_path, {"0": "x"})
    with pytest.raises(DataError, match="expected a JSON list"):
        score_response_file(path, None, RecordingJudge([]))


def test_reordered_response_file_is_rejected_against_the_benchmark(tmp_path, caplog):
    records = json.loads(RESPONSES.read_text())
    records[0], records[1] = records[1], records[0]
    path = _write(tmp_path, records)
    with (
        caplog.at_level(logging.WARNING, logger="tasks.mmhal"),
        pytest.raises(DataError, match="record 0: question .* benchmark's order"),
    ):
        score_response_file(path, DATA, RecordingJudge([]))
    assert "question_type other than the one their position gives" in caplog.text


def test_bad_review_files(tmp_path):
    evaluation = json.loads(SAVED_EVALUATION.read_text())
    broken = copy.deepcopy(evaluation)
    broken[5] = {"id": "x", "choices": []}
    with pytest.raises(DataError, match="entry 5: an OpenAI response without"):
        read_reviews(_write(tmp_path, broken, "a.json"))
    with pytest.raises(DataError, match="entry 2: expected the judge's reply"):
        read_reviews(_write(tmp_path, ["Rating: 1", "Rating: 2", 3], "b.json"))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_reviews(_write(tmp_path, {"reviews": []}, "c.json"))
    with pytest.raises(DataError, match="holds no judge replies"):
        read_reviews(_write(tmp_path, [], "d.json"))
    short = _write(tmp_path, golden_replies()[:95], "e.json")
    with pytest.raises(DataError, match="no reply for 95") as err:
        score_response_file(RESPONSES, DATA, replay_judge(short))
    assert str(short) in str(err.value)


def test_judge_prompt_formats_like_the_official_code():
    assert judge_prompt(["A", "B"], "q?", "gt", "ans", template="{}|{}|{}|{}") == "A, B|q?|gt|ans"
    assert judge_prompt([], "q", "g", "a {x}", template="{}|{}|{}|{}") == "|q|g|a {x}"
    record = read_records(RESPONSES)[0]
    assert record.image_name == "7206072054_c53d53b97d_o.jpg" and record.type_name == "attribute"


# ------------------------------------------------------------------------------------------ through the runner
def test_evaluate_with_a_fake_engine_resumes_and_writes_scores(tmp_path):
    """`harness run --tasks mmhal --limit 16 --reviews FILE`: generate, judge from saved reviews, write the run."""
    from harness.engines.base import Engine, EngineOptions
    from harness.runner import evaluate
    from harness.store import RunStore
    from harness.types import Decoding

    answers = json.loads(RESPONSES.read_text())

    class Synthetic(Engine):
        name = "synthetic"

        def __init__(self):
            super().__init__("m", Decoding(), EngineOptions(batch_size=5))
            self.seen: list[str] = []

        def generate(self, requests):
            for r in requests:
                self.seen.append(r.sample_id)
                yield Response(r.sample_id, answers[int(r.sample_id)]["model_answer"], "stop")

        def describe(self):
            return {"engine": "synthetic"}

    records = json.loads((DATA / TEMPLATE_FILES[1]).read_text())
    for rec in records[:16]:
        Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / rec["image_src"].rsplit("/", 1)[1], format="JPEG")
    task = MMHalBench(data_root=DATA, image_root=tmp_path)
    samples = task.samples(limit=16)
    store = RunStore(tmp_path / "run")
    store.open({}, {"task": "mmhal"})
    engine = Synthetic()
    result = evaluate(task, engine, store, samples, progress=False, judge=replay_judge(SAVED_EVALUATION))
    assert engine.seen == [str(i) for i in range(16)]
    scores = expected_scores()[:16]
    assert result.metrics.breakdown["unrounded"]["Score"] == sum(scores) / 16
    assert result.metrics.counts["unparsed"] == 1  # question 14
    written = [json.loads(line) for line in (store.dir / "scores.jsonl").read_text().splitlines()]
    assert [r["rating"] for r in written] == scores
    assert json.loads((store.dir / "metrics.json").read_text())["headline"] == result.metrics.headline
    store.open({}, {"task": "mmhal"})
    again = evaluate(task, Synthetic(), store, samples, progress=False, judge=replay_judge(FAKE_REPLIES))
    assert again.n_resumed == 16 and again.metrics.headline == result.metrics.headline
