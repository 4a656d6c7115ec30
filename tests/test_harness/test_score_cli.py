"""`harness score TASK --responses FILE`: official-format response files scored with the same scorer code."""

import json
from pathlib import Path

import pytest

from harness.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
AMBER = FIXTURES / "data" / "amber"
GOLDEN = FIXTURES / "golden" / "amber"


def score(capsys, *args):
    code = main(["--log-level", "WARNING", "score", *map(str, args)])
    out = capsys.readouterr()
    return code, out


def test_amber_all_golden_numbers(capsys, tmp_path):
    records = tmp_path / "records.jsonl"
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "none",
        "--records",
        records,
    )
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["headline"] == {
        "CHAIR": 17.4,
        "Cover": 71.3,
        "Hal": 60.0,
        "Cog": 16.2,
        "Accuracy": 62.5,
        "Precision": 76.2,
        "Recall": 57.1,
        "F1": 65.3,
        "AMBER Score": 73.95,
    }
    assert result["coverage"]["responses"] == 68 and result["coverage"]["missing"] == 15220 - 68
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 68 and {"id", "kind"} <= set(lines[0])


def test_amber_md_similarity_table(capsys, tmp_path):
    table = tmp_path / "md.json"
    calls = json.loads((GOLDEN / "sim_calls_all_md.json").read_text())["calls"]
    table.write_text(
        json.dumps([{"word1": c["word1"], "word2": c["word2"], "similarity": c["similarity"]} for c in calls])
    )
    code, out = score(
        capsys,
        "amber_g",
        "--responses",
        GOLDEN / "amber_generative_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        f"table:{table}",
    )
    assert code == 0, out.err
    assert json.loads(out.out)["headline"]["CHAIR"] == 16.5


def test_wrong_half_unknown_and_duplicate_ids_are_named(capsys, tmp_path):
    code, out = score(
        capsys,
        "amber_g",
        "--responses",
        GOLDEN / "amber_discriminative_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "none",
    )
    assert code == 2 and "not generative" in out.err and "amber_discriminative_responses.json" in out.err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "response": "a"}, {"id": 99999, "response": "b"}]))
    code, out = score(capsys, "amber", "--responses", bad, "--data-root", AMBER, "--amber-similarity", "none")
    assert code == 2 and "bad.json" in out.err and "unknown id 99999" in out.err
    bad.write_text(json.dumps([{"id": 1, "response": "a"}, {"id": 1, "response": "b"}]))
    code, out = score(capsys, "amber", "--responses", bad, "--data-root", AMBER, "--amber-similarity", "none")
    assert code == 2 and "appears twice" in out.err
    bad.write_text(json.dumps({"id": 1}))
    code, out = score(capsys, "amber", "--responses", bad, "--data-root", AMBER, "--amber-similarity", "none")
    assert code == 2 and "expected a JSON list" in out.err and "Traceback" not in out.err


def test_missing_data_root_file_and_bad_options(capsys, tmp_path):
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        tmp_path,
        "--amber-similarity",
        "none",
    )
    assert code == 2 and "annotations.json" in out.err and "junyangwang0410/AMBER" in out.err
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "bogus",
    )
    assert code == 2 and "bogus" in out.err
    code, out = score(
        capsys, "amber", "--responses", GOLDEN / "amber_all_responses.json", "--data-root", AMBER, "--option", "novalue"
    )
    assert code == 2 and "KEY=VALUE" in out.err


def test_task_without_response_format(capsys, tmp_path):
    code, out = score(capsys, "toy_amber", "--responses", tmp_path / "x.json")
    assert code == 2 and "x.json" in out.err


def test_default_spacy_similarity_says_how_to_install(capsys):
    code, out = score(
        capsys, "amber_g", "--responses", GOLDEN / "amber_generative_responses.json", "--data-root", AMBER
    )
    if code == 0:
        pytest.skip("spaCy and en_core_web_lg are installed")
    assert code == 2 and "en_core_web_lg" in out.err and "pip install" in out.err


MMHAL_GOLDEN = FIXTURES / "golden" / "mmhal_bench"


def test_mmhal_saved_reviews_reproduce_the_official_numbers(capsys):
    code, out = score(
        capsys,
        "mmhal",
        "--responses",
        MMHAL_GOLDEN / "mmhal_responses_synthetic.json",
        "--reviews",
        MMHAL_GOLDEN / "fake_judge_outputs.json",
    )
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["headline"] == {"Score": 2.78, "HalRate": 0.46, "Informativeness": 38.54}
    assert result["judge"]["judge"] == "replay"


def test_mmhal_unreachable_judge_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))  # no cached judgments
    code, out = score(
        capsys,
        "mmhal",
        "--responses",
        MMHAL_GOLDEN / "mmhal_responses_synthetic.json",
        "--judge-base-url",
        "http://127.0.0.1:9/v1",
    )
    assert code == 2 and "cannot reach" in out.err and "Traceback" not in out.err


def test_object_halbench_answer_file(capsys, tmp_path):
    gold = FIXTURES / "golden" / "object_halbench"
    root = tmp_path / "objhal"
    root.mkdir()
    (root / "coco_annotations").symlink_to(gold / "coco_annotations")
    (root / "synonyms_refine.txt").symlink_to(FIXTURES / "data" / "object_halbench" / "synonyms_refine.txt")
    questions = [json.loads(line) for line in (gold / "obj_halbench_answer.jsonl").read_text().splitlines()]
    (root / "obj_halbench_300_with_image.jsonl").write_text(
        "".join(
            json.dumps({"image_id": q["image_id"], "question": q["question"], "image": ""}) + "\n" for q in questions
        )
    )
    code, out = score(capsys, "object_halbench", "--responses", gold / "obj_halbench_answer.jsonl", "--data-root", root)
    assert code == 0, out.err
    headline = json.loads(out.out)["headline"]
    assert (headline["CHAIRs"], headline["CHAIRs_refine"], headline["CHAIRi"]) == (66.7, 72.7, 23.4)
    assert headline["Object Recall"] == 96.55
