"""``harness sweep``: its flags, the settings they give, the plan as a table, the run (plan, prepare, executor,
report) and the command's exit status."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.sweep.flags import _flags
from harness.sweep.index import RunIndex, is_done, prepare
from harness.sweep.layout import INDEX_FILE, KINDS, STATES
from harness.sweep.local import JobRunner, SweepResult, run_local
from harness.sweep.locks import sweep_lock
from harness.sweep.plan import Plan, build_plan
from harness.sweep.settings import (
    DEFAULT_SUBSET_SEED,
    EXECUTORS,
    PROJECT_ROOT,
    SweepSettings,
    coerce_setting,
    merge_settings,
    preset_path,
    project_path,
    read_sweep_config,
)
from harness.sweep.slurm import run_slurm

if TYPE_CHECKING:
    import argparse

log = logging.getLogger("harness.sweep")


def plan_states(plan: Plan, entries: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Each job's state: ``done`` when finished on disk, else what the index says (``pending`` by default)."""
    if entries is None:
        entries = RunIndex(plan.output).entries() if (plan.output / INDEX_FILE).is_file() else {}
    out = {}
    for job in plan.jobs:
        if is_done(job, plan.output):
            out[job.id] = "done"
        else:  # an index that says done while the outputs are not there is wrong: pending
            state = entries.get(job.id, {}).get("state", "pending")
            out[job.id] = "pending" if state == "done" else state
    return out


def format_plan(plan: Plan, states: Mapping[str, str]) -> str:
    """The plan as a table: job id, kind, state, dependencies, output."""
    from reports.frame import format_size

    counts = {s: sum(1 for j in plan.jobs if states.get(j.id) == s) for s in STATES}
    kinds = {k: sum(1 for j in plan.jobs if j.kind == k) for k in KINDS}
    lines = [
        f"sweep {plan.output}: {len(plan.jobs)} jobs ("
        + ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        + "); "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f"; executor {plan.settings.executor}",
        f"data: {plan.data.source} ({plan.data.n_records} records), nested subsets (seed {plan.data.subset_seed}): "
        + ", ".join(f"{format_size(n)} -> {p}" for n, p in plan.data.subsets.items()),
    ]
    if plan.data.sft_source:
        lines.append(f"sft data: {plan.data.sft_source}")
    rows = [("id", "kind", "state", "after", "output")]
    for job in plan.jobs:
        rows.append(
            (
                job.id,
                job.kind,
                states.get(job.id, "pending"),
                ",".join(job.deps) or "-",
                next(iter(job.outputs.values())),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(plan: Plan) -> Path | None:
    """``harness report OUTPUT/runs --output OUTPUT/report`` (with the ``report:`` flags) as a subprocess; returns
    the report folder, or None when no run finished or the report failed (logged)."""
    runs = plan.output / "runs"
    if not any(runs.glob("*/*/metrics.json")):
        log.warning("no finished evaluation yet: no report")
        return None
    out = plan.output / "report"
    cmd = [sys.executable, "-m", "harness", "report", str(runs), "--output", str(out), *_flags(plan.settings.report)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    log.info("report: %s", shlex.join(cmd))
    proc = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        log.error("the report failed (exit status %d); rerun: %s", proc.returncode, shlex.join(cmd))
        return None
    return out


def _default_output(preset: str | None) -> str | None:
    return f"sweeps/{preset}" if preset else None


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``harness sweep`` (all default to "not given", so the sweep YAML is only overridden on
    purpose)."""
    import argparse as _argparse

    p = parser
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="a shipped sweep, configs/sweeps/NAME.yaml (lab: the laboratory's experiment, docs/lab.md; "
        "toy: the whole pipeline in minutes on a CPU)",
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        help="sweep settings (keys: the long flags' names with "
        "underscores, plus train, sft, eval, report, slurm sections)",
    )
    g = p.add_argument_group("grid")
    g.add_argument("--methods", help="comma-separated preference methods: dpo, mpo, jompo, jompo_no_ranking, ...")
    g.add_argument("--data-sizes", help="comma-separated preference data sizes (nested subsets): 1k,2k,5k or all")
    g.add_argument("--betas", help="comma-separated betas (default: the recipe's)")
    g.add_argument("--epochs", help="comma-separated epoch counts (default: the recipe's)")
    g.add_argument("--seeds", help="comma-separated training seeds (default: the recipe's)")
    g.add_argument(
        "--rejected-images",
        metavar="STRATEGIES",
        help="comma-separated rejected-image strategies for methods that use one (mpo): crop, "
        "diffusion, black, random, contrast",
    )
    d = p.add_argument_group("model, data and tasks")
    d.add_argument("--model", help="starting checkpoint (default: the lab model, docs/lab.md)")
    d.add_argument(
        "--data",
        help="preference data (canonical JSONL, RLAIF-V parquet, TRL, mDPO), `toy` or `lab` (generated contrast pairs)",
    )
    d.add_argument("--data-format", choices=["auto", "canonical", "rlaif_v", "trl", "mdpo"])
    d.add_argument("--image-root", help="folder that relative image paths of --data are resolved against")
    d.add_argument("--subset-seed", type=int, help=f"seed of the nested data subsets (default {DEFAULT_SUBSET_SEED})")
    d.add_argument("--tasks", help="comma-separated evaluation tasks (`harness tasks` lists them)")
    t = p.add_argument_group("training and evaluation")
    t.add_argument(
        "--train-config",
        metavar="YAML",
        help="training recipe for every method; {method} in the path is replaced by the method "
        "(e.g. configs/{method}_llava15_7b.yaml)",
    )
    t.add_argument("--max-steps", type=int, help="cap every training job at N optimizer steps (smoke tests)")
    t.add_argument("--engine", choices=["hf", "vllm", "openai"], help="inference engine of the evaluations")
    t.add_argument("--limit", type=int, help="evaluate at most N samples per task")
    r = p.add_argument_group("running")
    r.add_argument(
        "--output",
        "--output-path",
        "--output_path",
        "-o",
        dest="output",
        help="the sweep's folder (presets: sweeps/NAME)",
    )
    r.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        help="local (default): the jobs here (see --parallel); slurm: submit through submitit",
    )
    r.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="local executor: run up to N jobs at once (each with cpu_count/N CPU threads; default 1)",
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan (jobs, dependencies, states); run nothing")
    r.add_argument(
        "--no-report",
        dest="no_report",
        action="store_const",
        const=True,
        default=None,
        help="do not run `harness report` after the jobs",
    )
    del _argparse


_FLAG_SETTINGS = (
    "methods",
    "data_sizes",
    "betas",
    "epochs",
    "seeds",
    "rejected_images",
    "model",
    "data",
    "data_format",
    "image_root",
    "subset_seed",
    "tasks",
    "train_config",
    "max_steps",
    "engine",
    "limit",
    "output",
    "executor",
    "no_report",
    "parallel",
)


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """Code defaults < ``--preset`` < ``--config`` (sections merged key by key) < the flags given."""
    values: dict[str, Any] = {}
    if getattr(args, "preset", None):
        values = read_sweep_config(preset_path(args.preset))
    if getattr(args, "config", None):
        values = merge_settings(values, read_sweep_config(project_path(args.config)))
    for key in _FLAG_SETTINGS:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = coerce_setting(key, value, f"--{key.replace('_', '-')}")
    if values.get("output") is None:
        values["output"] = _default_output(getattr(args, "preset", None))
    return SweepSettings.from_mapping(values)


def run_sweep(
    settings: SweepSettings,
    *,
    dry_run: bool = False,
    runner: JobRunner | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Plan the sweep and (unless ``dry_run``) prepare and run it with its executor, then write the report."""
    plan = build_plan(settings)
    if dry_run:
        echo(format_plan(plan, plan_states(plan)))
        echo("dry run: nothing was written or run")
        return SweepResult()
    plan.output.mkdir(parents=True, exist_ok=True)
    with sweep_lock(plan.output):
        entries = prepare(plan)
        echo(format_plan(plan, plan_states(plan, entries)))
        if settings.executor == "slurm":
            result = run_slurm(plan, entries)
            echo(
                f"submitted {len(result.submitted)} job(s) to Slurm; index: {plan.output / INDEX_FILE}. "
                "Rerun the same command when they finish: finished jobs are skipped, the report is written."
            )
            if not result.submitted and not settings.no_report:
                result.report = write_report(plan)
            return result
        result = run_local(plan, runner, parallel=settings.parallel)
    if not settings.no_report:
        result.report = write_report(plan)
    done = len(result.ran) + len(result.skipped)
    echo(
        f"\n{done}/{len(plan.jobs)} jobs done ({len(result.ran)} run now, {len(result.skipped)} earlier)"
        + (f", {len(result.failed)} failed: {', '.join(result.failed)}" if result.failed else "")
        + (f", {len(result.blocked)} not run: {', '.join(result.blocked)}" if result.blocked else "")
    )
    echo(f"index: {plan.output / INDEX_FILE}")
    if result.report is not None:
        echo(f"report: {result.report / 'report.html'}")
    return result


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was sent SIGTERM or SIGHUP (SIGINT is a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While the sweep runs, SIGTERM and SIGHUP interrupt it as SIGINT does (:class:`SweepInterrupted`), so that
    the running job's process group is stopped before the sweep exits."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise SweepInterrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``harness sweep``: 0 when every job finished (or was submitted), 1 when some failed or could not run; an
    interrupt (SIGINT, SIGTERM, SIGHUP) stops the running job and exits with 128 + the signal number."""
    settings = settings_from_args(args)
    try:
        with interrupt_on_signals():
            result = run_sweep(settings, dry_run=bool(getattr(args, "dry_run", False)))
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        job = getattr(exc, "sweep_job", None)
        stopped = ""
        if job:
            stopped = f": jobs {job} were stopped" if ", " in job else f": job {job} was stopped"
        print(
            f"harness: sweep interrupted ({signal.Signals(signum).name}){stopped}; rerun the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(signum)
    return 0 if result.ok else 1
