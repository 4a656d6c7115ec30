"""The Slurm executor: every unfinished job submitted through submitit with ``afterok`` dependencies and per-kind
resources (:mod:`harness.sweep.resources`); each Slurm job runs :func:`run_slurm_job` (pickled by reference:
``harness.sweep.slurm.run_slurm_job``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, MissingPackage
from harness.sweep.index import RunIndex, is_done
from harness.sweep.layout import SPEC_FILE, _now, job_dir
from harness.sweep.local import JobRunner, SweepResult, execute_job
from harness.sweep.plan import Job, Plan
from harness.sweep.resources import slurm_parameters

log = logging.getLogger("harness.sweep")


def _slurm_alive(job_ids: Sequence[str]) -> set[str]:
    """The Slurm jobs among ``job_ids`` that are still queued or running (``squeue``)."""
    if not job_ids:
        return set()
    squeue = shutil.which("squeue")
    if squeue is None:
        raise HarnessError("cannot tell whether the jobs submitted earlier still run: no `squeue` on PATH")
    proc = subprocess.run(
        [squeue, "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise HarnessError(f"squeue failed (exit status {proc.returncode}): {proc.stderr.strip()}")
    listed = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    return {j for j in job_ids if j in listed}


def slurm_executor(folder: Path) -> Any:
    """A submitit Slurm executor writing under ``folder``; a clear error when submitit or Slurm is missing."""
    if shutil.which("sbatch") is None:
        raise HarnessError(
            "Slurm is unreachable: no `sbatch` on PATH (run the sweep on a Slurm login node, or use --executor local)"
        )
    try:
        import submitit
    except ImportError as exc:
        raise MissingPackage("submitit", "--executor slurm", "extra:slurm", detail=str(exc)) from None
    try:
        return submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    except ImportError as exc:  # a module submitit imports lazily (old submitit: pkg_resources of setuptools < 81)
        missing = getattr(exc, "name", None) or str(exc)
        raise MissingPackage(
            str(missing),
            f"submitit {getattr(submitit, '__version__', '')} (--executor slurm)",
            "extra:slurm",
            detail=str(exc),
        ) from None
    except Exception as exc:  # submitit raises RuntimeError when srun is missing
        raise HarnessError(f"Slurm is unreachable: {exc}") from exc


def run_slurm(plan: Plan, entries: Mapping[str, Mapping[str, Any]]) -> SweepResult:
    """Submit every unfinished job through submitit, in dependency order, each depending (``afterok``) on its
    unfinished dependencies; jobs submitted earlier that are still queued or running are not submitted again.
    Jobs run :func:`run_slurm_job`, which records their state in the run index."""
    executor = slurm_executor(plan.output / "slurm")
    result = SweepResult()
    index = RunIndex(plan.output)
    earlier = {
        e["slurm_job_id"]: job_id
        for job_id, e in entries.items()
        if e.get("slurm_job_id") and e.get("state") in ("pending", "running")
    }
    alive = _slurm_alive(sorted(earlier))
    slurm_ids: dict[str, str] = {earlier[sid]: sid for sid in alive}
    for job in plan.jobs:
        if is_done(job, plan.output):
            result.skipped.append(job.id)
            continue
        if job.id in slurm_ids:
            result.submitted[job.id] = slurm_ids[job.id]
            log.info("%s: still queued or running as Slurm job %s", job.id, slurm_ids[job.id])
            continue
        params = slurm_parameters(plan.settings.slurm, job.kind)
        extra = dict(params.pop("slurm_additional_parameters"))
        waits = [slurm_ids[d] for d in job.deps if d in slurm_ids]
        if waits:
            extra["dependency"] = "afterok:" + ":".join(waits)
            extra.setdefault("kill_on_invalid_dep", "yes")
        executor.update_parameters(name=job.id, slurm_additional_parameters=extra, **params)
        try:
            submitted = executor.submit(run_slurm_job, str(plan.output), job.id)
        except Exception as exc:
            raise HarnessError(f"Slurm is unreachable: submitting {job.id} failed: {exc}") from exc
        slurm_ids[job.id] = str(submitted.job_id)
        result.submitted[job.id] = slurm_ids[job.id]
        index.update(job.id, state="pending", slurm_job_id=slurm_ids[job.id], submitted=_now(), error=None)
        log.info(
            "%s: submitted as Slurm job %s%s",
            job.id,
            slurm_ids[job.id],
            f" (after {', '.join(waits)})" if waits else "",
        )
    return result


def run_slurm_job(output: str, job_id: str, runner: JobRunner | None = None) -> None:
    """The function a Slurm job runs (through submitit): run job ``job_id`` of the sweep in ``output`` from its
    ``spec.json``; raises when it fails, so that Slurm marks the job failed and its dependents are not run."""
    out = Path(output)
    job = Job.from_dict(json.loads((job_dir(out, job_id) / SPEC_FILE).read_text(encoding="utf-8")))
    if is_done(job, out):
        return
    if not execute_job(job, out, runner):
        error = RunIndex(out).entries().get(job_id, {}).get("error")
        raise RuntimeError(f"sweep job {job_id} failed: {error}")
