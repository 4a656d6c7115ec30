"""``harness report RUN_DIR... [--format html,latex] [--output DIR] [--baselines paper|FILE]``.

:func:`add_report_parser` adds the ``report`` sub-command to the harness CLI's sub-parsers and :func:`cmd_report`
runs it: read the runs (:func:`reports.frame.load_runs`), build the tables, figures and statistics
(:func:`reports.render.build_report`) and write ``DIR/report.html``, ``DIR/report.tex``, ``DIR/tables/*.tex``,
``DIR/figures/*.svg|png`` and the tidy frame ``DIR/frame.csv``. Bad run directories are left out with a warning
(stderr and the report's Warnings section); only "nothing could be read at all" is an error.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from harness.argtypes import int_at_least
from harness.errors import ConfigError, HarnessError

log = logging.getLogger("harness.report")

FORMAT_ALIASES = {"html": "html", "latex": "latex", "tex": "latex"}


_positive = int_at_least(1)
_non_negative = int_at_least(0)


def add_report_parser(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add ``report`` to ``subparsers`` (the harness CLI's), with ``parents`` (e.g. its ``--log-level``)."""
    p = subparsers.add_parser(
        "report",
        parents=list(parents),
        help="paper-style tables, figures and statistics from run directories",
        description="Render the paper's tables (1, 2, 3, 5 and per-category breakdowns), Figures 3 and 4, bootstrap "
        "confidence intervals and paired tests from run directories, as one self-contained HTML file "
        "and/or LaTeX (booktabs). Numbers are read from metrics.json, never recomputed. A run directory "
        "may be OUTPUT (several runs), OUTPUT/RUN or OUTPUT/RUN/TASK; RUN/job.json describes a run "
        "(method, data_size, beta, epochs, seed, model, model_size, rejected_image).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or folders holding them)")
    p.add_argument(
        "--format", default="html,latex", metavar="FORMATS", help="comma-separated: html, latex (default: html,latex)"
    )
    p.add_argument(
        "--output",
        "--output-path",
        "--output_path",
        "-o",
        dest="output",
        default="report",
        metavar="DIR",
        help="output folder (default: ./report)",
    )
    p.add_argument(
        "--baselines",
        metavar="paper|FILE",
        help="add published rows to Table 1: 'paper' (the JoMPO paper's Table 1, "
        "reports/data/jompo_table1.csv) or a CSV file of the same layout",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=None,
        metavar="RUN_A,RUN_B",
        help="paired test between two runs (repeatable; default: each run vs the base run of its model "
        "size, or the two runs when there are two)",
    )
    p.add_argument("--resamples", type=_positive, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--no-ci", action="store_true", help="no bootstrap confidence intervals")
    p.add_argument(
        "--examples",
        type=_non_negative,
        default=2,
        metavar="N",
        help="example responses per task (default: 2; 0: none)",
    )
    p.add_argument("--title", default="Hallucination report", help="the report's title")
    return p


def parse_formats(text: str) -> list[str]:
    """``"html,latex"`` -> ``["html", "latex"]``; an unknown format is a :class:`ConfigError`."""
    out: list[str] = []
    for item in (t.strip().lower() for t in text.split(",")):
        if not item:
            continue
        if item not in FORMAT_ALIASES:
            raise ConfigError(f"--format {item!r}: expected html and/or latex")
        if FORMAT_ALIASES[item] not in out:
            out.append(FORMAT_ALIASES[item])
    if not out:
        raise ConfigError("--format is empty: expected html and/or latex")
    return out


def parse_pairs(values: Sequence[str] | None) -> list[tuple[str, str]] | None:
    if values is None:
        return None
    pairs = []
    for value in values:
        a, sep, b = value.partition(",")
        if not sep or not a.strip() or not b.strip():
            raise ConfigError(f"--compare {value!r}: expected RUN_A,RUN_B")
        pairs.append((a.strip(), b.strip()))
    return pairs


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``harness report``: returns 0, or raises :class:`HarnessError` when no run could be read."""
    from reports.frame import load_baselines, load_runs
    from reports.render import build_report, write_report

    formats = parse_formats(args.format)
    pairs = parse_pairs(args.compare)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output {out_dir} is a file, not a folder")
    runset = load_runs(args.run_dirs, log_warnings=False)
    if not runset.task_runs:  # the error lists the warnings; they are not logged as well
        raise HarnessError(
            "no run could be read from "
            + ", ".join(map(str, args.run_dirs))
            + ":\n  "
            + "\n  ".join(runset.warnings or ["no metrics.json found"])
        )
    for w in runset.warnings:
        log.warning("%s", w)
    baselines, extra = None, []
    if args.baselines:
        baselines, extra = load_baselines(args.baselines)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"--output {out_dir} cannot be created: {exc.strerror}") from exc
    report = build_report(
        runset,
        baselines=baselines,
        figures_dir=out_dir / "figures",
        pairs=pairs,
        ci=not args.no_ci,
        n_resamples=args.resamples,
        seed=args.seed,
        examples=args.examples,
        title=args.title,
        extra_warnings=extra,
    )
    written = write_report(report, out_dir, formats)
    frame_path = out_dir / "frame.csv"
    runset.frame.to_csv(frame_path, index=False)
    for path in [*written, *(f.svg_path for f in report.figures), *(f.png_path for f in report.figures), frame_path]:
        print(path)
    if report.warnings:
        log.warning("%d warning(s); see the report's Warnings section", len(report.warnings))
    return 0
