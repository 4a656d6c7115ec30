"""What a new user is told: suggestions, hints, lm-eval's flag habits, and the summary of parsed answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import build_parser, main, parse_counts


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_task_names_are_suggested_case_insensitively(capsys, tmp_path):
    assert main(["run", "--tasks", "AMBER", "--output-path", str(tmp_path)]) == 2
    err = _err(capsys)
    assert "unknown task 'AMBER'; did you mean amber" in err and "Traceback" not in err
    assert main(["run", "--tasks", "Pope_Random", "--output-path", str(tmp_path)]) == 2
    assert "did you mean pope_random" in _err(capsys)


def test_an_engine_name_given_as_model_gets_a_hint(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", "hf", "--tasks", "toy_amber", "--output-path", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert "'hf' is an engine: choose it with --engine hf" in err and len(err.strip().splitlines()) == 1


def test_missing_data_root_is_said_before_missing_spacy(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spacy", None)  # spaCy absent as well
    assert main(["run", "--tasks", "amber", "--output-path", str(tmp_path)]) == 2
    err = _err(capsys)
    assert "needs --data-root" in err and "spaCy" not in err


def test_lm_eval_flag_habits_are_accepted():
    parser = build_parser()
    for flag in ("--output", "--output-path", "--output_path", "-o"):
        args = parser.parse_args(["run", "--tasks", "toy_amber", flag, "x"])
        assert args.output_path == "x"
    for flag in ("--log-samples", "--log_samples"):
        parser.parse_args(["run", "--tasks", "toy_amber", flag])
    assert parser.parse_args(["run", "--tasks", "toy_amber", "--limit", "0.25"]).limit == 0.25
    assert parser.parse_args(["run", "--tasks", "toy_amber", "--limit", "3"]).limit == 3
    for bad in ("0", "-1", "1.5", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "--tasks", "toy_amber", "--limit", bad])
    for flag in ("--output", "--output-path", "--output_path"):
        assert parser.parse_args(["report", "runs", flag, "r"]).output == "r"
    help_text = parser._subparsers._group_actions[0].choices["run"].format_help()
    assert "--output-path" in help_text


def test_fractional_limit_takes_that_share_of_each_task(tmp_path, tiny_llava_path, capsys):
    """--limit 0.1 on the 160 toy samples runs ceil(16.0) = 16 of them."""
    assert (
        main(
            [
                "--log-level",
                "WARNING",
                "run",
                "--model",
                tiny_llava_path,
                "--tasks",
                "toy_amber",
                "--limit",
                "0.1",
                "--max-new-tokens",
                "2",
                "--output-path",
                str(tmp_path),
                "--run-name",
                "r",
                "--no-progress",
                "--log-samples",
            ]
        )
        == 0
    )
    lines = (tmp_path / "r" / "toy_amber" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 16
    out = capsys.readouterr().out
    assert "parsed" in out  # the summary's column of answers the scorer could read


def test_summary_says_when_answers_could_not_be_parsed(tmp_path, tiny_llava_path, capsys):
    """An untrained tiny model answers no yes/no question with Yes or No: the summary says so, instead of a bare
    Accuracy=0.0."""
    assert (
        main(
            [
                "--log-level",
                "WARNING",
                "run",
                "--model",
                tiny_llava_path,
                "--tasks",
                "toy_amber",
                "--max-new-tokens",
                "2",
                "--output-path",
                str(tmp_path),
                "--run-name",
                "r",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "toy_amber" / "metrics.json").read_text())
    parsed, unparsed = parse_counts(metrics["counts"])
    assert parsed + unparsed == metrics["counts"]["discriminative"] == 120
    row = next(line for line in out.splitlines() if line.startswith("toy_amber "))
    assert f" {parsed}/120 " in row
    assert unparsed > 0 and f"toy_amber: {unparsed} of 120 answers could not be parsed" in out


def test_parse_counts_of_each_parser():
    assert parse_counts({"discriminative": 10, "answered_other": 3, "answered_yes": 7}) == (7, 3)
    assert parse_counts({"scored": 20, "failed_parse": 2}) == (18, 2)
    assert parse_counts({"judged": 96, "unparsed": 3}) == (93, 3)
    assert parse_counts({"graded": 5, "unparsed": 0}) == (5, 0)
    assert parse_counts({"samples": 5}) is None


def test_report_and_run_accept_the_same_output_flags(tmp_path: Path):
    parser = build_parser()
    run = parser.parse_args(["run", "--tasks", "toy_amber", "--output", str(tmp_path)])
    report = parser.parse_args(["report", str(tmp_path), "--output-path", str(tmp_path / "rep")])
    assert run.output_path == str(tmp_path) and report.output == str(tmp_path / "rep")


def test_method_names_are_defined_once_and_checked_before_torch_loads():
    """`harness train --method jompoo` and `harness train` without --data fail at once: no torch import."""
    import subprocess
    import sys

    from trainers.config import PREFERENCE_METHODS, TRAIN_METHODS
    from trainers.losses import METHODS

    assert tuple(METHODS) == PREFERENCE_METHODS and TRAIN_METHODS == ("sft", *PREFERENCE_METHODS)
    probe = (
        "import sys\nfrom harness.cli import main\ncode = main(sys.argv[1:])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch', code)\n"
    )
    for argv, message in (
        (
            ["train", "--method", "jompoo", "--data", "d.jsonl", "--output", "o"],
            "unknown method 'jompoo'; did you mean jompo",
        ),
        (["train", "--method", "jompo", "--output", "o"], "no --data given"),
    ):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == "no torch 2", (proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
