"""MM-Vet: the official grader prompt and retry loop, score parsing, per-capability / integration / total
aggregation with numpy's rounding, saved grade files, the release and HF layouts, answer files and bad input."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.judge import Judge, JudgeRequest, JudgeResult
from harness.types import Response
from tasks.mmvet import (
    DEFAULT_JUDGE_MODEL,
    GRADER_PROMPT,
    RETRY_SUFFIX,
    MMVet,
    grader_query,
    np_round,
    parse_grade,
    read_reviews,
)

DATA: dict[str, dict[str, Any]] = {
    "v1_0": {
        "imagename": "v1_0.png",
        "capability": ["ocr", "math"],
        "question": "What is x in the equation?",
        "answer": "-1<AND>-5",
    },
    "v1_1": {
        "imagename": "v1_1.jpg",
        "capability": ["rec"],
        "question": "What animal is this?",
        "answer": "dog<OR>puppy",
    },
    "v1_2": {
        "imagename": "v1_2.jpg",
        "capability": ["rec", "know"],
        "question": "Who painted this?",
        "answer": "Van Gogh",
    },
    "v1_3": {"imagename": "v1_3.jpg", "capability": ["ocr"], "question": "What does the sign say?", "answer": "STOP"},
    "v1_4": {
        "imagename": "v1_4.jpg",
        "capability": ["rec", "gen"],
        "question": "Explain the meme.",
        "answer": "It is funny.",
    },
}
PREDICTIONS = {"v1_0": "x = -1", "v1_1": "A puppy.", "v1_2": "Monet", "v1_3": "It says STOP.", "v1_4": "No idea."}
# replies per call of each question's grading loop (first call, then the retries)
SCRIPT: dict[str, list[str | None]] = {
    "v1_0": ["0.5"],
    "v1_1": ["1.0"],
    "v1_2": ["0.3 because"],  # split(" ")[0] -> "0.3"
    "v1_3": ["Correct", "1.5", "0.8"],  # not a number, out of [0, 1], then 0.8 at the second retry
    "v1_4": ["yes", "yes", "yes", "yes", "yes"],  # never parses: 0.0 after the four retries
}
# rec (1.0 + 0.3 + 0.0) / 3 -> 43.3; ocr (0.5 + 0.8) / 2 -> 65.0; math 50.0; know 30.0; gen 0.0;
# total 2.6 / 5 -> 52.0
HEADLINE = {"Total": 52.0, "rec": 43.3, "ocr": 65.0, "math": 50.0, "know": 30.0, "gen": 0.0}


class ScriptedJudge(Judge):
    """Replies by (question, call of the grading loop); keeps the requests."""

    def __init__(self, script: dict[str, list[str | None]] = SCRIPT):
        self.script = script
        self.model = "scripted"
        self.requests: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        self.requests += requests
        out = {}
        for r in requests:
            sid, _, retry = r.id.partition("#retry")
            text = self.script[sid][int(retry or 0)]
            out[r.id] = JudgeResult(r.id, text, None if text is not None else "timeout")
        return out

    def describe(self) -> dict[str, Any]:
        return {"judge": "scripted"}


def write_release(root: Path, data: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = DATA if data is None else data
    (root / "mm-vet.json").write_text(json.dumps(data))
    (root / "images").mkdir(exist_ok=True)
    for rec in data.values():
        if isinstance(rec, dict) and isinstance(rec.get("imagename"), str):
            Image.new("RGB", (8, 8), "white").save(root / "images" / rec["imagename"])
    return root


def responses(preds: dict[str, str] = PREDICTIONS) -> dict[str, Response]:
    return {k: Response(k, v, "stop") for k, v in preds.items()}


# ------------------------------------------------------------------------------------------ official rules
@pytest.mark.parametrize(
    "content, score",
    [
        ("0.5", 0.5),
        ("1.0", 1.0),
        ("0", 0.0),
        (" 0.7", None),
        ("0.7 ", 0.7),
        ("0.3 because", 0.3),
        ("1.5", None),
        ("-0.1", None),
        ("Correct", None),
        ("0.5\nexplanation", None),
        ("", None),
    ],
)
def test_parse_grade(content, score):
    assert parse_grade(content) == score


def test_nan_passes_the_official_range_check():
    value = parse_grade("nan")
    assert value is not None and math.isnan(value)


def test_grader_query_is_the_official_one():
    assert GRADER_PROMPT.startswith(
        "Compare the ground truth and prediction from AI models, to give a correctness "
        "score for the prediction. <AND> in the ground truth means"
    )
    assert GRADER_PROMPT.endswith("physical characteristics. | 1.0\n")
    assert GRADER_PROMPT.count("\n") == 11  # intro, blank line, header, rule, 7 examples
    query = grader_query("What is x in the equation?", "-1<AND>-5", "x = -1")
    assert query == GRADER_PROMPT + "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | "
    assert grader_query("Q", "a<OR>b", "p", retry=True) == GRADER_PROMPT + "\nQ | a <OR> b | p | " + RETRY_SUFFIX
    assert RETRY_SUFFIX == "\nPredict the correctness of the answer (digit): "
    assert MMVet.default_judge_model == DEFAULT_JUDGE_MODEL == "gpt-4-0613"


def test_numpy_rounding():
    assert np_round(0.35) == 0.4 and round(0.35, 1) == 0.3  # round(np.float64) != Python's round here
    assert np_round(43.333333) == 43.3


# ------------------------------------------------------------------------------------------ scoring
def test_grading_loop_and_aggregation(tmp_path):
    root = write_release(tmp_path / "mmvet")
    task = MMVet(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == list(DATA)
    assert samples[0].prompt == "What is x in the equation?"
    assert samples[0].images[0].path == str(root / "images" / "v1_0.png") and task.needs_judge()
    judge = ScriptedJudge()
    metrics = task.score(samples, responses(), judge)
    assert metrics.headline == HEADLINE
    assert list(metrics.headline) == ["Total", "rec", "ocr", "math", "know", "gen"]  # most_common order
    assert metrics.breakdown["rec"] == {"Score": 43.3, "n": 3}
    assert metrics.breakdown["capability_integrations"] == {
        "ocr_math": 50.0,
        "rec": 100.0,
        "rec_know": 30.0,
        "ocr": 80.0,
        "rec_gen": 0.0,
    }
    assert metrics.breakdown["unrounded"]["rec"] == pytest.approx(130 / 3)
    assert metrics.counts["unparsed"] == 1 and metrics.counts["retried"] == 2 and metrics.counts["judge_failed"] == 0
    by_id = {r["id"]: r for r in metrics.records}
    assert by_id["v1_3"]["score"] == 0.8 and by_id["v1_3"]["attempts"] == 3
    assert by_id["v1_4"] == {
        "id": "v1_4",
        "capabilities": ["rec", "gen"],
        "attempts": 5,
        "judge": "yes",
        "score": 0.0,
        "parsed": False,
        "judge_error": None,
    }
    # the calls: 5 first calls, then retries of v1_3 and v1_4 at 0.0, 0.5, then v1_4 at 1.0 and 1.5 (no 6th call)
    calls = [(r.id, r.temperature) for r in judge.requests]
    assert calls[:5] == [(sid, 0.0) for sid in DATA]
    assert calls[5:] == [
        ("v1_3#retry1", 0.0),
        ("v1_4#retry1", 0.0),
        ("v1_3#retry2", 0.5),
        ("v1_4#retry2", 0.5),
        ("v1_4#retry3", 1.0),
        ("v1_4#retry4", 1.5),
    ]
    assert all(r.max_tokens == 3 and len(r.messages) == 1 and r.messages[0]["role"] == "user" for r in judge.requests)
    assert judge.requests[5].messages[0]["content"] == grader_query(
        "What does the sign say?", "STOP", "It says STOP.", retry=True
    )


def test_failed_judgments_and_missing_responses(tmp_path):
    root = write_release(tmp_path / "mmvet")
    task = MMVet(data_root=root)
    script = {**SCRIPT, "v1_2": [None], "v1_3": ["Correct", None]}  # no reply, first or in the retries
    metrics = task.score(task.samples(), responses(), ScriptedJudge(script))
    # left out: rec (1.0 + 0.0) / 2 = 50.0; ocr 0.5 -> 50.0; total 1.5 / 3 = 50.0
    assert metrics.headline == {"Total": 50.0, "rec": 50.0, "ocr": 50.0, "math": 50.0, "gen": 0.0}
    assert metrics.counts["judge_failed"] == 2
    assert any("2 judgments failed" in n for n in metrics.notes)
    m = task.score(task.samples(), responses({k: v for k, v in PREDICTIONS.items() if k != "v1_1"}), ScriptedJudge())
    assert m.counts["no_response"] == 1 and m.headline["Total"] == 40.0  # 1.6 / 4
    with pytest.raises(ConfigError, match="--reviews"):
        task.score(task.samples(), responses(), None)


def test_saved_grade_files(tmp_path, capsys):
    root = write_release(tmp_path / "mmvet")
    task = MMVet(data_root=root)
    grade = {
        sid: {"model": ["gpt-4-0613"], "content": [lines[-1]], "score": [parse_grade(lines[-1]) or 0.0]}
        for sid, lines in SCRIPT.items()
    }
    grade_file = tmp_path / "llava_gpt-4-0613-grade-1runs.json"
    grade_file.write_text(json.dumps(grade))
    assert task.score(task.samples(), responses(), task.read_reviews(grade_file)).headline == HEADLINE
    listed = tmp_path / "replies.json"
    listed.write_text(json.dumps([lines[-1] for lines in SCRIPT.values()]))
    results = tmp_path / "llava.json"  # the official results/<model>.json
    results.write_text(json.dumps(PREDICTIONS))
    code = main(
        [
            "--log-level",
            "WARNING",
            "score",
            "mmvet",
            "--data-root",
            str(root),
            "--responses",
            str(results),
            "--reviews",
            str(listed),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == HEADLINE
    llava = tmp_path / "answers.jsonl"  # LLaVA's model_vqa.py answers: question_id n -> v1_n
    llava.write_text(
        "".join(
            json.dumps({"question_id": int(k[3:]), "prompt": "q", "text": v}) + "\n" for k, v in PREDICTIONS.items()
        )
    )
    assert task.read_responses(llava)["v1_3"].text == "It says STOP."


def test_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(buf, format="PNG")
    rows = [
        {
            "question_id": k,
            "image": {"bytes": buf.getvalue(), "path": None},
            "question": v["question"],
            "answer": v["answer"],
            "image_source": "x",
            "capability": ",".join(v["capability"]),
        }
        for k, v in DATA.items()
    ]
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "data" / "test-00000-of-00001.parquet")
    task = MMVet(data_root=tmp_path / "hf")
    samples = task.samples()
    assert samples[4].reference["capabilities"] == ["rec", "gen"]
    assert samples[4].images[0].load("v1_4").size == (8, 8)
    assert task.score(samples, responses(), ScriptedJudge()).headline == HEADLINE


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="mm-vet.json") as exc:
        MMVet(data_root=tmp_path).samples()
    assert "yuweihao/MM-Vet" in str(exc.value)
    bad = {**DATA, "v1_2": {k: v for k, v in DATA["v1_2"].items() if k != "answer"}}
    with pytest.raises(DataError, match=r"mm-vet.json: record v1_2: missing or non-string field 'answer'"):
        MMVet(data_root=write_release(tmp_path / "noanswer", bad)).samples()
    bad = {**DATA, "v1_1": {**DATA["v1_1"], "capability": []}}
    with pytest.raises(DataError, match=r"record v1_1: field 'capability' must be a non-empty list"):
        MMVet(data_root=write_release(tmp_path / "nocap", bad)).samples()
    root = tmp_path / "list"
    root.mkdir()
    (root / "mm-vet.json").write_text(json.dumps(list(DATA.values())))
    with pytest.raises(DataError, match=r"expected MM-Vet's \{\"v1_0\""):
        MMVet(data_root=root).samples()
    with pytest.raises(ConfigError, match="mmvet_format"):
        MMVet(data_root=root, options={"mmvet_format": "tsv"})


def test_bad_review_and_answer_files(tmp_path):
    root = write_release(tmp_path / "mmvet")
    task = MMVet(data_root=root)
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["0.5"] * 3))
    with pytest.raises(DataError, match=r"short.json: holds 3 replies for 5 questions"):
        task.read_reviews(short)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"v1_0": {"score": [0.5]}}))
    with pytest.raises(DataError, match=r"bad.json: record v1_0: expected the official grade record"):
        read_reviews(bad, list(DATA))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"v1_0": "0.5"}))
    with pytest.raises(DataError, match=r"partial.json: no reply for v1_1"):
        task.score(task.samples(), responses(), task.read_reviews(partial))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"v2_9": "x"}))
    with pytest.raises(DataError, match=r"unknown.json: v2_9 is not an MM-Vet question"):
        task.read_responses(unknown)
    notext = tmp_path / "notext.jsonl"
    notext.write_text(json.dumps({"question_id": 0}) + "\n")
    with pytest.raises(DataError, match=r"notext.jsonl, line 1: answer 'v1_0': expected an id"):
        task.read_responses(notext)
