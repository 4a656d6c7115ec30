"""ScienceQA-IMG: LLaVA-1.5's option-letter parsing and its quirks, IMG-Accuracy / Accuracy as eval_science_qa.py
computes them (missing answers included), prompts, the release and HF layouts, answer files and bad input."""

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
from tasks.scienceqa import (
    FAILED,
    SINGLE_PRED_SUFFIX,
    ScienceQAImg,
    build_prompt,
    parse_answer,
    pred_index,
)


def problem(
    question: str, choices: list[str], answer: int, hint: str = "", image: str | None = "image.png", **extra: Any
) -> dict[str, Any]:
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": "grade4",
        "subject": "natural science",
        "topic": "t",
        "category": "c",
        "skill": "s",
        "lecture": "",
        "solution": "",
        "split": "test",
        **extra,
    }


PROBLEMS: dict[str, dict[str, Any]] = {
    "1": problem("Which figure of speech is used in this text?\nSing, O goddess", ["chiasmus", "apostrophe"], 1),
    "2": problem(
        "Which property do these three objects have in common?",
        ["shiny", "slippery", "opaque"],
        0,
        hint="Select the best answer.",
    ),
    "3": problem("Select the plant.", ["Orcas swim.", "Oak trees grow."], 1, image=None),
    "4": problem("Which continent is highlighted?", ["Africa", "Asia", "Europe", "Oceania"], 3),
    "5": problem("Is the statement true?", ["true", "false"], 0),
    "6": problem("What is the ratio?", ["0:4", "1:3", "2:2", "3:1", "4:0"], 4),
    "7": problem("A training question?", ["a", "b"], 0, split="train"),
}
SPLITS = {"train": ["7"], "val": [], "test": ["1", "2", "3", "4", "5", "6"]}
# responses and whether each is right under eval_science_qa.py
ANSWERS = {
    "1": ("B", True),  # an exact letter
    "2": ("The answer is A.", True),  # "The answer is X." (the '.' matches any character)
    "3": ("B", True),  # text-only question (only in scienceqa_subset=all)
    "4": ("D.", False),  # two characters, no ". " -> FAILED
    "5": ("E", False),  # a letter beyond the two choices -> index -1
    "6": ("E. 4:0", True),  # "X. " prefix
}


def write_release(
    root: Path, problems: dict[str, Any] | None = None, splits: dict[str, Any] | None = None, images: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    problems = PROBLEMS if problems is None else problems
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(SPLITS if splits is None else splits))
    if images:
        for pid, p in problems.items():
            if p.get("image"):
                (root / "test" / pid).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), "white").save(root / "test" / pid / p["image"])
    return root


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "image": {"bytes": png(), "path": None} if p["image"] else None,
            "question": p["question"],
            "choices": p["choices"],
            "answer": p["answer"],
            "hint": p["hint"],
            "task": p["task"],
            "grade": p["grade"],
            "subject": p["subject"],
            "topic": p["topic"],
            "category": p["category"],
            "skill": p["skill"],
            "lecture": "",
            "solution": "",
        }
        for pid, p in PROBLEMS.items()
        if pid in SPLITS["test"]
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001-abc.parquet")
    return root


def responses(ids: list[str]) -> dict[str, Response]:
    return {pid: Response(pid, ANSWERS[pid][0], "stop") for pid in ids}


# ------------------------------------------------------------------------------------------ official rules
@pytest.mark.parametrize(
    "text, parsed",
    [
        ("A", "A"),
        ("E", "E"),
        ("B. apostrophe", "B"),
        ("A. no wait, the answer is B.", "A"),
        ("The answer is C.", "C"),
        ("The answer is C, because", "C"),
        ("so The answer is Dx", "D"),
        ("The answer is C", FAILED),  # nothing after the letter for the regex's '.'
        ("The answer is A. The answer is B.", FAILED),  # two hits
        ("The answer is F.", "F"),  # [A-Z]: parsed, but no option (index -1)
        (" B", FAILED),
        ("B.", FAILED),
        ("B\n", FAILED),
        ("(B)", FAILED),
        ("b", FAILED),
        ("F", FAILED),
        ("the answer is B.", FAILED),
        ("", FAILED),
    ],
)
def test_parse_answer(text, parsed):
    assert parse_answer(text) == parsed


def test_pred_index():
    assert pred_index("B", 2) == 1
    assert pred_index("C", 2) == -1
    assert pred_index("E", 5) == 4
    assert pred_index("F", 5) == -1
    assert pred_index(FAILED, 3) == -1


def test_build_prompt_matches_llava_cqm_a():
    assert (
        build_prompt("Which one?", "Select the best answer.", ["x", "y", "z"])
        == "Context: Select the best answer.\nWhich one?\nA. x\nB. y\nC. z"
    )
    assert build_prompt("Which one?", "", ["x", "y"]) == "Which one?\nA. x\nB. y"


# ------------------------------------------------------------------------------------------ task
def test_release_layout_image_subset(tmp_path):
    root = write_release(tmp_path / "sqa")
    task = ScienceQAImg(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["1", "2", "4", "5", "6"]  # test split order, image questions only
    assert samples[1].prompt == (
        "Context: Select the best answer.\nWhich property do these three objects have in "
        "common?\nA. shiny\nB. slippery\nC. opaque\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert samples[0].images[0].path == str(root / "test" / "1" / "image.png")
    assert task.default_max_new_tokens == 1024
    metrics = task.score(samples, responses(["1", "2", "4", "5", "6"]))
    assert metrics.headline == {"IMG-Accuracy": 60.0}  # 3 of 5
    assert metrics.counts["failed_parse"] == 1 and metrics.counts["img_questions"] == 5
    assert [r["correct"] for r in metrics.records] == [True, True, False, False, True]
    assert metrics.records[3] == {
        "id": "5",
        "parsed": "E",
        "pred_index": -1,
        "answer": 0,
        "ground_truth": "A",
        "correct": False,
        "is_multimodal": True,
    }
    # a missing answer leaves IMG-Accuracy's denominator, as officially (prompt 'Unknown' has no <image>)
    m = task.score(samples, responses(["1", "2", "4", "6"]))
    assert m.headline == {"IMG-Accuracy": 75.0} and m.counts["no_response"] == 1


def test_all_subset_counts_missing_answers_wrong_in_accuracy(tmp_path):
    root = write_release(tmp_path / "sqa")
    task = ScienceQAImg(data_root=root, options={"scienceqa_subset": "all"})
    samples = task.samples()
    assert [s.id for s in samples] == ["1", "2", "3", "4", "5", "6"]
    assert samples[2].images == () and samples[2].prompt.startswith("Select the plant.\nA. Orcas swim.")
    m = task.score(samples, responses(list(ANSWERS)))
    assert m.headline == {"IMG-Accuracy": 60.0, "Accuracy": 66.67}  # 3/5 and 4/6
    assert m.breakdown["unrounded"]["Accuracy"] == pytest.approx(400 / 6)
    m = task.score(samples, responses(["1", "2", "3", "4", "6"]))  # image question 5 unanswered
    assert m.headline == {"IMG-Accuracy": 75.0, "Accuracy": 66.67}  # 3/4, and 4/6 with 5 counted wrong
    m = task.score(samples, responses(["1", "2", "4", "5", "6"]))  # text question 3 unanswered
    assert m.headline == {"IMG-Accuracy": 60.0, "Accuracy": 50.0}


def test_llava_question_file_is_used_verbatim(tmp_path):
    root = write_release(tmp_path / "sqa")
    llava = [
        {
            "id": "1",
            "image": "1/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nVerbatim LLaVA text\nA. chiasmus\nB. apostrophe"},
                {"from": "gpt", "value": "B"},
            ],
        }
    ]
    (root / "llava_test_CQM-A.json").write_text(json.dumps(llava))
    with pytest.raises(DataError, match=r"llava_test_CQM-A.json: no question with id 2"):
        ScienceQAImg(data_root=root).samples()
    for pid in ("2", "4", "5", "6"):
        llava.append(
            {
                "id": pid,
                "image": f"{pid}/image.png",
                "conversations": [{"from": "human", "value": f"<image>\nQ{pid}"}, {"from": "gpt", "value": "A"}],
            }
        )
    (root / "llava_test_CQM-A.json").write_text(json.dumps(llava))
    samples = ScienceQAImg(data_root=root).samples()
    assert samples[0].prompt == "Verbatim LLaVA text\nA. chiasmus\nB. apostrophe" + SINGLE_PRED_SUFFIX
    assert ScienceQAImg(data_root=root, options={"scienceqa_suffix": "none"}).samples()[1].prompt == "Q2"


def test_parquet_layout(tmp_path):
    root = write_parquet(tmp_path / "hf")
    task = ScienceQAImg(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["test-0", "test-1", "test-3", "test-4", "test-5"]
    assert samples[0].images[0].load("test-0").size == (8, 8)
    texts = {"test-0": "B", "test-1": "The answer is A.", "test-3": "D.", "test-4": "E", "test-5": "E. 4:0"}
    assert task.score(samples, {k: Response(k, v, "stop") for k, v in texts.items()}).headline == {"IMG-Accuracy": 60.0}
    assert len(ScienceQAImg(data_root=root, options={"scienceqa_subset": "all"}).samples()) == 6


def test_llava_answer_file_through_the_cli(tmp_path, capsys):
    root = write_release(tmp_path / "sqa")
    answers = tmp_path / "answers.jsonl"
    with answers.open("w") as fh:
        for pid, (text, _) in ANSWERS.items():  # LLaVA answers every test question, text-only ones too
            prompt = ("<image>\n" if PROBLEMS[pid]["image"] else "") + "question" + SINGLE_PRED_SUFFIX
            fh.write(
                json.dumps(
                    {
                        "question_id": pid,
                        "prompt": prompt,
                        "text": text,
                        "answer_id": "a",
                        "model_id": "m",
                        "metadata": {},
                    }
                )
                + "\n"
            )
    metrics, coverage = ScienceQAImg(data_root=root).score_file(answers)
    assert metrics.headline == {"IMG-Accuracy": 60.0}
    assert coverage == {"samples": 5, "responses": 5, "missing": 0}
    code = main(
        [
            "--log-level",
            "WARNING",
            "score",
            "scienceqa_img",
            "--data-root",
            str(root),
            "--responses",
            str(answers),
            "--option",
            "scienceqa_subset=all",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["headline"] == {"IMG-Accuracy": 60.0, "Accuracy": 66.67}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="problems.json") as exc:
        ScienceQAImg(data_root=tmp_path).samples()
    assert "lupantech/ScienceQA" in str(exc.value)
    root = write_release(tmp_path / "nopid", splits={"test": ["1", "99"]}, images=False)
    with pytest.raises(DataError, match=r"problems.json: pid 99 of split 'test'"):
        ScienceQAImg(data_root=root).samples()
    bad = {**PROBLEMS, "4": problem("Q?", ["a", "b"], 2)}
    root = write_release(tmp_path / "answer", bad, images=False)
    with pytest.raises(
        DataError,
        match=r"problems.json: problem 4: field 'answer' must be the index of the right "
        r"choice \(0..1\), got 2",
    ):
        ScienceQAImg(data_root=root).samples()
    bad = {**PROBLEMS, "2": {k: v for k, v in PROBLEMS["2"].items() if k != "choices"}}
    root = write_release(tmp_path / "choices", bad, images=False)
    with pytest.raises(DataError, match=r"problem 2: field 'choices' must be a non-empty list"):
        ScienceQAImg(data_root=root).samples()
    root = write_release(tmp_path / "split", images=False)
    with pytest.raises(ConfigError, match=r"no split 'dev'"):
        ScienceQAImg(data_root=root, options={"scienceqa_split": "dev"}).samples()
    with pytest.raises(ConfigError, match="scienceqa_subset"):
        ScienceQAImg(data_root=root, options={"scienceqa_subset": "text"})
    (root / "pid_splits.json").write_text(json.dumps(["1", "2"]))
    with pytest.raises(DataError, match=r"pid_splits.json: expected \{split: \[pid, ...\]\}"):
        ScienceQAImg(data_root=root).samples()


def test_bad_answer_files(tmp_path):
    root = write_release(tmp_path / "sqa")
    task = ScienceQAImg(data_root=root)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"question_id": "7", "text": "A"}) + "\n")  # a train pid
    with pytest.raises(DataError, match=r"unknown.jsonl, line 1: question_id 7 is not a ScienceQA test question"):
        task.score_file(unknown)
    dup = tmp_path / "dup.jsonl"
    dup.write_text((json.dumps({"question_id": "1", "text": "A"}) + "\n") * 2)
    with pytest.raises(DataError, match=r"dup.jsonl, line 2: a second answer for question_id 1"):
        task.score_file(dup)
    notext = tmp_path / "notext.jsonl"
    notext.write_text(json.dumps({"question_id": "1"}) + "\n")
    with pytest.raises(DataError, match=r"notext.jsonl, line 1: expected a 'question_id'"):
        task.score_file(notext)
