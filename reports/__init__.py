"""Paper-style reports from run directories: ``harness report RUN_DIR... --format html,latex``.

The flow (one direction; nothing here recomputes a metric)::

    RUN/TASK/metrics.json (+ manifest.json, RUN/job.json)  -> frame.load_runs()   -> tidy pandas frame
    frame (+ frame.load_baselines("paper"))                -> tables.*()          -> Table values
    frame                                                  -> figures.*()         -> Figure 3, Figure 4 (SVG, PNG)
    RUN/TASK/scores.jsonl                                  -> stats.*()           -> bootstrap CIs, McNemar tests
    all of the above                                       -> render.build_report -> report.html, report.tex

Modules: :mod:`reports.frame` (reading runs), :mod:`reports.tables`, :mod:`reports.figures`, :mod:`reports.stats`,
:mod:`reports.render` (HTML and LaTeX through the jinja2 templates in ``reports/templates/``), :mod:`reports.cli`
(the ``report`` sub-command). The names below are imported lazily, so ``import reports`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_runs": "reports.frame",
    "load_baselines": "reports.frame",
    "RunSet": "reports.frame",
    "RunInfo": "reports.frame",
    "TaskRun": "reports.frame",
    "Table": "reports.tables",
    "table1": "reports.tables",
    "table2": "reports.tables",
    "table3": "reports.tables",
    "table5": "reports.tables",
    "breakdown_tables": "reports.tables",
    "figure_data_size": "reports.figures",
    "figure_rejected": "reports.figures",
    "bootstrap_ci": "reports.stats",
    "mcnemar_exact": "reports.stats",
    "Report": "reports.render",
    "build_report": "reports.render",
    "write_report": "reports.render",
    "render_html": "reports.render",
    "render_latex": "reports.render",
    "latex_escape": "reports.render",
    "cmd_report": "reports.cli",
    "add_report_parser": "reports.cli",
}

__all__ = [  # noqa: RUF022 - grouped by module
    "load_runs",
    "load_baselines",
    "RunSet",
    "RunInfo",
    "TaskRun",
    "Table",
    "table1",
    "table2",
    "table3",
    "table5",
    "breakdown_tables",
    "figure_data_size",
    "figure_rejected",
    "bootstrap_ci",
    "mcnemar_exact",
    "Report",
    "build_report",
    "write_report",
    "render_html",
    "render_latex",
    "latex_escape",
    "cmd_report",
    "add_report_parser",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
