"""The plan of a sweep: its settings expanded into jobs with stable ids (names that spell every grid value),
dependencies and fingerprints, and its nested data subsets (:func:`build_plan`; reads the data, writes nothing)."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, DataError
from harness.records import JobInfo
from harness.sweep.flags import _SWEEP_SET_EVAL, _check_flags, _flags
from harness.sweep.inputs import (
    absolute_model,
    base_model_name,
    check_methods,
    fingerprint,
    load_train_config,
    model_key,
    parse_data_sizes,
    read_source_examples,
    recipe_path,
    semantic_settings,
    subset_file,
    train_overrides,
    uses_rejected_image,
    validated,
)
from harness.sweep.layout import KINDS, MANIFEST_FILE, TRAIN_YAML
from harness.sweep.resources import slurm_parameters
from harness.sweep.settings import DEFAULT_TOY_PAIRS, EXECUTORS, GRID_KEYS, SweepSettings, project_path
from harness.task import get_task
from trainers.config import REJECTED_IMAGE_STRATEGIES, TrainConfig

if TYPE_CHECKING:
    from trainers.data import PreferenceExample

log = logging.getLogger("harness.sweep")


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
        return {
            "method": self.method,
            "data_size": self.data_size,
            "beta": self.beta,
            "epochs": self.epochs,
            "seed": self.seed,
            "rejected_image": self.rejected_image,
        }


@dataclass
class Job:
    """One job of a sweep, as planned (and written to ``jobs/ID/spec.json``).

    ``argv`` are the arguments after ``python -m harness``; ``outputs`` and ``expect`` (the files that exist when
    the job is done) are relative to the sweep folder; ``train_config`` (training jobs) is the complete
    :class:`~trainers.config.TrainConfig` written to ``jobs/ID/train.yaml``; ``job_json`` (evaluation jobs) the
    run description written to ``runs/NAME/job.json`` (:meth:`harness.records.JobInfo.to_dict`).
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
        return {
            "source": self.source,
            "records": self.n_records,
            "subset_seed": self.subset_seed,
            "subsets": {str(k): v for k, v in self.subsets.items()},
            "fingerprint": self.fingerprint,
            "sft_source": self.sft_source,
        }


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
    grids = _grids(settings)
    for grid in grids:
        check_methods(grid["methods"])
    methods = list(dict.fromkeys(m for grid in grids for m in grid["methods"]))
    if not settings.tasks:
        raise ConfigError("no --tasks given (e.g. --tasks amber,object_halbench,mmhal; `harness tasks` lists them)")

    for task in settings.tasks:
        get_task(task)  # unknown names fail with the closest ones
    if settings.data is None:
        raise ConfigError(
            "no --data given: a preference data file, `toy` (generated toy contrast pairs) or `lab` "
            "(the lab's contrast pairs)"
        )
    if settings.lab and settings.data != "lab":
        raise ConfigError("the lab: settings apply to `data: lab` only (the lab's contrast pairs)")
    if settings.eval:
        _check_flags("run", settings.eval, _SWEEP_SET_EVAL)
    if settings.report:
        _check_flags("report", settings.report, ("run_dirs", "output"))
    if settings.slurm:
        for kind in KINDS:
            slurm_parameters(settings.slurm, kind)  # bad resources fail before anything runs

    for strategy in (s for grid in grids for s in grid["rejected_images"] or ()):
        if strategy not in REJECTED_IMAGE_STRATEGIES:
            close = difflib.get_close_matches(strategy, REJECTED_IMAGE_STRATEGIES, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"--rejected-images: unknown strategy {strategy!r}{hint} "
                f"(strategies: {', '.join(REJECTED_IMAGE_STRATEGIES)})"
            )

    train_section = train_overrides(settings.train, "train")
    global_steps = {"max_steps": settings.max_steps} if settings.max_steps else {}
    configs: dict[str, TrainConfig] = {}
    for method in methods:
        configs[method] = load_train_config(
            recipe_path(settings.train_config, method), {**train_section, **global_steps, "method": method}
        )
    first = configs[methods[0]]

    # --- data
    size_tokens = list(dict.fromkeys(t for grid in grids for t in grid["data_sizes"]))
    if settings.data == "toy":
        from tasks.toy import PREFERENCE_FILE

        numeric = [s for s in (_size_or_none(t) for t in size_tokens) if s]
        n_records = settings.toy_pairs or (max(numeric) if numeric else DEFAULT_TOY_PAIRS)
        source = f"data/toy/{PREFERENCE_FILE}"
        data_fp = fingerprint({"toy_pairs": n_records, "seed": 0})
        examples = None
    elif settings.data == "lab":
        from tasks.lab import PREFERENCE_FILE as LAB_FILE

        lab_config = lab_pairs_config(settings)
        n_records = lab_config.n_pairs
        source = f"data/lab/{LAB_FILE}"
        data_fp = fingerprint({"lab": lab_config.to_dict()})
        examples = None
    else:
        examples = read_source_examples(settings, first)
        n_records = len(examples)
        source = str(project_path(settings.data).resolve())
        from harness.cache import content_hash

        data_fp = content_hash(source)
    what = {"toy": "toy data", "lab": "the lab's contrast pairs (lab: n_pairs)"}.get(settings.data, source)
    grid_sizes = [parse_data_sizes(grid["data_sizes"], n_records, what) for grid in grids]
    sizes = sorted({n for gs in grid_sizes for n in gs})
    data = DataPlan(
        source=source,
        n_records=n_records,
        subset_seed=settings.subset_seed,
        subsets={n: subset_file(n) for n in sizes},
        fingerprint=data_fp,
        examples=examples,
    )

    jobs: list[Job] = []
    start_model = absolute_model(settings.model)  # jobs may run in another folder (Slurm)
    start_key = model_key(settings.model)
    start_dep: tuple[str, ...] = ()
    model_name = base_model_name(settings.model)

    # --- the SFT stage
    if settings.sft is not None:
        sft = dict(settings.sft)
        sft_data = sft.pop("data", None)
        sft_recipe = sft.pop("config", None)
        if sft_data is None:
            raise ConfigError("sft: no data given (a file of {id, image, question, answer} records, or toy)")
        sft_overrides = train_overrides(sft, "sft")
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
        sft_config = load_train_config(
            project_path(str(sft_recipe)) if sft_recipe else None,
            {
                **sft_overrides,
                **global_steps,
                "method": "sft",
                "model": start_model,
                "data": str(sft_path),
                "output": str(output / "models" / "sft"),
            },
        )
        validated(sft_config)
        sft_fingerprint = fingerprint(
            {"kind": "sft", "config": semantic_settings(sft_config), "data": sft_fp, "model": start_key}
        )
        jobs.append(_train_job("sft", "sft", "sft", (), {}, sft_config, sft_fingerprint, output, settings))
        start_model = str(output / "models" / "sft")
        start_key = f"job:sft:{sft_fingerprint}"
        start_dep = ("sft",)

    # --- the base evaluation
    base_name = settings.base_method or ("sft" if settings.sft is not None else "base")
    jobs.append(
        _eval_job(base_name, start_dep, start_model, start_key, {"method": base_name}, model_name, output, settings)
    )

    # --- the grids (a point two grids share is planned once)
    planned: set[str] = {job.id for job in jobs}
    for grid, gsizes in zip(grids, grid_sizes):
        for method in grid["methods"]:
            config = configs[method]
            betas = grid["betas"] or [config.beta]
            epochs = grid["epochs"] or [config.epochs]
            seeds = grid["seeds"] or [config.seed]
            strategies: list[str | None] = (
                list(grid["rejected_images"] or [config.rejected_image]) if uses_rejected_image(method) else [None]
            )
            for size in gsizes:
                for beta in betas:
                    for ep in epochs:
                        for seed in seeds:
                            for strategy in strategies:
                                point = Point(method, size, beta, ep, seed, strategy)
                                for job in _point_jobs(
                                    point, config, data, start_model, start_key, start_dep, model_name, output, settings
                                ):
                                    if job.id not in planned:
                                        planned.add(job.id)
                                        jobs.append(job)
        if grid["rejected_images"] and not any(uses_rejected_image(m) for m in grid["methods"]):
            log.warning(
                "--rejected-images has no effect: none of %s uses a generated rejected image (mpo does)",
                ", ".join(grid["methods"]),
            )
    counts = Counter(job.id for job in jobs)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:  # pragma: no cover - names spell every grid value
        raise ConfigError(f"the grid gives two jobs the same id: {', '.join(duplicates)}")
    return Plan(settings=settings, output=output, data=data, jobs=jobs)


def _grids(settings: SweepSettings) -> list[dict[str, Any]]:
    """The main grid (the top-level ``methods``, ``data_sizes``, ``betas``, ``epochs``, ``seeds``,
    ``rejected_images``), then each of ``grids`` over it."""

    main = {key: getattr(settings, key) for key in GRID_KEYS}
    return [main, *({**main, **extra} for extra in settings.grids or ())]


def lab_pairs_config(settings: SweepSettings) -> Any:
    """The :class:`tasks.lab.LabConfig` of a ``data: lab`` sweep's contrast pairs (the ``lab:`` settings over the
    lab's defaults); a bad setting is a one-line :class:`ConfigError` naming it."""
    from tasks.lab import LabConfig

    try:
        return LabConfig.from_dict(settings.lab)
    except TypeError as exc:  # pragma: no cover - from_dict names unknown keys first
        raise ConfigError(f"lab: {exc}") from None


def _size_or_none(token: str) -> int | None:
    from reports.frame import parse_size

    return parse_size(token)


def _point_jobs(
    point: Point,
    config: TrainConfig,
    data: DataPlan,
    start_model: str | None,
    start_key: str,
    start_dep: tuple[str, ...],
    model_name: str,
    output: Path,
    settings: SweepSettings,
) -> list[Job]:
    name = point.name
    changes: dict[str, Any] = {
        "beta": point.beta,
        "epochs": point.epochs,
        "seed": point.seed,
        "model": start_model,
        "data": str(output / data.subsets[point.data_size]),
        "output": str(output / "models" / name),
        "data_format": "canonical",
        "image_root": None,
    }
    if point.rejected_image is not None:
        changes["rejected_image"] = point.rejected_image
    train_config = validated(dataclasses.replace(config, **changes))
    train_fp = fingerprint(
        {
            "kind": "train",
            "config": semantic_settings(train_config),
            "model": start_key,
            "data": {"source": data.fingerprint, "size": point.data_size, "subset_seed": data.subset_seed},
        }
    )
    train = _train_job(
        f"train-{name}", "train", name, start_dep, point.params(), train_config, train_fp, output, settings
    )
    evaluate = _eval_job(
        name,
        (train.id,),
        str(output / "models" / name),
        f"job:{train.id}:{train_fp}",
        point.params(),
        model_name,
        output,
        settings,
    )
    return [train, evaluate]


def _train_job(
    job_id: str,
    kind: str,
    name: str,
    deps: tuple[str, ...],
    params: dict[str, Any],
    config: TrainConfig,
    fp: str,
    output: Path,
    settings: SweepSettings,
) -> Job:
    return Job(
        id=job_id,
        kind=kind,
        name=name,
        deps=deps,
        params=params,
        fingerprint=fp,
        argv=["train", "--config", str(output / "jobs" / job_id / TRAIN_YAML)],
        outputs={"model": f"models/{name}"},
        expect=[f"models/{name}/config.json", f"models/{name}/{MANIFEST_FILE}"],
        launcher=settings.train_launcher,
        train_config=config.to_dict(),
    )


def _eval_job(
    name: str,
    deps: tuple[str, ...],
    model: str | None,
    model_key: str,
    params: dict[str, Any],
    model_name: str,
    output: Path,
    settings: SweepSettings,
) -> Job:
    from reports.frame import model_size_of

    # --overwrite: the run folder belongs to the sweep; predictions made with other settings (a retrained model,
    # another engine) are stale and discarded, while a rerun with the same settings resumes as usual
    argv = [
        "run",
        *(["--model", model] if model is not None else []),
        "--tasks",
        ",".join(settings.tasks),
        "--output-path",
        str(output / "runs"),
        "--run-name",
        name,
        "--no-progress",
        "--overwrite",
    ]
    if settings.engine:
        argv += ["--engine", settings.engine]
    if settings.limit:
        argv += ["--limit", str(settings.limit)]
    argv += _flags(settings.eval)
    fp = fingerprint(
        {
            "kind": "eval",
            "model": model_key,
            "tasks": settings.tasks,
            "limit": settings.limit,
            "engine": settings.engine,
            "eval": settings.eval,
        }
    )
    job_json = JobInfo(
        method=params.get("method"),
        data_size=params.get("data_size"),
        beta=params.get("beta"),
        epochs=params.get("epochs"),
        seed=params.get("seed"),
        model=model_name,
        model_size=model_size_of(model_name),
        rejected_image=params.get("rejected_image"),
        name=name,
    ).to_dict()
    return Job(
        id=f"eval-{name}",
        kind="eval",
        name=name,
        deps=deps,
        params=params,
        fingerprint=fp,
        argv=argv,
        outputs={"run": f"runs/{name}"},
        expect=[f"runs/{name}/{t}/metrics.json" for t in settings.tasks],
        job_json=job_json,
    )
