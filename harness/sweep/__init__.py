"""Sweeps: a grid of preference trainings, each evaluated, on one machine or on a Slurm cluster (``harness sweep``).

The flow, one direction::

    settings (code defaults < --preset < --config YAML < flags)
      -> Plan: jobs with stable ids, dependencies and fingerprints      (build_plan; reads the data, writes nothing)
      -> prepare: nested data subsets, job folders, the run index      (prepare)
      -> executor: local (dependency order, one job at a time) | slurm (submitit, afterok dependencies)
      -> report: ``harness report OUTPUT/runs --output OUTPUT/report``

Jobs
----
* ``sft`` (optional, ``sft:`` in the sweep YAML): supervised fine-tuning of ``--model`` on captions; the preference
  jobs then start from its checkpoint, and the base evaluation evaluates it.
* ``train-NAME``: one per (method, data size, beta, epochs, seed, rejected image), ``python -m harness train``.
  The rejected-image strategy is a grid axis only for methods whose loss uses a generated rejected image (MPO's
  image-conditional term); the other methods train once per remaining point.
* ``eval-NAME``: one per trained checkpoint, ``python -m harness run --model OUTPUT/models/NAME --tasks ...
  --output-path OUTPUT/runs --run-name NAME``, with ``OUTPUT/runs/NAME/job.json`` describing the run for the reports.
* ``eval-base`` (``eval-sft`` with an SFT stage): the starting model, once.

``NAME`` spells every grid value, e.g. ``jompo-1k-b0.05-e2-s1234`` (``mpo-1k-b0.05-e2-s1234-crop``), so a job keeps
its id when the grid grows. Each job's fingerprint hashes every setting that changes its result; a finished job is
one whose ``done.json`` marker carries the current fingerprint and whose outputs exist (for a training job, the
weight files verified when it was marked done). A job is marked done only once its outputs are complete and
verified (:func:`verify_outputs`): a training job's final model must be whole (``train_manifest.json``, written last
by ``harness train``, and the weight hashes it records), trained with the job's settings from its starting model,
and not identical to that starting model. A rerun skips finished jobs, marks done without training again a
training job whose final model is complete and verified (a sweep stopped after the training ended), resumes
unfinished ones (training with ``--resume`` when checkpoints exist, from the last complete one; evaluation resumes
itself), runs again the jobs downstream of one that runs again, and refuses to reuse a training folder made with
other settings (it names what changed). An evaluation's run folder belongs to the sweep: ``harness run --overwrite`` discards its
predictions when they were made with other settings (a retrained model, another engine), and resumes them otherwise.

Settings come from the code defaults (:class:`SweepSettings`), a preset (``--preset NAME``:
``configs/sweeps/NAME.yaml``), a sweep YAML (``--config``; its sections are merged key by key over the preset's)
and the flags, later ones winning.

Data subsets are nested and reproducible: the records are sorted by id, shuffled once with ``subset_seed``, and each
data size takes a prefix of that order (the 1k subset is the first 1000 records of the 2k subset). They are written as
canonical preference JSONL under ``OUTPUT/data/``.

Layout of ``OUTPUT``::

    index.json                 the run index (below), rewritten atomically
    data/preferences-1k.jsonl  the nested subsets (toy data: data/toy/, data/toy-sft/)
    jobs/ID/                   spec.json (the job as planned), train.yaml (training jobs), log.txt, done.json, lock
    models/NAME/               training outputs (checkpoints/, the final model)
    runs/NAME/                 evaluation runs (one folder per task) and job.json
    report/                    report.html, report.tex, ... (``harness report``)
    slurm/                     submitit's files (Slurm executor)

The run index ``index.json``: ``{"version": 1, "output", "settings", "data", "updated", "jobs": [...]}``; each job
is ``{"id", "kind", "name", "params", "deps", "state", "fingerprint", "command", "outputs", "log", "attempts",
"submitted", "started", "finished", "seconds", "error", "slurm_job_id", "host", "in_plan"}`` with ``state`` one of
``pending``, ``running``, ``done``, ``failed``; paths are relative to ``OUTPUT``; times are ISO 8601 (UTC).

Processes and locks: one sweep at a time writes a sweep folder (an exclusive ``flock`` on ``OUTPUT/sweep.lock``; a
second sweep is refused with one line naming the holder: pid, host, start time), and one process at a time runs a
job (``jobs/ID/lock``, held by the job's own processes until the last of them exits, so a job that outlived its
sweep is never started again beside itself). Each local job runs in its own process group under a supervisor
(:func:`supervise_main`): SIGINT, SIGTERM or SIGHUP of the sweep stops the group, then the sweep exits with one line
(status 128 + the signal); if the sweep is killed outright (SIGKILL), the supervisor notices and stops the group.

Executors: ``local`` runs the jobs in dependency order, each as a subprocess (a crash fails that job, not the
sweep; jobs that depend on it stay pending); ``slurm`` submits each unfinished job through submitit
(``pip install submitit``) with ``afterok`` dependencies and per-kind resources from the ``slurm:`` section of the
sweep YAML, then returns; rerun the same command later to refresh the index and write the report.

Modules
-------
:mod:`~harness.sweep.settings` (settings, presets, sweep YAML), :mod:`~harness.sweep.plan` (jobs, names,
fingerprints), :mod:`~harness.sweep.inputs` (methods, data sizes and nested subsets, the base model, training
recipes), :mod:`~harness.sweep.flags` (the ``eval:`` / ``report:`` flags), :mod:`~harness.sweep.resources` (the
``slurm:`` section), :mod:`~harness.sweep.layout` (the sweep folder's files), :mod:`~harness.sweep.locks`,
:mod:`~harness.sweep.index` (done markers, verification, the run index, :func:`prepare`),
:mod:`~harness.sweep.local` (supervised subprocesses, the local executor), :mod:`~harness.sweep.slurm` (the Slurm
executor) and :mod:`~harness.sweep.cli` (``harness sweep``). This package re-exports their public names; a
module-level setting (``JOB_LOCK_WAIT_S``, ``STOP_GRACE_S``) is changed on its own module.
"""

from __future__ import annotations

# Re-exports: __all__ and, importable from here as before the split, the constants and a few helpers
# (trainers.trainer imports safetensors_header and weight_files).
# ruff: noqa: F401
from harness.sweep.cli import (
    SweepInterrupted,
    add_sweep_arguments,
    cmd_sweep,
    format_plan,
    interrupt_on_signals,
    plan_states,
    run_sweep,
    settings_from_args,
    write_report,
)
from harness.sweep.index import (
    RunIndex,
    has_checkpoint,
    is_done,
    prepare,
    safetensors_header,
    same_weights,
    verify_outputs,
    verify_trained_model,
    weight_files,
)
from harness.sweep.inputs import (
    base_model_name,
    check_methods,
    fingerprint,
    nested_subsets,
    parse_data_sizes,
    subset_file,
    uses_rejected_image,
)
from harness.sweep.layout import (
    DONE_FILE,
    INDEX_FILE,
    INDEX_VERSION,
    JOB_JSON,
    JOB_LOCK,
    KINDS,
    LOG_FILE,
    MANIFEST_FILE,
    SPEC_FILE,
    STATES,
    SWEEP_LOCK,
    TRAIN_KINDS,
    TRAIN_YAML,
    job_dir,
)
from harness.sweep.local import (
    STOP_GRACE_S,
    JobFailed,
    JobRunner,
    SubprocessRunner,
    SweepResult,
    execute_job,
    job_arguments,
    run_local,
    stop_process_group,
    supervise_main,
)
from harness.sweep.locks import JOB_LOCK_WAIT_S, _lock_info, job_lock, lock_holder, sweep_lock, try_lock
from harness.sweep.plan import DataPlan, Job, Plan, Point, build_plan
from harness.sweep.resources import slurm_parameters
from harness.sweep.settings import (
    DEFAULT_SUBSET_SEED,
    DEFAULT_TOY_CAPTIONS,
    DEFAULT_TOY_PAIRS,
    EXECUTORS,
    PRESETS_DIR,
    PROJECT_ROOT,
    SweepSettings,
    coerce_setting,
    merge_settings,
    preset_path,
    project_path,
    read_sweep_config,
)
from harness.sweep.slurm import run_slurm, run_slurm_job, slurm_executor

__all__ = [
    "DataPlan",
    "Job",
    "JobFailed",
    "JobRunner",
    "Plan",
    "Point",
    "RunIndex",
    "SubprocessRunner",
    "SweepResult",
    "SweepSettings",
    "add_sweep_arguments",
    "build_plan",
    "check_methods",
    "cmd_sweep",
    "coerce_setting",
    "execute_job",
    "format_plan",
    "has_checkpoint",
    "interrupt_on_signals",
    "is_done",
    "job_arguments",
    "job_lock",
    "lock_holder",
    "merge_settings",
    "nested_subsets",
    "parse_data_sizes",
    "plan_states",
    "prepare",
    "preset_path",
    "read_sweep_config",
    "run_local",
    "run_slurm",
    "run_slurm_job",
    "run_sweep",
    "same_weights",
    "settings_from_args",
    "slurm_executor",
    "slurm_parameters",
    "stop_process_group",
    "supervise_main",
    "sweep_lock",
    "try_lock",
    "uses_rejected_image",
    "verify_outputs",
    "verify_trained_model",
    "write_report",
]
