"""TextVQA: the EvalAI answer normalization and its quirks, the 10-answer leave-one-out VQA accuracy on hand-computed
cases, prompts (LLaVA-1.5, OCR variant), the release and HF layouts, answer files and bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.types import Response
from tasks.textvqa import (
    LLAVA_SUFFIX,
    TextVQA,
    answer_scores,
    normalize_answer,
    prompt_processor,
    vqa_accuracy,
)

# (question_id, question, image_id, answers, prediction, hand-computed score)
CASES: list[tuple[int, str, str, list[str], str, float]] = [
    # "two" -> "2": 4 matching humans -> every leave-one-out subset has >= 3 -> 1.0
    (101, "how many bottles are there?", "img_a", ["2"] * 3 + ["two"] + ["3"] * 6, "Two.", 1.0),
    # articles and "-" (no space around it -> a space): "The Coca-Cola" = "coca cola"; 2 matches ->
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    (102, "what brand is it?", "img_a", ["coca cola", "Coca-Cola"] + ["pepsi"] * 8, "The Coca-Cola", 0.6),
    # punctuation "!" dropped; 1 match -> 9 * 1/3 / 10 = 0.3
    (103, "is it open?", "img_b", ["yes"] + ["no"] * 9, "Yes!", 0.3),
    # periods deleted ("dr." -> "dr"), case folded; 3 matches -> (3 * 2/3 + 7) / 10 = 0.9
    (
        104,
        "what drink is advertised?",
        "img_b",
        ["dr. pepper", "Dr Pepper", "dr pepper"] + ["coke"] * 7,
        "the Dr. Pepper",
        0.9,
    ),
    # no human said it -> 0
    (105, "what time is it?", "img_c", ["10:30"] * 10, "unknown", 0.0),
]
ACCURACY = round(100 * (1.0 + 0.6 + 0.3 + 0.9 + 0.0) / 5, 2)  # 56.0
OCR = {"img_a": ["DAKOTA", "Coca-Cola"], "img_b": ["OPEN"], "img_c": []}


def png(color: str = "white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def record(qid: int, question: str, image_id: str, answers: list[str]) -> dict[str, Any]:
    return {
        "question": question,
        "image_id": image_id,
        "image_classes": ["Bottle"],
        "answers": answers,
        "question_tokens": question.split(),
        "question_id": qid,
        "set_name": "val",
    }


def write_release(root: Path, records: list[dict[str, Any]] | None = None, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else [record(q, text, img, ans) for q, text, img, ans, _, _ in CASES]
    (root / "TextVQA_0.5.1_val.json").write_text(
        json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": records})
    )
    if images:
        (root / "train_images").mkdir(exist_ok=True)
        for img in {r["image_id"] for r in records}:
            Image.new("RGB", (8, 8), "white").save(root / "train_images" / f"{img}.jpg")
    return root


def write_llava_questions(root: Path) -> None:
    """LLaVA's llava_textvqa_val_v051_ocr.jsonl: question_id = image id, capitalized question, OCR line."""
    with (root / "llava_textvqa_val_v051_ocr.jsonl").open("w") as fh:
        for _, text, img, _, _, _ in CASES:
            prompt = f"{text.capitalize()}\nReference OCR token: {', '.join(OCR[img])}{LLAVA_SUFFIX}"
            fh.write(
                json.dumps({"question_id": img, "image": f"{img}.jpg", "text": prompt, "category": "default"}) + "\n"
            )


def write_parquet(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = [
        {**record(q, text, img, ans), "ocr_tokens": OCR[img], "image": {"bytes": png(), "path": None}}
        for q, text, img, ans, _, _ in CASES
    ]
    pq.write_table(pa.Table.from_pylist(rows[:3]), root / "data" / "validation-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), root / "data" / "validation-00001-of-00002.parquet")
    return root


def responses(**texts: str) -> dict[str, Response]:
    return {k: Response(k, v, "stop") for k, v in texts.items()}


PREDICTIONS = {str(q): pred for q, _, _, _, pred, _ in CASES}


# ------------------------------------------------------------------------------------------ official rules
@pytest.mark.parametrize(
    "text, normalized",
    [
        ("Two", "2"),
        ("none", "0"),
        ("The answer", "answer"),
        ("an apple", "apple"),
        ("a", ""),
        ("coca-cola", "coca cola"),
        ("coca - cola", "coca cola"),
        ("Dr. Pepper", "dr pepper"),
        ("a.m.", "am"),
        ("3.5", "3.5"),
        ("no.", "no"),
        ("10,000", "10000"),
        ("what?", "what"),
        ("dont", "don't"),
        ("somebody'd", "somebodyd"),
        ("It's", "it 's"),
        ("yes\nno", "yes no"),
        ("(hello)", "hello"),
        ("@home", "home"),
        ("x/y", "x y"),
        ("x / y", "x y"),
        ("a/b", "b"),  # "a" is an article
    ],
)
def test_evalai_normalization(text, normalized):
    assert normalize_answer(text) == normalized


def test_period_strip_deletes_at_most_32_periods():
    # re.UNICODE (32) lands in re.sub's count argument
    assert normalize_answer("x" + ".y" * 40) == "x" + "y" * 32 + ".y" * 8


def test_leave_one_out_accuracy():
    three = ["3"] * 10
    assert vqa_accuracy("3", three) == 1.0
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("4", three) == 0.0
    assert answer_scores(["a dog"] * 2 + ["dog"] * 8) == {"dog": 1.0}  # articles dropped before counting
    for _, _, _, answers, pred, expected in CASES:
        assert vqa_accuracy(pred, answers) == pytest.approx(expected)
    with pytest.raises(ValueError, match="asserts 10"):
        vqa_accuracy("3", ["3"] * 9)


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("What is the brand?\nAnswer the question using a single word or phrase.", "what is the brand?"),
        ("What is it?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.", "what is it?"),
        ("Reference OCR token: A, B\nWhat is it?\nAnswer briefly.", "what is it?"),
        ("OCR tokens: a, b. Question: Which one? Short answer:", "which one?"),
    ],
)
def test_prompt_processor(prompt, question):
    assert prompt_processor(prompt) == question


def test_prompt_processor_rejects_other_layouts():
    with pytest.raises(ValueError):
        prompt_processor("one line only")


# ------------------------------------------------------------------------------------------ task
def test_release_layout_prompts_images_and_accuracy(tmp_path):
    root = write_release(tmp_path / "tvqa")
    task = TextVQA(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["101", "102", "103", "104", "105"]
    assert samples[0].prompt == "How many bottles are there?\nAnswer the question using a single word or phrase."
    assert samples[0].images[0].path == str(root / "train_images" / "img_a.jpg")
    assert samples[0].images[0].load("101").size == (8, 8)
    assert task.default_max_new_tokens == 128
    metrics = task.score(samples, responses(**PREDICTIONS))
    assert metrics.headline == {"Accuracy": ACCURACY} == {"Accuracy": 56.0}
    assert metrics.breakdown["unrounded"]["Accuracy"] == pytest.approx(56.0)
    assert [r["score"] for r in metrics.records] == pytest.approx([c[-1] for c in CASES])
    assert metrics.records[1]["answer"] == "coca cola"
    # a failed generation is left out (absent from the official answer file), and counted
    partial = {k: v for k, v in responses(**PREDICTIONS).items() if k != "105"}
    m2 = task.score(samples, partial)
    assert m2.headline == {"Accuracy": 70.0} and m2.counts["no_response"] == 1


def test_suffix_option_and_rounding(tmp_path):
    root = write_release(tmp_path / "tvqa")
    task = TextVQA(data_root=root, options={"textvqa_suffix": "none"})
    assert task.samples()[1].prompt == "What brand is it?"
    # 1/3 -> printed 33.33
    samples = task.samples()[2:3]
    metrics = task.score(samples, responses(**{"103": "no"}))  # 9 matches -> 1.0
    assert metrics.headline == {"Accuracy": 100.0}
    m = task.score(task.samples()[1:4], responses(**{"102": "x", "103": "x", "104": "dr pepper"}))
    assert m.headline == {"Accuracy": 30.0}  # (0 + 0 + 0.9) / 3
    with pytest.raises(ConfigError, match="textvqa_ocr"):
        TextVQA(data_root=root, options={"textvqa_ocr": "maybe"})
    with pytest.raises(ConfigError, match="textvqa_format"):
        TextVQA(data_root=root, options={"textvqa_format": "csv"})


def test_ocr_prompts_from_llava_file_and_from_ocr_tokens(tmp_path):
    root = write_release(tmp_path / "tvqa")
    with pytest.raises(MissingDataFile, match="llava_textvqa_val_v051_ocr.jsonl"):
        TextVQA(data_root=root, options={"textvqa_ocr": "true"}).samples()
    write_llava_questions(root)
    s = TextVQA(data_root=root, options={"textvqa_ocr": "true"}).samples()
    assert s[0].prompt == (
        "How many bottles are there?\nReference OCR token: DAKOTA, Coca-Cola\n"
        "Answer the question using a single word or phrase."
    )
    assert s[4].prompt.endswith("Reference OCR token: \nAnswer the question using a single word or phrase.")
    pq_root = write_parquet(tmp_path / "hf")
    s = TextVQA(data_root=pq_root, options={"textvqa_ocr": True}).samples()
    assert s[2].prompt == "Is it open?\nReference OCR token: OPEN\nAnswer the question using a single word or phrase."


def test_parquet_layout(tmp_path):
    root = write_parquet(tmp_path / "hf")
    task = TextVQA(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["101", "102", "103", "104", "105"]
    assert samples[3].images[0].data is not None and samples[3].images[0].load("104").size == (8, 8)
    assert task.score(samples, responses(**PREDICTIONS)).headline == {"Accuracy": 56.0}
    write_release(root, images=False)  # both present: auto takes the JSON file, parquet on request
    assert TextVQA(data_root=root).samples()[0].images[0].path is not None
    assert TextVQA(data_root=root, options={"textvqa_format": "parquet"}).samples()[0].images[0].data is not None


def test_llava_answer_file_scored_as_eval_textvqa(tmp_path, capsys):
    root = write_release(tmp_path / "tvqa")
    answers = tmp_path / "llava.jsonl"
    with answers.open("w") as fh:
        for _, text, img, _, pred, _ in CASES:
            prompt = f"{text.capitalize()}\nReference OCR token: {', '.join(OCR[img])}{LLAVA_SUFFIX}"
            fh.write(
                json.dumps(
                    {
                        "question_id": img,
                        "prompt": prompt,
                        "text": pred,
                        "answer_id": "x",
                        "model_id": "m",
                        "metadata": {},
                    }
                )
                + "\n"
            )
    metrics, coverage = TextVQA(data_root=root).score_file(answers)
    assert metrics.headline == {"Accuracy": 56.0}
    assert coverage == {"samples": 5, "responses": 5, "missing": 0}
    code = main(["--log-level", "WARNING", "score", "textvqa", "--data-root", str(root), "--responses", str(answers)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == {"Accuracy": 56.0}


def test_evalai_submission_and_jsonl_by_question_id(tmp_path):
    root = write_release(tmp_path / "tvqa")
    sub = tmp_path / "submission.json"
    sub.write_text(json.dumps([{"question_id": int(k), "answer": v} for k, v in PREDICTIONS.items()][:4]))
    metrics, coverage = TextVQA(data_root=root).score_file(sub)
    assert metrics.headline == {"Accuracy": 70.0}
    assert coverage == {"samples": 5, "responses": 4, "missing": 1}
    lines = tmp_path / "answers.jsonl"
    lines.write_text("".join(json.dumps({"question_id": int(k), "response": v}) + "\n" for k, v in PREDICTIONS.items()))
    assert TextVQA(data_root=root).score_file(lines)[0].headline == {"Accuracy": 56.0}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="TextVQA_0.5.1_val.json") as exc:
        TextVQA(data_root=tmp_path).samples()
    assert "textvqa.org" in str(exc.value)
    with pytest.raises(MissingDataFile, match="validation"):
        TextVQA(data_root=tmp_path, options={"textvqa_format": "parquet"}).samples()
    root = write_release(tmp_path / "nine", [record(7, "q?", "i", ["a"] * 9)], images=False)
    with pytest.raises(DataError, match=r"TextVQA_0.5.1_val.json.*data\[0\] \(question_id 7\): 9 answers; expected 10"):
        TextVQA(data_root=root).samples()
    root = write_release(tmp_path / "noq", [{"question_id": 8, "image_id": "i", "answers": ["a"] * 10}], images=False)
    with pytest.raises(DataError, match=r"question_id 8\): missing or non-string field 'question'"):
        TextVQA(data_root=root).samples()
    root = write_release(tmp_path / "dup", [record(9, "q?", "i", ["a"] * 10)] * 2, images=False)
    with pytest.raises(DataError, match="question_id 9 appears twice"):
        TextVQA(data_root=root).samples()
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "TextVQA_0.5.1_val.json").write_text(json.dumps([record(1, "q?", "i", ["a"] * 10)]))
    with pytest.raises(DataError, match=r"expected TextVQA's \{\"data\": \[...\]\}"):
        TextVQA(data_root=tmp_path / "layout").samples()


def test_bad_answer_files(tmp_path):
    root = write_release(tmp_path / "tvqa")
    task = TextVQA(data_root=root)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"question_id": 999, "answer": "x"}]))
    with pytest.raises(DataError, match=r"unknown.json: entry 0: question_id 999 is not a TextVQA question"):
        task.score_file(unknown)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(
        json.dumps({"question_id": 101, "answer": "x"}) + "\n" + json.dumps({"question_id": 101, "answer": "y"}) + "\n"
    )
    with pytest.raises(DataError, match=r"dup.jsonl, line 2: a second answer for question_id 101"):
        task.score_file(dup)
    llava = tmp_path / "llava.jsonl"
    llava.write_text(json.dumps({"question_id": "img_a", "prompt": "Who?\nAnswer briefly.", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"llava.jsonl, line 1: no TextVQA question 'who\?' on image img_a"):
        task.score_file(llava)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question_id": 101}) + "\n")
    with pytest.raises(DataError, match=r"missing.jsonl, line 1: expected an integer 'question_id' and the answer"):
        task.score_file(missing)
