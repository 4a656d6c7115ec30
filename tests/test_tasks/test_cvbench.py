"""CV-Bench: the golden numbers of Cambrian's *_test.py and the dataset card's aggregation, the matching quirks,
the HF layouts (JSONL + img/, parquet), answer-file formats and bad input."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.types import Response
from tasks.cvbench import (
    CAMBRIAN_SUFFIX,
    CVBench,
    aggregate,
    extract_answer_2d,
    extract_answer_omni,
    match_answer,
    parse_answer_spec,
    read_cambrian_answers,
    score_cambrian_files,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "cv_bench"
ADE, COCO, OMNI = (GOLDEN / f"cvbench_{s}_answers.jsonl" for s in ("ade", "coco", "omni"))


def golden_printed() -> dict[str, float]:
    """The numbers of the card's printout: {'Overall', '2D', '3D', 'ADE20K', 'COCO', 'Omni3D'}."""
    text = (GOLDEN / "cvbench_readme_aggregate.stdout.txt").read_text()
    out = {"Overall": float(re.search(r"CV-Bench Accuracy: ([\d.]+)", text).group(1))}
    for key in ("2D", "3D", "ADE20K", "COCO", "Omni3D"):
        out[key] = float(re.search(rf"{key} Accuracy: ([\d.]+)", text).group(1))
    return out


def rounded(headline: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in headline.items()}


# ------------------------------------------------------------------------------------------ golden
def test_golden_numbers_from_the_answer_files():
    expected = {"Overall": 0.6143, "2D": 0.7286, "3D": 0.5, "ADE20K": 0.8571, "COCO": 0.6, "Omni3D": 0.5}
    assert golden_printed() == expected
    for spec in (f"{ADE},{COCO},{OMNI}", str(GOLDEN), f"ADE20K={ADE}, COCO={COCO}, Omni3D={OMNI}"):
        metrics, coverage = CVBench().score_file(spec)
        assert rounded(metrics.headline) == expected
        assert coverage == {"samples": 18, "responses": 18, "missing": 0}
    m = score_cambrian_files([("ADE20K", ADE), ("COCO", COCO), ("Omni3D", OMNI)])
    assert m.headline["Overall"] == pytest.approx(((6 / 7 + 3 / 5) / 2 + 3 / 6) / 2)
    assert m.breakdown["ADE20K"] == {
        "Accuracy": 6 / 7,
        "n": 7,
        "Count": 0.75,
        "Count n": 4,
        "Relation": 1.0,
        "Relation n": 3,
    }
    assert m.breakdown["Omni3D"]["Depth"] == pytest.approx(1 / 3) and m.counts["right"] == 12
    for stdout in ("ade", "coco", "omni"):
        assert "Saved synthmodel metrics" in (GOLDEN / f"cambrian_{stdout}_test.stdout.txt").read_text()


def test_golden_through_the_cli(capsys):
    code = main(["--log-level", "WARNING", "score", "cvbench", "--responses", str(GOLDEN)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert rounded(json.loads(out.out)["headline"]) == golden_printed()


# ------------------------------------------------------------------------------------------ matching rules
@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "b"),
        ("(A)", "a"),
        ("The answer is C.", "c"),
        ("Answer: B", "b"),
        ("A.", "a"),
        ("below", "b"),
        ("(B) right", "b"),
        ("4", "4"),
        ("", ""),
    ],
)
def test_extract_answer_2d(text, letter):
    assert extract_answer_2d(text) == letter


def test_omni_matching_quirks():
    assert extract_answer_omni("table") == "t"
    assert not match_answer("Omni3D", "table", "(A)", ["table", "bookcase"]).right  # "t" != "table"
    assert match_answer("Omni3D", "y", "(B)", ["x", "y"]).right  # a one-character option text matches
    assert match_answer("Omni3D", "(A)", "(A)", ["chair", "sofa"]).right
    assert not match_answer("Omni3D", "desk", "(B)", ["box", "desk"]).right
    assert extract_answer_omni(",") == "" and extract_answer_2d(",") == ","  # rstrip('.:,') vs rstrip('.')
    m = match_answer("COCO", "4", "(C)", ["2", "3", "4", "5"])
    assert not m.right and m.gt_letter == "c" and m.gt_text is None


def test_aggregation_with_a_missing_source():
    headline, notes = aggregate({"ADE20K": (1, 2), "Omni3D": (3, 4)})
    assert headline == {"3D": 0.75, "ADE20K": 0.5, "Omni3D": 0.75}
    assert "COCO" in notes[0] and "Overall" in notes[0] and "2D" in notes[0]


# ------------------------------------------------------------------------------------------ fixture benchmark
def png(colour: str = "white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def record(idx: int, source: str, task: str, answer: str, choices: Sequence[str]) -> dict[str, Any]:
    kind = "3D" if source == "Omni3D" else "2D"
    letters = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {
        "idx": idx,
        "type": kind,
        "task": task,
        "question": f"Q{idx}?",
        "choices": list(choices),
        "answer": answer,
        "prompt": f"Q{idx}? Select from the following choices.\n{letters}",
        "filename": f"img/{kind}/{task.lower()}/{source.lower()}_{idx}.png",
        "source": source,
        "source_dataset": source,
        "source_filename": f"{idx}.jpg",
        "target_class": None,
        "target_size": None,
        "bbox": None,
    }


RECORDS = [
    record(0, "ADE20K", "Count", "(B)", ["1", "2", "3", "4"]),
    record(1, "ADE20K", "Relation", "(A)", ["left", "right"]),
    record(2, "COCO", "Count", "(C)", ["0", "1", "2"]),
    record(3, "COCO", "Relation", "(B)", ["above", "below"]),
    record(4, "Omni3D", "Depth", "(A)", ["lamp", "chair"]),
    record(5, "Omni3D", "Distance", "(B)", ["box", "desk"]),
]
#: ADE 1/2, COCO 2/2, Omni 1/2 -> 2D 0.75, 3D 0.5, Overall 0.625
RESPONSES = {"2D-0": "B", "2D-1": "right", "2D-2": "The answer is (C).", "2D-3": "below", "3D-4": "(A)", "3D-5": "desk"}


def write_jsonl(
    root: Path, records: Sequence[dict[str, Any]] = RECORDS, split: bool = True, images: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if split:
        for kind in ("2D", "3D"):
            (root / f"test_{kind.lower()}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in records if r["type"] == kind)
            )
    else:
        (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if images:
        for r in records:
            (root / r["filename"]).parent.mkdir(parents=True, exist_ok=True)
            (root / r["filename"]).write_bytes(png())
    return root


def write_parquet(root: Path, records: Sequence[dict[str, Any]] = RECORDS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    for kind in ("2D", "3D"):
        rows = [{**r, "image": {"bytes": png("red"), "path": None}} for r in records if r["type"] == kind]
        pq.write_table(pa.Table.from_pylist(rows), root / f"test_{kind.lower()}.parquet")
    return root


def as_responses(texts: dict[str, str]) -> dict[str, Response]:
    return {k: Response(k, v, "stop") for k, v in texts.items()}


def test_jsonl_layout_samples_and_scores(tmp_path):
    root = write_jsonl(tmp_path / "cv")
    task = CVBench(data_root=root)
    samples = task.samples()
    assert [s.id for s in samples] == ["2D-0", "2D-1", "2D-2", "2D-3", "3D-4", "3D-5"]
    instruction = "\nAnswer with the option's letter from the given choices directly."
    assert samples[0].prompt == RECORDS[0]["prompt"] + instruction
    assert samples[0].prompt.endswith(CAMBRIAN_SUFFIX)
    assert samples[0].images[0].path == str(root / "img/2D/count/ade20k_0.png")
    assert samples[0].images[0].load("2D-0").size == (8, 8)
    m = task.score(samples, as_responses(RESPONSES))
    assert m.headline == {"Overall": 0.625, "2D": 0.75, "3D": 0.5, "ADE20K": 0.5, "COCO": 1.0, "Omni3D": 0.5}
    assert m.breakdown["COCO"] == {
        "Accuracy": 1.0,
        "n": 2,
        "Count": 1.0,
        "Count n": 1,
        "Relation": 1.0,
        "Relation n": 1,
    }
    assert [r["right"] for r in m.records] == [True, False, True, True, True, False]
    partial = dict(RESPONSES)
    del partial["3D-5"]
    m = task.score(samples, as_responses(partial))
    assert m.headline["Omni3D"] == 1.0 and m.counts["no_response"] == 1
    assert CVBench(data_root=root, options={"cvbench_suffix": "none"}).samples()[0].prompt == RECORDS[0]["prompt"]
    assert CVBench(data_root=root, options={"cvbench_suffix": "\\nAnswer."}).samples()[0].prompt.endswith("\nAnswer.")
    old = write_jsonl(tmp_path / "old", split=False)
    assert [s.id for s in CVBench(data_root=old).samples()] == [s.id for s in samples]


def test_parquet_layout_and_auto_choice(tmp_path):
    root = write_parquet(tmp_path / "cv")
    samples = CVBench(data_root=root).samples()
    assert len(samples) == 6 and samples[0].images[0].data is not None
    assert samples[0].images[0].load("2D-0").getpixel((0, 0)) == (255, 0, 0)
    write_jsonl(root, images=False)  # JSONL files without img/: auto reads the parquet images
    assert CVBench(data_root=root).samples()[0].images[0].data is not None
    only_jsonl = CVBench(data_root=root, options={"cvbench_format": "jsonl"}).samples()
    assert only_jsonl[0].images[0].path == str(root / "img/2D/count/ade20k_0.png")
    write_jsonl(root)  # now with images: auto reads the JSONL
    assert CVBench(data_root=root).samples()[0].images[0].path is not None


def test_indexed_answers_against_the_benchmark(tmp_path):
    root = write_jsonl(tmp_path / "cv")
    answers = tmp_path / "answers.jsonl"
    lines = [
        {"id": "2D-0", "response": "B"},
        {"idx": 1, "type": "2D", "text": "right"},
        {"idx": 2, "prediction": "The answer is (C)."},
        {"idx": 3, "response": "below"},
        {"id": "3D-4", "response": "(A)"},
    ]
    answers.write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = CVBench(data_root=root)
    assert sorted(task.read_responses(answers)) == ["2D-0", "2D-1", "2D-2", "2D-3", "3D-4"]
    metrics, coverage = task.score_file(answers)
    assert coverage == {"samples": 6, "responses": 5, "missing": 1}
    assert metrics.headline["Overall"] == pytest.approx(((0.5 + 1.0) / 2 + 1.0) / 2)
    with pytest.raises(ConfigError, match="--data-root"):
        CVBench().score_file(answers)
    answers.write_text(json.dumps({"id": "2D-9", "response": "A"}) + "\n")
    with pytest.raises(DataError, match=r"answers.jsonl, line 1: 2D-9 is not a CV-Bench question"):
        task.read_responses(answers)
    answers.write_text(json.dumps({"id": "2D-0", "response": "A"}) + "\n" + json.dumps({"idx": 0, "text": "B"}) + "\n")
    with pytest.raises(DataError, match="line 2: a second answer for 2D-0"):
        task.read_responses(answers)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_benchmark_files(tmp_path):
    with pytest.raises(MissingDataFile, match="test_2d.jsonl"):
        CVBench(data_root=tmp_path).samples()
    bad = [dict(r) for r in RECORDS]
    del bad[1]["answer"]
    root = write_jsonl(tmp_path / "a", bad)
    with pytest.raises(DataError, match=r"test_2d.jsonl, line 2: record 2: missing field\(s\) answer"):
        CVBench(data_root=root).samples()
    cases = [
        ("answer", "C", "expected the option letter in parentheses"),
        ("answer", "(E)", "names no option"),
        ("source", "KITTI", "source 'KITTI'"),
        ("idx", "0", "must be an integer"),
        ("choices", "A,B", "non-empty list of strings"),
    ]
    for i, (key, value, message) in enumerate(cases):
        bad = [dict(r) for r in RECORDS]
        bad[0][key] = value
        root = write_jsonl(tmp_path / f"b{i}", bad, images=False)
        with pytest.raises(DataError, match=re.escape(message)) as err:
            CVBench(data_root=root).samples()
        assert "test_2d.jsonl, line 1" in str(err.value)
    bad = [dict(r) for r in RECORDS] + [dict(RECORDS[0])]
    root = write_jsonl(tmp_path / "dup", bad, images=False)
    with pytest.raises(DataError, match="2D idx 0 appears twice"):
        CVBench(data_root=root).samples()
    root = write_parquet(tmp_path / "pq", [{k: v for k, v in r.items() if k != "filename"} for r in RECORDS])
    assert CVBench(data_root=root).samples()  # embedded images need no filename
    with pytest.raises(ConfigError, match="unknown cvbench_format"):
        CVBench(options={"cvbench_format": "csv"})


def test_bad_answer_files(tmp_path):
    unnamed = tmp_path / "answers.jsonl"
    unnamed.write_text(ADE.read_text())
    with pytest.raises(ConfigError, match="cannot tell which CV-Bench source"):
        CVBench().score_file(unnamed)
    assert CVBench().score_file(f"ADE20K={unnamed}")[0].headline == {"ADE20K": 6 / 7}
    with pytest.raises(ConfigError, match="two answer files for ADE20K"):
        CVBench().score_file(f"ADE20K={unnamed},{ADE}")
    omni = tmp_path / "omni.jsonl"
    omni.write_text(json.dumps({"questionId": 0, "answer": "A", "gt_answer": "(A)", "category": "Depth"}) + "\n")
    with pytest.raises(DataError, match="omni.jsonl, line 1: missing field 'options'"):
        read_cambrian_answers(omni, "Omni3D")
    omni.write_text(json.dumps({"questionId": 3, "answer": "A", "gt_answer": "A", "options": ["x", "y"]}) + "\n")
    with pytest.raises(DataError, match="questionId 3: gt_answer: answer 'A'"):
        read_cambrian_answers(omni, "Omni3D")
    with pytest.raises(DataError, match="file not found"):
        parse_answer_spec(tmp_path / "nope.jsonl")
    assert parse_answer_spec(f"{ADE}, omni3d={OMNI}") == [("ADE20K", ADE), ("Omni3D", OMNI)]
