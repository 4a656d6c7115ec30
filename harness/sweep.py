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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import difflib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import ConfigError, DataError, HarnessError, MissingPackage
from harness.io import atomic_write_json, atomic_write_text, read_yaml_mapping

if TYPE_CHECKING:
    import argparse

    from trainers.config import TrainConfig
    from trainers.data import PreferenceExample

log = logging.getLogger("harness.sweep")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = PROJECT_ROOT / "configs" / "sweeps"
INDEX_FILE = "index.json"
INDEX_VERSION = 1
KINDS: tuple[str, ...] = ("sft", "train", "eval")
STATES: tuple[str, ...] = ("pending", "running", "done", "failed")
EXECUTORS: tuple[str, ...] = ("local", "slurm")
DEFAULT_SUBSET_SEED = 1234
DEFAULT_TOY_CAPTIONS = 64
DEFAULT_TOY_PAIRS = 64
DONE_FILE = "done.json"
SPEC_FILE = "spec.json"
LOG_FILE = "log.txt"
TRAIN_YAML = "train.yaml"
JOB_JSON = "job.json"
JOB_LOCK = "lock"
SWEEP_LOCK = "sweep.lock"
MANIFEST_FILE = "train_manifest.json"  # written last by `harness train` (trainers.trainer.save_final_model)
TRAIN_KINDS: tuple[str, ...] = ("sft", "train")
#: How long a job whose lock is held is waited for before the sweep gives up (the processes of a job whose sweep was
#: just killed take a moment to exit).
JOB_LOCK_WAIT_S = 10.0
#: How long a stopped job's processes get between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0

# Training settings that do not change the trained model (left out of a training job's fingerprint).
_NON_SEMANTIC_TRAIN = ("model", "data", "output", "image_root", "resume", "report_to", "logging_steps", "save_steps",
                       "save_total_limit", "dataloader_num_workers")
# Training settings the sweep sets itself (not allowed in the `train:` / `sft:` sections).
_SWEEP_SET_TRAIN = ("method", "model", "data", "output", "resume")
# `harness run` flags the sweep sets itself (not allowed in the `eval:` section).
_SWEEP_SET_EVAL = ("model", "tasks", "output_path", "run_name", "limit", "engine")


# =====================================================================================================================
# settings
# =====================================================================================================================

@dataclass
class SweepSettings:
    """Every setting of a sweep, with the code defaults. The sweep YAML (``--config``, ``--preset``) uses these
    names as keys; the flags of ``harness sweep`` override it.

    ``betas``, ``epochs``, ``seeds`` and ``rejected_images`` left at None take the training recipe's value (one
    point). ``data`` is a preference file (any format :func:`trainers.data.read_preferences` reads) or ``toy``
    (``toy_pairs`` contrast pairs generated by :mod:`tasks.toy`). ``train`` holds :class:`~trainers.config.TrainConfig`
    fields for every preference job (over ``train_config``, a recipe path where ``{method}`` is replaced by the
    method); ``sft`` (None: no SFT stage) holds ``data`` (a file of ``{id, image, question, answer}`` or ``toy``),
    optionally ``config`` (a recipe) and TrainConfig fields; ``eval`` and ``report`` hold extra flags of
    ``harness run`` and ``harness report`` (``{"batch_size": 8}`` -> ``--batch-size 8``); ``slurm`` the resources
    (see :func:`slurm_parameters`); ``train_launcher`` a command that replaces ``python`` for training jobs
    (``["accelerate", "launch", "--config_file", "configs/accelerate/zero2.yaml"]``).
    """

    methods: list[str] = field(default_factory=list)
    data_sizes: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    output: str | None = None
    model: str | None = None
    data: str | None = None
    data_format: str | None = None
    image_root: str | None = None
    betas: list[float] | None = None
    epochs: list[float] | None = None
    seeds: list[int] | None = None
    rejected_images: list[str] | None = None
    subset_seed: int = DEFAULT_SUBSET_SEED
    toy_pairs: int | None = None
    toy_captions: int = DEFAULT_TOY_CAPTIONS
    train_config: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] | None = None
    engine: str | None = None
    limit: int | None = None
    max_steps: int | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    no_report: bool = False
    executor: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)
    train_launcher: list[str] | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> SweepSettings:
        """Settings from a mapping of (YAML or flag) values; each value checked by :func:`coerce_setting`."""
        return cls(**{key: coerce_setting(key, value, source) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_STR_LISTS = ("methods", "tasks", "rejected_images")
_FLOAT_LISTS = ("betas", "epochs")
_STRINGS = ("output", "model", "data", "data_format", "image_root", "train_config", "engine", "executor")
_INTS = ("subset_seed", "toy_pairs", "toy_captions", "limit", "max_steps")
_MAPPINGS = ("train", "eval", "report", "slurm")


def _items(key: str, value: Any, source: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [str(value)]
    else:
        raise ConfigError(f"{source}: {key} must be a list or a comma-separated string, got {value!r}")
    items = [v for v in items if v]
    if not items:
        raise ConfigError(f"{source}: {key} is empty")
    return list(dict.fromkeys(items))  # duplicates dropped, order kept


def coerce_setting(key: str, value: Any, source: str) -> Any:
    """``value`` checked and converted for setting ``key`` (lists may be comma-separated strings); an unknown key
    or a value of the wrong type is a :class:`ConfigError` naming ``source``."""
    names = SweepSettings.field_names()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(names)})"
        raise ConfigError(f"{source}: unknown sweep setting {key!r}{hint}")
    nullable = key not in ("methods", "data_sizes", "tasks", "subset_seed", "toy_captions", "no_report", "executor",
                           "train", "eval", "report", "slurm")
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{source}: {key} cannot be null")
    if key in _STR_LISTS or key == "data_sizes":
        return _items(key, value, source)
    if key in _FLOAT_LISTS:
        out = []
        for item in _items(key, value, source):
            try:
                number = float(item)
            except ValueError:
                raise ConfigError(f"{source}: {key}: {item!r} is not a number") from None
            if not number > 0:
                raise ConfigError(f"{source}: {key}: {item!r} must be > 0")
            out.append(number)
        return list(dict.fromkeys(out))
    if key == "seeds":
        try:
            return list(dict.fromkeys(int(item) for item in _items(key, value, source)))
        except ValueError:
            raise ConfigError(f"{source}: seeds must be integers, got {value!r}") from None
    if key in _STRINGS:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        if key != "subset_seed" and value <= 0:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}")
        return value
    if key == "no_report":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if key in _MAPPINGS or key == "sft":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping of settings, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if key == "train_launcher":
        if isinstance(value, str):
            value = shlex.split(value)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: train_launcher must be a command (a list of strings), got {value!r}")
        return list(value)
    raise AssertionError(key)  # pragma: no cover - every key is handled above


def read_sweep_config(path: str | Path) -> dict[str, Any]:
    """The checked settings of a sweep YAML file; errors name the file (and key)."""
    raw = read_yaml_mapping(path, "sweep configuration")
    return {str(k): coerce_setting(str(k), v, str(path)) for k, v in raw.items()}


def preset_path(name: str) -> Path:
    """``configs/sweeps/NAME.yaml`` of the project; an unknown preset names the ones there are."""
    path = PRESETS_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"--preset {name!r}: no {path}{hint} (presets: {', '.join(known) or 'none found'})")


def project_path(path: str) -> Path:
    """A path of a setting: as given when it exists (relative to the working directory), else relative to the
    project root when it exists there (so the shipped ``configs/...`` are found from anywhere)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    q = PROJECT_ROOT / p
    return q if q.exists() else p


# =====================================================================================================================
# the plan
# =====================================================================================================================

@dataclass(frozen=True)
class Point:
    """One point of the training grid."""

    method: str
    data_size: int
    beta: float
    epochs: float
    seed: int
    rejected_image: str | None = None  # None: the method does not use a generated rejected image

    @property
    def name(self) -> str:
        """The run's name, every value spelt out: ``jompo-1k-b0.05-e2-s1234`` (``...-crop`` for MPO)."""
        from reports.frame import format_size

        name = f"{self.method}-{format_size(self.data_size)}-b{self.beta:g}-e{self.epochs:g}-s{self.seed}"
        return f"{name}-{self.rejected_image}" if self.rejected_image else name

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "data_size": self.data_size, "beta": self.beta, "epochs": self.epochs,
                "seed": self.seed, "rejected_image": self.rejected_image}


@dataclass
class Job:
    """One job of a sweep, as planned (and written to ``jobs/ID/spec.json``).

    ``argv`` are the arguments after ``python -m harness``; ``outputs`` and ``expect`` (the files that exist when
    the job is done) are relative to the sweep folder; ``train_config`` (training jobs) is the complete
    :class:`~trainers.config.TrainConfig` written to ``jobs/ID/train.yaml``; ``job_json`` (evaluation jobs) the
    run description written to ``runs/NAME/job.json``.
    """

    id: str
    kind: str
    name: str
    deps: tuple[str, ...]
    params: dict[str, Any]
    fingerprint: str
    argv: list[str]
    outputs: dict[str, str]
    expect: list[str]
    launcher: list[str] | None = None
    train_config: dict[str, Any] | None = None
    job_json: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["deps"] = list(self.deps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        values["deps"] = tuple(values["deps"] or ())
        return cls(**values)

    def command(self) -> list[str]:
        """The command line that runs the job (without ``--resume``, which is added when checkpoints exist)."""
        return [*(self.launcher or [sys.executable]), "-m", "harness", *self.argv]


@dataclass
class DataPlan:
    """The preference data of a sweep and its nested subsets (``subsets``: size -> path relative to the sweep)."""

    source: str  # the data file, or "toy"
    n_records: int
    subset_seed: int
    subsets: dict[int, str]
    fingerprint: str
    sft_source: str | None = None
    examples: list[PreferenceExample] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "records": self.n_records, "subset_seed": self.subset_seed,
                "subsets": {str(k): v for k, v in self.subsets.items()}, "fingerprint": self.fingerprint,
                "sft_source": self.sft_source}


@dataclass
class Plan:
    """The jobs of a sweep in dependency order, with its data and settings."""

    settings: SweepSettings
    output: Path
    data: DataPlan
    jobs: list[Job]

    def job(self, job_id: str) -> Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    @property
    def by_id(self) -> dict[str, Job]:
        return {job.id: job for job in self.jobs}


def fingerprint(values: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of ``values``."""
    from harness.store import fingerprint as _fp

    return _fp(dict(values))


def uses_rejected_image(method: str) -> bool:
    """Whether ``method``'s loss uses a generated rejected image (the ``rej`` condition: MPO's term)."""
    from trainers.losses import METHODS, required_rows

    return any(condition == "rej" for condition, _ in required_rows(METHODS[method]))


def check_methods(methods: Sequence[str]) -> None:
    """An unknown method is a :class:`ConfigError` naming the closest method names."""
    from trainers.config import PREFERENCE_METHODS, unknown_method_message

    if not methods:
        raise ConfigError("no --methods given (e.g. --methods dpo,mpo,jompo)")
    for name in methods:
        if name not in PREFERENCE_METHODS:
            note = " (sft is a stage: the `sft:` section of the sweep YAML)" if name == "sft" else ""
            raise ConfigError(f"--methods: {unknown_method_message(name, PREFERENCE_METHODS)}{note}")


def parse_data_sizes(tokens: Sequence[str], n_records: int, source: str) -> list[int]:
    """Data sizes (``1k``, ``2000``, ``all``) as record counts, ascending; a size larger than the data set, or not
    a positive count, is a :class:`ConfigError`."""
    from reports.frame import parse_size

    if not tokens:
        raise ConfigError("no --data-sizes given (e.g. --data-sizes 1k,2k,5k, or all)")
    sizes: list[int] = []
    for token in tokens:
        size = n_records if token.strip().lower() == "all" else parse_size(token)
        if size is None or size <= 0:
            raise ConfigError(f"--data-sizes: {token!r} is not a positive record count (e.g. 500, 1k, 2.5k, all)")
        if size > n_records:
            raise ConfigError(f"--data-sizes: {token} ({size} records) is larger than the data set: "
                              f"{source} holds {n_records} records")
        sizes.append(size)
    return sorted(set(sizes))


def nested_subsets(examples: Sequence[PreferenceExample], sizes: Sequence[int],
                   seed: int = DEFAULT_SUBSET_SEED) -> dict[int, list[PreferenceExample]]:
    """Reproducible nested subsets: the records sorted by id, shuffled once with ``seed``; size ``n`` takes the
    first ``n``. The result does not depend on the file's record order, and a smaller subset is a prefix of a
    larger one."""
    order = sorted(examples, key=lambda e: e.id)
    random.Random(seed).shuffle(order)
    return {n: order[:n] for n in sizes}


def subset_file(size: int) -> str:
    from reports.frame import format_size

    return f"data/preferences-{format_size(size)}.jsonl"


def _absolute_model(model: str | None) -> str | None:
    if model is None:
        return None
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _model_key(model: str | None) -> str:
    if model is None:
        return "embedded:tiny-llava-v1"
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def base_model_name(model: str | None) -> str:
    """The base model's name in reports: the checkpoint folder's name, or the embedded model's."""
    if model is None:
        from harness.models.tiny import EMBEDDED_MODEL_NAME

        return EMBEDDED_MODEL_NAME
    text = model.rstrip("/\\")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text).strip("_") or "model"


def _recipe(template: str | None, method: str) -> Path | None:
    if template is None:
        return None
    path = project_path(template.replace("{method}", method))
    if not path.is_file():
        raise ConfigError(f"train_config {template!r}: recipe file not found: {path}")
    return path


def _train_overrides(section: Mapping[str, Any], what: str) -> dict[str, Any]:
    bad = [k for k in section if k in _SWEEP_SET_TRAIN]
    if bad:
        raise ConfigError(f"{what}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} set by the sweep "
                          "(use the sweep's own settings: methods, model, data, output)")
    return dict(section)


def _load_train_config(recipe: Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    from trainers.config import load_config

    return load_config(recipe, {k: v for k, v in overrides.items() if v is not None})


def _validated(config: TrainConfig) -> TrainConfig:
    # the embedded model has no path until it is built; validate() only needs a non-empty value
    dataclasses.replace(config, model=config.model or "embedded").validate()
    return config


def _semantic(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _NON_SEMANTIC_TRAIN}


def _flags(section: Mapping[str, Any]) -> list[str]:
    """``{"batch_size": 8, "log_samples": True, "data_root": ["a", "b"]}`` -> ``--batch-size 8 --log-samples
    --data-root a --data-root b`` (False and None leave the flag out)."""
    out: list[str] = []
    for key, value in section.items():
        flag = "--" + str(key).replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is True:
                out.append(flag)
            elif v is False or v is None:
                continue
            else:
                out += [flag, str(v)]
    return out


def _check_flags(command: str, section: Mapping[str, Any], reserved: Sequence[str]) -> None:
    """Every key of ``section`` is a flag of ``harness COMMAND`` that the sweep does not set itself."""
    import argparse

    from harness.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {opt for opt in sub.choices[command]._option_string_actions if opt.startswith("--")}
    section_name = "eval" if command == "run" else command
    for key in section:
        if key in reserved:
            raise ConfigError(f"{section_name}: {key} is set by the sweep (use the sweep setting of that name)")
        flag = "--" + str(key).replace("_", "-")
        if flag not in known and not flag.startswith("--no-"):
            close = difflib.get_close_matches(flag, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(c[2:].replace('-', '_') for c in close)}?" if close else ""
            raise ConfigError(f"{section_name}: {key!r} is not an option of `harness {command}`{hint}")


def _read_source_examples(settings: SweepSettings, recipe_defaults: TrainConfig) -> list[PreferenceExample]:
    from trainers.data import read_preferences

    path = project_path(settings.data or "")
    if not path.is_file():
        raise DataError("preference data file not found (--data)", path=path)
    image_root = settings.image_root or recipe_defaults.image_root
    fmt = settings.data_format or recipe_defaults.data_format or "auto"
    return read_preferences(path, image_root=image_root, fmt=fmt)


def build_plan(settings: SweepSettings) -> Plan:
    """Expand ``settings`` into the sweep's jobs (no file is written). Reads the preference data (to count it and
    check the data sizes) unless it is ``toy``; bad settings raise :class:`ConfigError` / :class:`DataError`."""
    if settings.output is None:
        raise ConfigError("no --output folder given")
    output = Path(settings.output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a folder")
    if settings.executor not in EXECUTORS:
        raise ConfigError(f"--executor {settings.executor!r}: expected local or slurm")
    check_methods(settings.methods)
    if not settings.tasks:
        raise ConfigError("no --tasks given (e.g. --tasks amber,object_halbench,mmhal; `harness tasks` lists them)")
    from harness.task import get_task

    for task in settings.tasks:
        get_task(task)  # unknown names fail with the closest ones
    if settings.data is None:
        raise ConfigError("no --data given: a preference data file, or `toy` for generated toy contrast pairs")
    if settings.eval:
        _check_flags("run", settings.eval, _SWEEP_SET_EVAL)
    if settings.report:
        _check_flags("report", settings.report, ("run_dirs", "output"))
    if settings.slurm:
        for kind in KINDS:
            slurm_parameters(settings.slurm, kind)  # bad resources fail before anything runs
    from trainers.config import REJECTED_IMAGE_STRATEGIES

    for strategy in settings.rejected_images or ():
        if strategy not in REJECTED_IMAGE_STRATEGIES:
            close = difflib.get_close_matches(strategy, REJECTED_IMAGE_STRATEGIES, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--rejected-images: unknown strategy {strategy!r}{hint} "
                              f"(strategies: {', '.join(REJECTED_IMAGE_STRATEGIES)})")

    train_overrides = _train_overrides(settings.train, "train")
    global_steps = {"max_steps": settings.max_steps} if settings.max_steps else {}
    configs: dict[str, TrainConfig] = {}
    for method in settings.methods:
        configs[method] = _load_train_config(_recipe(settings.train_config, method),
                                             {**train_overrides, **global_steps, "method": method})
    first = configs[settings.methods[0]]

    # --- data
    if settings.data == "toy":
        from tasks.toy import PREFERENCE_FILE

        numeric = [s for s in (_size_or_none(t) for t in settings.data_sizes) if s]
        n_records = settings.toy_pairs or (max(numeric) if numeric else DEFAULT_TOY_PAIRS)
        source = f"data/toy/{PREFERENCE_FILE}"
        data_fp = fingerprint({"toy_pairs": n_records, "seed": 0})
        examples = None
    else:
        examples = _read_source_examples(settings, first)
        n_records = len(examples)
        source = str(project_path(settings.data).resolve())
        from harness.cache import content_hash

        data_fp = content_hash(source)
    sizes = parse_data_sizes(settings.data_sizes, n_records, source if settings.data != "toy" else "toy data")
    data = DataPlan(source=source, n_records=n_records, subset_seed=settings.subset_seed,
                    subsets={n: subset_file(n) for n in sizes}, fingerprint=data_fp, examples=examples)

    jobs: list[Job] = []
    start_model = _absolute_model(settings.model)  # jobs may run in another folder (Slurm)
    start_key = _model_key(settings.model)
    start_dep: tuple[str, ...] = ()
    model_name = base_model_name(settings.model)

    # --- the SFT stage
    if settings.sft is not None:
        sft = dict(settings.sft)
        sft_data = sft.pop("data", None)
        sft_recipe = sft.pop("config", None)
        if sft_data is None:
            raise ConfigError("sft: no data given (a file of {id, image, question, answer} records, or toy)")
        sft_overrides = _train_overrides(sft, "sft")
        if sft_data == "toy":
            from tasks.toy import SFT_FILE

            sft_path = output / "data" / "toy-sft" / SFT_FILE
            sft_fp = fingerprint({"toy_captions": settings.toy_captions, "seed": 0})
            data.sft_source = f"data/toy-sft/{SFT_FILE}"
        else:
            path = project_path(str(sft_data))
            if not path.is_file():
                raise DataError("SFT data file not found (sft: data)", path=path)
            from harness.cache import content_hash

            sft_path = path.resolve()
            sft_fp = content_hash(sft_path)
            data.sft_source = str(sft_path)
        sft_config = _load_train_config(
            project_path(str(sft_recipe)) if sft_recipe else None,
            {**sft_overrides, **global_steps, "method": "sft", "model": start_model, "data": str(sft_path),
             "output": str(output / "models" / "sft")})
        _validated(sft_config)
        sft_fingerprint = fingerprint({"kind": "sft", "config": _semantic(sft_config), "data": sft_fp,
                                       "model": start_key})
        jobs.append(_train_job("sft", "sft", "sft", (), {}, sft_config, sft_fingerprint, output, settings))
        start_model = str(output / "models" / "sft")
        start_key = f"job:sft:{sft_fingerprint}"
        start_dep = ("sft",)

    # --- the base evaluation
    base_name = "sft" if settings.sft is not None else "base"
    jobs.append(_eval_job(base_name, start_dep, start_model, start_key, {"method": base_name}, model_name, output,
                          settings))

    # --- the grid
    for method in settings.methods:
        config = configs[method]
        betas = settings.betas or [config.beta]
        epochs = settings.epochs or [config.epochs]
        seeds = settings.seeds or [config.seed]
        strategies: list[str | None] = (
            list(settings.rejected_images or [config.rejected_image]) if uses_rejected_image(method) else [None])
        for size in sizes:
            for beta in betas:
                for ep in epochs:
                    for seed in seeds:
                        for strategy in strategies:
                            point = Point(method, size, beta, ep, seed, strategy)
                            jobs.extend(_point_jobs(point, config, data, start_model, start_key, start_dep,
                                                    model_name, output, settings))
    if settings.rejected_images and not any(uses_rejected_image(m) for m in settings.methods):
        log.warning("--rejected-images has no effect: none of %s uses a generated rejected image (mpo does)",
                    ", ".join(settings.methods))
    counts = Counter(job.id for job in jobs)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:  # pragma: no cover - names spell every grid value
        raise ConfigError(f"the grid gives two jobs the same id: {', '.join(duplicates)}")
    return Plan(settings=settings, output=output, data=data, jobs=jobs)


def _size_or_none(token: str) -> int | None:
    from reports.frame import parse_size

    return parse_size(token)


def _point_jobs(point: Point, config: TrainConfig, data: DataPlan, start_model: str | None, start_key: str,
                start_dep: tuple[str, ...], model_name: str, output: Path, settings: SweepSettings) -> list[Job]:
    name = point.name
    changes: dict[str, Any] = {"beta": point.beta, "epochs": point.epochs, "seed": point.seed,
                               "model": start_model, "data": str(output / data.subsets[point.data_size]),
                               "output": str(output / "models" / name), "data_format": "canonical",
                               "image_root": None}
    if point.rejected_image is not None:
        changes["rejected_image"] = point.rejected_image
    train_config = _validated(dataclasses.replace(config, **changes))
    train_fp = fingerprint({"kind": "train", "config": _semantic(train_config), "model": start_key,
                            "data": {"source": data.fingerprint, "size": point.data_size,
                                     "subset_seed": data.subset_seed}})
    train = _train_job(f"train-{name}", "train", name, start_dep, point.params(), train_config, train_fp, output,
                       settings)
    evaluate = _eval_job(name, (train.id,), str(output / "models" / name), f"job:{train.id}:{train_fp}",
                         point.params(), model_name, output, settings)
    return [train, evaluate]


def _train_job(job_id: str, kind: str, name: str, deps: tuple[str, ...], params: dict[str, Any],
               config: TrainConfig, fp: str, output: Path, settings: SweepSettings) -> Job:
    return Job(id=job_id, kind=kind, name=name, deps=deps, params=params, fingerprint=fp,
               argv=["train", "--config", str(output / "jobs" / job_id / TRAIN_YAML)],
               outputs={"model": f"models/{name}"},
               expect=[f"models/{name}/config.json", f"models/{name}/{MANIFEST_FILE}"],
               launcher=settings.train_launcher, train_config=config.to_dict())


def _eval_job(name: str, deps: tuple[str, ...], model: str | None, model_key: str, params: dict[str, Any],
              model_name: str, output: Path, settings: SweepSettings) -> Job:
    from reports.frame import model_size_of

    # --overwrite: the run folder belongs to the sweep; predictions made with other settings (a retrained model,
    # another engine) are stale and discarded, while a rerun with the same settings resumes as usual
    argv = ["run", *(["--model", model] if model is not None else []), "--tasks", ",".join(settings.tasks),
            "--output-path", str(output / "runs"), "--run-name", name, "--no-progress", "--overwrite"]
    if settings.engine:
        argv += ["--engine", settings.engine]
    if settings.limit:
        argv += ["--limit", str(settings.limit)]
    argv += _flags(settings.eval)
    fp = fingerprint({"kind": "eval", "model": model_key, "tasks": settings.tasks, "limit": settings.limit,
                      "engine": settings.engine, "eval": settings.eval})
    job_json = {"method": params.get("method"), "data_size": params.get("data_size"), "beta": params.get("beta"),
                "epochs": params.get("epochs"), "seed": params.get("seed"), "model": model_name,
                "model_size": model_size_of(model_name), "rejected_image": params.get("rejected_image"),
                "name": name}
    return Job(id=f"eval-{name}", kind="eval", name=name, deps=deps, params=params, fingerprint=fp, argv=argv,
               outputs={"run": f"runs/{name}"}, expect=[f"runs/{name}/{t}/metrics.json" for t in settings.tasks],
               job_json=job_json)


# =====================================================================================================================
# job state on disk, the run index
# =====================================================================================================================

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def job_dir(output: Path, job_id: str) -> Path:
    return output / "jobs" / job_id


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(job: Job, output: Path) -> bool:
    """Finished: ``jobs/ID/done.json`` carries the job's current fingerprint and every expected output exists; for a
    training job, the model's weight files are still those verified when it was marked done (names, sizes and the
    hashes its manifest records)."""
    done = _read_json(job_dir(output, job.id) / DONE_FILE)
    if not (isinstance(done, dict) and done.get("fingerprint") == job.fingerprint
            and all((output / p).exists() for p in job.expect)):
        return False
    if job.kind not in TRAIN_KINDS:
        return True
    weights = done.get("weights")
    model_dir = output / job.outputs["model"]
    manifest = _read_json(model_dir / MANIFEST_FILE)
    if not isinstance(weights, dict) or not weights or not isinstance(manifest, dict):
        return False
    if isinstance(manifest.get("weights"), dict) and manifest["weights"] != weights:
        return False
    try:
        return (sorted(p.name for p in weight_files(model_dir)) == sorted(weights)
                and all((model_dir / n).stat().st_size == w.get("size") for n, w in weights.items()))
    except (OSError, AttributeError):
        return False


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a ``checkpoint-N`` that ``harness train --resume`` continues from (an incomplete
    one is skipped by it, in favour of the last complete one)."""
    if not folder.is_dir():
        return False
    return any(p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name) for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- verifying outputs

def weight_files(folder: Path) -> list[Path]:
    """A saved model's top-level weight files (``*.safetensors``, ``*.bin`` but the Trainer's ``training_args.bin``,
    and their indexes), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "training_args.bin" and (
        p.suffix in (".safetensors", ".bin") or p.name.endswith((".safetensors.index.json", ".bin.index.json"))))


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset of the data) of a safetensors file; ValueError when the
    file is not a whole one."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("truncated")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n <= 0 or 8 + n > size:
            raise ValueError("truncated")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")  # noqa: TRY004 - a malformed file, as the other cases
    header.pop("__metadata__", None)
    for value in header.values():
        begin, end = value["data_offsets"]
        if not 0 <= begin <= end or 8 + n + end > size:
            raise ValueError("truncated")
    return header, 8 + n


def _tensors(folder: Path) -> dict[str, tuple[Path, dict[str, Any], int]]:
    out: dict[str, tuple[Path, dict[str, Any], int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        header, start = safetensors_header(path)
        for name, info in header.items():
            out[name] = (path, info, start)
    return out


def _read_tensor_bytes(entry: tuple[Path, dict[str, Any], int]) -> bytes:
    path, info, start = entry
    begin, end = info["data_offsets"]
    with open(path, "rb") as fh:
        fh.seek(start + begin)
        return fh.read(end - begin)


def same_weights(a: Path, b: Path) -> bool:
    """Whether the safetensors weights of model folders ``a`` and ``b`` are the same tensors (same names and
    values; a dtype that differs is compared after conversion), reading one tensor at a time."""
    ta, tb = _tensors(a), _tensors(b)
    if not ta or set(ta) != set(tb):
        return False
    for name in sorted(ta):
        ea, eb = ta[name], tb[name]
        if ea[1]["shape"] != eb[1]["shape"]:
            return False
        if ea[1]["dtype"] == eb[1]["dtype"]:
            if _read_tensor_bytes(ea) != _read_tensor_bytes(eb):
                return False
            continue
        from safetensors import safe_open

        with safe_open(str(ea[0]), "pt") as fa, safe_open(str(eb[0]), "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if not bool((x.double() == y.double()).all()):
            return False
    return True


def verify_trained_model(job: Job, output: Path) -> tuple[str | None, dict[str, Any]]:
    """Check the final model of training job ``job``: ``(problem, weights)``, ``problem`` None when it is complete
    and verified, ``weights`` its weight files ``{name: {"size", "sha256"}}``.

    Complete: ``train_manifest.json`` (written last by ``harness train``) and ``config.json`` parse, every weight
    file is whole (safetensors headers, every shard of an index) and matches the hashes the manifest recorded.
    Verified: trained with the job's settings, from the job's starting model as it is now (its content hash), and
    not identical to that starting model (a run that trained nothing, or resumed from nothing)."""
    from harness.cache import content_hash

    model_dir = output / job.outputs["model"]
    manifest = _read_json(model_dir / MANIFEST_FILE)
    if not isinstance(manifest, dict):
        return f"{model_dir}: no {MANIFEST_FILE} (the final save did not finish)", {}
    if not isinstance(_read_json(model_dir / "config.json"), dict):
        return f"{model_dir}: unreadable config.json", {}
    files = weight_files(model_dir)
    if not files:
        return f"{model_dir}: no model weights", {}
    for path in files:
        if path.name.endswith(".index.json"):
            index = _read_json(path)
            shards = set(index.get("weight_map", {}).values()) if isinstance(index, dict) else None
            if not shards or any(not (model_dir / s).is_file() for s in shards):
                return f"{path}: a shard it lists is missing", {}
        elif path.suffix == ".safetensors":
            try:
                safetensors_header(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                return f"{path}: not a whole safetensors file ({exc})", {}
    weights = {p.name: {"size": p.stat().st_size, "sha256": content_hash(p)} for p in files}
    recorded = manifest.get("weights")
    if isinstance(recorded, dict) and recorded != weights:
        return f"{model_dir}: the weight files differ from those {MANIFEST_FILE} records", {}
    if job.train_config is not None and isinstance(manifest.get("config"), dict):
        ignore = set(_NON_SEMANTIC_TRAIN)
        changes = _diff({k: v for k, v in manifest["config"].items() if k in job.train_config and k not in ignore},
                        {k: v for k, v in job.train_config.items() if k in manifest["config"] and k not in ignore})
        if changes:
            return f"{model_dir}: trained with other settings ({'; '.join(changes)})", {}
    start = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    start_path = Path(str(start.get("path") or ""))
    wanted = (job.train_config or {}).get("model")
    if wanted is not None and start_path.resolve() != Path(wanted).resolve():
        return f"{model_dir}: trained from {start_path}, not {wanted}", {}
    if not start_path.is_dir():
        return f"{model_dir}: its starting model {start_path} is gone; cannot verify it", {}
    from harness.models import content_hash as model_hash

    if start.get("content_hash") and model_hash(start_path) != start["content_hash"]:
        return f"{model_dir}: its starting model {start_path} changed since it was trained", {}
    try:
        if same_weights(model_dir, start_path):
            return (f"{model_dir}: the weights are identical to its starting model {start_path} "
                    "(nothing was trained)"), {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{model_dir}: cannot compare the weights with {start_path} ({exc})", {}
    return None, weights


def verify_outputs(job: Job, output: Path) -> tuple[str | None, dict[str, Any]]:
    """``(problem, weights)`` of a job that ran: the expected outputs exist; a training job's model is verified
    (:func:`verify_trained_model`); an evaluation's ``metrics.json`` files are JSON objects."""
    missing = [p for p in job.expect if not (output / p).exists()]
    if missing:
        return f"finished without writing {', '.join(missing)}", {}
    if job.kind in TRAIN_KINDS:
        return verify_trained_model(job, output)
    bad = [p for p in job.expect if p.endswith(".json") and not isinstance(_read_json(output / p), dict)]
    if bad:
        return f"unreadable {', '.join(bad)}", {}
    return None, {}


# ---------------------------------------------------------------------------------------------- locks

def _lock_info(**extra: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), **extra}


def _write_lock_info(fd: int, info: Mapping[str, Any]) -> None:
    data = (json.dumps(dict(info), sort_keys=True) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:  # pragma: no cover - the lock matters, not the note
        pass


def lock_holder(path: Path) -> str:
    """Who holds the lock ``path``, from the note its holder wrote in it: ``pid P on HOST (since T)``."""
    info = _read_json(path)
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host', '?')} (since {info.get('started', '?')})"


def try_lock(path: Path, info: Mapping[str, Any], *, inheritable: bool = False) -> int | None:
    """Take an exclusive ``flock`` on ``path`` (created) without waiting and write ``info`` (who holds it) in it:
    the open file descriptor, or None when another process holds it. The OS releases the lock when every process
    holding the descriptor has exited, however it ended."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.set_inheritable(fd, inheritable)
    _write_lock_info(fd, info)
    return fd


#: job id -> the descriptor of its held lock (passed to the job's processes, which keep it while they run)
_job_lock_fds: dict[str, int] = {}


@contextlib.contextmanager
def job_lock(output: Path, job: Job, wait: float | None = None) -> Iterator[int]:
    """Hold ``jobs/ID/lock`` while job ``job`` runs: one process at a time runs a job. A job still run by another
    process (a sweep killed a moment ago whose job is stopping, a second sweep, a Slurm job) is waited for up to
    ``wait`` seconds (:data:`JOB_LOCK_WAIT_S`), then a HarnessError names the holder."""
    path = job_dir(output, job.id) / JOB_LOCK
    deadline = time.monotonic() + (JOB_LOCK_WAIT_S if wait is None else wait)
    while True:
        fd = try_lock(path, _lock_info(job=job.id))
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise HarnessError(f"job {job.id} is being run by another process: {lock_holder(path)}; wait for it "
                               "to finish or stop it, then rerun")
        time.sleep(0.1)
    _job_lock_fds[job.id] = fd
    try:
        yield fd
    finally:
        _job_lock_fds.pop(job.id, None)
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created); yields False when ``blocking`` is off and it is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunIndex:
    """``OUTPUT/index.json``: every job of the sweep, its state, outputs and timings (format: module docstring).

    Each change is a read-modify-write under an exclusive lock on ``index.lock`` followed by an atomic rewrite,
    so the sweep process and jobs running on other machines (Slurm) can update it side by side.
    """

    def __init__(self, output: Path):
        self.output = output
        self.path = output / INDEX_FILE
        self.lock_path = output / "index.lock"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "jobs": []}
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable run index ({exc}); remove it and rerun to rebuild it",
                            path=self.path) from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise DataError("not a sweep run index", path=self.path)
        return data

    def entries(self) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.read()["jobs"] if isinstance(e, dict) and "id" in e}

    def _write(self, data: dict[str, Any]) -> None:
        data["updated"] = _now()
        atomic_write_json(self.path, data)

    def sync(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """Rewrite the index from the plan and the jobs' state on disk (a finished job is ``done``; a job the index
        says is done but that is not is ``pending``); history fields are kept. Returns the entries by id."""
        with _locked(self.lock_path):
            data = self.read()
            old = {e["id"]: e for e in data["jobs"] if isinstance(e, dict) and "id" in e}
            jobs = []
            for job in plan.jobs:
                entry = dict(old.pop(job.id, {}))
                state = entry.get("state", "pending")
                if is_done(job, plan.output):
                    state = "done"
                elif state == "done":
                    state = "pending"
                elif state == "running" and plan.settings.executor == "local":
                    state = "pending"  # the local sweep that ran it was stopped (this one holds the sweep lock)
                    entry["error"] = "interrupted"
                entry.update({
                    "id": job.id, "kind": job.kind, "name": job.name, "params": job.params, "deps": list(job.deps),
                    "state": state, "fingerprint": job.fingerprint, "command": job.command(),
                    "outputs": dict(job.outputs), "log": f"jobs/{job.id}/{LOG_FILE}", "in_plan": True,
                })
                for key in ("attempts",):
                    entry.setdefault(key, 0)
                for key in ("submitted", "started", "finished", "seconds", "error", "slurm_job_id", "host"):
                    entry.setdefault(key, None)
                jobs.append(entry)
            for entry in old.values():  # jobs of an earlier, larger grid: kept, marked
                entry["in_plan"] = False
                jobs.append(entry)
            data = {"version": INDEX_VERSION, "output": str(plan.output), "settings": plan.settings.to_dict(),
                    "data": plan.data.to_dict(), "created": data.get("created") or _now(), "jobs": jobs}
            self._write(data)
            return {e["id"]: e for e in jobs}

    def update(self, job_id: str, increment: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
        """Set ``fields`` of job ``job_id`` and add one to its ``increment`` counters; returns the entry."""
        with _locked(self.lock_path):
            data = self.read()
            for entry in data["jobs"]:
                if entry.get("id") == job_id:
                    entry.update(fields)
                    for key in increment:
                        entry[key] = (entry.get(key) or 0) + 1
                    self._write(data)
                    return entry
        raise KeyError(f"job {job_id} is not in {self.path}")


# =====================================================================================================================
# preparing and running jobs
# =====================================================================================================================

def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _check_reuse(job: Job, output: Path) -> None:
    """A training folder made with other settings is never reused: refuse, naming what changed."""
    spec_path = job_dir(output, job.id) / SPEC_FILE
    model_dir = output / job.outputs["model"]
    if not spec_path.is_file() or not (model_dir.exists() and any(model_dir.iterdir())):
        return
    try:
        old = Job.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return
    if old.fingerprint == job.fingerprint:
        return
    ignore = set(_NON_SEMANTIC_TRAIN)
    changes = _diff({k: v for k, v in (old.train_config or {}).items() if k not in ignore},
                    {k: v for k, v in (job.train_config or {}).items() if k not in ignore})
    what = "; ".join(changes) or "its data or starting model changed"
    raise ConfigError(f"job {job.id}: {model_dir} was trained with other settings ({what}); use another --output, "
                      f"or remove {model_dir} and {job_dir(output, job.id)} to train it again")


def prepare(plan: Plan) -> dict[str, dict[str, Any]]:
    """Write what the jobs read: toy data (when asked), the nested subsets, each job's ``spec.json`` (and
    ``train.yaml``), and the run index. Returns the index entries by job id."""
    import yaml

    from trainers.data import write_preferences

    output = plan.output
    for job in plan.jobs:
        if job.kind in ("sft", "train"):
            _check_reuse(job, output)
    try:
        (output / "data").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {output} cannot be created: {exc.strerror}") from exc
    settings = plan.settings
    if settings.sft is not None and settings.sft.get("data") == "toy":
        from tasks.toy import generate_toy_sft

        generate_toy_sft(output / "data" / "toy-sft", settings.toy_captions)
    examples = plan.data.examples
    if examples is None:  # toy data
        from tasks.toy import generate_toy_preferences
        from trainers.data import read_preferences

        path = generate_toy_preferences(output / "data" / "toy", plan.data.n_records)
        examples = read_preferences(path)
    for size, subset in nested_subsets(examples, list(plan.data.subsets), plan.data.subset_seed).items():
        write_preferences(output / plan.data.subsets[size], subset)
    unfinished: set[str] = set()
    for job in plan.jobs:  # dependency order: a job after an unfinished one has stale results
        if any(d in unfinished for d in job.deps):
            (job_dir(output, job.id) / DONE_FILE).unlink(missing_ok=True)
        if not is_done(job, output):
            unfinished.add(job.id)
    for job in plan.jobs:
        folder = job_dir(output, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        if job.train_config is not None:
            atomic_write_text(folder / TRAIN_YAML, "# written by `harness sweep`; the job's complete recipe\n"
                              + yaml.safe_dump(job.train_config, sort_keys=True))
        atomic_write_json(folder / SPEC_FILE, job.to_dict())
    return RunIndex(output).sync(plan)


class JobFailed(Exception):
    """A job that did not finish; the message says why (exit status, last lines of its log)."""


class JobRunner(Protocol):
    """Runs one job to completion (raising :class:`JobFailed` otherwise), logging to ``log_path``."""

    def __call__(self, job: Job, output: Path, log_path: Path) -> None: ...


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def job_arguments(job: Job, output: Path) -> list[str]:
    """The job's command line: :meth:`Job.command`, with ``--resume`` for a training job whose folder holds
    checkpoints made from its starting model as it is now. Checkpoints made from another version of it (an
    upstream job trained again) are moved aside to ``checkpoints.stale-<time>`` and the job trains from the start."""
    cmd = job.command()
    ckpt_dir = output / job.outputs["model"] / "checkpoints" if job.kind in TRAIN_KINDS else None
    if ckpt_dir is not None and has_checkpoint(ckpt_dir):
        if _stale_checkpoints(job, ckpt_dir):
            aside = ckpt_dir.with_name(f"checkpoints.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("%s: its checkpoints were made from another version of its starting model; moved to %s, "
                        "training from the start", job.id, aside)
            ckpt_dir.rename(aside)
        else:
            cmd.append("--resume")
    return cmd


def _stale_checkpoints(job: Job, ckpt_dir: Path) -> bool:
    """Whether the ``start_model.json`` beside ``ckpt_dir`` names another content hash than the job's starting
    model's."""
    from harness.models import content_hash as model_hash

    recorded = _read_json(ckpt_dir.parent / "start_model.json")
    start = (job.train_config or {}).get("model")
    if not isinstance(recorded, dict) or not start or not Path(start).is_dir():
        return False
    return recorded.get("content_hash") != model_hash(start)


class SubprocessRunner:
    """Runs a job as ``python -m harness ...`` (training: the ``train_launcher`` if set), output appended to its
    log; training continues from the last checkpoint (``--resume``) when there is one.

    The job runs in its own process group under a small supervisor (:func:`supervise_main`): when the sweep is
    interrupted (SIGINT, SIGTERM) the whole group is stopped (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`);
    when the sweep dies without a chance to do so (SIGKILL), the supervisor sees it (``PR_SET_PDEATHSIG`` on Linux,
    its parent pid changing elsewhere) and stops the group itself. The job's processes hold the job's lock
    (:func:`job_lock`) until the last of them exits."""

    def command(self, job: Job, output: Path) -> list[str]:
        return job_arguments(job, output)

    def __call__(self, job: Job, output: Path, log_path: Path) -> None:
        cmd = self.command(job, output)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        lock_fd = _job_lock_fds.get(job.id)
        supervised = [sys.executable, "-c", "from harness.sweep import supervise_main; supervise_main()",
                      str(os.getpid()), str(-1 if lock_fd is None else lock_fd), job.id, "--", *cmd]
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n===== {_now()} {shlex.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.Popen(supervised, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True,
                                        pass_fds=() if lock_fd is None else (lock_fd,))
            except OSError as exc:
                raise JobFailed(f"cannot start {sys.executable}: {exc.strerror}") from exc
            try:
                returncode = proc.wait()
            except BaseException:  # interrupted (SIGINT, SIGTERM): the job must not outlive the sweep
                stop_process_group(proc)
                raise
            stop_process_group(proc, grace=0)  # anything the job left behind in its group
        if returncode != 0:
            tail = _tail(log_path)
            raise JobFailed(f"exit status {returncode}" + (f"; last lines of {log_path}:\n{tail}" if tail else ""))


def stop_process_group(proc: subprocess.Popen, grace: float | None = None) -> None:
    """Stop every process of ``proc``'s process group (``proc`` leads it): SIGTERM, then SIGKILL to what is left
    after ``grace`` seconds (:data:`STOP_GRACE_S`)."""
    grace = STOP_GRACE_S if grace is None else grace
    if proc.poll() is None or grace == 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
        if grace:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def supervise_main(argv: Sequence[str] | None = None) -> None:
    """The supervisor of one job (``python -c "from harness.sweep import supervise_main; supervise_main()" PARENT
    LOCK_FD JOB_ID -- COMMAND...``), started by :class:`SubprocessRunner` as the leader of a new process group.

    It runs COMMAND in its group, holding the job's lock descriptor, and exits with its status. When the sweep
    (PARENT) goes away, or it is sent SIGTERM / SIGINT / SIGHUP, it stops the whole group: SIGTERM, then SIGKILL
    after :data:`STOP_GRACE_S`."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent, lock_fd, job_id, cmd = int(args[0]), int(args[1]), args[2], args[4:]
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _die_with_parent()
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)
    if lock_fd >= 0:
        _write_lock_info(lock_fd, _lock_info(job=job_id, sweep_pid=parent))
    try:
        proc = subprocess.Popen(cmd, pass_fds=(lock_fd,) if lock_fd >= 0 else ())
    except OSError as exc:
        print(f"harness sweep: cannot start {cmd[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
    while True:
        try:
            code = proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopping or os.getppid() != parent:
                break
            continue
        os._exit(code if code >= 0 else 128 - code)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    print(f"harness sweep: job {job_id}: stopping it ("
          + (signal.Signals(stopping[0]).name if stopping else "the sweep is gone") + ")", file=sys.stderr, flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    os.killpg(0, signal.SIGKILL)  # the rest of the group, this process included


def execute_job(job: Job, output: Path, runner: JobRunner | None = None) -> bool:
    """Run one job and record it: the index says ``running``, then ``done`` (with ``done.json`` written) or
    ``failed`` (with the error). Returns whether it finished. An interrupt leaves it ``pending`` and propagates.

    The job's lock (:func:`job_lock`) is held throughout. A job is marked done only once its outputs are complete
    and verified (:func:`verify_outputs`); a training job whose final model is already complete and verified (a
    sweep stopped after the training ended, before marking it done) is marked done without training again."""
    runner = runner or SubprocessRunner()
    index = RunIndex(output)
    folder = job_dir(output, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    with job_lock(output, job):
        (folder / DONE_FILE).unlink(missing_ok=True)
        started = time.time()
        index.update(job.id, increment=("attempts",), state="running", started=_now(), finished=None,
                     seconds=None, error=None, host=socket.gethostname())
        if job.kind in TRAIN_KINDS and (output / job.outputs["model"] / MANIFEST_FILE).is_file():
            problem, weights = verify_trained_model(job, output)
            if problem is None:
                log.info("%s: its final model is complete and verified; not trained again", job.id)
                _mark_done(job, output, index, started, weights, adopted=True)
                return True
            log.info("%s: %s; training (again)", job.id, problem)
        if job.job_json is not None:
            run_dir = output / job.outputs["run"]
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / JOB_JSON, job.job_json)
        try:
            runner(job, output, folder / LOG_FILE)
            problem, weights = verify_outputs(job, output)
            if problem:
                raise JobFailed(problem)
        except JobFailed as exc:
            index.update(job.id, state="failed", finished=_now(), seconds=round(time.time() - started, 3),
                         error=str(exc))
            return False
        except KeyboardInterrupt as exc:
            index.update(job.id, state="pending", error="interrupted", seconds=round(time.time() - started, 3))
            with contextlib.suppress(AttributeError):
                exc.sweep_job = job.id  # type: ignore[attr-defined]
            raise
        _mark_done(job, output, index, started, weights)
        return True


def _mark_done(job: Job, output: Path, index: RunIndex, started: float, weights: Mapping[str, Any],
               adopted: bool = False) -> None:
    seconds = round(time.time() - started, 3)
    marker: dict[str, Any] = {"fingerprint": job.fingerprint, "finished": _now(), "seconds": seconds}
    if job.kind in TRAIN_KINDS:
        marker["weights"] = dict(weights)
    if adopted:
        marker["verified_existing"] = True
    atomic_write_json(job_dir(output, job.id) / DONE_FILE, marker)
    index.update(job.id, state="done", finished=_now(), seconds=seconds, error=None)


# =====================================================================================================================
# executors
# =====================================================================================================================

@dataclass
class SweepResult:
    """What a sweep did: job ids by what happened to them, and the report folder (None: no report)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def run_local(plan: Plan, runner: JobRunner | None = None) -> SweepResult:
    """Run the unfinished jobs one at a time in dependency order. A failed job does not stop the sweep; the jobs
    that depend on it are left pending ("blocked")."""
    result = SweepResult()
    finished: set[str] = set()
    index = RunIndex(plan.output)
    total = len(plan.jobs)
    for k, job in enumerate(plan.jobs, start=1):
        tag = f"[{k}/{total}] {job.id}"
        if is_done(job, plan.output):
            finished.add(job.id)
            result.skipped.append(job.id)
            log.info("%s: done already, skipped", tag)
            continue
        blockers = [d for d in job.deps if d not in finished]
        if blockers:
            result.blocked.append(job.id)
            index.update(job.id, state="pending", error=f"not run: {', '.join(blockers)} did not finish")
            log.warning("%s: not run, %s did not finish", tag, ", ".join(blockers))
            continue
        log.info("%s: running (log: %s)", tag, job_dir(plan.output, job.id) / LOG_FILE)
        t0 = time.time()
        if execute_job(job, plan.output, runner):
            finished.add(job.id)
            result.ran.append(job.id)
            log.info("%s: done in %.1fs", tag, time.time() - t0)
        else:
            result.failed.append(job.id)
            error = index.entries().get(job.id, {}).get("error") or "failed"
            log.error("%s: failed after %.1fs: %s", tag, time.time() - t0, error)
    return result


_RESOURCE_KEYS = ("gpus", "cpus", "mem", "time", "partition", "account", "qos", "constraint", "nodes", "setup",
                  "extra")


def _minutes(value: Any, where: str) -> int:
    """A Slurm time limit in minutes: ``90`` (minutes), ``"MM:SS"``, ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``,
    ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
    if m is None or isinstance(value, bool):
        raise ConfigError(f"{where}: time {value!r}: expected minutes or [D-]HH:MM:SS")
    parts = [int(x) for x in m.group(2).split(":")]
    if m.group(1) is not None:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        seconds = int(m.group(1)) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 1:  # MM
        seconds = parts[0] * 60
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:  # HH:MM:SS
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds <= 0:
        raise ConfigError(f"{where}: time {value!r} must be positive")
    return -(-seconds // 60)


def _gigabytes(value: Any, where: str) -> float:
    """``64`` (GB), ``"64G"``, ``"64GB"``, ``"512M"``, ``"1T"`` -> GB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([MGT]?)B?\s*", str(value), re.IGNORECASE)
    if m is None or isinstance(value, bool):
        raise ConfigError(f"{where}: mem {value!r}: expected gigabytes, e.g. 64 or 64G")
    factor = {"": 1.0, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[m.group(2).upper()]
    return float(m.group(1)) * factor


def slurm_parameters(section: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for a job of ``kind`` from the ``slurm:`` section of the sweep YAML.

    The section holds defaults for every job and, under ``sft``, ``train`` and ``eval``, per-kind values::

        slurm:
          partition: gpu
          account: myproject
          setup: ["source .venv/bin/activate"]   # shell lines run before the job
          train: {gpus: 8, cpus: 64, mem: 480G, time: "24:00:00"}
          eval: {gpus: 1, cpus: 8, mem: 64G, time: "2:00:00"}
          extra: {qos: high}                     # any other sbatch option

    Keys: gpus (per node), cpus (per task), mem, time, partition, account, qos, constraint, nodes, setup, extra.
    """
    where = "slurm"
    merged: dict[str, Any] = {}
    for key, value in section.items():
        if key in KINDS:
            continue
        merged[key] = value
    per_kind = section.get(kind) or {}
    if not isinstance(per_kind, Mapping):
        raise ConfigError(f"slurm: {kind} must be a mapping of resources, got {per_kind!r}")
    merged.update(per_kind)
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        at = f"{where}.{kind}" if key in per_kind else where
        if key not in _RESOURCE_KEYS:
            close = difflib.get_close_matches(str(key), _RESOURCE_KEYS, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{at}: unknown resource {key!r}{hint} (resources: {', '.join(_RESOURCE_KEYS)}, "
                              f"and per-kind sections {', '.join(KINDS)})")
        if value is None:
            continue
        if key in ("gpus", "cpus", "nodes"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{at}: {key} must be a non-negative integer, got {value!r}")
            out[{"gpus": "gpus_per_node", "cpus": "cpus_per_task", "nodes": "nodes"}[key]] = value
        elif key == "mem":
            out["mem_gb"] = _gigabytes(value, at)
        elif key == "time":
            out["timeout_min"] = _minutes(value, at)
        elif key == "setup":
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, list) or not all(isinstance(v, str) for v in lines):
                raise ConfigError(f"{at}: setup must be a list of shell lines, got {value!r}")
            out["slurm_setup"] = list(lines)
        elif key == "extra":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{at}: extra must be a mapping of sbatch options, got {value!r}")
            extra.update({str(k): v for k, v in value.items()})
        else:
            out[f"slurm_{key}"] = str(value)
    out["slurm_additional_parameters"] = extra
    return out


def _slurm_alive(job_ids: Sequence[str]) -> set[str]:
    """The Slurm jobs among ``job_ids`` that are still queued or running (``squeue``)."""
    if not job_ids:
        return set()
    squeue = shutil.which("squeue")
    if squeue is None:
        raise HarnessError("cannot tell whether the jobs submitted earlier still run: no `squeue` on PATH")
    proc = subprocess.run([squeue, "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise HarnessError(f"squeue failed (exit status {proc.returncode}): {proc.stderr.strip()}")
    listed = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    return {j for j in job_ids if j in listed}


def slurm_executor(folder: Path) -> Any:
    """A submitit Slurm executor writing under ``folder``; a clear error when submitit or Slurm is missing."""
    if shutil.which("sbatch") is None:
        raise HarnessError("Slurm is unreachable: no `sbatch` on PATH (run the sweep on a Slurm login node, or "
                           "use --executor local)")
    try:
        import submitit
    except ImportError as exc:
        raise MissingPackage("submitit", "--executor slurm", "extra:slurm", detail=str(exc)) from None
    try:
        return submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    except ImportError as exc:  # a module submitit imports lazily (old submitit: pkg_resources of setuptools < 81)
        missing = getattr(exc, "name", None) or str(exc)
        raise MissingPackage(str(missing), f"submitit {getattr(submitit, '__version__', '')} (--executor slurm)",
                             "extra:slurm", detail=str(exc)) from None
    except Exception as exc:  # submitit raises RuntimeError when srun is missing
        raise HarnessError(f"Slurm is unreachable: {exc}") from exc


def run_slurm(plan: Plan, entries: Mapping[str, Mapping[str, Any]]) -> SweepResult:
    """Submit every unfinished job through submitit, in dependency order, each depending (``afterok``) on its
    unfinished dependencies; jobs submitted earlier that are still queued or running are not submitted again.
    Jobs run :func:`run_slurm_job`, which records their state in the run index."""
    executor = slurm_executor(plan.output / "slurm")
    result = SweepResult()
    index = RunIndex(plan.output)
    earlier = {e["slurm_job_id"]: job_id for job_id, e in entries.items()
               if e.get("slurm_job_id") and e.get("state") in ("pending", "running")}
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
        log.info("%s: submitted as Slurm job %s%s", job.id, slurm_ids[job.id],
                 f" (after {', '.join(waits)})" if waits else "")
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


# =====================================================================================================================
# the plan as a table, the report, the command
# =====================================================================================================================

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
        + ", ".join(f"{n} {k}" for k, n in kinds.items() if n) + "); "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; executor {plan.settings.executor}",
        f"data: {plan.data.source} ({plan.data.n_records} records), nested subsets (seed {plan.data.subset_seed}): "
        + ", ".join(f"{format_size(n)} -> {p}" for n, p in plan.data.subsets.items()),
    ]
    if plan.data.sft_source:
        lines.append(f"sft data: {plan.data.sft_source}")
    rows = [("id", "kind", "state", "after", "output")]
    for job in plan.jobs:
        rows.append((job.id, job.kind, states.get(job.id, "pending"), ",".join(job.deps) or "-",
                     next(iter(job.outputs.values()))))
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
    p.add_argument("--preset", metavar="NAME",
                   help="a shipped sweep, configs/sweeps/NAME.yaml (toy: the whole pipeline on the embedded "
                        "tiny model in minutes on a CPU)")
    p.add_argument("--config", metavar="YAML", help="sweep settings (keys: the long flags' names with "
                                                    "underscores, plus train, sft, eval, report, slurm sections)")
    g = p.add_argument_group("grid")
    g.add_argument("--methods", help="comma-separated preference methods: dpo, mpo, jompo, jompo_no_ranking, ...")
    g.add_argument("--data-sizes", help="comma-separated preference data sizes (nested subsets): 1k,2k,5k or all")
    g.add_argument("--betas", help="comma-separated betas (default: the recipe's)")
    g.add_argument("--epochs", help="comma-separated epoch counts (default: the recipe's)")
    g.add_argument("--seeds", help="comma-separated training seeds (default: the recipe's)")
    g.add_argument("--rejected-images", metavar="STRATEGIES",
                   help="comma-separated rejected-image strategies for methods that use one (mpo): crop, "
                        "diffusion, black, random, contrast")
    d = p.add_argument_group("model, data and tasks")
    d.add_argument("--model", help="starting checkpoint (default: the embedded tiny LLaVA model)")
    d.add_argument("--data", help="preference data (canonical JSONL, RLAIF-V parquet, TRL, mDPO), or `toy`")
    d.add_argument("--data-format", choices=["auto", "canonical", "rlaif_v", "trl", "mdpo"])
    d.add_argument("--image-root", help="folder that relative image paths of --data are resolved against")
    d.add_argument("--subset-seed", type=int, help=f"seed of the nested data subsets (default {DEFAULT_SUBSET_SEED})")
    d.add_argument("--tasks", help="comma-separated evaluation tasks (`harness tasks` lists them)")
    t = p.add_argument_group("training and evaluation")
    t.add_argument("--train-config", metavar="YAML",
                   help="training recipe for every method; {method} in the path is replaced by the method "
                        "(e.g. configs/{method}_llava15_7b.yaml)")
    t.add_argument("--max-steps", type=int, help="cap every training job at N optimizer steps (smoke tests)")
    t.add_argument("--engine", choices=["hf", "vllm", "openai"], help="inference engine of the evaluations")
    t.add_argument("--limit", type=int, help="evaluate at most N samples per task")
    r = p.add_argument_group("running")
    r.add_argument("--output", "--output-path", "--output_path", "-o", dest="output",
                   help="the sweep's folder (presets: sweeps/NAME)")
    r.add_argument("--executor", choices=list(EXECUTORS), help="local (default): one job at a time here; slurm: "
                                                               "submit through submitit")
    r.add_argument("--dry-run", action="store_true", help="print the plan (jobs, dependencies, states); run nothing")
    r.add_argument("--no-report", dest="no_report", action="store_const", const=True, default=None,
                   help="do not run `harness report` after the jobs")
    del _argparse


_FLAG_SETTINGS = ("methods", "data_sizes", "betas", "epochs", "seeds", "rejected_images", "model", "data",
                  "data_format", "image_root", "subset_seed", "tasks", "train_config", "max_steps", "engine", "limit",
                  "output", "executor", "no_report")


def merge_settings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; mappings (the ``train``, ``sft``, ``eval``, ``report`` and ``slurm`` sections)
    are merged key by key, so a config layered on a preset changes only the keys it names."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


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


def run_sweep(settings: SweepSettings, *, dry_run: bool = False, runner: JobRunner | None = None,
              echo: Callable[[str], None] = print) -> SweepResult:
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
            echo(f"submitted {len(result.submitted)} job(s) to Slurm; index: {plan.output / INDEX_FILE}. "
                 "Rerun the same command when they finish: finished jobs are skipped, the report is written.")
            if not result.submitted and not settings.no_report:
                result.report = write_report(plan)
            return result
        result = run_local(plan, runner)
    if not settings.no_report:
        result.report = write_report(plan)
    done = len(result.ran) + len(result.skipped)
    echo(f"\n{done}/{len(plan.jobs)} jobs done ({len(result.ran)} run now, {len(result.skipped)} earlier)"
         + (f", {len(result.failed)} failed: {', '.join(result.failed)}" if result.failed else "")
         + (f", {len(result.blocked)} not run: {', '.join(result.blocked)}" if result.blocked else ""))
    echo(f"index: {plan.output / INDEX_FILE}")
    if result.report is not None:
        echo(f"report: {result.report / 'report.html'}")
    return result


@contextlib.contextmanager
def sweep_lock(output: Path) -> Iterator[int]:
    """One writer per sweep folder: an exclusive ``flock`` on ``OUTPUT/sweep.lock`` (released by the OS however the
    sweep ends); a second sweep on the folder is a HarnessError naming the holder (pid, host, start time)."""
    path = output / SWEEP_LOCK
    fd = try_lock(path, _lock_info(command=shlex.join(sys.argv)))
    if fd is None:
        raise HarnessError(f"another `harness sweep` is running on {output}: {lock_holder(path)}; wait for it to "
                           "finish or stop it")
    try:
        yield fd
    finally:
        os.close(fd)


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
        print(f"harness: sweep interrupted ({signal.Signals(signum).name})"
              + (f": job {job} was stopped" if job else "") + "; rerun the same command to resume",
              file=sys.stderr, flush=True)
        return 128 + int(signum)
    return 0 if result.ok else 1


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
