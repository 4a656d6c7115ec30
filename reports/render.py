"""Assemble a report (:func:`build_report`) and render it as one self-contained HTML file and as LaTeX.

- HTML (``report.html``): jinja2 with autoescape, so every run name, method, note and model-written response is
  text, never markup (``<script>`` prints as ``&lt;script&gt;``); inline CSS; figures embedded as data URIs;
  tables sortable by clicking a header (a few lines of inline JS). No external resource is loaded.
- LaTeX (``report.tex``, and each table alone under ``tables/``): booktabs tables that compile with pdflatex as
  they are. The LaTeX environment escapes every value by default (:func:`latex_escape`, through jinja2's
  ``finalize``); only values wrapped in :class:`Tex` (LaTeX the code itself wrote) pass through.

The report's numbers are the tidy frame's (``metrics.json``); confidence intervals and paired tests come from
:mod:`reports.stats` over ``scores.jsonl``; example responses are read from ``predictions.jsonl`` as they are.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from reports import stats
from reports.frame import RunSet, format_size
from reports.tables import Column, Table, all_tables, fmt_p, plain_table

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
FORMATS = ("html", "latex")
EXAMPLE_CHARS = 600
#: Tables with more rows than this are LaTeX longtables (they break across pages; not scaled to the line width).
LONG_TABLE_ROWS = 35


# --------------------------------------------------------------------------------------------------- escaping
class Tex(str):
    """LaTeX source written by this module: the LaTeX environment does not escape it."""


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    '"': r"\textquotedbl{}",
}
#: Non-ASCII characters pdflatex (utf8 inputenc, T1 fonts) prints; others are written as ``[U+XXXX]``.
_LATEX_UNICODE = {
    "\u2013": "--",
    "\u2014": "---",
    "\u2018": "`",
    "\u2019": "'",
    "\u201c": "``",
    "\u201d": "''",
    "\u2026": r"\ldots{}",
    "\u2020": r"$^\dagger$",
    "\u2191": r"$\uparrow$",
    "\u2193": r"$\downarrow$",
    "\u00b7": r"$\cdot$",
    "\u00a0": "~",
    "\u00d7": r"$\times$",
    "\u00b1": r"$\pm$",
    "\u03b2": r"$\beta$",
}


def latex_escape(text: Any) -> str:
    """``text`` as LaTeX that prints it literally under pdflatex: ``\\ & % $ # _ { } ~ ^ < > | "`` escaped,
    whitespace runs (newlines included) collapsed to one space, control characters dropped, Latin-1 letters
    kept, a few typographic characters mapped, any other character written as ``[U+XXXX]``; the T1 ligatures
    (``--``, ``''``, ``,,``, ``!` ``, ``<<``) broken so that every character prints as itself."""
    src = re.sub(r"\s+", " ", str(text))
    out: list[str] = []
    for i, ch in enumerate(src):
        nxt = src[i + 1] if i + 1 < len(src) else ""
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ch == "`":
            out.append("{`}")
        elif ch in "-'," and nxt == ch:
            out.append(ch + "{}")
        elif ord(ch) < 32 or 127 <= ord(ch) < 160:
            continue
        elif ord(ch) < 128 or 0xC0 <= ord(ch) <= 0xFF:  # ASCII and the Latin-1 letters (T1 fonts have them)
            out.append(ch)
        else:
            out.append(f"[U+{ord(ch):04X}]")
    return "".join(out)


def _tex_finalize(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Tex):
        return str(value)
    return latex_escape(value)


def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.FileSystemLoader(str(TEMPLATES))
    html = jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    tex = jinja2.Environment(
        loader=loader,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        finalize=_tex_finalize,
        block_start_string="((*",
        block_end_string="*))",
        variable_start_string="(((",
        variable_end_string=")))",
        comment_start_string="((=",
        comment_end_string="=))",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    tex.filters["raw"] = Tex
    tex.filters["colspec"] = lambda table: Tex("".join("r" if c.numeric else "l" for c in table.columns))
    tex.filters["label"] = lambda text: Tex("tab:" + re.sub(r"[^A-Za-z0-9:.-]+", "-", str(text)))
    tex.filters["tex_cell"] = _tex_cell
    tex.filters["tex_header"] = _tex_header
    tex.globals["Tex"] = Tex
    tex.globals["long_rows"] = LONG_TABLE_ROWS
    html.filters["sort_value"] = _sort_value
    return html, tex


def _tex_cell(cell: Any) -> Tex:
    text = latex_escape(cell.text)
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    if cell.underline:
        text = rf"\underline{{{text}}}"
    return Tex(text)


def _tex_header(col: Column) -> Tex:
    arrow = {"up": r"$\uparrow$", "down": r"$\downarrow$"}.get(col.better or "", "")
    return Tex(latex_escape(col.label) + arrow)


def _sort_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


# --------------------------------------------------------------------------------------------------- report
@dataclass
class Example:
    """One sample's prompt and each run's response (read from predictions.jsonl, unchanged)."""

    task: str
    sample_id: str
    prompt: str
    responses: list[tuple[str, str]]  # (run, response)


@dataclass
class Report:
    """Everything a report shows, format-free."""

    title: str
    runs: list[dict[str, Any]]
    tables: list[Table]
    figures: list[Any] = field(default_factory=list)  # reports.figures.FigureFiles
    ci_table: Table | None = None
    paired_table: Table | None = None
    examples: list[Example] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats_notes: list[str] = field(default_factory=list)


def _run_rows(runset: RunSet) -> list[dict[str, Any]]:
    rows = []
    for info in runset.runs:
        tasks = [tr.task for tr in runset.task_runs if tr.info.run == info.run]
        rows.append(
            {
                "run": info.run,
                "path": info.path,
                "model": info.model,
                "model_size": info.model_size,
                "method": info.method or "",
                "data_size": format_size(info.data_size),
                "beta": "" if info.beta is None else f"{info.beta:g}",
                "epochs": "" if info.epochs is None else f"{info.epochs:g}",
                "seed": "" if info.seed is None else str(info.seed),
                "rejected_image": info.rejected_image or "",
                "engine": info.engine,
                "tasks": ", ".join(sorted(tasks)),
            }
        )
    return rows


def confidence_intervals(
    runset: RunSet,
    *,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
    warnings: list[str] | None = None,
    without_records: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (run, task, metric) whose CI the records allow: the metrics.json value and the CI.

    An unreadable ``scores.jsonl`` is a warning; a missing one (scored elsewhere, or before records were kept)
    only lists ``run/task`` in ``without_records``."""
    rows = []
    for tr in runset.task_runs:
        if tr.task not in stats.SAMPLE_STATS:
            continue
        try:
            records = stats.read_records(tr.scores_path)
        except stats.RecordsError as exc:
            if exc.missing and without_records is not None:
                without_records.append(f"{tr.info.run}/{tr.task}")
            elif not exc.missing and warnings is not None:
                warnings.append(f"{exc}; no confidence interval for run {tr.info.run}, task {tr.task}")
            continue
        headline = tr.metrics.get("headline") or {}
        for metric, ci in stats.task_cis(tr.task, records, n_resamples=n_resamples, seed=seed).items():
            value = headline.get(metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            rows.append(
                {
                    "run": tr.info.run,
                    "task": tr.task,
                    "metric": metric,
                    "value": float(value),
                    "low": ci.low,
                    "high": ci.high,
                    "n": ci.n,
                }
            )
    return rows


def default_pairs(runset: RunSet) -> list[tuple[str, str]]:
    """The paired tests a report shows by default:

    - each preference-trained run against the model it started from: the SFT run of its model size (a sweep's
      methods start from it), else the base run; the SFT run against the base run when both exist;
    - each JoMPO run against the DPO and MPO runs of the same model size, data size, seed, beta and epochs;
    - with no such pairs and exactly two runs: those two.
    """
    runs = runset.runs
    start: dict[str, dict[str, str]] = {"base": {}, "sft": {}}
    for info in runs:
        if info.method in start:
            start[info.method].setdefault(info.model_size, info.run)
    pairs: list[tuple[str, str]] = []
    for info in runs:
        if info.method == "base":
            continue
        if info.method == "sft":
            ref = start["base"].get(info.model_size)
        else:
            ref = start["sft"].get(info.model_size) or start["base"].get(info.model_size)
        if ref is not None and ref != info.run:
            pairs.append((ref, info.run))

    def setting(i: Any) -> tuple:
        return (i.model_size, i.data_size, i.seed, i.beta, i.epochs)

    for info in runs:
        if info.method == "jompo":
            pairs += [
                (other.run, info.run)
                for other in runs
                if other.method in ("dpo", "mpo") and setting(other) == setting(info)
            ]
    if not pairs and len(runs) == 2:
        pairs = [(runs[0].run, runs[1].run)]
    return list(dict.fromkeys(pairs))


def paired_tests(runset: RunSet, pairs: Iterable[tuple[str, str]], warnings: list[str]) -> list[dict[str, Any]]:
    """McNemar's exact test for each pair of runs, task both have and binary outcome of that task."""
    rows = []
    cache: dict[Path, list[dict[str, Any]] | None] = {}

    def records(path: Path) -> list[dict[str, Any]] | None:
        if path not in cache:
            try:
                cache[path] = stats.read_records(path)
            except stats.RecordsError as exc:
                if not exc.missing:  # a missing file is listed once, with the intervals
                    warnings.append(f"{exc}; no paired test with it")
                cache[path] = None
        return cache[path]

    known = {i.run for i in runset.runs}
    for a, b in pairs:
        missing = [r for r in (a, b) if r not in known]
        if missing:
            warnings.append(
                f"paired test {a} vs {b}: no run named {', '.join(missing)} (runs: {', '.join(sorted(known))})"
            )
            continue
        shared = [t for t in runset.tasks if runset.task_run(a, t) and runset.task_run(b, t)]
        for task in shared:
            if task not in stats.PAIRED_OUTCOMES:
                continue
            ta, tb = runset.task_run(a, task), runset.task_run(b, task)
            assert ta is not None and tb is not None
            ra, rb = records(ta.scores_path), records(tb.scores_path)
            if ra is None or rb is None:
                continue
            results = stats.paired_outcomes(task, ra, rb)
            if not results and stats.PAIRED_OUTCOMES[task]:
                warnings.append(f"paired test {a} vs {b} on {task}: no sample in common")
            for oc, test, only_a_ids, only_b_ids in results:
                if only_a_ids or only_b_ids:
                    warnings.append(
                        f"paired test {a} vs {b} on {task} ({oc.name}): {only_a_ids} samples only in "
                        f"{a} and {only_b_ids} only in {b} left out; the test covers the {test.n} "
                        "samples both have"
                    )
                rows.append(
                    {
                        "task": task,
                        "outcome": oc.name,
                        "run_a": a,
                        "run_b": b,
                        "n": test.n,
                        "rate_a": 100 * test.rate_a,
                        "rate_b": 100 * test.rate_b,
                        "only_a": test.only_a,
                        "only_b": test.only_b,
                        "p": test.p_value,
                    }
                )
    return rows


def collect_examples(runset: RunSet, per_task: int) -> list[Example]:
    """The first ``per_task`` samples of each task (in the first run's order) with every run's response."""
    if per_task <= 0:
        return []
    out: list[Example] = []
    for task in runset.tasks:
        trs = [tr for tr in runset.task_runs if tr.task == task]
        first = _read_predictions(trs[0].predictions_path, None, per_task)
        ids = list(first)
        if not ids:
            continue
        by_run = {trs[0].info.run: first}
        for tr in trs[1:]:
            by_run[tr.info.run] = _read_predictions(tr.predictions_path, set(ids), None)
        for sid in ids:
            prompt = str(first[sid].get("prompt", ""))
            responses = [
                (run, _clip(str(preds[sid].get("response", "")))) for run, preds in by_run.items() if sid in preds
            ]
            out.append(Example(task, sid, _clip(prompt), responses))
    return out


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " [...]"


def _read_predictions(path: Path, wanted: set[str] | None, limit: int | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(rec, dict) or "id" not in rec:
                    continue
                sid = str(rec["id"])
                if wanted is None or sid in wanted:
                    out[sid] = rec
                if (limit is not None and len(out) >= limit) or (wanted is not None and len(out) == len(wanted)):
                    break
    except (OSError, UnicodeDecodeError):
        return out
    return out


CI_COLUMNS = [
    Column("run", "Run", numeric=False),
    Column("task", "Task", numeric=False),
    Column("metric", "Metric", numeric=False),
    Column("value", "Value"),
    Column("low", "95% CI low"),
    Column("high", "95% CI high"),
    Column("n", "Samples"),
]
PAIRED_COLUMNS = [
    Column("task", "Task", numeric=False),
    Column("outcome", "Outcome", numeric=False),
    Column("run_a", "Run A", numeric=False),
    Column("run_b", "Run B", numeric=False),
    Column("n", "Paired samples"),
    Column("rate_a", "A rate (%)"),
    Column("rate_b", "B rate (%)"),
    Column("only_a", "A only"),
    Column("only_b", "B only"),
    Column("p", "p (exact McNemar)"),
]


def build_report(
    runset: RunSet,
    *,
    baselines: pd.DataFrame | None = None,
    figures_dir: Path | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    ci: bool = True,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
    examples: int = 2,
    title: str = "Hallucination report",
    extra_warnings: Sequence[str] = (),
) -> Report:
    """Everything a report shows: tables from the frame (plus published ``baselines`` rows), figures (saved under
    ``figures_dir`` when given), CIs, paired tests, example responses and the warnings."""
    warnings = [*runset.warnings, *extra_warnings]
    frame = runset.frame
    if baselines is not None and not baselines.empty:
        frame = pd.concat([baselines, frame], ignore_index=True) if not frame.empty else baselines
    tables = all_tables(frame) if not frame.empty else []
    figures = []
    if figures_dir is not None and not runset.frame.empty:
        from reports.figures import all_figures

        figures = all_figures(runset.frame, figures_dir)
    report = Report(title=title, runs=_run_rows(runset), tables=tables, figures=figures)
    without_records: list[str] = []
    if ci:
        rows = confidence_intervals(
            runset, n_resamples=n_resamples, seed=seed, warnings=warnings, without_records=without_records
        )
        if rows:
            decimals = {"value": lambda v: f"{v:.2f}", "low": lambda v: f"{v:.2f}", "high": lambda v: f"{v:.2f}"}
            report.ci_table = plain_table(
                rows,
                "ci",
                "95% bootstrap confidence intervals",
                f"Percentile bootstrap over samples ({n_resamples} resamples, seed {seed}) from scores.jsonl; the "
                "value is metrics.json's.",
                CI_COLUMNS,
                decimals,
            )
        report.stats_notes.append(
            "Intervals: AMBER Accuracy/Hal and POPE Accuracy are per-sample means, CHAIR-type rates ratios of "
            "per-sample sums, F1 recomputed on each resample from the answers (unrounded P and R)."
        )
    if without_records:
        listing = ", ".join(without_records[:12]) + (
            f" and {len(without_records) - 12} more" if len(without_records) > 12 else ""
        )
        report.stats_notes.append(
            f"No per-sample records (scores.jsonl) for {listing}: no interval or paired test for them."
        )
    paired = paired_tests(runset, default_pairs(runset) if pairs is None else pairs, warnings)
    if paired:
        report.paired_table = plain_table(
            paired,
            "paired",
            "Paired tests (McNemar, exact)",
            "Same samples, two runs: A only / B only count samples where the outcome holds for one run alone; "
            "two-sided exact binomial p-value.",
            PAIRED_COLUMNS,
            {"p": fmt_p},
        )
    report.examples = collect_examples(runset, examples)
    already = {*runset.warnings, *extra_warnings}  # logged where they arose
    for w in warnings:
        if w not in already:
            log.warning("%s", w)
    report.warnings = list(dict.fromkeys(warnings))
    return report


# --------------------------------------------------------------------------------------------------- rendering
def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (every text escaped)."""
    html, _ = _environments()
    return html.get_template("report.html.j2").render(
        report=report,
        css=Markup((TEMPLATES / "report.css").read_text()),
        script=Markup((TEMPLATES / "sort.js").read_text()),
    )


def render_latex(report: Report) -> str:
    """The report as a pdflatex-ready document (booktabs tables; figures included from ``figures/`` PNGs)."""
    _, tex = _environments()
    return tex.get_template("report.tex.j2").render(report=report)


def render_latex_table(table: Table) -> str:
    """One table as a LaTeX ``table`` environment (needs booktabs and graphicx), for ``\\input`` in a paper."""
    _, tex = _environments()
    return tex.get_template("table.tex.j2").render(table=table)


def write_report(report: Report, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the report in ``formats`` under ``out_dir``: ``report.html``, ``report.tex`` and ``tables/*.tex``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "html" in formats:
        path = out_dir / "report.html"
        path.write_text(render_html(report), encoding="utf-8")
        written.append(path)
    if "latex" in formats:
        path = out_dir / "report.tex"
        path.write_text(render_latex(report), encoding="utf-8")
        written.append(path)
        tdir = out_dir / "tables"
        tdir.mkdir(exist_ok=True)
        for table in [*report.tables, *(t for t in (report.ci_table, report.paired_table) if t is not None)]:
            p = tdir / f"{table.id}.tex"
            p.write_text(render_latex_table(table), encoding="utf-8")
            written.append(p)
    return written
