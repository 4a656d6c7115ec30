"""``harness report``: the tidy frame, the paper's tables, figures, statistics, HTML and LaTeX rendering.

Run directories are written by hand here (``metrics.json``, ``manifest.json``, ``scores.jsonl``,
``predictions.jsonl``, ``job.json``) in the layout of :mod:`harness.store`, so every expected number is known.
Optional checks compile the LaTeX with pdflatex and screenshot the HTML with headless Chromium when those are
installed (Debian: ``texlive-latex-base texlive-latex-recommended``, ``chromium``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError, DataError, HarnessError
from reports import stats
from reports.cli import add_report_parser, cmd_report, parse_formats
from reports.frame import (
    COLUMNS,
    format_size,
    load_baselines,
    load_runs,
    model_size_of,
    parse_run_name,
    parse_size,
)
from reports.render import (
    build_report,
    latex_escape,
    render_html,
    render_latex,
    write_report,
)
from reports.tables import (
    CATEGORY_ORDERS,
    DOWN,
    UP,
    mark_best,
    table1,
    table2,
    table3,
    table5,
)

NASTY = "<script>alert(1)</script> \\&%$#_{}~^"


# ------------------------------------------------------------------------------------------------ fixtures
def write_task(
    root: Path,
    run: str,
    task: str,
    headline: dict[str, float],
    *,
    breakdown: dict[str, dict[str, float]] | None = None,
    records: list[dict[str, Any]] | None = None,
    predictions: list[dict[str, Any]] | None = None,
    job: dict[str, Any] | None = None,
    version: str = "1",
    data_hash: str = "abc",
    manifest: bool = True,
) -> Path:
    """One ``root/run/task/`` directory as ``harness run`` writes it (plus a sweep's ``job.json``)."""
    d = root / run / task
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(
        json.dumps({"task": task, "headline": headline, "breakdown": breakdown or {}, "counts": {}, "notes": []})
    )
    if manifest:
        (d / "manifest.json").write_text(
            json.dumps(
                {
                    "task": {"name": task, "version": version, "data_files": {"q.json": data_hash}},
                    "engine": {"engine": "hf"},
                    "model": {"name": run, "path": None},
                }
            )
        )
    if records is not None:
        (d / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if predictions is not None:
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    if job is not None:
        (root / run / "job.json").write_text(json.dumps(job))
    return d


def amber_headline(acc: float, f1: float, chair: float, cover: float, hal: float, cog: float) -> dict[str, float]:
    return {"Accuracy": acc, "F1": f1, "CHAIR": chair, "Cover": cover, "Hal": hal, "Cog": cog}


def disc_records(correct: list[bool]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(1005 + i),
            "kind": "discriminative",
            "correct": c,
            "answer": "No" if c else "Yes",
            "truth": "no",
            "dimension": "Existence",
        }
        for i, c in enumerate(correct)
    ]


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep")


def make_sweep(root: Path) -> Path:
    """A small sweep: 7B base, DPO/MPO/JoMPO at 1k and 5k, an ablation, beta/epoch and rejected-image variants,
    a 13B pair; AMBER (with records), Object HalBench, MMHal and TextVQA."""
    runs = [  # name, job, amber CHAIR, objhal CHAIRs, mmhal Score
        ("base-7b", {"method": "base", "model_size": "7B"}, 11.0, 50.0, 2.00),
        ("dpo-1k", {"method": "dpo", "data_size": "1k", "model_size": "7B"}, 9.0, 40.0, 2.20),
        ("dpo-5k", {"method": "dpo", "data_size": 5000, "model_size": "7B"}, 8.0, 35.0, 2.30),
        ("mpo-1k", {"method": "mpo", "data_size": 1000, "model_size": "7B", "rejected_image": "crop"}, 8.5, 38.0, 2.25),
        ("mpo-5k", {"method": "mpo", "data_size": 5000, "model_size": "7B", "rejected_image": "crop"}, 7.5, 33.0, 2.40),
        (
            "mpo-5k-black",
            {"method": "mpo", "data_size": 5000, "model_size": "7B", "rejected_image": "black"},
            7.9,
            34.0,
            2.35,
        ),
        (
            "mpo-5k-diffusion",
            {"method": "mpo", "data_size": 5000, "model_size": "7B", "rejected_image": "diffusion"},
            7.2,
            32.0,
            2.45,
        ),
        ("jompo-1k", {"method": "jompo", "data_size": 1000, "model_size": "7B"}, 7.0, 30.0, 2.50),
        (
            "jompo-5k",
            {"method": "jompo", "data_size": 5000, "model_size": "7B", "beta": 0.05, "epochs": 2},
            6.0,
            25.0,
            2.70,
        ),
        (
            "jompo-5k-b0.1",
            {"method": "jompo", "data_size": 5000, "model_size": "7B", "beta": 0.1, "epochs": 2},
            6.5,
            27.0,
            2.60,
        ),
        (
            "jompo-5k-e3",
            {"method": "jompo", "data_size": 5000, "model_size": "7B", "beta": 0.05, "epochs": 3},
            5.5,
            26.0,
            2.65,
        ),
        ("ablation-noranking", {"method": "jompo_no_ranking", "data_size": 5000, "model_size": "7B"}, 6.8, 28.0, 2.55),
        ("base-13b", {"method": "base", "model_size": "13B"}, 10.0, 45.0, 2.10),
        ("jompo-5k-13b", {"method": "jompo", "data_size": 5000, "model_size": "13B"}, 5.0, 22.0, 2.90),
    ]
    for i, (name, job, chair, chairs, score) in enumerate(runs):
        correct = [k % 10 < 6 + (i % 4) for k in range(40)]
        write_task(
            root,
            name,
            "amber",
            amber_headline(70.0 + i, 75.0 + i / 2, chair, 50.0 + i, 40.0 - i, 4.0),
            breakdown={
                "Existence": {"Accuracy": 80.0 + i, "F1": 85.0},
                "Attribute": {"Accuracy": 70.0, "F1": 71.0},
                "Relation": {"Accuracy": 60.0, "F1": 61.0 + i},
            },
            records=disc_records(correct),
            job=job,
            predictions=[{"id": "1", "prompt": "Describe this image.", "response": f"{name}: a red circle."}],
        )
        write_task(root, name, "object_halbench", {"CHAIRs": chairs, "CHAIRi": chairs / 5})
        write_task(
            root,
            name,
            "mmhal",
            {"Score": score, "HalRate": round(1 - score / 4, 2), "Informativeness": 30.0},
            breakdown={
                "attribute": {"Score": score, "n": 12},
                "counting": {"Score": score - 1, "n": 12},
                "unrounded": {"Score": score},
            },
        )
    for name in ("base-7b", "jompo-5k"):
        write_task(root, name, "textvqa", {"Accuracy": 58.0 if name == "base-7b" else 58.5})
    return root


# ------------------------------------------------------------------------------------------------ frame
def test_frame_from_handwritten_metrics(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        "jompo_5k",
        "amber",
        amber_headline(80.0, 85.0, 6.0, 50.0, 30.0, 3.0),
        breakdown={"Existence": {"Accuracy": 90.0, "F1": 91.0}},
        job={"method": "jompo", "data_size": "5k", "beta": 0.1, "epochs": 3, "seed": 7, "model": "llava-1.5-7b-hf"},
    )
    write_task(tmp_path, "dpo_2k_b0.2_e1_s3", "amber", amber_headline(75.0, 80.0, 8.0, 49.0, 35.0, 4.0))
    rs = load_runs([tmp_path])
    assert rs.warnings == []
    frame = rs.frame
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 2 * 6 + 2  # six headline metrics per run, two breakdown values
    row = frame[(frame["run"] == "jompo_5k") & (frame["metric"] == "CHAIR")].iloc[0]
    assert (row["method"], row["data_size"], row["beta"], row["epochs"], row["seed"]) == ("jompo", 5000, 0.1, 3.0, 7)
    assert (row["model"], row["model_size"], row["engine"], row["task"], row["category"], row["value"]) == (
        "llava-1.5-7b-hf",
        "7B",
        "hf",
        "amber",
        "",
        6.0,
    )
    dim = frame[(frame["category"] == "Existence") & (frame["metric"] == "F1")].iloc[0]
    assert dim["value"] == 91.0
    by_name = frame[frame["run"] == "dpo_2k_b0.2_e1_s3"].iloc[0]  # no job.json: the run name says
    assert (by_name["method"], by_name["data_size"], by_name["beta"], by_name["epochs"], by_name["seed"]) == (
        "dpo",
        2000,
        0.2,
        1.0,
        3,
    )


def test_run_description_sources(tmp_path: Path) -> None:
    assert parse_run_name("jompo_no_ranking_5k_b0.1_e3_s7") == {
        "method": "jompo_no_ranking",
        "data_size": 5000,
        "beta": 0.1,
        "epochs": 3.0,
        "seed": 7,
    }
    assert parse_run_name("mpo-1.5k-diffusion")["rejected_image"] == "diffusion"
    assert parse_run_name("llava-1.5-7b-hf") == {}
    assert (
        model_size_of("llava-1.5-7b-hf"),
        model_size_of("Qwen2-VL-7B-Instruct"),
        model_size_of("tiny-llava-v1"),
    ) == ("7B", "7B", "")
    assert (parse_size("5k"), parse_size("1.5k"), parse_size(800), parse_size("x")) == (5000, 1500, 800, None)
    assert (format_size(5000), format_size(1500), format_size(800)) == ("5k", "1.5k", "800")
    # job.json beats the manifest's sweep entry, which beats the run name
    d = write_task(tmp_path, "dpo_1k", "amber", amber_headline(1, 1, 1, 1, 1, 1), job={"method": "jompo"})
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sweep"] = {"method": "mpo", "data_size": 3000, "epochs": 4}
    (d / "manifest.json").write_text(json.dumps(manifest))
    info = load_runs([tmp_path]).runs[0]
    assert (info.method, info.data_size, info.epochs) == ("jompo", 3000, 4.0)


# ------------------------------------------------------------------------------------------------ tables
def test_mark_best_ties_and_directions() -> None:
    assert mark_best([10.0, 8.0, 9.0], DOWN, 1) == [(False, False), (True, False), (False, True)]
    assert mark_best([10.0, 8.0, 9.0], UP, 1) == [(True, False), (False, False), (False, True)]
    # compared at the printed precision: 8.04 and 7.96 both print 8.0 and tie for best
    assert mark_best([8.04, 7.96, 9.0, None], DOWN, 1) == [(True, False), (True, False), (False, True), (False, False)]
    assert mark_best([5.0], UP, 1) == [(False, False)]
    assert mark_best([4.0, 4.0, 4.04], DOWN, 1) == [(False, False)] * 3  # all equal: nothing to mark
    assert mark_best([5.0, 6.0], None, 1) == [(False, False), (False, False)]


def test_table1_bold_underline_arrows(tmp_path: Path) -> None:
    # 7B: CHAIRs 10 / 8 / 9 (lower better), Acc 70 / 75 / 72 (higher better); 13B compared on its own
    for name, size, method, chairs, acc in [
        ("a", "7B", "dpo", 10.0, 70.0),
        ("b", "7B", "jompo", 8.0, 75.0),
        ("c", "7B", "mpo", 9.0, 72.0),
        ("d", "13B", "dpo", 20.0, 60.0),
        ("e", "13B", "jompo", 30.0, 65.0),
    ]:
        write_task(
            tmp_path,
            name,
            "object_halbench",
            {"CHAIRs": chairs, "CHAIRi": chairs / 2},
            job={"method": method, "model_size": size, "data_size": 5000},
        )
        write_task(tmp_path, name, "amber", {"Accuracy": acc, "F1": acc})
    t = table1(load_runs([tmp_path]).frame)
    assert t is not None
    labels = [c.label for c in t.columns]
    assert labels == ["Model", "Method", "Data", "CHAIRs", "CHAIRi", "Acc", "F1"]
    assert [c.better for c in t.columns[3:]] == [DOWN, DOWN, UP, UP]
    assert [c.group for c in t.columns[3:]] == ["Object HalBench"] * 2 + ["AMBER"] * 2
    rows = {(r[0].text, r[1].text): r for r in t.rows}
    assert list(rows) == [("7B", "DPO"), ("7B", "MPO"), ("7B", "JoMPO"), ("13B", "DPO"), ("13B", "JoMPO")]
    chairs = {k: (r[3].text, r[3].bold, r[3].underline) for k, r in rows.items()}
    assert chairs[("7B", "JoMPO")] == ("8.0", True, False)
    assert chairs[("7B", "MPO")] == ("9.0", False, True)
    assert chairs[("7B", "DPO")] == ("10.0", False, False)
    assert chairs[("13B", "DPO")] == ("20.0", True, False) and chairs[("13B", "JoMPO")] == ("30.0", False, True)
    acc = {k: (r[5].bold, r[5].underline) for k, r in rows.items()}
    assert acc[("7B", "JoMPO")] == (True, False) and acc[("7B", "MPO")] == (False, True)
    assert rows[("7B", "DPO")][2].text == "5k"
    assert t.group_starts == [False, False, False, True, False]

    report = build_report(load_runs([tmp_path]), ci=False, examples=0)
    tex = render_latex(report)
    assert r"\textbf{8.0}" in tex and r"\underline{9.0}" in tex and r"CHAIRs$\downarrow$" in tex
    assert r"\multicolumn{2}{c}{Object HalBench}" in tex and r"\cmidrule(lr){4-5}" in tex
    html = render_html(report)
    assert "<strong>8.0</strong>" in html and "<u>9.0</u>" in html and "&darr;" in html


def test_tables_2_3_5_and_breakdowns(sweep: Path) -> None:
    frame = load_runs([sweep]).frame
    t1 = table1(frame)
    assert t1 is not None
    methods = [(r[0].text, r[1].text, r[2].text) for r in t1.rows]
    # defaults only in Table 1: the beta/epoch and strategy variants are left to Table 5 and Figure 4
    assert methods == [
        ("7B", "Base", ""),
        ("7B", "DPO", "1k"),
        ("7B", "DPO", "5k"),
        ("7B", "MPO", "1k"),
        ("7B", "MPO", "5k"),
        ("7B", "JoMPO", "1k"),
        ("7B", "JoMPO", "5k"),
        ("13B", "Base", ""),
        ("13B", "JoMPO", "5k"),
    ]
    assert [c.group for c in t1.columns].count("MMHal") == 2
    t2 = table2(frame)
    assert t2 is not None and [r[1].text for r in t2.rows] == ["JoMPO", "w/o ranking (pairwise m_w vs m_l)"]
    t3 = table3(frame)
    assert t3 is not None and [c.label for c in t3.columns] == ["Model", "Method", "Data", "TextVQA"]
    assert [(r[1].text, r[3].text) for r in t3.rows] == [("Base", "58.0"), ("JoMPO", "58.5")]  # rows with a value
    t5 = table5(frame)
    assert t5 is not None
    assert [(r[3].text, r[4].text) for r in t5.rows] == [("0.05", "2"), ("0.05", "3"), ("0.1", "2")]
    amber_chair = next(i for i, c in enumerate(t5.columns) if c.group == "AMBER" and c.label == "CHAIR")
    assert [(r[amber_chair].bold, r[amber_chair].underline) for r in t5.rows] == [
        (False, True),
        (True, False),
        (False, False),
    ]
    report = build_report(load_runs([sweep]), ci=False, examples=0)
    ids = [t.id for t in report.tables]
    assert ids[:4] == ["table1", "table2", "table3", "table5"]
    assert "breakdown-amber-F1" in ids and "breakdown-mmhal-Score" in ids
    mmhal = next(t for t in report.tables if t.id == "breakdown-mmhal-Score")
    assert [c.label for c in mmhal.columns[2:]] == ["attribute", "counting"]  # "unrounded" is not a category
    amber = next(t for t in report.tables if t.id == "breakdown-amber-Accuracy")
    assert [c.label for c in amber.columns[2:]] == ["Existence", "Attribute", "Relation"]


def test_category_orders_follow_the_scorers() -> None:
    from tasks.amber import DISCRIMINATIVE_DIMENSIONS
    from tasks.mmhal import QUESTION_TYPES
    from tasks.pope import SPLITS

    assert CATEGORY_ORDERS["amber"] == DISCRIMINATIVE_DIMENSIONS
    assert CATEGORY_ORDERS["mmhal"] == QUESTION_TYPES
    assert CATEGORY_ORDERS["pope"] == SPLITS


def test_published_rows(tmp_path: Path) -> None:
    write_task(
        tmp_path / "runs",
        "jompo_5k",
        "amber",
        amber_headline(80.0, 85.0, 6.0, 50.0, 30.0, 3.0),
        job={"method": "jompo", "data_size": 5000, "model_size": "7B"},
    )
    csv = tmp_path / "pub.csv"
    csv.write_text(
        "# source: a test table, not real numbers\n"
        "label,model,model_size,method,data_size,amber:CHAIR,amber:Accuracy,mmhal:Score\n"
        "Hand row,llava-1.5-7b,7B,dpo,5k,5.0,,2.5\n"
    )
    base, warnings = load_baselines(csv)
    assert warnings == [] and set(base["source"]) == {"paper"}
    assert sorted(zip(base["task"], base["metric"], base["value"])) == [
        ("amber", "CHAIR", 5.0),
        ("mmhal", "Score", 2.5),
    ]
    report = build_report(load_runs([tmp_path / "runs"]), baselines=base, ci=False, examples=0)
    t1 = report.tables[0]
    row = next(r for r in t1.rows if r[1].text.endswith("\u2020"))
    chair = next(i for i, c in enumerate(t1.columns) if c.label == "CHAIR" and c.group == "AMBER")
    assert row[chair].text == "5.0" and row[chair].bold  # the published row wins CHAIR and is marked
    assert any("JoMPO paper" in n for n in t1.notes)
    # the shipped file names its source and holds the paper's Table 1 (both model sizes)
    shipped, shipped_warnings = load_baselines("paper")
    header = (Path(__file__).resolve().parents[2] / "reports" / "data" / "jompo_table1.csv").read_text()
    assert "Source:" in header and "JoMPO" in header
    assert shipped_warnings == [] and set(shipped["model_size"]) == {"7B", "13B", "Qwen2-VL-7B"}


PAPER_TABLE1 = Path(__file__).resolve().parents[2] / "reports" / "data" / "jompo_table1.csv"
TABLE1_COLUMNS = [
    "object_halbench:CHAIRs",
    "object_halbench:CHAIRi",
    "amber:Accuracy",
    "amber:F1",
    "amber:CHAIR",
    "amber:Cover",
    "amber:Hal",
    "amber:Cog",
    "mmhal:Score",
    "mmhal:HalRate",
]


def _published_rows() -> list[dict[str, str]]:
    import csv

    lines = [ln for ln in PAPER_TABLE1.read_text().splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines))


def _strip_cell(text: str) -> str:
    return re.sub(r"<[^>]+>|\\(textbf|underline)\{|[{}^$]|\\dag(ger)?|\s+|\u2020", "", text)


def test_paper_table1_every_published_cell_is_rendered_as_published(tmp_path: Path) -> None:
    """The paper's Table 1 holds "+DPO", "+MPO", ... for both LLaVA-1.5-7B and -13B: each row of the file is one
    row of the rendered HTML and LaTeX, in its model-size block, with every cell as the file prints it."""
    from reports.render import render_latex

    published = _published_rows()
    assert len(published) == 18
    base, warnings = load_baselines(PAPER_TABLE1)
    assert warnings == []
    report = build_report(load_runs([]), baselines=base, ci=False, examples=0)
    t1 = report.tables[0]
    assert len(t1.rows) == len(published)
    html = render_html(report)
    tex = render_latex(report)
    section = html[html.index('<section id="table1">') :]
    section = section[: section.index("</section>")]
    html_rows = [
        [_strip_cell(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", section.split("<tbody>")[1])
    ]
    tex_rows = [
        [_strip_cell(c) for c in line.rstrip("\\ ").split(" & ")]
        for line in tex.splitlines()
        if " & " in line and ("\\dag" in line or "\u2020" in line)
    ]
    for rendered in (html_rows, tex_rows):
        assert len(rendered) == len(published), rendered
        for rec in published:
            wanted = [rec[c] for c in TABLE1_COLUMNS]
            size = rec["model_size"]
            hits = [r for r in rendered if r[0] == size and r[-len(wanted) :] == wanted]
            assert len(hits) == 1, (rec["label"], size, wanted, rendered)


def test_published_rows_with_one_model_and_label_twice_are_an_error(tmp_path: Path) -> None:
    csv = tmp_path / "dup.csv"
    csv.write_text(
        "label,model,model_size,method,data_size,amber:CHAIR\n"
        "+DPO,llava-7b,7B,dpo,5k,5.0\n+DPO,llava-13b,13B,dpo,5k,6.0\n+DPO,llava-7b,7B,dpo,5k,7.0\n"
    )
    with pytest.raises(DataError, match=r"dup.csv: row 3 repeats the model and label of row 1"):
        load_baselines(csv)


# ------------------------------------------------------------------------------------------------ escaping
def test_latex_escape() -> None:
    assert latex_escape("<script>") == r"\textless{}script\textgreater{}"
    assert latex_escape("\\&%$#_{}~^") == (r"\textbackslash{}\&\%\$\#\_\{\}\textasciitilde{}\textasciicircum{}")
    assert latex_escape("a\n\nb\tc") == "a b c"
    assert (
        latex_escape("--") == "-{}-" and latex_escape("a\u2014b") == "a---b" and latex_escape("``x''") == "{`}{`}x'{}'"
    )
    assert latex_escape("caf\u00e9 \u4e2d") == "caf\u00e9 [U+4E2D]"
    assert latex_escape("x\x00y") == "xy"


def test_model_text_is_escaped_in_html_and_latex(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        "evil",
        "amber",
        amber_headline(80.0, 85.0, 6.0, 50.0, 30.0, 3.0),
        job={"method": NASTY, "model_size": "7B"},
        predictions=[{"id": "1", "prompt": NASTY, "response": f"{NASTY}\nsecond line \u4e2d"}],
    )
    write_task(
        tmp_path,
        "good",
        "amber",
        amber_headline(81.0, 85.0, 6.0, 50.0, 30.0, 3.0),
        job={"method": "jompo", "model_size": "7B"},
        predictions=[{"id": "1", "prompt": NASTY, "response": "fine"}],
    )
    report = build_report(load_runs([tmp_path]), ci=False)
    html = render_html(report)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the sort script, and nothing else
    tex = render_latex(report)
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}" in tex
    assert "<script>" not in tex and "[U+4E2D]" in tex


# ------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_all_correct_and_half() -> None:
    ci = stats.bootstrap_ci([1.0] * 50, scale=100.0)
    assert ci is not None and (ci.low, ci.high, ci.n, ci.resamples) == (100.0, 100.0, 50, 1000)
    half = stats.bootstrap_ci([1.0, 0.0] * 50, scale=100.0)
    assert half is not None
    assert half.low < 50.0 < half.high
    assert 12.0 < half.high - half.low < 30.0  # ~ 2 x 1.96 x sqrt(.25/100) x 100 = 19.6
    assert stats.bootstrap_ci([1.0, 0.0] * 50, scale=100.0) == half  # fixed seed: same interval
    assert stats.bootstrap_ci([]) is None


def test_bootstrap_ratio_and_task_cis() -> None:
    cols = {"h": [1, 0, 2, 0], "m": [2, 2, 4, 0]}
    ci = stats.bootstrap_ci(cols, stats.ratio_of("h", "m"), scale=100.0)
    assert ci is not None and ci.estimate == pytest.approx(37.5) and 0.0 <= ci.low <= 37.5 <= ci.high <= 100.0
    cis = stats.task_cis("amber_d", disc_records([True] * 30))
    assert (cis["Accuracy"].low, cis["Accuracy"].high) == (100.0, 100.0)
    assert "CHAIR" not in cis  # no generative records
    gen = [
        {
            "id": str(i),
            "kind": "generative",
            "mentions": ["a", "b"],
            "hallucinated": ["a"] if i % 2 else [],
            "covered": ["a"],
            "truth": ["a", "b"],
            "hallu_mentioned": [],
            "hallu": ["c"],
        }
        for i in range(20)
    ]
    cis = stats.task_cis("toy_amber", gen)
    assert cis["CHAIR"].estimate == pytest.approx(25.0) and cis["Hal"].estimate == pytest.approx(50.0)
    assert (cis["Cover"].low, cis["Cover"].high) == (50.0, 50.0)


def test_mcnemar_exact() -> None:
    # b = 1 (A right only), c = 6 (B right only): p = 2 * P[X <= 1 | n=7] = 2 * 8/128
    a = [True] * 5 + [True] + [False] * 6 + [False] * 3
    b = [True] * 5 + [False] + [True] * 6 + [False] * 3
    t = stats.mcnemar_exact(a, b)
    assert (t.n, t.both, t.only_a, t.only_b, t.neither) == (15, 5, 1, 6, 3)
    assert t.p_value == 0.125
    assert stats.binomial_two_sided_p(2, 12) == 158 / 4096
    assert stats.mcnemar_exact([True, False], [True, False]).p_value == 1.0
    assert stats.binomial_two_sided_p(5, 10) == 1.0
    assert stats.binomial_two_sided_p(0, 5000) < 1e-300 or stats.binomial_two_sided_p(0, 5000) == 0.0


def test_paired_test_between_runs(tmp_path: Path) -> None:
    a = [True] * 5 + [True] + [False] * 6 + [False] * 3
    b = [True] * 5 + [False] + [True] * 6 + [False] * 3
    write_task(tmp_path, "base", "amber_d", {"Accuracy": 40.0}, records=disc_records(a), job={"method": "base"})
    write_task(tmp_path, "jompo", "amber_d", {"Accuracy": 73.3}, records=disc_records(b), job={"method": "jompo"})
    report = build_report(load_runs([tmp_path]), examples=0)
    assert report.paired_table is not None
    row = {c.key: cell for c, cell in zip(report.paired_table.columns, report.paired_table.rows[0])}
    assert (row["run_a"].text, row["run_b"].text, row["n"].text, row["only_a"].text, row["only_b"].text) == (
        "base",
        "jompo",
        "15",
        "1",
        "6",
    )
    assert row["p"].sort == 0.125 and row["p"].text == "0.125"
    assert report.ci_table is not None
    ci_rows = {(r[0].text, r[2].text): r for r in report.ci_table.rows}
    assert ci_rows[("base", "Accuracy")][3].text == "40.00"  # the value is metrics.json's, not recomputed


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_run_directories_are_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_task(tmp_path, "good", "amber", amber_headline(80.0, 85.0, 6.0, 50.0, 30.0, 3.0))
    unfinished = tmp_path / "unfinished" / "amber"
    unfinished.mkdir(parents=True)
    (unfinished / "predictions.jsonl").write_text('{"id": "1", "response": "x"}\n')
    broken = write_task(tmp_path, "broken", "amber", {})
    (broken / "metrics.json").write_text("{not json")
    mixed = write_task(tmp_path, "mixed", "amber", {"CHAIR": 1.0})
    (mixed / "manifest.json").write_text(json.dumps({"task": {"name": "mmhal", "version": "1"}}))
    old = write_task(tmp_path, "old", "amber", {"CHAIR": 2.0}, version="0")
    nowhere = tmp_path / "does-not-exist"
    with caplog.at_level(logging.WARNING):
        rs = load_runs([tmp_path, nowhere])
    assert [r.run for r in rs.runs] == ["good"]
    text = "\n".join(rs.warnings)
    assert f"{unfinished}: missing metrics.json" in text
    assert f"{broken / 'metrics.json'}: unreadable metrics.json" in text
    assert f"{mixed}: mismatched task" in text
    assert f"{old}: mismatched task: amber task version" in text
    assert f"{nowhere}: no such file or directory" in text
    assert all(w in caplog.text for w in rs.warnings)
    report = build_report(rs, examples=0)  # never crashes; the warnings are in the report
    html = render_html(report)
    assert "missing metrics.json" in html and report.tables


def test_cli_report_end_to_end(sweep: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="harness")
    add_report_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "report",
            str(sweep),
            str(tmp_path / "missing"),
            "--format",
            "html,latex",
            "--output",
            str(out),
            "--baselines",
            "paper",
            "--compare",
            "base-7b,jompo-5k",
        ]
    )
    assert cmd_report(args) == 0
    for name in (
        "report.html",
        "report.tex",
        "tables/table1.tex",
        "tables/table5.tex",
        "figures/figure3.svg",
        "figures/figure3.png",
        "figures/figure4.svg",
        "figures/figure4.png",
        "frame.csv",
    ):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "data:image/svg+xml;base64," in html and 'src="http' not in html and "<link" not in html
    assert "missing: no such file or directory" in html
    assert "Paired tests" in html and "95% bootstrap" in html
    tex = (out / "report.tex").read_text()
    assert r"\includegraphics[width=\linewidth]{figures/figure3.png}" in tex and r"\usepackage{booktabs}" in tex

    with pytest.raises(ConfigError):
        parse_formats("html,pdf")
    empty = parser.parse_args(["report", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o2")])
    with pytest.raises(HarnessError, match="no run could be read"):
        cmd_report(empty)


def test_figures(sweep: Path) -> None:
    from reports.figures import figure_data_size, figure_rejected, mpl_text

    frame = load_runs([sweep]).frame
    fig3 = figure_data_size(frame)
    assert fig3 is not None
    axes = [ax for ax in fig3.axes if ax.get_visible()]
    assert len(axes) == 10  # the Table 1 metrics present (Object HalBench 2, AMBER 6, MMHal 2)
    lines = {ln.get_label() for ln in axes[0].get_lines()}
    assert {"DPO · 7B", "MPO · 7B", "JoMPO · 7B", "base · 7B"} <= lines
    fig4 = figure_rejected(frame)
    assert fig4 is not None
    assert [t.get_text() for t in fig4.axes[0].get_xticklabels()] == ["crop", "diffusion", "black"]
    assert mpl_text("cost $5 $x$") == r"cost \$5 \$x\$"


# ------------------------------------------------------------------------------------------------ optional tools
def _nasty_report(sweep: Path, out: Path) -> Path:
    write_task(
        sweep,
        "jompo-5k",
        "amber",
        amber_headline(70.0, 75.0, 6.0, 50.0, 40.0, 4.0),
        job={"method": "jompo", "data_size": 5000, "model_size": "7B", "beta": 0.05, "epochs": 2},
        records=disc_records([True] * 30),
        predictions=[{"id": "1", "prompt": NASTY, "response": f"{NASTY} caf\u00e9 \u4e2d\u6587 \u2014 ok"}],
    )
    rs = load_runs([sweep])
    report = build_report(rs, figures_dir=out / "figures")
    write_report(report, out)
    return out


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex not installed (texlive-latex-base, texlive-latex-recommended)"
)
@pytest.mark.parametrize("long_rows", [35, 3], ids=["tables", "longtables"])
def test_latex_compiles_with_pdflatex(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long_rows: int
) -> None:
    import reports.render

    monkeypatch.setattr(reports.render, "LONG_TABLE_ROWS", long_rows)
    out = _nasty_report(sweep, tmp_path / "tex")
    # the tables alone, as a paper would \input them
    inputs = "\n".join(f"\\input{{tables/{p.stem}}}" for p in sorted((out / "tables").glob("*.tex")))
    (out / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
        "\\usepackage{longtable}\n\\usepackage{graphicx}\n\\begin{document}\n"
        f"{inputs}\n\\end{{document}}\n"
    )
    for name in ("report.tex", "paper.tex"):
        proc = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (out / name).with_suffix(".pdf").stat().st_size > 5_000
    if long_rows == 3:
        assert "\\begin{longtable}" in (out / "tables" / "table1.tex").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (Debian package: chromium)")
def test_html_screenshot_in_headless_chromium(sweep: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = _nasty_report(sweep, tmp_path / "html")
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        f"--screenshot={shot}",
        (out / "report.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), proc.stderr[-3000:]
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 1600)
    hist = img.histogram()
    dark = sum(hist[:128]) / (img.size[0] * img.size[1])
    assert 0.005 < dark < 0.5, f"page looks blank or broken: {dark:.4f} of pixels are dark"
    assert len([h for h in hist if h]) > 20  # text, rules and shading, not one flat colour


def test_table3_fills_from_the_general_tasks_metrics(tmp_path, capsys):
    """metrics.json files as `harness score` writes them for MMVP and CV-Bench (golden cases) fill Table 3."""
    from harness.cli import main
    from reports.frame import load_runs
    from reports.tables import table3

    golden = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
    cases = {
        "mmvp": [
            "--responses",
            golden / "mmvp" / "mmvp_answers_tsb0601_format.jsonl",
            "--reviews",
            golden / "mmvp" / "fake_gpt_grades.json",
        ],
        "cvbench": ["--responses", golden / "cv_bench"],
    }
    for task, args in cases.items():
        assert main(["--log-level", "WARNING", "score", task, *map(str, args)]) == 0
        metrics = json.loads(capsys.readouterr().out)
        run_dir = tmp_path / "runs" / "base" / task
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(
            json.dumps({k: metrics[k] for k in ("task", "headline", "breakdown", "counts", "notes")})
        )
    table = table3(load_runs([tmp_path / "runs"]).frame)
    assert table is not None
    texts = {c.group or c.label: row[i].text for row in table.rows for i, c in enumerate(table.columns)}
    assert any("MMVP" in k for k in texts) and any("CV-Bench" in k for k in texts)
    values = " ".join(cell.text for row in table.rows for cell in row)
    assert "0.6000" in values and "0.6143" in values  # fractions as the official scripts print them


# ------------------------------------------------------------------------------------------------ issue checks
def _seeded_sweep(root: Path) -> Path:
    """SFT, then DPO at 1k and 2k with two seeds each (the toy sweep's shape)."""
    write_task(
        root,
        "sft",
        "amber",
        amber_headline(70.0, 75.0, 10.0, 50.0, 40.0, 4.0),
        job={"method": "sft", "model": "llava-7b", "model_size": "7B", "beta": 0.05},
    )
    for size, chair in (("1k", 9.0), ("2k", 8.0)):
        for seed, delta in ((1, -0.5), (2, 0.5)):
            write_task(
                root,
                f"dpo-{size}-s{seed}",
                "amber",
                amber_headline(71.0, 76.0, chair + delta, 50.0, 39.0, 4.0),
                job={
                    "method": "dpo",
                    "model": "llava-7b",
                    "data_size": size,
                    "model_size": "7B",
                    "seed": seed,
                    "beta": 0.05,
                },
            )
    return root


def test_sft_row_shows_no_beta_and_figure3_draws_what_its_caption_says(tmp_path: Path) -> None:
    from reports.figures import figure3_caption, figure_data_size

    rs = load_runs([_seeded_sweep(tmp_path / "runs")])
    frame = rs.frame
    t1 = build_report(rs, ci=False, examples=0).tables[0]
    labels = [r[1].text for r in t1.rows]
    assert any(lab.startswith("SFT") for lab in labels) and not any("beta" in lab for lab in labels if "SFT" in lab)
    fig = figure_data_size(frame)
    caption = figure3_caption(fig)
    assert "Dashed: SFT" in caption and "95% t-interval over seeds" in caption
    chair_ax = next(ax for ax in fig.axes if ax.get_visible() and "CHAIR" in ax.get_title())
    dashed = [ln for ln in chair_ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(10.0)
    # two seeds per point: error bars of the 95% t-interval (t = 12.706 for one degree of freedom)
    bars = [c for c in chair_ax.containers if getattr(c, "has_yerr", False)]
    assert bars
    segments = bars[0].lines[2][0].get_segments()
    half = (segments[0][1][1] - segments[0][0][1]) / 2
    assert half == pytest.approx(12.706 * (2**0.5 / 2) / 2**0.5)
    # no reference run and one seed: the caption promises neither
    (tmp_path / "runs" / "sft").rename(tmp_path / "sft-aside")
    for d in (tmp_path / "runs").glob("dpo-*-s2"):
        shutil.rmtree(d)
    fig = figure_data_size(load_runs([tmp_path / "runs"]).frame)
    assert figure3_caption(fig) == "One line per model size and method."


def test_seed_interval_hand_computed() -> None:
    assert stats.seed_interval([1.0]) is None
    mean, half = stats.seed_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5)


def test_latex_numbers_tables_and_figures_as_the_paper(sweep: Path, tmp_path: Path) -> None:
    """Table N and Figure N carry the paper's numbers, never LaTeX's counter; other tables carry no number."""
    from reports.render import render_latex

    report = build_report(load_runs([sweep]), figures_dir=tmp_path / "figures", ci=False, examples=0)
    tex = render_latex(report)
    for table in report.tables:
        if table.number:
            assert re.search(
                r"\\renewcommand\{\\thetable\}\{%d\}\n?(\\centering|\\begin\{longtable\}[^\n]*)\n"  # noqa: UP031
                r"\\caption\{%s\}" % (table.number, re.escape(table.title)),
                tex,
            ), table.title
        else:
            assert f"\\caption*{{{latex_escape(table.title)}}}" in tex
    assert "\\renewcommand{\\thefigure}{3}" in tex and "Figure 3:" not in tex.split("\\begin{figure}")[1]
    assert "\\usepackage{caption}" in tex


def test_default_pairs_start_from_sft_and_set_jompo_against_each_baseline(tmp_path: Path) -> None:
    """A sweep without a base run still gets paired tests: each method against the SFT run it started from, and
    JoMPO against DPO and MPO at the same data size and seed."""
    from reports.render import default_pairs

    root = tmp_path / "runs"
    write_task(
        root,
        "sft",
        "amber",
        amber_headline(70.0, 75.0, 10.0, 50.0, 40.0, 4.0),
        job={"method": "sft", "model": "m", "model_size": "7B"},
    )
    for seed in (1, 2):
        for method in ("dpo", "mpo", "jompo"):
            write_task(
                root,
                f"{method}-1k-s{seed}",
                "amber",
                amber_headline(71.0, 76.0, 9.0, 50.0, 39.0, 4.0),
                job={"method": method, "model": "m", "data_size": "1k", "model_size": "7B", "seed": seed},
            )
    pairs = set(default_pairs(load_runs([root])))
    expected = {("sft", f"{m}-1k-s{s}") for m in ("dpo", "mpo", "jompo") for s in (1, 2)}
    expected |= {(f"{b}-1k-s{s}", f"jompo-1k-s{s}") for b in ("dpo", "mpo") for s in (1, 2)}
    assert pairs == expected
    # with a base run too: SFT is paired with base, the methods still with SFT
    write_task(
        root,
        "base",
        "amber",
        amber_headline(60.0, 65.0, 12.0, 50.0, 45.0, 5.0),
        job={"method": "base", "model": "m", "model_size": "7B"},
    )
    assert set(default_pairs(load_runs([root]))) == expected | {("base", "sft")}


def test_report_of_an_empty_folder_says_so_once(tmp_path: Path, capsys, caplog) -> None:
    from harness.cli import main

    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("holds no run directory") + caplog.text.count("holds no run directory") == 1
    assert "Traceback" not in err


def test_category_without_questions_is_empty_with_n_zero(tmp_path: Path) -> None:
    """AMBER prints a dimension without questions as 0.0; the report shows it empty, labelled n = 0."""
    from tasks.amber import DiscriminativeRecord, dimension_counts

    asked = dimension_counts(
        [
            DiscriminativeRecord(1, "discriminative-hallucination", "Existence", "no", "No", "No", True),
            DiscriminativeRecord(2, "discriminative-attribute-state", "Attribute", "yes", "Yes", "Yes", True),
        ]
    )
    assert asked == {"Existence": 1, "Attribute": 1, "State": 1, "Number": 0, "Action": 0, "Relation": 0}
    write_task(
        tmp_path,
        "sft",
        "toy_amber",
        amber_headline(70.0, 75.0, 10.0, 50.0, 40.0, 4.0),
        breakdown={
            "Existence": {"Accuracy": 90.0, "F1": 91.0},
            "Action": {"Accuracy": 0.0, "F1": 0.0, "n": 0},
            "Relation": {"Accuracy": 0.0, "F1": 0.0, "n": 0},
        },
        job={"method": "sft", "model": "m", "model_size": "7B"},
    )
    tables = build_report(load_runs([tmp_path]), ci=False, examples=0).tables
    acc = next(t for t in tables if t.id == "breakdown-toy_amber-Accuracy")
    labels = [c.label for c in acc.columns]
    assert "Action (n = 0)" in labels and "Relation (n = 0)" in labels and "Existence" in labels
    row = acc.rows[0]
    assert row[labels.index("Action (n = 0)")].text == "" and row[labels.index("Existence")].text == "90.0"
    assert "n = 0" in acc.caption


def test_paper_tables_2_3_5_stand_beside_the_runs_they_belong_to(sweep: Path) -> None:
    """--baselines paper: the paper's Table 2 rows beside the ablation runs, Table 3 beside the general benchmarks,
    Table 5 beside the beta x epochs runs, Table 4 (Qwen2-VL) as its own block of Table 1; each cell as published."""
    import csv

    base, warnings = load_baselines("paper")
    assert warnings == []
    report = build_report(load_runs([sweep]), baselines=base, ci=False, examples=0)
    by_number = {t.number: t for t in report.tables if t.number}
    data = Path(__file__).resolve().parents[2] / "reports" / "data"

    def published(name: str) -> list[dict[str, str]]:
        lines = [ln for ln in (data / name).read_text().splitlines() if ln and not ln.startswith("#")]
        return list(csv.DictReader(lines))

    def paper_rows(table) -> list[dict[str, str]]:
        return [
            {c.label: cell.text for c, cell in zip(table.columns, row)}
            for row in table.rows
            if row[1].text.endswith("\u2020")
        ]

    t2 = paper_rows(by_number[2])
    assert len(t2) == 6
    for rec, row in zip(published("jompo_table2_ablations.csv"), t2):
        assert (row["CHAIR"], row["Hal"], row["Score"], row["HalRate"]) == (
            rec["amber:CHAIR"],
            rec["amber:Hal"],
            rec["mmhal:Score"],
            rec["mmhal:HalRate"],
        )
    t3 = paper_rows(by_number[3])
    assert [r["TextVQA"] for r in t3] == [r["textvqa:Accuracy"] for r in published("jompo_table3_general.csv")]
    t5 = paper_rows(by_number[5])
    assert sorted((r["beta"], r["Epochs"], r["CHAIR"]) for r in t5) == sorted(
        (f"{float(r['beta']):g}", r["epochs"], r["amber:CHAIR"]) for r in published("jompo_table5_beta_epochs.csv")
    )
    qwen = [r for r in paper_rows(by_number[1]) if r["Model"] == "Qwen2-VL-7B"]
    assert [(r["CHAIR"], r["Score"]) for r in qwen] == [
        (r["amber:CHAIR"], r["mmhal:Score"]) for r in published("jompo_table4_qwen2vl.csv")
    ]
    assert any("Table 1 and Table 4" in n for n in by_number[1].notes)
