"""MMVP: the golden numbers and grader prompts of tsb0601 gpt_grader.py and Cambrian mmvp_test.py, their quirks,
pairing, failed judgments, prompts, answer-file formats and bad input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.judge import Judge, JudgeRequest, JudgeResult
from harness.types import Response
from tasks.mmvp import (
    CAMBRIAN_SUFFIX,
    COULD_NOT_DETERMINE,
    DEFAULT_JUDGE_MODEL,
    GRADER_SYSTEM,
    MMVP,
    cambrian_prompt,
    cambrian_running_count,
    extract_mcq_answer,
    give_options,
    grader_prompt,
    parse_grade,
    read_answer_file,
    read_questions,
    read_reviews,
    rule_check,
    score_answer_file,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden" / "mmvp"
TSB = GOLDEN / "mmvp_answers_tsb0601_format.jsonl"
CAMBRIAN = GOLDEN / "mmvp_answers_cambrian_format.jsonl"
GRADES = GOLDEN / "fake_gpt_grades.json"
PROMPTS = GOLDEN / "grader_prompts.json"
DATA = FIXTURES / "data" / "mmvp" / "gpt_grader_prompt.json"


class RecordingJudge(Judge):
    """Replies by request position (a list, ``None`` = failed judgment); keeps the requests."""

    def __init__(self, replies: Sequence[str | None] | None = None, model: str = "recording"):
        self.replies = replies
        self.model = model
        self.requests: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        self.requests += requests
        out = {}
        for i, r in enumerate(requests):
            text = "yes" if self.replies is None else self.replies[i]
            out[r.id] = JudgeResult(r.id, text, None if text is not None else "timeout")
        return out

    def describe(self) -> dict[str, Any]:
        return {"judge": "recording"}


# ------------------------------------------------------------------------------------------ fixture benchmark
QUESTIONS = [
    ("Is the door of the car open or closed?", "(a) Open (b) Closed", "(a)"),
    ("Is the door of the car open or closed?", "(a) Open (b) Closed", "(b)"),
    ("Is the dog facing left or right?", "(a) Left (b) Right", "(b)"),
    ("Is the dog facing left or right?", "(a) Left (b) Right", "(a)"),
    ("Are there two eyes?", "(a) Yes (b) No", "(a)"),
    ("Are there two eyes?", "(a) Yes (b) No", "(b)"),
]


def write_benchmark(
    root: Path,
    header: str = "lndex,Question,Options,Correct Answer",
    rows: Sequence[tuple[str, str, str]] = QUESTIONS,
    images: bool = True,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f'{i},"{q}",{o},{a}' for i, (q, o, a) in enumerate(rows, start=1)]
    (root / "Questions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if images:
        (root / "MMVP Images").mkdir(exist_ok=True)
        for i in range(1, len(rows) + 1):
            Image.new("RGB", (8, 8), "white").save(root / "MMVP Images" / f"{i}.jpg")
    return root


def responses(texts: dict[str, str]) -> dict[str, Response]:
    return {k: Response(k, v, "stop") for k, v in texts.items()}


# ------------------------------------------------------------------------------------------ golden
def test_golden_gpt_grader_pair_accuracy():
    metrics, coverage = MMVP().score_file(TSB, read_reviews(GRADES))
    assert metrics.headline == {"Accuracy": 0.6}  # "The accuracy is 0.6"
    assert (GOLDEN / "gpt_grader.stdout.txt").read_text().strip() == f"The accuracy is {metrics.headline['Accuracy']}"
    assert metrics.counts["pairs"] == 10 and metrics.counts["correct_pairs"] == 6
    assert metrics.counts["judge_failed"] == 0 and metrics.counts["undetermined"] == 0
    assert coverage == {"samples": 20, "responses": 20, "missing": 0}
    assert any("method: gpt" in n for n in metrics.notes)
    # "Yes" (reply 12) is graded "yes"
    assert [r["grade"] for r in metrics.records][12] == "yes"


def test_golden_grader_prompts_are_exact():
    judge = RecordingJudge()
    score_answer_file(TSB, "gpt", judge)
    golden = json.loads(PROMPTS.read_text())
    assert len(judge.requests) == len(golden) == 20
    for req, gold in zip(judge.requests, golden):
        assert list(req.messages) == gold["messages"]
        assert req.temperature == gold["kwargs"]["temperature"] == 0.2
        assert req.max_tokens is None
        assert gold["model"] == DEFAULT_JUDGE_MODEL == MMVP.default_judge_model
    spec = json.loads(DATA.read_text())
    assert spec["system"] == GRADER_SYSTEM
    assert grader_prompt("Q", "(a)", "R") == spec["user_template"].format(
        question="Q", correct_answer="(a)", model_response="R"
    )


def test_golden_rule_based_both_formats():
    stdout = (GOLDEN / "cambrian_mmvp_test.stdout.txt").read_text()
    for path in (CAMBRIAN, TSB):
        metrics, _ = MMVP(options={"mmvp_method": "rule"}).score_file(path)
        assert metrics.headline == {"Accuracy": 50.0}
        assert metrics.counts["total"] == 20 and metrics.counts["correct"] == 10
        assert (
            f"'total': {float(metrics.counts['total'])}, 'correct': {metrics.counts['correct']}, "
            f"'accuracy': {metrics.headline['Accuracy']}" in stdout
        )
        assert metrics.breakdown["pairs"] == {"correct": 5, "total": 10, "accuracy": 0.5}
        assert any("method: rule" in n for n in metrics.notes)


def test_golden_through_the_cli(capsys):
    code = main(["--log-level", "WARNING", "score", "mmvp", "--responses", str(TSB), "--reviews", str(GRADES)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == {"Accuracy": 0.6}
    code = main(
        ["--log-level", "WARNING", "score", "mmvp", "--responses", str(CAMBRIAN), "--option", "mmvp_method=rule"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == {"Accuracy": 50.0}


# ------------------------------------------------------------------------------------------ official rules
@pytest.mark.parametrize(
    "reply, grade",
    [
        ("yes", "yes"),
        ("Yes", "yes"),
        ("NO", "no"),
        ("yes.", COULD_NOT_DETERMINE),
        ("Yes, it does", COULD_NOT_DETERMINE),
        (" yes", COULD_NOT_DETERMINE),
        ("", COULD_NOT_DETERMINE),
        ("yes\n", "yes\n"),  # `$` matches before a final \n
    ],
)
def test_parse_grade(reply, grade):
    assert parse_grade(reply) == grade


@pytest.mark.parametrize(
    "text, extracted",
    [
        ("(a)", "a"),
        ("(b) Closed", "b) closed"),
        ("The answer is (b).", "b"),
        ("Answer: A", "a"),
        ("Open.", "open"),
        ("B", "b"),
        # "answer is" splits first and leaves ": (a)": "answer is:" is no longer found, so the colon stays
        ("the answer is: (a), ", ": (a"),
    ],
)
def test_extract_mcq_answer(text, extracted):
    assert extract_mcq_answer(text) == extracted


def test_rule_check_quirks():
    opts = give_options("(a) Open (b) Closed")
    assert opts == ["Open", "Closed"]
    assert rule_check("Closed", "(b)", opts)[0] and rule_check("B", "(b)", opts)[0]
    assert not rule_check("(b) Closed", "(b)", opts)[0]  # "b) closed" is neither "b" nor "closed"
    assert not rule_check("Open", "(b)", opts)[0]


def test_running_counter():
    assert cambrian_running_count([True, True, True, False, False, True]) == 2
    assert cambrian_running_count([True, True, True]) == 3  # an unpaired last row counts
    assert cambrian_running_count([False, True]) == 0


# ------------------------------------------------------------------------------------------ task on a benchmark
def test_samples_prompts_images_and_options(tmp_path):
    root = write_benchmark(tmp_path / "mmvp")
    task = MMVP(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["1", "2", "3", "4", "5", "6"]
    assert samples[0].prompt == "Is the door of the car open or closed? (a) Open (b) Closed"
    assert samples[0].images[0].path == str(root / "MMVP Images" / "1.jpg")
    assert samples[0].images[0].load("1").size == (8, 8)
    assert samples[3].meta["pair"] == 1 and samples[0].max_new_tokens == 1024
    assert task.needs_judge() and not MMVP(options={"mmvp_method": "rule"}).needs_judge()
    cam = MMVP(data_root=root, options={"mmvp_prompt": "cambrian"}).samples()[0]
    assert cam.prompt == ("Is the door of the car open or closed? Options:\nA. Open\nB. Closed\n" + CAMBRIAN_SUFFIX)
    assert cam.prompt == cambrian_prompt("Is the door of the car open or closed?", "(a) Open (b) Closed")
    assert cam.max_new_tokens == 512
    # the folder name of evaluate_mllm.py
    (root / "MMVP Images").rename(root / "MMVP Imgaes")
    assert MMVP(data_root=root).samples()[1].images[0].path == str(root / "MMVP Imgaes" / "2.jpg")


def test_gpt_scoring_of_a_run_failed_judgment_and_missing_response(tmp_path):
    task = MMVP(data_root=write_benchmark(tmp_path / "mmvp"))
    samples = task.samples()
    resp = responses({"1": "(a)", "2": "(b)", "3": "(b)", "4": "(b)", "5": "(a)"})  # 6 missing
    judge = RecordingJudge(["yes", "Yes", "yes", None])
    m = task.score(samples, resp, judge)
    # pair 0 correct; pair 1 has a failed judgment: excluded; pair 2 lacks a response: not judged
    assert m.headline == {"Accuracy": 1.0}
    assert m.counts["judge_failed"] == 1 and m.counts["pairs_excluded"] == 1 and m.counts["no_response"] == 1
    assert m.counts["unpaired"] == 1 and m.counts["pairs"] == 1
    assert [r.id for r in judge.requests] == ["0", "1", "2", "3"]
    assert judge.requests[2].messages[1]["content"] == (
        "Given the following question Is the dog facing left or right? (a) Left (b) Right, the correct answer is "
        "(b). Does the following answer correctly answers the question, answer:(b)?"
    )
    assert any("excluded" in n for n in m.notes) and any("no response" in n for n in m.notes)
    undetermined = task.score(samples, resp | responses({"6": "(b)"}), RecordingJudge(["yes", "yes."] + ["yes"] * 4))
    assert undetermined.headline == {"Accuracy": 2 / 3} and undetermined.counts["undetermined"] == 1
    with pytest.raises(ConfigError, match="needs a judge"):
        task.score(samples, resp, None)


def test_rule_scoring_of_a_run(tmp_path):
    task = MMVP(data_root=write_benchmark(tmp_path / "mmvp"), options={"mmvp_method": "rule"})
    resp = responses({"1": "Open", "2": "B", "3": "(b) Right", "4": "A", "5": "The answer is (a).", "6": "no"})
    m = task.score(task.samples(), resp)
    # pair 0 right+right, pair 1 "(b) Right" is not accepted, pair 2 right+right -> 4 of 6 rows counted
    assert m.counts["correct"] == 4 and m.counts["total"] == 6 and m.counts["correct_pairs"] == 2
    assert m.headline == {"Accuracy": pytest.approx(100 * 4 / 6)}
    del resp["4"]
    m = task.score(task.samples(), resp)
    assert m.counts["total"] == 4 and m.counts["correct"] == 4 and m.counts["no_response"] == 1


def test_answer_files_against_the_benchmark(tmp_path):
    root = write_benchmark(tmp_path / "mmvp")
    task = MMVP(data_root=root)
    cam = tmp_path / "cam.jsonl"
    cam.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": i,
                    "prompt": "USER: ...",
                    "answer": "(a)",
                    "gt_answer": a,
                    "text_options": give_options(o),
                }
            )
            + "\n"
            for i, (_, o, a) in enumerate(QUESTIONS)
        )
    )
    assert sorted(task.read_responses(cam)) == ["1", "2", "3", "4", "5", "6"]
    judge = RecordingJudge()
    metrics, coverage = task.score_file(cam, judge)  # the grader's question comes from the benchmark
    assert metrics.headline == {"Accuracy": 1.0} and coverage["missing"] == 0
    assert (
        judge.requests[0]
        .messages[1]["content"]
        .startswith(
            "Given the following question Is the door of the car open or closed? (a) Open (b) Closed, the correct"
        )
    )
    with pytest.raises(ConfigError, match="--data-root"):
        MMVP().score_file(cam, RecordingJudge())
    tsb = tmp_path / "tsb.jsonl"
    tsb.write_text(
        json.dumps(
            {"question_id": 1, "prompt": "Is the door open? (a) Open (b) Closed", "answer": "(a)", "response": "a"}
        )
        + "\n"
    )
    with pytest.raises(DataError, match="differ from MMVP question 1") as err:
        task.read_responses(tsb)
    assert "tsb.jsonl, line 1" in str(err.value)
    tsb.write_text(json.dumps({"question_id": 7, "prompt": "x (a) A (b) B", "answer": "(a)", "response": "a"}) + "\n")
    with pytest.raises(DataError, match="question_id 7 names no MMVP question"):
        task.read_responses(tsb)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="Questions.csv"):
        MMVP(data_root=tmp_path).samples()
    root = write_benchmark(tmp_path / "a", header="Index,Question,Options")
    with pytest.raises(DataError, match="lacks the column"):
        read_questions(root / "Questions.csv")
    root = write_benchmark(tmp_path / "b", rows=[("Q?", "(a) X (b) Y", "b")])
    with pytest.raises(DataError, match=r"Questions.csv, line 2: question 1: correct answer 'b'"):
        MMVP(data_root=root).samples()
    root = write_benchmark(tmp_path / "c", rows=[("Q?", "(a) X (b) Y", "(c)")])
    with pytest.raises(DataError, match="names no option"):
        read_questions(root / "Questions.csv")
    root = write_benchmark(tmp_path / "d", rows=[("Q?", "Open or closed", "(a)")])
    with pytest.raises(DataError, match='expected "\\(a\\) ... \\(b\\) ..."'):
        read_questions(root / "Questions.csv")
    root = tmp_path / "e"
    root.mkdir()
    (root / "Questions.csv").write_text(
        "Index,Question,Options,Correct Answer\n1,Q,(a) X (b) Y,(a)\n1,Q,(a) X (b) Y,(b)\n"
    )
    with pytest.raises(DataError, match="Index 1 appears twice"):
        read_questions(root / "Questions.csv")


def test_bad_answer_files_reviews_and_options(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "prompt": "Q (a) X (b) Y", "answer": "(a)"}) + "\n")
    with pytest.raises(DataError, match="unknown MMVP answer format"):
        read_answer_file(bad)
    bad.write_text(json.dumps({"question_id": 1, "prompt": "Q (a) X (b) Y", "response": "a"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl, line 1: missing or mistyped field 'answer'"):
        read_answer_file(bad)
    lines = [
        {"question_id": 1, "prompt": "Q (a) X (b) Y", "answer": "(a)", "response": "a"},
        {"question_id": 1, "answer": "a", "gt_answer": "(a)", "text_options": ["X", "Y"]},
    ]
    bad.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError, match="line 2: a cambrian-format record in a tsb0601-format file"):
        read_answer_file(bad)
    bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n")
    with pytest.raises(DataError, match="question_id 1 appears twice"):
        read_answer_file(bad)
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["yes"] * 3))
    with pytest.raises(DataError, match="no reply for 3"):
        score_answer_file(TSB, "gpt", read_reviews(short))
    short.write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match="short.json"):
        read_reviews(short)
    with pytest.raises(ConfigError, match="unknown mmvp_method"):
        MMVP(options={"mmvp_method": "llm"})
    with pytest.raises(ConfigError, match="unknown mmvp_prompt"):
        MMVP(options={"mmvp_prompt": "x"})
    with pytest.raises(ConfigError, match="needs --data-root"):
        MMVP().samples()
