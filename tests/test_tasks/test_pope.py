"""POPE: the official answer parsing and metrics (evaluate.py), the tasks, prompts, images and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.task import _TASKS
from harness.types import Response
from tasks.pope import (
    LLAVA_SUFFIX,
    SPLITS,
    Pope,
    PopeAdversarial,
    PopePopular,
    PopeRandom,
    parse_answer,
    pope_scores,
    read_questions,
    score_answer_file,
)

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "pope"

# 8 questions: 5 "yes", 3 "no". Model answers parse to yes yes yes no no | yes no no:
# TP 3, FN 2, FP 1, TN 2 -> accuracy 5/8, precision 3/4, recall 3/5, yes ratio 4/8.
LABELS = ["yes", "yes", "yes", "yes", "yes", "no", "no", "no"]
ANSWERS = [
    "Yes",
    "Yes, there is a dog in the image.",
    "yes",
    "No",
    "There is no dog. Yes.",
    "Yes. There is not a cat.",
    "No, there is not.",
    "no",
]


def write_split(
    root: Path, split: str, labels=LABELS, image: str = "COCO_val2014_000000000001.jpg", suffix: str = ".json"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"coco_pope_{split}{suffix}"
    path.write_text(
        "".join(
            json.dumps(
                {"question_id": i + 1, "image": image, "text": f"Is there a thing {i} in the image?", "label": label}
            )
            + "\n"
            for i, label in enumerate(labels)
        )
    )
    return path


def respond(samples, answers) -> dict[str, Response]:
    return {s.id: Response(s.id, a, "stop") for s, a in zip(samples, answers)}


# ------------------------------------------------------------------------------------------ answer parsing
@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No.", "no"),
        ("No, there is no dog.", "no"),
        ("no,", "no"),  # ',' removed before splitting
        (" No", "no"),  # split(' ') gives ['', 'No']
        ("There is no dog in the image", "no"),
        ("There is not a dog", "no"),
        ("not", "no"),
        ("Yes, there is a dog.", "yes"),
        ("NO", "yes"),  # case-sensitive: only 'No', 'no', 'not'
        ("Not really", "yes"),  # 'Not' is not in the list
        ("Nope", "yes"),
        ("There isn't a dog", "yes"),
        ("nothing", "yes"),
        ("", "yes"),  # anything without a no-word is yes
        ("I cannot tell", "yes"),
        ("Yes. There is not a dog.", "yes"),  # only the first sentence counts
        ("A dog. No.", "yes"),
        ("There is no.", "no"),
        ("No\nThere is a cat", "yes"),  # split on spaces only: the word is 'No\nThere'
        ("Yes, but no", "no"),
    ],
)
def test_answer_parsing_follows_evaluate_py(text, answer):
    assert parse_answer(text) == answer


# ------------------------------------------------------------------------------------------ metrics
def test_hand_computed_metrics():
    preds = [parse_answer(a) for a in ANSWERS]
    assert preds == ["yes", "yes", "yes", "no", "no", "yes", "no", "no"]
    sc = pope_scores(preds, LABELS)
    assert (sc.TP, sc.FN, sc.FP, sc.TN) == (3, 2, 1, 2)
    assert sc.Accuracy == 5 / 8
    assert sc.Precision == 3 / 4
    assert sc.Recall == 3 / 5
    assert sc.F1 == 2 * 0.75 * 0.6 / (0.75 + 0.6)
    assert sc.yes_ratio == 4 / 8
    assert sc.undefined == ()


def test_yes_ratio_is_the_models_not_the_ground_truths():
    """lmms-eval's pope_yes_ratio counts ground-truth labels (always 0.5 on POPE); POPE's counts the answers."""
    sc = pope_scores(["yes"] * 4, ["yes", "no", "no", "no"])
    assert sc.yes_ratio == 1.0
    assert (sc.Precision, sc.Recall, sc.Accuracy) == (0.25, 1.0, 0.25)


def test_zero_denominators_are_reported_as_zero():
    sc = pope_scores(["no", "no"], ["yes", "no"])  # no "yes" answer: precision undefined (official: ZeroDivisionError)
    assert sc.Precision == 0.0 and sc.F1 == 0.0 and sc.Recall == 0.0
    assert sc.undefined == ("Precision", "F1")
    assert sc.yes_ratio == 0.0 and sc.Accuracy == 0.5


def test_single_split_task_hand_computed(tmp_path):
    write_split(tmp_path, "random")
    task = PopeRandom(data_root=tmp_path, image_root=tmp_path)
    samples = task.samples()
    metrics = task.score(samples, respond(samples, ANSWERS))
    assert metrics.headline == {
        "Accuracy": 5 / 8,
        "F1": 2 * 0.75 * 0.6 / 1.35,
        "Precision": 0.75,
        "Recall": 0.6,
        "Yes Ratio": 0.5,
    }
    assert list(metrics.headline) == ["Accuracy", "F1", "Precision", "Recall", "Yes Ratio"]
    assert (
        metrics.counts.items()
        >= {
            "TP": 3,
            "FN": 2,
            "FP": 1,
            "TN": 2,
            "answered_yes": 4,
            "answered_no": 4,
            "scored": 8,
            "no_response": 0,
        }.items()
    )
    assert metrics.records[1] == {"id": "random-2", "split": "random", "answer": "yes", "label": "yes", "correct": True}
    assert [r["correct"] for r in metrics.records] == [True, True, True, False, False, False, True, True]


def test_all_splits_task_reports_each_split_and_their_mean(tmp_path):
    write_split(tmp_path, "random")  # the hand-computed split
    write_split(tmp_path, "popular", labels=["yes", "no"])  # answers yes, yes: acc 0.5, P 0.5, R 1
    write_split(tmp_path, "adversarial", labels=["yes", "no"])  # answers no, no: acc 0.5, P, R, F1 0
    task = Pope(data_root=tmp_path, image_root=tmp_path)
    samples = task.samples()
    assert [s.id for s in samples] == [f"random-{i}" for i in range(1, 9)] + [
        "popular-1",
        "popular-2",
        "adversarial-1",
        "adversarial-2",
    ]
    metrics = task.score(samples, respond(samples, ANSWERS + ["Yes", "Yes", "No", "No"]))
    random_f1 = 2 * 0.75 * 0.6 / 1.35
    assert metrics.breakdown["random"]["F1"] == random_f1
    assert metrics.breakdown["popular"] == {
        "Accuracy": 0.5,
        "F1": 2 * 0.5 * 1.0 / 1.5,
        "Precision": 0.5,
        "Recall": 1.0,
        "Yes Ratio": 1.0,
        "TP": 1,
        "FP": 1,
        "TN": 0,
        "FN": 0,
    }
    assert metrics.breakdown["adversarial"]["Yes Ratio"] == 0.0
    assert metrics.headline["Accuracy"] == (5 / 8 + 0.5 + 0.5) / 3
    assert metrics.headline["F1"] == (random_f1 + 2 * 0.5 * 1.0 / 1.5 + 0.0) / 3
    assert metrics.headline["Yes Ratio"] == (0.5 + 1.0 + 0.0) / 3
    assert metrics.counts["random_TP"] == 3 and metrics.counts["popular_FP"] == 1
    assert any("adversarial: Precision, F1 undefined" in n for n in metrics.notes)
    limited = task.samples(limit=3)
    m = task.score(limited, respond(limited, ANSWERS))
    assert list(m.breakdown) == ["random"]
    assert any("mean covers the splits present" in n for n in m.notes)


def test_missing_responses_are_counted_and_left_out(tmp_path):
    write_split(tmp_path, "popular")
    task = PopePopular(data_root=tmp_path, image_root=tmp_path)
    samples = task.samples()
    responses = respond(samples, ANSWERS)
    del responses["popular-4"]  # the "No" answer to a yes question (FN)
    metrics = task.score(samples, responses)
    assert metrics.counts["no_response"] == 1 and metrics.counts["scored"] == 7
    assert (metrics.counts["TP"], metrics.counts["FN"]) == (3, 1)
    assert metrics.headline["Accuracy"] == 5 / 7
    assert task.score(samples, {}).headline == {}


def test_answer_file_paired_by_position_like_evaluate_py(tmp_path):
    labels = write_split(tmp_path, "adversarial")
    pope_style = tmp_path / "answers.json"
    pope_style.write_text("".join(json.dumps({"question": "q", "answer": a}) + "\n" for a in ANSWERS))
    llava_style = tmp_path / "answers.jsonl"
    llava_style.write_text("".join(json.dumps({"question_id": i, "text": a}) + "\n" for i, a in enumerate(ANSWERS)))
    for path in (pope_style, llava_style):
        sc = score_answer_file(path, labels)
        assert (sc.TP, sc.FN, sc.FP, sc.TN) == (3, 2, 1, 2)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"answer": "yes"}) + "\n")
    with pytest.raises(DataError, match="holds 1 answers for the 8 questions"):
        score_answer_file(short, labels)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"answer": "yes"}) + "\n" + json.dumps({"response": "no"}) + "\n")
    with pytest.raises(DataError, match=r"bad.json, line 2: missing or non-string field 'answer'"):
        score_answer_file(bad, labels)


# ------------------------------------------------------------------------------------------ tasks, prompts, images
def test_registered_tasks():
    assert {n: _TASKS[n] for n in ("pope", "pope_random", "pope_popular", "pope_adversarial")} == {
        "pope": Pope,
        "pope_random": PopeRandom,
        "pope_popular": PopePopular,
        "pope_adversarial": PopeAdversarial,
    }
    assert Pope.splits == SPLITS


def test_the_shipped_question_files(tmp_path):
    task = Pope(data_root=DATA, image_root=tmp_path)
    samples = task.samples()
    assert len(samples) == 9000 and len({s.id for s in samples}) == 9000
    for split in SPLITS:
        part = [s for s in samples if s.meta["split"] == split]
        assert len(part) == 3000 and Counter(s.reference for s in part) == {"yes": 1500, "no": 1500}
        assert len({s.meta["image"] for s in part}) == 500
    first = samples[0]
    assert first.id == "random-1"
    assert first.prompt == "Is there a snowboard in the image?\nAnswer the question using a single word or phrase."
    assert first.images[0].path == str(tmp_path / "COCO_val2014_000000310196.jpg")
    assert task.default_max_new_tokens == 128


@pytest.mark.parametrize(
    ("option", "prompt"),
    [
        (None, "Is there a thing 0 in the image?" + LLAVA_SUFFIX),
        ("", "Is there a thing 0 in the image?"),
        ("none", "Is there a thing 0 in the image?"),
        ("\\nAnswer yes or no.", "Is there a thing 0 in the image?\nAnswer yes or no."),
        (" Please answer yes or no.", "Is there a thing 0 in the image? Please answer yes or no."),
    ],
)
def test_prompt_suffix_option(tmp_path, option, prompt):
    write_split(tmp_path, "random")
    options = {} if option is None else {"pope_suffix": option}
    assert PopeRandom(data_root=tmp_path, options=options).samples()[0].prompt == prompt
    assert LLAVA_SUFFIX == "\nAnswer the question using a single word or phrase."


def test_bad_suffix_option(tmp_path):
    with pytest.raises(ConfigError, match="pope_suffix"):
        PopeRandom(data_root=tmp_path, options={"pope_suffix": 3})


def test_images_under_the_root_or_val2014(tmp_path):
    name = "COCO_val2014_000000000001.jpg"
    write_split(tmp_path / "q", "random", image=name)
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "coco" / "val2014" / name)
    sample = PopeRandom(data_root=tmp_path / "q", image_root=tmp_path / "coco").samples()[0]
    assert sample.images[0].path == str(tmp_path / "coco" / "val2014" / name)
    assert sample.images[0].load(sample.id).size == (20, 10)
    Image.new("RGB", (4, 4)).save(tmp_path / "coco" / name)
    sample = PopeRandom(data_root=tmp_path / "q", image_root=tmp_path / "coco").samples()[0]
    assert sample.images[0].path == str(tmp_path / "coco" / name)


def test_jsonl_file_name_is_accepted(tmp_path):
    path = write_split(tmp_path, "adversarial", suffix=".jsonl")
    assert PopeAdversarial(data_root=tmp_path).check_files() == [path]


# ------------------------------------------------------------------------------------------ bad input
def test_missing_file_names_it(tmp_path):
    with pytest.raises(MissingDataFile) as err:
        Pope(data_root=tmp_path).samples()
    assert "coco_pope_random.json" in str(err.value) and "AoiDragon/POPE" in str(err.value)
    with pytest.raises(ConfigError, match="--data-root"):
        PopeRandom().check_files()  # the data root is resolved on first use


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_split(tmp_path, "random")
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"coco_pope_random.json, line 3: invalid JSON"):
        PopeRandom(data_root=tmp_path).samples()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "maybe"}, "line 2: question 2: field 'label' must be \"yes\" or \"no\", got 'maybe'"),
        ({"label": "Yes"}, "line 2: question 2: field 'label' must be"),
        ({"text": None}, "line 2: question 2: missing or non-string field 'text'"),
        ({"image": 5}, "line 2: question 2: missing or non-string field 'image'"),
        ({"question_id": "2"}, "line 2: field 'question_id' must be an integer"),
        ({"question_id": 1}, "line 2: question_id 1 appears twice (first on line 1)"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, change, message):
    path = write_split(tmp_path, "random")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1].update(change)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        read_questions(path, "random")
    assert message in str(err.value) and str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no questions"):
        read_questions(path, "random")


def test_evaluate_with_a_fake_engine_writes_the_run(tmp_path):
    from harness.engines.base import Engine, EngineOptions
    from harness.runner import evaluate
    from harness.store import RunStore
    from harness.types import Decoding

    class Scripted(Engine):
        name = "scripted"

        def __init__(self, answers):
            super().__init__("m", Decoding(), EngineOptions(batch_size=3))
            self.answers = answers
            self.prompts: list[str] = []

        def generate(self, requests):
            for r in requests:
                self.prompts.append(r.prompt)
                yield Response(r.sample_id, self.answers[r.sample_id], "stop")

        def describe(self):
            return {"engine": "scripted"}

    for split in SPLITS:
        write_split(tmp_path / "q", split)
    Image.new("RGB", (8, 8)).save(tmp_path / "COCO_val2014_000000000001.jpg")
    task = Pope(data_root=tmp_path / "q", image_root=tmp_path)
    samples = task.samples()
    engine = Scripted({s.id: ANSWERS[i % 8] for i, s in enumerate(samples)})
    store = RunStore(tmp_path / "run")
    store.open({}, {"task": "pope"})
    result = evaluate(task, engine, store, samples, progress=False)
    assert engine.prompts[0] == "Is there a thing 0 in the image?" + LLAVA_SUFFIX
    assert result.metrics.headline["Accuracy"] == 5 / 8 and result.metrics.headline["Recall"] == 0.6
    written = json.loads((store.dir / "metrics.json").read_text())
    assert written["breakdown"]["adversarial"]["TP"] == 3
    assert len((store.dir / "scores.jsonl").read_text().splitlines()) == 24


# ------------------------------------------------------------------------------------------ harness score
def _official_layout_answers(split: str, path: Path, *, ids: bool = True, category: bool = False) -> list[str]:
    """Answers to the shipped questions of ``split``: "Yes" or "No, there is not." by a fixed pattern."""
    texts = []
    lines = []
    for q in read_questions(DATA / f"coco_pope_{split}.json", split):
        text = "Yes" if (q.question_id * 7) % 3 else "No, there is not."
        texts.append(text)
        rec: dict[str, object] = {"text": text} if ids else {"question": q.text, "answer": text}
        if ids:
            rec["question_id"] = q.question_id
        if category:
            rec["category"] = split
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return texts


@pytest.mark.parametrize("ids", [True, False])
def test_harness_score_reads_the_official_answer_files(tmp_path, capsys, ids):
    """`harness score pope_random --responses FILE` (LLaVA's answers with question ids, or POPE's by position)
    gives the numbers of the official position-paired scorer on the same answers."""
    from harness.cli import main

    answers = tmp_path / "answers.jsonl"
    _official_layout_answers("random", answers, ids=ids)
    official = score_answer_file(answers, DATA / "coco_pope_random.json")
    assert (
        main(["--log-level", "WARNING", "score", "pope_random", "--responses", str(answers), "--data-root", str(DATA)])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    for key in ("Accuracy", "Precision", "Recall", "F1"):
        assert out["headline"][key] == getattr(official, key), key
    assert out["headline"]["Yes Ratio"] == official.yes_ratio
    assert out["coverage"] == {"samples": 3000, "responses": 3000, "missing": 0}


def test_harness_score_pope_all_splits_needs_each_answers_split(tmp_path, capsys):
    from harness.cli import main

    combined = tmp_path / "all.jsonl"
    parts = []
    for split in SPLITS:
        _official_layout_answers(split, tmp_path / f"{split}.jsonl", category=True)
        parts.append((tmp_path / f"{split}.jsonl").read_text())
    combined.write_text("".join(parts))
    assert (
        main(["--log-level", "WARNING", "score", "pope", "--responses", str(combined), "--data-root", str(DATA)]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    means = [score_answer_file(tmp_path / f"{split}.jsonl", DATA / f"coco_pope_{split}.json").F1 for split in SPLITS]
    assert out["headline"]["F1"] == pytest.approx(sum(means) / 3, abs=1e-12)
    _official_layout_answers("random", combined)  # ids but no category: which split?
    assert main(["score", "pope", "--responses", str(combined), "--data-root", str(DATA)]) == 2
    err = capsys.readouterr().err
    assert "no 'category' field" in err and "line 1" in err and "Traceback" not in err


def test_harness_score_pope_refuses_short_and_repeated_answer_files(tmp_path):
    from tasks.pope import PopeRandom

    task = PopeRandom(data_root=DATA)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"question": "q", "answer": "yes"}) + "\n")
    with pytest.raises(DataError, match="holds 1 answers without question ids for the 3000 questions"):
        task.score_file(short)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(
        json.dumps({"question_id": 1, "text": "yes"}) + "\n" + json.dumps({"question_id": 1, "text": "no"}) + "\n"
    )
    with pytest.raises(DataError, match=r"twice.jsonl, line 2: question random-1 is answered twice"):
        task.score_file(twice)
