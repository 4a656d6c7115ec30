"""The tidy frame every table and figure of a report is built from.

``load_runs(paths)`` finds the run directories under ``paths`` and reads, for each ``OUTPUT/RUN/TASK/`` directory
(:mod:`harness.store`), its ``metrics.json`` and ``manifest.json`` (:class:`harness.records.Manifest`). The frame
(:data:`COLUMNS`) has one row per (run, task, category, metric) with the run's description beside it: model, model
size, method, data size, beta, epochs, seed, rejected-image strategy and engine. Headline metrics have
``category == ""``; a per-category breakdown (AMBER dimension, MMHal question type, POPE split, ...) has the
category's name. A report never recomputes a metric: values come from ``metrics.json`` as the scorer wrote them.

What a run *is* (method, data size, ...) is read from, first to last, each field from the first source that has it:

1. ``RUN/job.json`` (or ``RUN/TASK/job.json``, :class:`harness.records.JobInfo`), written by a sweep next to the
   run's task directories::

       {"method": "jompo", "data_size": 5000, "beta": 0.05, "epochs": 2, "seed": 1234,
        "model": "llava-1.5-7b-hf", "model_size": "7B", "rejected_image": "crop", "name": "jompo-5k"}

   every key optional; ``data_size`` may be written ``"5k"``; ``name`` overrides the run's name;
2. a ``"sweep"`` object of the same keys in a task's ``manifest.json``;
3. the evaluated checkpoint's ``train_config.json`` (written by ``harness train``; read when the manifest's model
   path exists on this machine): method, beta, epochs, rejected-image strategy and base model;
4. the run's folder name, split on ``-`` and ``_``: a known method name (``jompo``, ``jompo_no_ranking``, ``dpo``,
   ...), ``5k`` / ``n5000`` (data size), ``b0.1`` / ``beta0.1``, ``e2`` / ``ep2`` / ``epochs2``, ``s1234`` /
   ``seed1234``, and a strategy name for the rejected image (``crop``, ``diffusion``, ``black``, ``random``,
   ``contrast``);

and the model size from the model's name (``llava-1.5-7b-hf`` -> ``7B``).

Bad input never stops a report: a path that does not exist, a task directory without ``metrics.json`` (or with an
unreadable one), a ``metrics.json`` whose task is not the manifest's, and a run of a task made with another task
version or other data files than the other runs of that task are each left out, with a warning that names the
directory (:attr:`RunSet.warnings`, also logged).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import DataError
from harness.records import JobInfo, Manifest, parse_size

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"
SCORES = "scores.jsonl"
PREDICTIONS = "predictions.jsonl"
JOB = "job.json"
TRAIN_CONFIG = "train_config.json"

#: Method names known to the trainers (``trainers.losses.METHODS``), plus ``base`` (no training) and ``sft``.
KNOWN_METHODS: tuple[str, ...] = (
    "base",
    "sft",
    "dpo",
    "mpo",
    "jompo",
    "jompo_no_ranking",
    "jompo_no_symmetry",
    "jompo_no_both",
    "jompo_no_ranking_text",
    "jompo_no_ranking_noimage",
)
#: Rejected-image strategies of the trainers (``trainers.data.STRATEGIES``; Figure 4).
STRATEGIES: tuple[str, ...] = ("crop", "diffusion", "black", "random", "contrast")

#: The run-description columns of the frame, then the value columns.
META_COLUMNS: tuple[str, ...] = (
    "source",
    "run",
    "run_dir",
    "model",
    "model_size",
    "method",
    "data_size",
    "beta",
    "epochs",
    "seed",
    "rejected_image",
    "engine",
)
#: ``text``: the number as its source printed it (published rows; empty for runs), shown as is in tables.
COLUMNS: tuple[str, ...] = (*META_COLUMNS, "task", "category", "metric", "value", "text")


# --------------------------------------------------------------------------------------------------- values
def format_size(size: int | None) -> str:
    """``5000`` -> ``"5k"``, ``1500`` -> ``"1.5k"``, ``800`` -> ``"800"``, None -> ``""``."""
    if size is None:
        return ""
    if size >= 1_000_000 and size % 100_000 == 0:
        return f"{size / 1_000_000:g}M"
    if size >= 1000 and size % 100 == 0:
        return f"{size / 1000:g}k"
    return str(size)


def model_size_of(name: str | None) -> str:
    """The parameter count in a model's name (``llava-1.5-7b-hf`` -> ``7B``, ``Qwen2-VL-7B`` -> ``7B``), or ``""``."""
    if not name:
        return ""
    m = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)[bB](?![A-Za-z0-9])", name.replace("_", "-"))
    return f"{m.group(1)}B" if m else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------------- run info
@dataclass(frozen=True)
class RunInfo:
    """What one run is. ``None``/``""`` where no source says."""

    run: str
    path: str
    model: str = ""
    model_size: str = ""
    method: str | None = None
    data_size: int | None = None
    beta: float | None = None
    epochs: float | None = None
    seed: int | None = None
    rejected_image: str | None = None
    engine: str = ""
    source: str = "run"  # "run" (read from a run directory) or "paper" (published numbers)

    def meta(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "run": self.run,
            "run_dir": self.path,
            "model": self.model,
            "model_size": self.model_size,
            "method": self.method,
            "data_size": self.data_size,
            "beta": self.beta,
            "epochs": self.epochs,
            "seed": self.seed,
            "rejected_image": self.rejected_image,
            "engine": self.engine,
        }


def parse_run_name(name: str) -> dict[str, Any]:
    """What a run's folder name says (see the module docstring): ``jompo_5k_b0.1_e3`` -> method, data size, ..."""
    out: dict[str, Any] = {}
    low = name.lower()
    for method in sorted(KNOWN_METHODS, key=len, reverse=True):  # longest first: jompo_no_ranking before jompo
        if re.search(rf"(?:^|[-_.]){re.escape(method)}(?:$|[-_.])", low):
            out["method"] = method
            break
    for token in re.split(r"[-_]+", low):
        if m := re.fullmatch(r"(?:n|ds|data)?(\d+(?:\.\d+)?[km])", token) or re.fullmatch(r"(?:n|ds)(\d+)", token):
            out.setdefault("data_size", parse_size(m.group(1)))
        elif m := re.fullmatch(r"(?:b|beta)(\d*\.\d+|\d+(?:e-?\d+)?)", token):
            out.setdefault("beta", float(m.group(1)))
        elif m := re.fullmatch(r"(?:e|ep|epoch|epochs)(\d+(?:\.\d+)?)", token):
            out.setdefault("epochs", float(m.group(1)))
        elif m := re.fullmatch(r"(?:s|seed)(\d+)", token):
            out.setdefault("seed", int(m.group(1)))
        elif token in STRATEGIES:
            out.setdefault("rejected_image", token)
    return out


def _clean_job(raw: Mapping[str, Any], where: str, warnings: list[str]) -> dict[str, Any]:
    """The keys a job description (:class:`harness.records.JobInfo`) gives, typed; a bad value is warned about
    and dropped."""
    return JobInfo.from_dict(raw, where, warnings).given()


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_json_dict(path: Path, warnings: list[str], what: str) -> dict[str, Any] | None:
    """A JSON object from ``path``; None (with a warning naming the file) when absent-but-required or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable {what} ({exc}); left out")
        return None
    if not isinstance(data, dict):
        warnings.append(f"{path}: {what} is not a JSON object; left out")
        return None
    return data


def describe_run(
    run_dir: Path, manifests: Sequence[Manifest], warnings: list[str], task_dirs: Sequence[Path] = ()
) -> RunInfo:
    """The :class:`RunInfo` of ``run_dir`` from its sources, in the order of the module docstring."""
    layers: list[dict[str, Any]] = []
    for job_path in [run_dir / JOB, *(d / JOB for d in task_dirs)]:
        if job_path.is_file():
            job = _read_json_dict(job_path, warnings, JOB)
            if job is not None:
                layers.append(_clean_job(job, str(job_path), warnings))
            break
    for manifest in manifests:
        if manifest.sweep is not None:
            layers.append(_clean_job(manifest.sweep, f"{run_dir} manifest 'sweep'", warnings))
            break
    with_model = next((m for m in manifests if m.model is not None), None)
    model_path = with_model.model_path if with_model is not None else None
    if isinstance(model_path, str) and model_path:
        cfg_path = Path(model_path) / TRAIN_CONFIG
        if cfg_path.is_file():
            cfg = _read_json_dict(cfg_path, [], TRAIN_CONFIG) or {}
            layer = {k: cfg[k] for k in ("method", "beta", "epochs", "rejected_image") if cfg.get(k) is not None}
            if isinstance(cfg.get("model"), str):
                layer["model"] = Path(cfg["model"].rstrip("/")).name
            if "rejected_image" in layer and cfg.get("method") not in ("mpo",):
                del layer["rejected_image"]  # only MPO's image-conditional term uses it
            layers.append(_clean_job(layer, str(cfg_path), warnings))
    layers.append(parse_run_name(run_dir.name))

    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            merged.setdefault(key, value)
    engine = next((m.engine_name for m in manifests if m.engine is not None), "") or ""
    model = merged.get("model") or str((with_model.model_name if with_model is not None else None) or "")
    return RunInfo(
        run=str(merged.get("name") or run_dir.name),
        path=str(run_dir),
        model=model,
        model_size=str(merged.get("model_size") or model_size_of(model) or model_size_of(run_dir.name)),
        method=merged.get("method"),
        data_size=merged.get("data_size"),
        beta=merged.get("beta"),
        epochs=merged.get("epochs"),
        seed=merged.get("seed"),
        rejected_image=merged.get("rejected_image"),
        engine=str(engine),
    )


# --------------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class TaskRun:
    """One task of one run as read from ``RUN/TASK/``: its metrics and manifest."""

    info: RunInfo
    task: str
    dir: Path
    metrics: dict[str, Any]
    manifest: Manifest

    @property
    def scores_path(self) -> Path:
        return self.dir / SCORES

    @property
    def predictions_path(self) -> Path:
        return self.dir / PREDICTIONS

    def signature(self) -> tuple[str, str] | None:
        """(task version, data file hashes) from the manifest; None when the manifest does not say."""
        if self.manifest.task is None:
            return None
        files = self.manifest.data_files
        return (str(self.manifest.task_version), json.dumps(files, sort_keys=True) if files is not None else "")

    def n_samples(self) -> int | None:
        counts = self.metrics.get("counts") or {}
        for key in ("samples", "questions"):
            if isinstance(counts.get(key), int):
                return counts[key]
        return None


@dataclass
class RunSet:
    """What :func:`load_runs` read: the tidy frame, the task runs behind it and the warnings."""

    frame: pd.DataFrame
    task_runs: list[TaskRun] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunInfo]:
        """Each run once, in the order given."""
        seen: dict[str, RunInfo] = {}
        for tr in self.task_runs:
            seen.setdefault(tr.info.run, tr.info)
        return list(seen.values())

    @property
    def tasks(self) -> list[str]:
        return sorted({tr.task for tr in self.task_runs})

    def task_run(self, run: str, task: str) -> TaskRun | None:
        return next((tr for tr in self.task_runs if tr.info.run == run and tr.task == task), None)


def _is_task_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (METRICS, MANIFEST, PREDICTIONS))


def discover(path: Path, warnings: list[str], max_depth: int = 4) -> list[Path]:
    """The task directories under ``path``: ``path`` itself (a ``RUN/TASK`` directory), its children (``RUN``),
    or deeper (an output root holding several runs)."""
    if not path.exists():
        warnings.append(f"{path}: no such file or directory; left out")
        return []
    if path.is_file():
        if path.name in (METRICS, MANIFEST):
            return [path.parent]
        warnings.append(f"{path}: not a run directory (expected a folder holding TASK/metrics.json); left out")
        return []
    if _is_task_dir(path):
        return [path]
    found: list[Path] = []
    frontier = [path]
    for _ in range(max_depth):
        children = sorted(c for d in frontier for c in _subdirs(d))
        hits = [c for c in children if _is_task_dir(c)]
        found += hits
        frontier = [c for c in children if c not in hits]
        if not frontier:
            break
    if not found:
        warnings.append(f"{path}: holds no run directory (no TASK/metrics.json or manifest.json below it); left out")
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        return [c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return []


def _read_task_dir(task_dir: Path, warnings: list[str]) -> tuple[dict[str, Any], Manifest] | None:
    """(metrics, manifest) of a task directory, or None (warned) when it cannot be used."""
    metrics_path = task_dir / METRICS
    if not metrics_path.is_file():
        warnings.append(f"{task_dir}: missing {METRICS} (the run did not finish scoring); left out")
        return None
    metrics = _read_json_dict(metrics_path, warnings, METRICS)
    if metrics is None:
        return None
    if not isinstance(metrics.get("task"), str) or not isinstance(metrics.get("headline"), Mapping):
        warnings.append(f"{metrics_path}: not a metrics file (expected 'task' and 'headline'); left out")
        return None
    manifest = Manifest.from_dict(_read_json_dict(task_dir / MANIFEST, warnings, MANIFEST) or {})
    manifest_task = manifest.task_name
    if manifest_task is not None and manifest_task != metrics["task"]:
        warnings.append(
            f"{task_dir}: mismatched task: {METRICS} is for {metrics['task']!r} but {MANIFEST} is for "
            f"{manifest_task!r}; left out"
        )
        return None
    return metrics, manifest


def _unique_names(infos: Sequence[RunInfo]) -> list[RunInfo]:
    """Runs with the same name from different folders get the parent folder in their name."""
    counts = Counter(i.run for i in infos)
    out = []
    for info in infos:
        if counts[info.run] > 1:
            parent = Path(info.path).parent.name
            info = replace(info, run=f"{parent}/{info.run}" if parent else info.path)
        out.append(info)
    return out


def load_runs(paths: Iterable[str | Path], *, log_warnings: bool = True) -> RunSet:
    """Read every run under ``paths`` into a :class:`RunSet` (see the module docstring); never raises on bad runs.
    The warnings are logged unless ``log_warnings`` is false (the caller reports them itself)."""
    warnings: list[str] = []
    task_dirs: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for d in discover(Path(p), warnings):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                task_dirs.append(d)

    by_run: dict[Path, list[tuple[Path, dict[str, Any], Manifest]]] = {}
    for d in task_dirs:
        read = _read_task_dir(d, warnings)
        if read is not None:
            by_run.setdefault(d.parent, []).append((d, *read))

    infos = _unique_names(
        [
            describe_run(run_dir, [m for _, _, m in items], warnings, [d for d, _, _ in items])
            for run_dir, items in by_run.items()
        ]
    )
    task_runs: list[TaskRun] = []
    for info, items in zip(infos, by_run.values()):
        tasks_here: set[str] = set()
        for d, metrics, manifest in items:
            if metrics["task"] in tasks_here:
                warnings.append(f"{d}: a second directory of task {metrics['task']!r} in run {info.run}; left out")
                continue
            tasks_here.add(metrics["task"])
            task_runs.append(TaskRun(info, metrics["task"], d, metrics, manifest))

    task_runs = _drop_mismatched(task_runs, warnings)
    _warn_coverage(task_runs, warnings)
    for w in warnings if log_warnings else ():
        log.warning("%s", w)
    return RunSet(frame=frame_of(task_runs), task_runs=task_runs, warnings=warnings)


def _drop_mismatched(task_runs: list[TaskRun], warnings: list[str]) -> list[TaskRun]:
    """Leave out the runs of a task whose task version or data files differ from most runs of that task."""
    keep: list[TaskRun] = []
    by_task: dict[str, list[TaskRun]] = {}
    for tr in task_runs:
        by_task.setdefault(tr.task, []).append(tr)
    dropped: set[int] = set()
    for task, trs in by_task.items():
        sigs = Counter(s for tr in trs if (s := tr.signature()) is not None)
        if len(sigs) > 1:
            # most runs win; a tie goes to the signature of the first run given
            first_sig = next(tr.signature() for tr in trs if tr.signature() is not None)
            top = max(sigs.items(), key=lambda kv: (kv[1], kv[0] == first_sig))[0]
            ref = next(tr for tr in trs if tr.signature() == top)
            for tr in trs:
                sig = tr.signature()
                if sig is not None and sig != top:
                    what = "task version" if sig[0] != top[0] else "data files"
                    warnings.append(
                        f"{tr.dir}: mismatched task: {task} {what} differ from those of run "
                        f"{ref.info.run} ({ref.dir}); left out"
                    )
                    dropped.add(id(tr))
        sizes = {tr.info.run: n for tr in trs if (n := tr.n_samples()) is not None}
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{run}: {n}" for run, n in sizes.items())
            warnings.append(
                f"{task}: runs scored different numbers of samples ({listing}); their numbers are not "
                "directly comparable"
            )
    keep = [tr for tr in task_runs if id(tr) not in dropped]
    return keep


def _warn_coverage(task_runs: list[TaskRun], warnings: list[str]) -> None:
    """One warning per task that some runs lack (their cells stay empty)."""
    runs = list(dict.fromkeys(tr.info.run for tr in task_runs))
    if len(runs) < 2:
        return
    have: dict[str, set[str]] = {}
    for tr in task_runs:
        have.setdefault(tr.task, set()).add(tr.info.run)
    for task in sorted(have):
        missing = [r for r in runs if r not in have[task]]
        if missing:
            listing = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            warnings.append(f"task {task}: no results from run {listing} (their cells are empty)")


def frame_of(task_runs: Iterable[TaskRun]) -> pd.DataFrame:
    """The tidy frame (:data:`COLUMNS`) of ``task_runs``: headline metrics (category ``""``) and breakdowns."""
    rows: list[dict[str, Any]] = []
    for tr in task_runs:
        meta = tr.info.meta()
        for metric, value in (tr.metrics.get("headline") or {}).items():
            if (v := _number(value)) is not None:
                rows.append({**meta, "task": tr.task, "category": "", "metric": str(metric), "value": v})
        breakdown = tr.metrics.get("breakdown") or {}
        if isinstance(breakdown, Mapping):
            for category, values in breakdown.items():
                if not isinstance(values, Mapping):
                    continue
                for metric, value in values.items():
                    if (v := _number(value)) is not None:
                        rows.append(
                            {**meta, "task": tr.task, "category": str(category), "metric": str(metric), "value": v}
                        )
    return _typed(pd.DataFrame(rows, columns=list(COLUMNS)))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(
        {"data_size": "Int64", "seed": "Int64", "beta": "float64", "epochs": "float64", "value": "float64"}
    )
    for col in ("source", "run", "run_dir", "model", "model_size", "engine", "task", "category", "metric", "text"):
        frame[col] = frame[col].astype(object).fillna("").astype(str)
    for col in ("method", "rejected_image"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame


# --------------------------------------------------------------------------------------------------- baselines
PAPER_DIR = Path(__file__).with_name("data")
PAPER_BASELINES = PAPER_DIR / "jompo_table1.csv"
PAPER_PREFIX = "paper \u00b7 "
#: The JoMPO paper's Table 2 variant names -> the method names of this project (docs/methods.md).
TABLE2_VARIANTS: dict[str, str] = {
    "JoMPO": "jompo",
    "w/o ranking": "jompo_no_ranking",
    "w/o sym": "jompo_no_symmetry",
    "w/o ranking, sym": "jompo_no_both",
    "w/o ranking, text": "jompo_no_ranking_text",
    "w/o ranking, no-image": "jompo_no_ranking_noimage",
}
_PAPER_7B = {"model": "LLaVA-1.5-7B", "model_size": "7B"}


def paper_run_id(model: str, label: str, table: int = 1) -> str:
    """The run name of a published row: unique per (table, model, label), never equal to a run directory's name."""
    return f"{PAPER_PREFIX}Table {table} \u00b7 {model} \u00b7 {label}"


def paper_label(run: str) -> str:
    """The label a published row was given in its file (the inverse of :func:`paper_run_id`)."""
    return run.rsplit(" \u00b7 ", 1)[-1] if run.startswith(PAPER_PREFIX) else run


def paper_table(run: str) -> int | None:
    """The number of the paper's table a published row comes from; None for a run."""
    if not run.startswith(PAPER_PREFIX):
        return None
    return int(run[len(PAPER_PREFIX) :].split(" \u00b7 ", 1)[0].removeprefix("Table "))


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#", dtype=str, keep_default_na=False, skip_blank_lines=True)


def _paper_records(table: int, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of the paper's Table 2-5 files in Table 1's layout (label, model, model_size, method, data_size,
    beta, epochs and TASK:METRIC cells)."""
    out = []
    for rec in frame.to_dict("records"):
        metrics = {k: v for k, v in rec.items() if ":" in k}
        if table == 2:
            out.append(
                {
                    "label": rec["variant"],
                    **_PAPER_7B,
                    "method": TABLE2_VARIANTS[rec["variant"]],
                    "data_size": "5k",
                    **metrics,
                }
            )
        elif table == 3:
            base = not rec["model"].startswith("+")
            out.append(
                {
                    "label": rec["model"],
                    **_PAPER_7B,
                    "method": "base" if base else "jompo",
                    "data_size": "" if base else "5k",
                    **metrics,
                }
            )
        elif table == 4:
            base = not rec["model"].startswith("+")
            out.append(
                {
                    "label": rec["model"],
                    "model": "Qwen2-VL-7B-Instruct",
                    "model_size": "Qwen2-VL-7B",
                    "method": "base" if base else "jompo",
                    "data_size": "" if base else "5k",
                    **metrics,
                }
            )
        elif table == 5:
            out.append(
                {
                    "label": f"beta={rec['beta']}, {rec['epochs']} ep",
                    **_PAPER_7B,
                    "method": "jompo",
                    "data_size": "5k",
                    "beta": rec["beta"],
                    "epochs": rec["epochs"],
                    **metrics,
                }
            )
    return out


#: The shipped files of the paper's tables 2-5 (Table 6, the VTC contrast types, is read by the VTC report).
PAPER_TABLE_FILES: dict[int, str] = {
    2: "jompo_table2_ablations.csv",
    3: "jompo_table3_general.csv",
    4: "jompo_table4_qwen2vl.csv",
    5: "jompo_table5_beta_epochs.csv",
}


def load_baselines(spec: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Published rows as tidy-frame rows (``source == "paper"``): ``spec`` is ``"paper"`` (the JoMPO paper's
    Tables 1-5 as shipped in ``reports/data/``, see its README) or a CSV file in Table 1's layout.

    The layout: ``#`` comment lines (the source), then a header ``label,model,model_size,method,data_size,``
    (optionally ``beta,epochs``) and one column per metric named ``TASK:METRIC`` (``object_halbench:CHAIRs``,
    ``amber:Accuracy``, ``mmhal:Score``, ...); empty cells are numbers the source does not give. Each row is its
    own published row, named by its table, model and label (:func:`paper_run_id`): two rows of one model and label
    in one table are an error, never merged. The report shows each row in the table it comes from.
    """
    warnings: list[str] = []
    path = PAPER_BASELINES if str(spec) == "paper" else Path(spec)
    try:
        sources: list[tuple[int, Path, list[dict[str, Any]]]] = [(1, path, _read_csv(path).to_dict("records"))]
        if str(spec) == "paper":
            for number, name in PAPER_TABLE_FILES.items():
                sources.append((number, PAPER_DIR / name, _paper_records(number, _read_csv(PAPER_DIR / name))))
    except FileNotFoundError:
        return frame_of([]), [f"{path}: baselines file not found; no published rows"]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return frame_of([]), [f"{path}: unreadable baselines file ({exc}); no published rows"]
    rows: list[dict[str, Any]] = []
    for number, source, records in sources:
        rows += _published_rows(number, source, records, warnings)
    if not rows:
        warnings.append(f"{path}: holds no published numbers (see its header); no published rows shown")
    for w in warnings:
        log.warning("%s", w)
    return _typed(pd.DataFrame(rows, columns=list(COLUMNS))), warnings


def _published_rows(
    table: int, path: Path, records: Sequence[Mapping[str, Any]], warnings: list[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    first_row: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        label = rec.get("label") or rec.get("method") or f"row {i}"
        # one published row per (table, model, label): "+DPO" of LLaVA-1.5-7B and of -13B are two rows
        run = paper_run_id(rec.get("model") or rec.get("model_size") or "", label, table)
        if run in first_row:
            raise DataError(
                f"row {i} repeats the model and label of row {first_row[run]} ({label!r}, "
                f"{rec.get('model') or rec.get('model_size')!r}); each published row needs its own",
                path=path,
            )
        first_row[run] = i
        info = RunInfo(
            run=run,
            path=str(path),
            model=rec.get("model", ""),
            model_size=rec.get("model_size", "") or model_size_of(rec.get("model")),
            method=rec.get("method") or None,
            data_size=parse_size(rec.get("data_size")),
            beta=_float_or_none(str(rec.get("beta") or "")),
            epochs=_float_or_none(str(rec.get("epochs") or "")),
            source="paper",
        )
        for col in (c for c in rec if ":" in c):
            text = str(rec.get(col) or "").strip()
            if not text:
                continue
            value = _float_or_none(text)
            if value is None:
                warnings.append(f"{path}, row {i}, column {col}: {text!r} is not a number; ignored")
                continue
            task, metric = col.split(":", 1)
            rows.append({**info.meta(), "task": task, "category": "", "metric": metric, "value": value, "text": text})
    return rows
