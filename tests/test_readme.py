"""README's first command is what a new user runs: it must run, and print the numbers README quotes."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _number(pattern: str) -> float:
    found = re.search(pattern, README, flags=re.S)
    assert found, f"README no longer quotes {pattern!r}"
    return float(found.group(1))


def test_readme_first_command_prints_the_numbers_readme_quotes(tmp_path, capsys):
    from harness.cli import main

    first = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()[0]
    command = first.split("&&", 1)[1].split("#", 1)[0].split()
    assert command[0] == ".venv/bin/harness", first
    code = main([*command[1:], "--output-path", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    amber = json.loads((tmp_path / "lab-llava-v1" / "lab_amber" / "metrics.json").read_text())["headline"]
    objhal = json.loads((tmp_path / "lab-llava-v1" / "lab_objhal" / "metrics.json").read_text())["headline"]

    # the intro paragraph
    assert amber["Accuracy"] == _number(r"yes/no accuracy (\d+\.\d)")
    assert amber["CHAIR"] == _number(r"yes/no accuracy \d+\.\d, CHAIR (\d+\.\d)")
    assert amber["Cover"] == _number(r"Cover (\d+\.\d), and a yes/no error")
    assert amber["Yes/No error (conflicting)"] == _number(r"yes/no error of (\d+\.\d)% on images that\s+conflict")
    assert amber["Yes/No error (consistent)"] == _number(r"against (\d+\.\d)% on images that follow one")
    for key in ("Accuracy", "Yes/No error (conflicting)", "Yes/No error (consistent)"):
        assert f"{key}={amber[key]}" in printed

    # the SFT row of the lab preset's Table 1 is the same model on the same benchmarks
    row = re.search(r"^\| SFT \| — \|(.*)\|$", README, flags=re.M)
    assert row, "README's Table 1 has no SFT row"
    cells = [float(c.strip().strip("*")) for c in row.group(1).split("|")]
    confl, cons, gap, acc, chair, cover, hal, chairs = cells
    assert (confl, cons, acc, chair, cover, hal) == (
        amber["Yes/No error (conflicting)"],
        amber["Yes/No error (consistent)"],
        amber["Accuracy"],
        amber["CHAIR"],
        amber["Cover"],
        amber["Hal"],
    )
    assert gap == round(confl - cons, 1) and chairs == objhal["CHAIRs"]
