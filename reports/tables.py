"""The paper's tables, built from the tidy frame (:mod:`reports.frame`) into format-free :class:`Table` values.

A :class:`Table` is rows of :class:`Cell` (text, sort key, bold, underline) under :class:`Column` headers (with
the arrow of the metric's better direction); the HTML and LaTeX templates render the same value, so both formats
show the same numbers and the same marks.

- :func:`table1`: methods x Object HalBench (CHAIRs, CHAIRi), AMBER (Acc, F1, CHAIR, Cover, Hal, Cog), MMHal
  (Score, HalRate) and, where present, the toy AMBER; a data size column; published rows (``source == "paper"``,
  marked with a dagger); best value in bold and second underlined per model size (compared at the printed
  precision; ties share the mark). Hyper-parameter variants (beta, epochs, rejected image) appear only at the
  paper's defaults when a default run exists (the others are in Table 5 and Figure 4); runs that differ only by
  seed are averaged.
- :func:`table2`: the JoMPO ablations (``trainers.losses.METHODS``) over the same metrics.
- :func:`table3`: general and vision-centric benchmarks, one column per task present.
- :func:`table5`: beta x epochs, per (model size, method, data size) with more than one setting.
- :func:`breakdown_tables`: per-category numbers (AMBER dimensions, MMHal question types, POPE splits, contrast
  types or any other breakdown a task writes).

Columns appear only when some row has a value for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.frame import format_size, paper_label, paper_table

UP, DOWN = "up", "down"


# ------------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True)
class Column:
    """A table column: ``group`` is the spanning header (benchmark), ``better`` ``"up"``/``"down"``/``None``."""

    key: str
    label: str
    group: str = ""
    better: str | None = None
    numeric: bool = True


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, a sort key (number or text; None sorts last) and its marks."""

    text: str
    sort: float | str | None = None
    bold: bool = False
    underline: bool = False


@dataclass
class Table:
    """A rendered-format-free table. ``row_groups[i]`` is the group (model size) of row i: a rule separates groups."""

    id: str
    title: str
    caption: str
    columns: list[Column]
    rows: list[list[Cell]]
    row_groups: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    number: int | None = None  # the paper's table number (1, 2, 3, 5), None for the others

    @property
    def heading(self) -> str:
        """``"Table 1: ..."`` for the paper's tables, else the title."""
        return f"Table {self.number}: {self.title}" if self.number else self.title

    @property
    def column_groups(self) -> list[tuple[str, int]]:
        """Consecutive runs of the columns' ``group``: (header, span)."""
        out: list[tuple[str, int]] = []
        for col in self.columns:
            if out and out[-1][0] == col.group:
                out[-1] = (col.group, out[-1][1] + 1)
            else:
                out.append((col.group, 1))
        return out

    @property
    def has_column_groups(self) -> bool:
        return any(c.group for c in self.columns)

    @property
    def group_ranges(self) -> list[tuple[str, int, int]]:
        """(header, first column, last column), 1-based, of each non-empty column group (LaTeX cmidrules)."""
        out, start = [], 1
        for label, span in self.column_groups:
            if label:
                out.append((label, start, start + span - 1))
            start += span
        return out

    @property
    def group_starts(self) -> list[bool]:
        """Whether row i starts a new row group (a rule above it), for every row after the first."""
        return [i > 0 and self.row_groups[i] != self.row_groups[i - 1] for i in range(len(self.rows))]


@dataclass(frozen=True)
class MetricSpec:
    """A metric column: read ``metric`` from the first of ``tasks`` that a run has."""

    key: str
    group: str
    label: str
    tasks: tuple[str, ...]
    metric: str
    better: str | None
    decimals: int = 1
    category: str = ""  # "" = the headline; else a breakdown category of metrics.json


_AMBER_METRICS = (
    ("Acc", "Accuracy", UP),
    ("F1", "F1", UP),
    ("CHAIR", "CHAIR", DOWN),
    ("Cover", "Cover", UP),
    ("Hal", "Hal", DOWN),
    ("Cog", "Cog", DOWN),
)

#: Table 1 columns, in the paper's order. AMBER numbers come from ``amber`` (both halves) or ``amber_d`` /
#: ``amber_g``; the embedded toy benchmark has its own group so that it is never compared with AMBER's.
TABLE1_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("objhal_chairs", "Object HalBench", "CHAIRs", ("object_halbench",), "CHAIRs", DOWN),
    MetricSpec("objhal_chairi", "Object HalBench", "CHAIRi", ("object_halbench",), "CHAIRi", DOWN),
    *(
        MetricSpec(
            f"amber_{label.lower()}",
            "AMBER",
            label,
            ("amber", "amber_d") if metric in ("Accuracy", "F1") else ("amber", "amber_g"),
            metric,
            better,
        )
        for label, metric, better in _AMBER_METRICS
    ),
    MetricSpec("mmhal_score", "MMHal", "Score", ("mmhal",), "Score", UP, 2),
    MetricSpec("mmhal_halrate", "MMHal", "HalRate", ("mmhal",), "HalRate", DOWN, 2),
    *(
        MetricSpec(f"toy_{label.lower()}", "Toy AMBER", label, ("toy_amber",), metric, better)
        for label, metric, better in _AMBER_METRICS
    ),
    # the laboratory (docs/lab.md): the probe questions' error on prior-conflicting / prior-consistent images, the
    # gap between them (the prior-driven hallucination), the captions' CHAIR, Cover and Hal
    MetricSpec("lab_err_conflicting", "Lab AMBER", "Err confl.", ("lab_amber",), "Yes/No error (conflicting)", DOWN),
    MetricSpec("lab_err_consistent", "Lab AMBER", "Err cons.", ("lab_amber",), "Yes/No error (consistent)", DOWN),
    MetricSpec("lab_gap", "Lab AMBER", "Gap", ("lab_amber",), "error", DOWN, category="lab/probe:gap"),
    *(
        MetricSpec(f"lab_{label.lower()}", "Lab AMBER", label, ("lab_amber",), metric, better)
        for label, metric, better in (
            ("Acc", "Accuracy", UP),
            ("CHAIR", "CHAIR", DOWN),
            ("Cover", "Cover", UP),
            ("Hal", "Hal", DOWN),
        )
    ),
    MetricSpec(
        "labobj_chairs_conflicting", "Lab ObjHal", "CHAIRs confl.", ("lab_objhal",), "CHAIRs (conflicting)", DOWN
    ),
    MetricSpec("labobj_chairs", "Lab ObjHal", "CHAIRs", ("lab_objhal",), "CHAIRs", DOWN),
    MetricSpec("labobj_chairi", "Lab ObjHal", "CHAIRi", ("lab_objhal",), "CHAIRi", DOWN),
)

#: Table 3: general and vision-centric benchmarks (task names and aliases; the first metric found is shown).
TABLE3_TASKS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("TextVQA", ("textvqa", "textvqa_val"), ("Accuracy", "accuracy")),
    ("ScienceQA-IMG", ("scienceqa_img", "scienceqa"), ("IMG-Accuracy", "Accuracy", "accuracy")),
    ("LLaVA-Bench", ("llava_bench", "llava_in_the_wild", "llava_bench_wild"), ("Overall", "Score", "score")),
    ("MM-Vet", ("mmvet", "mm_vet"), ("Total", "Score", "score", "Accuracy")),
    ("CV-Bench", ("cvbench", "cv_bench"), ("Overall", "Accuracy", "accuracy")),
    ("MMVP", ("mmvp",), ("Accuracy", "accuracy", "Pair Accuracy")),
)

#: Display names of the methods (``trainers.losses.METHODS``) and of the Table 2 ablations.
METHOD_NAMES: dict[str, str] = {
    "base": "Base",
    "sft": "SFT",
    "dpo": "DPO",
    "mpo": "MPO",
    "jompo": "JoMPO",
    "jompo_no_ranking": "w/o ranking (pairwise m_w vs m_l)",
    "jompo_no_symmetry": "w/o symmetry",
    "jompo_no_both": "w/o ranking, w/o symmetry",
    "jompo_no_ranking_text": "w/o ranking (text terms only)",
    "jompo_no_ranking_noimage": "w/o ranking (pairwise m_w vs no image)",
}
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_NAMES)
ABLATIONS: tuple[str, ...] = tuple(m for m in METHOD_ORDER if m.startswith("jompo_"))

#: The paper's hyper-parameters (``configs/*.yaml``): a run at these (or not saying) is a "default" run.
DEFAULTS: dict[str, Any] = {"beta": 0.05, "epochs": 2.0, "rejected_image": "crop"}

#: Breakdown categories in the scorers' order (``tasks.amber.DISCRIMINATIVE_DIMENSIONS``,
#: ``tasks.mmhal.QUESTION_TYPES``, the POPE splits); other tasks keep the order of their metrics.json.
CATEGORY_ORDERS: dict[str, tuple[str, ...]] = {
    "amber": ("Existence", "Attribute", "State", "Number", "Action", "Relation"),
    "mmhal": ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other"),
    "pope": ("random", "popular", "adversarial"),
}
#: Metrics shown per category (in this order); a task family not listed shows every metric its categories share.
CATEGORY_METRICS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "amber": (("Accuracy", UP), ("F1", UP)),
    "mmhal": (("Score", UP),),
    "pope": (("Accuracy", UP), ("F1", UP)),
}
#: Breakdown entries that are not categories (the scorers' other numbers) and per-category counts.
NOT_CATEGORIES = frozenset({"unrounded", "overall_metrics", "eval_script", "summary", "capability_integrations"})
COUNT_METRICS = frozenset({"n", "TP", "FP", "TN", "FN", "count", "questions", "samples"})


def family(task: str) -> str:
    """The benchmark family of a task name (``amber_d`` -> ``amber``, ``pope_random`` -> ``pope``)."""
    for fam in ("amber", "pope", "mmhal"):
        if task == fam or task.startswith(fam + "_"):
            return fam
    return "amber" if task == "toy_amber" else task


# ------------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class RowKey:
    """A table row: the runs averaged into it (several only when they differ by seed) and their description."""

    runs: tuple[str, ...]
    meta: Mapping[str, Any]

    def get(self, key: str) -> Any:
        value = self.meta.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        return value


_CONFIG = ("source", "model", "model_size", "method", "data_size", "beta", "epochs", "rejected_image")


def run_meta(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One description per run (frame order)."""
    cols = ["run", "run_dir", "seed", "engine", *_CONFIG]
    meta = frame.drop_duplicates("run")[cols]
    out = []
    for rec in meta.to_dict("records"):
        out.append(
            {k: (None if (v is pd.NA or (isinstance(v, float) and math.isnan(v))) else v) for k, v in rec.items()}
        )
    return out


def group_rows(metas: Iterable[Mapping[str, Any]]) -> list[RowKey]:
    """Rows of runs that share a configuration (all but seed): seeds are averaged."""
    buckets: dict[tuple, list[Mapping[str, Any]]] = {}
    for m in metas:
        # published rows are each their own row; runs that share a configuration differ only by seed
        separate = m.get("method") is None or m.get("source") == "paper"
        key = tuple(m.get(k) for k in _CONFIG) + ((m["run"],) if separate else ())
        buckets.setdefault(key, []).append(m)
    return [RowKey(tuple(m["run"] for m in ms), ms[0]) for ms in buckets.values()]


def _sort_key(row: RowKey) -> tuple:
    method = row.get("method")
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (
        _size_key(row.get("model_size")),
        row.get("source") != "paper",
        order,
        method or row.runs[0],
        row.get("data_size") or 0,
        row.get("beta") or 0,
        row.get("epochs") or 0,
        row.get("rejected_image") or "",
    )


def _size_key(size: str | None) -> tuple[float, str]:
    if not size:
        return (math.inf, "")
    try:
        return (float(size.rstrip("bB")), size)
    except ValueError:
        return (math.inf, size)


#: Methods that have no beta: supervised fine-tuning and the untrained model.
NO_BETA = frozenset({"base", "sft"})


def method_label(row: RowKey, varying: Iterable[str] = ()) -> str:
    """The method column: display name, the settings that vary among the table's rows, seeds, a dagger for paper."""
    method = row.get("method")
    if method is None:
        label = paper_label(row.runs[0]) if row.get("source") == "paper" else row.runs[0]
    else:
        label = METHOD_NAMES.get(method, method)
    extras = []
    for key in varying:
        value = row.get(key)
        if value is None:
            continue
        if key == "beta":
            if method not in NO_BETA:  # beta is a setting of the preference objectives only
                extras.append(f"beta={value:g}")
        elif key == "epochs":
            extras.append(f"{value:g} ep")
        elif key == "rejected_image":
            extras.append(f"rejected: {value}")
        elif key == "model":
            extras.append(str(value))
    if extras:
        label += f" ({', '.join(extras)})"
    if len(row.runs) > 1:
        label += f" [mean of {len(row.runs)} seeds]"
    if row.get("source") == "paper":
        label += " \u2020"
    return label


class Values:
    """Headline (or category) values of the frame by (run, task, category, metric)."""

    def __init__(self, frame: pd.DataFrame):
        keys = list(zip(frame["run"], frame["task"], frame["category"], frame["metric"]))
        self._v: dict[tuple[str, str, str, str], float] = dict(zip(keys, frame["value"]))
        self._text: dict[tuple[str, str, str, str], str] = {
            k: t for k, t in zip(keys, frame["text"] if "text" in frame else [""] * len(keys)) if t
        }

    def spec_text(self, row: RowKey, spec: MetricSpec) -> str | None:
        """The number as its source printed it, for a one-run row of published numbers; None otherwise."""
        if len(row.runs) != 1:
            return None
        return next(
            (t for task in spec.tasks if (t := self._text.get((row.runs[0], task, spec.category, spec.metric)))), None
        )

    def get(self, run: str, task: str, metric: str, category: str = "") -> float | None:
        return self._v.get((run, task, category, metric))

    def spec_value(self, row: RowKey, spec: MetricSpec) -> float | None:
        """The mean over the row's runs of ``spec``'s metric, each run reading its first task that has it."""
        vals = self.spec_values(row, spec)
        return sum(vals) / len(vals) if vals else None

    def spec_values(self, row: RowKey, spec: MetricSpec) -> list[float]:
        """``spec``'s metric for each of the row's runs that has it (one per seed)."""
        vals = []
        for run in row.runs:
            for task in spec.tasks:
                v = self.get(run, task, spec.metric, spec.category)
                if v is not None:
                    vals.append(v)
                    break
        return vals

    def spec_cell_text(self, row: RowKey, spec: MetricSpec) -> str | None:
        """The published text of a one-run row; for a row of several seeds, ``mean ± h`` with ``h`` the half-width
        of the 95% t-interval over the seeds; None otherwise (the plain number)."""
        text = self.spec_text(row, spec)
        if text is not None or len(row.runs) < 2:
            return text
        from reports.stats import seed_interval

        interval = seed_interval(self.spec_values(row, spec))
        if interval is None:
            return None
        mean, half = interval
        return f"{mean:.{spec.decimals}f} \u00b1 {half:.{spec.decimals}f}"


def fmt(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def mark_best(values: Sequence[float | None], better: str | None, decimals: int) -> list[tuple[bool, bool]]:
    """(bold, underline) per value: best bold, second-best underlined, compared at ``decimals`` places.

    Ties share the mark. Nothing is marked without a direction or when all values are equal.
    """
    marks = [(False, False)] * len(values)
    present = [round(v, decimals) for v in values if v is not None]
    distinct = sorted(set(present), reverse=(better == UP))
    if better not in (UP, DOWN) or len(distinct) < 2:
        return marks
    best = distinct[0]
    second = distinct[1] if len(distinct) > 1 else None
    return [
        (
            v is not None and round(v, decimals) == best,
            v is not None and second is not None and round(v, decimals) == second,
        )
        for v in values
    ]


def _metric_table(
    tid: str,
    title: str,
    caption: str,
    rows: Sequence[RowKey],
    specs: Sequence[MetricSpec],
    values: Values,
    lead: Sequence[tuple[Column, Callable[[RowKey], Cell]]],
    group_of: Callable[[RowKey], str],
    keep: Collection[str] = (),
) -> Table | None:
    """Rows x metric columns (those with a value, and those whose key is in ``keep``), marks per group of rows."""
    specs = [s for s in specs if s.key in keep or any(values.spec_value(r, s) is not None for r in rows)]
    rows = [r for r in rows if any(values.spec_value(r, s) is not None for s in specs)]
    if not rows or not specs:
        return None
    grid = [[values.spec_value(r, s) for s in specs] for r in rows]
    groups = [group_of(r) for r in rows]
    marks: list[list[tuple[bool, bool]]] = [[(False, False)] * len(specs) for _ in rows]
    for g in dict.fromkeys(groups):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        for j, spec in enumerate(specs):
            for i, mk in zip(idx, mark_best([grid[i][j] for i in idx], spec.better, spec.decimals)):
                marks[i][j] = mk
    columns = [c for c, _ in lead] + [Column(s.key, s.label, s.group, s.better) for s in specs]
    body = []
    for i, r in enumerate(rows):
        cells = [make(r) for _, make in lead]
        for j, s in enumerate(specs):
            v = grid[i][j]
            cells.append(Cell(values.spec_cell_text(r, s) or fmt(v, s.decimals), v, *marks[i][j]))
        body.append(cells)
    notes = []
    if any(r.get("source") == "paper" for r in rows):
        numbers = sorted({paper_table(r.runs[0]) or 1 for r in rows if r.get("source") == "paper"})
        names = " and ".join(f"Table {n}" for n in numbers)
        notes.append(f"\u2020 published in the JoMPO paper ({names}), not produced from a run here.")
    if any(len(r.runs) > 1 for r in rows):
        notes.append(
            "Rows of runs that differ only by seed show the mean over the seeds \u00b1 the half-width of "
            "its 95% t-interval (bold and underline compare the means)."
        )
    return Table(tid, title, caption, columns, body, groups, notes)


def _model_cell(r: RowKey) -> Cell:
    text = r.get("model_size") or r.get("model") or ""
    return Cell(text, text)


def _data_cell(r: RowKey) -> Cell:
    size = r.get("data_size")
    return Cell(format_size(size), size)


def _varying(rows: Sequence[RowKey], keys: Sequence[str]) -> list[str]:
    """The settings that take two values or more among the rows that state them."""
    return [k for k in keys if len({v for r in rows if (v := r.get(k)) is not None}) > 1]


def setting(row: RowKey, key: str) -> Any:
    """A training setting of the row, the paper's default (:data:`DEFAULTS`) when the run does not say."""
    value = row.get(key)
    if value is None and key in DEFAULTS and (key != "rejected_image" or row.get("method") == "mpo"):
        return DEFAULTS[key]
    return value


def _is_default(row: RowKey) -> bool:
    for key, default in DEFAULTS.items():
        value = row.get(key)
        if value is None:
            continue
        if key == "rejected_image" and row.get("method") != "mpo":
            continue
        if value != default:
            return False
    return True


def _only_defaults(rows: Sequence[RowKey]) -> list[RowKey]:
    """Per (source, model, size, method, data size): the runs at the paper's defaults, if there are any."""
    buckets: dict[tuple, list[RowKey]] = {}
    for r in rows:
        buckets.setdefault(
            tuple(r.get(k) for k in ("source", "model_size", "method", "data_size"))
            + (() if r.get("method") is not None and r.get("source") != "paper" else r.runs),
            [],
        ).append(r)
    out = []
    for rs in buckets.values():
        defaults = [r for r in rs if _is_default(r)]
        out += defaults or rs
    return out


def _group_of(r: RowKey) -> str:
    return r.get("model_size") or ""


def _numbered(number: int, table: Table | None) -> Table | None:
    if table is not None:
        table.number = number
    return table


def _rows(frame: pd.DataFrame, tables: Collection[int]) -> list[RowKey]:
    """The rows of the runs, and of the published rows that come from the paper's ``tables``."""
    return [
        r for r in group_rows(run_meta(frame)) if r.get("source") != "paper" or (paper_table(r.runs[0]) or 1) in tables
    ]


def table1(frame: pd.DataFrame) -> Table | None:
    """Table 1: main results, methods x hallucination benchmarks (see the module docstring); published rows of the
    paper's Tables 1 and 4 (Qwen2-VL, its own block)."""
    rows = [r for r in _rows(frame, (1, 4)) if r.get("method") not in ABLATIONS]
    rows = sorted(_only_defaults(rows), key=_sort_key)
    varying = _varying(rows, ("beta", "epochs", "rejected_image"))
    if len({r.get("model") for r in rows if not r.get("model_size")}) > 1:
        varying.append("model")
    lead = [
        (Column("model", "Model", numeric=False), _model_cell),
        (Column("method", "Method", numeric=False), lambda r: Cell(method_label(r, varying), method_label(r, varying))),
        (Column("data", "Data", numeric=True), _data_cell),
    ]
    return _numbered(
        1,
        _metric_table(
            "table1",
            "hallucination benchmarks",
            "Arrows: better direction. Bold: best, underlined: second best, per model size.",
            rows,
            TABLE1_SPECS,
            Values(frame),
            lead,
            _group_of,
        ),
    )


def table2(frame: pd.DataFrame) -> Table | None:
    """Table 2: JoMPO and its ablations (only when an ablation was run), beside the paper's Table 2."""
    all_rows = _rows(frame, (2,))
    ran = [r for r in all_rows if r.get("source") != "paper"]
    if not any(r.get("method") in ABLATIONS for r in ran):
        return None
    settings = {(r.get("model_size"), r.get("data_size")) for r in ran if r.get("method") in ABLATIONS}
    rows = [
        r
        for r in all_rows
        if r.get("source") == "paper"
        or r.get("method") in ABLATIONS
        or (r.get("method") == "jompo" and (r.get("model_size"), r.get("data_size")) in settings)
    ]
    rows = sorted(_only_defaults(rows), key=_sort_key)
    varying = _varying(rows, ("beta", "epochs"))
    lead = [
        (Column("model", "Model", numeric=False), _model_cell),
        (
            Column("method", "Variant", numeric=False),
            lambda r: Cell(method_label(r, varying), method_label(r, varying)),
        ),
        (Column("data", "Data", numeric=True), _data_cell),
    ]
    return _numbered(
        2,
        _metric_table(
            "table2",
            "ablations of JoMPO",
            "Definitions of the ablations: docs/methods.md. Bold: best, underlined: second best.",
            rows,
            TABLE1_SPECS,
            Values(frame),
            lead,
            lambda r: f"{_group_of(r)}|{r.get('data_size')}",
        ),
    )


def table3(frame: pd.DataFrame) -> Table | None:
    """Table 3: general and vision-centric benchmarks; one column per benchmark a run has, beside the paper's
    Table 3."""
    present = set(frame.loc[frame["source"] != "paper", "task"])
    specs = []
    for label, tasks, metrics in TABLE3_TASKS:
        task = next((t for t in tasks if t in present), None)
        if task is None:
            continue
        have = set(frame.loc[(frame["task"] == task) & (frame["category"] == ""), "metric"])
        metric = next((m for m in metrics if m in have), None) or next(iter(sorted(have)), None)
        if metric is not None:
            values = frame.loc[
                (frame["task"] == task) & (frame["category"] == "") & (frame["metric"] == metric), "value"
            ]
            # CV-Bench and MMVP's grader print fractions, as their official scripts do: show them to 4 decimals
            decimals = 4 if len(values) and values.abs().max() <= 1.0 else 1
            specs.append(
                MetricSpec(
                    f"t3_{task}",
                    "",
                    f"{label} ({metric})" if metric not in metrics[:1] else label,
                    tasks,
                    metric,
                    UP,
                    decimals,
                )
            )
    if not specs:
        return None
    rows = sorted(_only_defaults([r for r in _rows(frame, (3,)) if r.get("method") not in ABLATIONS]), key=_sort_key)
    varying = _varying(rows, ("beta", "epochs", "rejected_image"))
    lead = [
        (Column("model", "Model", numeric=False), _model_cell),
        (Column("method", "Method", numeric=False), lambda r: Cell(method_label(r, varying), method_label(r, varying))),
        (Column("data", "Data", numeric=True), _data_cell),
    ]
    return _numbered(
        3,
        _metric_table(
            "table3",
            "general and vision-centric benchmarks",
            "Higher is better. Bold: best, underlined: second best, per model size.",
            rows,
            specs,
            Values(frame),
            lead,
            _group_of,
        ),
    )


def table5(frame: pd.DataFrame) -> Table | None:
    """Table 5: beta x epochs for each (model size, method, data size) run at more than one setting, beside the
    paper's Table 5."""
    rows = _rows(frame, (5,))
    blocks: dict[tuple, list[RowKey]] = {}
    for r in rows:
        blocks.setdefault(
            (r.get("model_size"), r.get("method"), r.get("data_size"), setting(r, "rejected_image")), []
        ).append(r)
    chosen = [
        r
        for rs in blocks.values()
        if len({(r.get("beta"), r.get("epochs")) for r in rs}) > 1
        and all(r.get("beta") is not None or r.get("epochs") is not None for r in rs)
        for r in rs
    ]
    if not any(r.get("source") != "paper" for r in chosen):
        return None
    chosen.sort(key=_sort_key)
    lead = [
        (Column("model", "Model", numeric=False), _model_cell),
        (Column("method", "Method", numeric=False), lambda r: Cell(method_label(r), method_label(r))),
        (Column("data", "Data", numeric=True), _data_cell),
        (
            Column("beta", "beta", numeric=True),
            lambda r: Cell("" if r.get("beta") is None else f"{r.get('beta'):g}", r.get("beta")),
        ),
        (
            Column("epochs", "Epochs", numeric=True),
            lambda r: Cell("" if r.get("epochs") is None else f"{r.get('epochs'):g}", r.get("epochs")),
        ),
    ]
    return _numbered(
        5,
        _metric_table(
            "table5",
            "beta x epochs",
            "Bold: best, underlined: second best, within each model size, method and data size.",
            chosen,
            TABLE1_SPECS,
            Values(frame),
            lead,
            lambda r: f"{r.get('model_size')}|{r.get('method')}|{r.get('data_size')}",
        ),
    )


def breakdown_tables(frame: pd.DataFrame) -> list[Table]:
    """Per-category tables: one per (task, metric), runs x categories."""
    sub = frame[
        (frame["category"] != "")
        & (frame["source"] != "paper")
        & ~frame["category"].isin(NOT_CATEGORIES)
        & ~frame["metric"].isin(COUNT_METRICS)
    ]
    tables: list[Table] = []
    for task in sorted(set(sub["task"])):
        t = sub[sub["task"] == task]
        fam = family(task)
        found = list(dict.fromkeys(t["category"]))
        order = CATEGORY_ORDERS.get(fam, ())
        categories = [c for c in order if c in found] + [c for c in found if c not in order]
        metrics = CATEGORY_METRICS.get(fam) or tuple((m, None) for m in dict.fromkeys(t["metric"]))
        rows = sorted(group_rows(run_meta(t)), key=_sort_key)
        # a category without a question (the scorer's n = 0) has no number: its cells are empty, not 0.0
        empty = frame[(frame["task"] == task) & (frame["metric"] == "n") & (frame["value"] == 0)]
        zero = set(zip(empty["run"], empty["category"]))
        values = Values(t[[(r, c) not in zero for r, c in zip(t["run"], t["category"])]])
        unasked = [c for c in categories if all((run, c) in zero for r in rows for run in r.runs)]
        varying = _varying(rows, ("data_size", "beta", "epochs", "rejected_image"))
        for metric, better in metrics:
            specs = [
                MetricSpec(
                    f"{task}:{c}",
                    "",
                    f"{c} (n = 0)" if c in unasked else c,
                    (task,),
                    metric,
                    better,
                    2 if fam == "mmhal" else 1,
                    c,
                )
                for c in categories
            ]
            table = _metric_table(
                f"breakdown-{task}-{metric}".replace(" ", "_"),
                f"{task}: {metric} per category",
                "",
                rows,
                specs,
                values,
                [
                    (Column("model", "Model", numeric=False), _model_cell),
                    (
                        Column("method", "Run", numeric=False),
                        lambda r, v=varying: Cell(_run_label(r, v), _run_label(r, v)),
                    ),
                ],
                _group_of,
                keep={f"{task}:{c}" for c in categories if any((run, c) in zero for r in rows for run in r.runs)},
            )
            if table is not None:
                arrow = {UP: " (higher is better)", DOWN: " (lower is better)"}.get(better or "", "")
                table.caption = f"{metric}{arrow} per category, from the scorer's breakdown in metrics.json."
                if zero:
                    table.caption += " Empty: no question of that category (n = 0)."
                tables.append(table)
    return tables


def _run_label(r: RowKey, varying: Sequence[str]) -> str:
    label = method_label(r, [k for k in varying if k != "data_size"])
    if "data_size" in varying and r.get("data_size") is not None:
        label += f" {format_size(r.get('data_size'))}"
    return label


def all_tables(frame: pd.DataFrame) -> list[Table]:
    """Every table the frame supports, in the report's order."""
    main = [t for t in (table1(frame), table2(frame), table3(frame), table5(frame)) if t is not None]
    return main + breakdown_tables(frame)


def plain_table(
    rows: Sequence[Mapping[str, Any]],
    tid: str,
    title: str,
    caption: str,
    columns: Sequence[Column],
    formats: Mapping[str, Callable[[float], str]] | None = None,
) -> Table:
    """A table from dict rows keyed by the columns' keys; floats printed by ``formats[key]`` (default: 2
    significant decimals), every cell sortable."""
    body = []
    for rec in rows:
        cells = []
        for col in columns:
            v = rec.get(col.key)
            if isinstance(v, float):
                text = "" if math.isnan(v) else (formats or {}).get(col.key, _fmt_number)(v)
                cells.append(Cell(text, v))
            elif isinstance(v, int):
                cells.append(Cell(str(v), v))
            else:
                cells.append(Cell("" if v is None else str(v), None if v is None else str(v)))
        body.append(cells)
    return Table(tid, title, caption, list(columns), body, [""] * len(body))


def _fmt_number(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def fmt_p(p: float) -> str:
    """A p-value: 3 significant digits, scientific below 1e-4."""
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"
