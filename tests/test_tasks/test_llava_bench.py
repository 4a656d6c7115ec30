"""LLaVA-Bench (In-the-Wild): the official judge prompt, score parsing and its quirks, relative scores per category
from saved reviews (an unparseable reply averaged in as [-1, -1], a failed judgment left out), the HF layouts,
review and answer files, and bad input."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.judge import Judge, JudgeRequest, JudgeResult, ReplayJudge
from harness.types import Response
from tasks.llava_bench import (
    DEFAULT_JUDGE_MODEL,
    JUDGE_SYSTEM,
    RULES,
    LLaVABench,
    caption_text,
    judge_content,
    parse_score,
    relative_score,
)

QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "text": "What is the dog doing?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
    {"question_id": 2, "image": "002.jpg", "text": "Why might the cat be hiding?", "category": "complex"},
    {"question_id": 3, "image": "002.jpg", "text": "What color is the cat?", "category": "conv"},
]
CONTEXT = [
    {"id": "001", "image": "001.jpg", "caption": ["A dog on a beach.", "Sunny day."]},
    {"id": "002", "image": "002.jpg", "caption": "A cat."},
]
REFERENCES = [f"Reference answer {i}." for i in range(4)]
ANSWERS = [f"Model answer {i}." for i in range(4)]
REPLIES = [
    "8 9\nAssistant 2 gives more detail.",  # (8, 9)
    "7,7\nBoth fine.",  # comma -> space: (7, 7)
    "8 4\nAssistant 2 misses the point.",  # (8, 4)
    "Assistant 1: 8, Assistant 2: 6",  # not two values on the first line -> (-1, -1), averaged in
]
# conv: mean (8, 9), (-1, -1) = (3.5, 4.0) -> 114.3; detail 100.0; complex 50.0;
# all: (22 / 4, 19 / 4) = (5.5, 4.75) -> 86.4
HEADLINE = {"Overall": 86.4, "Conversation": 114.3, "Detail": 100.0, "Complex": 50.0}


class RecordingJudge(Judge):
    def __init__(self, replies: Sequence[str | None]):
        self.replies = list(replies)
        self.model = "recording"
        self.requests: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        self.requests += requests
        return {
            r.id: JudgeResult(r.id, self.replies[int(r.id)], None if self.replies[int(r.id)] else "timeout")
            for r in requests
        }

    def describe(self) -> dict[str, Any]:
        return {"judge": "recording"}


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_bench(
    root: Path,
    questions: Sequence[dict[str, Any]] = QUESTIONS,
    context: Sequence[dict[str, Any]] = CONTEXT,
    references: Sequence[str] = REFERENCES,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "questions.jsonl", questions)
    write_jsonl(root / "context.jsonl", context)
    write_jsonl(
        root / "answers_gpt4.jsonl",
        [
            {
                "question_id": q.get("question_id"),
                "prompt": q["text"],
                "text": ref,
                "answer_id": f"a{i}",
                "model_id": "gpt-4-0314",
                "metadata": {},
            }
            for i, (q, ref) in enumerate(zip(questions, references))
        ],
    )
    (root / "images").mkdir(exist_ok=True)
    for name in ("001.jpg", "002.jpg"):
        Image.new("RGB", (8, 8), "white").save(root / "images" / name)
    return root


def responses(texts: Sequence[str] = ANSWERS) -> dict[str, Response]:
    return {str(i): Response(str(i), t, "stop") for i, t in enumerate(texts)}


# ------------------------------------------------------------------------------------------ official rules
@pytest.mark.parametrize(
    "review, pair",
    [
        ("8 9", (8.0, 9.0)),
        ("8 9\nexplanation", (8.0, 9.0)),
        ("8,9", (8.0, 9.0)),
        ("7.5 6", (7.5, 6.0)),
        ("8, 9", (-1.0, -1.0)),  # ", " -> two spaces -> three parts
        ("8 9 ", (-1.0, -1.0)),  # trailing space -> three parts
        ("Assistant 1: 8", (-1.0, -1.0)),
        ("8/10 9/10", (-1.0, -1.0)),
        ("", (-1.0, -1.0)),
        ("9", (-1.0, -1.0)),
        ("\n8 9", (-1.0, -1.0)),  # only the first line counts
    ],
)
def test_parse_score(review, pair):
    assert parse_score(review) == pair


def test_relative_score_rounds_the_means_first():
    assert relative_score([(8, 9), (-1, -1)]) == (114.3, [3.5, 4.0])
    # means 2/3 -> 0.667 and 1/3 -> 0.333 before the ratio: 49.9 (unrounded means give 50.0)
    assert relative_score([(1, 1), (1, 0), (0, 0)]) == (49.9, [0.667, 0.333])
    assert relative_score([(0, 3)]) == (None, [0.0, 3.0])


def test_caption_join_quirk():
    assert caption_text(["A dog.", "Sunny."]) == "A dog.\nSunny."
    assert caption_text("A cat.") == "A\n \nc\na\nt\n."  # '\n'.join(str), as the official code
    assert caption_text("A cat.", "text") == "A cat."
    assert caption_text(["A dog.", "Sunny."], "text") == "A dog.\nSunny."


def test_judge_prompt_is_the_official_one(tmp_path):
    root = write_bench(tmp_path / "bench")
    judge = RecordingJudge(REPLIES)
    task = LLaVABench(data_root=root)
    task.score(task.samples(), responses(), judge)
    req = judge.requests[0]
    assert req.temperature == 0.2 and req.max_tokens == 1024
    assert req.messages[0] == {"role": "system", "content": JUDGE_SYSTEM}
    prompt = RULES["llava_bench_conv"]["prompt"]
    assert req.messages[1] == {
        "role": "user",
        "content": (
            "[Context]\nA dog on a beach.\nSunny day.\n\n[Question]\nWhat is the dog doing?\n\n"
            "[Assistant 1]\nReference answer 0.\n\n[End of Assistant 1]\n\n"
            "[Assistant 2]\nModel answer 0.\n\n[End of Assistant 2]\n\n"
            f"[System]\n{prompt}\n\n"
        ),
    }
    assert prompt.startswith("We would like to request your feedback on the performance of two AI assistants")
    assert "represented with a few sentences describing the image. \nPlease rate" in prompt
    # default: the fixed script (LLaVA 237165b, run by LLaVA-1.5's llavabench.sh): a string caption as it is
    assert judge.requests[2].messages[1]["content"].startswith("[Context]\nA cat.\n\n[Question]\nWhy")
    assert RULES["llava_bench_detail"] == RULES["llava_bench_complex"] == RULES["llava_bench_conv"]
    assert LLaVABench.default_judge_model == DEFAULT_JUDGE_MODEL == "gpt-4-0314"
    judge2 = RecordingJudge(REPLIES)
    task2 = LLaVABench(data_root=root, options={"llava_bench_caption": "join"})  # v1.0.0's quirk, on request
    m = task2.score(task2.samples(), responses(), judge2)
    assert judge2.requests[2].messages[1]["content"].startswith("[Context]\nA\n \nc\na\nt\n.\n\n[Question]")
    assert any("caption: join" in n for n in m.notes)
    with pytest.raises(ValueError, match="llava_bench_other"):
        judge_content("c", "q", "r", "a", "other")


# ------------------------------------------------------------------------------------------ scoring
def test_relative_scores_from_saved_replies(tmp_path):
    root = write_bench(tmp_path / "bench")
    task = LLaVABench(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["0", "1", "2", "3"]
    assert samples[0].prompt == "What is the dog doing?" and samples[0].images[0].load("0").size == (8, 8)
    assert task.needs_judge() and task.default_max_new_tokens == 1024
    metrics = task.score(samples, responses(), ReplayJudge(REPLIES))
    assert metrics.headline == HEADLINE
    assert metrics.breakdown["Conversation"] == {"Score": 114.3, "Reference": 3.5, "Model": 4.0, "n": 2}
    assert metrics.breakdown["summary"] == {"Reference": 5.5, "Model": 4.75, "n": 4}
    assert metrics.counts["unparsed"] == 1 and metrics.counts["judge_failed"] == 0
    assert metrics.records[3]["tuple"] == [-1.0, -1.0] and metrics.records[3]["parsed"] is False
    assert any("averaged in as [-1, -1]" in n for n in metrics.notes)


def test_failed_judgment_is_counted_not_scored(tmp_path):
    root = write_bench(tmp_path / "bench")
    task = LLaVABench(data_root=root)
    metrics = task.score(task.samples(), responses(), ReplayJudge([*REPLIES[:3], None]))
    # conv: (8, 9) -> 112.5; all: (23/3, 20/3) -> (7.667, 6.667) -> 87.0
    assert metrics.headline == {"Overall": 87.0, "Conversation": 112.5, "Detail": 100.0, "Complex": 50.0}
    assert metrics.counts["judge_failed"] == 1 and metrics.records[3]["judge_error"]
    # a failed generation is not judged
    m = task.score(
        task.samples(),
        {k: v for k, v in responses().items() if k != "2"},
        ReplayJudge({"0": REPLIES[0], "1": REPLIES[1], "3": REPLIES[3]}),
    )
    assert "Complex" not in m.headline and m.counts["no_response"] == 1
    assert any("no judged question of category Complex" in n for n in m.notes)
    with pytest.raises(ConfigError, match="--reviews"):
        task.score(task.samples(), responses(), None)


def test_official_review_file_and_answers_through_the_cli(tmp_path, capsys):
    root = write_bench(tmp_path / "bench")
    reviews = tmp_path / "reviews.jsonl"
    write_jsonl(
        reviews,
        [
            {
                "id": i + 1,
                "question_id": i,
                "answer1_id": f"a{i}",
                "answer2_id": f"b{i}",
                "category": f"llava_bench_{QUESTIONS[i]['category']}",
                "content": r,
                "tuple": list(parse_score(r)),
            }
            for i, r in enumerate(REPLIES)
        ],
    )
    answers = tmp_path / "answers.jsonl"
    write_jsonl(
        answers,
        [
            {
                "question_id": i,
                "prompt": q["text"],
                "text": ANSWERS[i],
                "answer_id": f"b{i}",
                "model_id": "m",
                "metadata": {},
            }
            for i, q in enumerate(QUESTIONS)
        ],
    )
    task = LLaVABench(data_root=root)
    metrics, coverage = task.score_file(answers, task.read_reviews(reviews))
    assert metrics.headline == HEADLINE and coverage == {"samples": 4, "responses": 4, "missing": 0}
    listed = tmp_path / "replies.json"
    listed.write_text(json.dumps(REPLIES))
    code = main(
        [
            "--log-level",
            "WARNING",
            "score",
            "llava_bench",
            "--data-root",
            str(root),
            "--responses",
            str(answers),
            "--reviews",
            str(listed),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == HEADLINE


def test_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    rows = [
        {
            "question_id": q["question_id"],
            "question": q["text"],
            "image": {"bytes": buf.getvalue(), "path": None},
            "caption": ctx,
            "gpt_answer": REFERENCES[i],
            "category": q["category"],
            "image_id": q["image"],
        }
        for i, (q, ctx) in enumerate(zip(QUESTIONS, ["A dog on a beach.\nSunny day.", "x", "A cat.", "A cat."]))
    ]
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "data" / "train-00000-of-00001.parquet")
    task = LLaVABench(data_root=tmp_path / "hf", options={"llava_bench_caption": "text"})
    samples = task.samples()
    assert samples[1].images[0].load("1").size == (8, 8)
    judge = RecordingJudge(REPLIES)
    assert task.score(samples, responses(), judge).headline == HEADLINE
    assert judge.requests[0].messages[1]["content"].startswith("[Context]\nA dog on a beach.\nSunny day.\n\n")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="questions.jsonl") as exc:
        LLaVABench(data_root=tmp_path).samples()
    assert "liuhaotian/llava-bench-in-the-wild" in str(exc.value)
    root = write_bench(tmp_path / "cat", [{**QUESTIONS[0], "category": "chat"}], references=REFERENCES[:1])
    with pytest.raises(DataError, match=r"questions.jsonl, line 1: question 0: category 'chat'; expected one of conv"):
        LLaVABench(data_root=root).samples()
    root = write_bench(tmp_path / "ctx", [{**QUESTIONS[0], "image": "009.jpg"}], references=REFERENCES[:1])
    with pytest.raises(DataError, match=r"question 0: image '009.jpg' has no entry in .*context.jsonl"):
        LLaVABench(data_root=root).samples()
    root = write_bench(tmp_path / "order", QUESTIONS)
    refs = [json.loads(line) for line in (root / "answers_gpt4.jsonl").read_text().splitlines()]
    refs[0], refs[1] = refs[1], refs[0]
    write_jsonl(root / "answers_gpt4.jsonl", refs)
    with pytest.raises(DataError, match=r"answers_gpt4.jsonl, line 1: reference answer for question_id 1"):
        LLaVABench(data_root=root).samples()
    write_jsonl(root / "answers_gpt4.jsonl", refs[:3])
    with pytest.raises(DataError, match=r"holds 3 reference answers for the 4 questions"):
        LLaVABench(data_root=root).samples()
    root = write_bench(
        tmp_path / "noid", [{k: v for k, v in QUESTIONS[0].items() if k != "question_id"}], references=REFERENCES[:1]
    )
    with pytest.raises(DataError, match=r"questions.jsonl, line 1: expected \{\"question_id\": int"):
        LLaVABench(data_root=root).samples()
    with pytest.raises(ConfigError, match="llava_bench_caption"):
        LLaVABench(data_root=root, options={"llava_bench_caption": "lines"})


def test_bad_review_and_answer_files(tmp_path):
    root = write_bench(tmp_path / "bench")
    task = LLaVABench(data_root=root)
    short = tmp_path / "short.json"
    short.write_text(json.dumps(REPLIES[:3]))
    with pytest.raises(DataError, match=r"short.json: holds 3 replies for 4 questions"):
        task.read_reviews(short)
    bad = tmp_path / "bad.jsonl"
    write_jsonl(
        bad,
        [
            {"question_id": 0, "content": "8 9"},
            {"question_id": 1, "tuple": [1, 2]},
            {"question_id": 2, "content": "1 1"},
        ],
    )
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: expected an official review"):
        task.read_reviews(bad)
    partial = tmp_path / "partial.jsonl"
    write_jsonl(partial, [{"question_id": 0, "content": "8 9"}, {"question_id": 1, "content": "8 9"}])
    with pytest.raises(DataError, match=r"partial.jsonl: no reply for 2"):
        task.score(task.samples(), responses(), task.read_reviews(partial))
    unknown = tmp_path / "unknown.jsonl"
    write_jsonl(unknown, [{"question_id": 60, "text": "x"}])
    with pytest.raises(DataError, match=r"unknown.jsonl, line 1: question_id 60 is not a LLaVA-Bench question"):
        task.read_responses(unknown)
