"""The evaluation API: ``evaluate(EvalConfig(...)) -> RunRecord``, what ``harness run`` does.

::

    from harness.evaluate import EvalConfig, evaluate

    record = evaluate(EvalConfig(model="path/to/checkpoint", tasks=["toy_amber"], limit=20, output_path="runs"))
    record.task("toy_amber").headline        # the headline metrics, as metrics.json holds them
    record.task("toy_amber").predictions_path

For each task, :func:`evaluate` opens the run directory ``OUTPUT/RUN/TASK`` (:class:`harness.store.RunStore`;
its :class:`~harness.records.Manifest` is written first), generates the pending samples with one engine shared by
all tasks, scores them (:func:`harness.runner.evaluate`) and records the invocation in ``runs.jsonl``. A rerun with
the same settings resumes. User errors are :class:`harness.errors.HarnessError` (unknown task, bad data root, a
full disk, ...); an interrupt is recorded in ``runs.jsonl`` and re-raised, finished predictions kept.

Without ``model`` the default model is the lab model (:mod:`trainers.lab_model`, trained on first use), so this
module sits beside the command line, above the benchmarks and the trainers.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import engines
from harness.cache import content_hash
from harness.engines import EngineOptions
from harness.errors import ConfigError
from harness.io import atomic_write_json
from harness.manifest import environment
from harness.models import resolve_model
from harness.records import Manifest, RunRecord, TaskRecord
from harness.runner import disk_errors
from harness.runner import evaluate as run_task
from harness.store import RunStore
from harness.task import check_option_keys, get_task
from harness.types import Decoding
from trainers.lab_model import default_model

log = logging.getLogger("harness")

# Engine description keys that do not change predictions (left out of the run fingerprint).
_NON_SEMANTIC = {"batch_size", "concurrency", "timeout_s", "max_retries"}


@dataclass
class EvalConfig:
    """The settings of one evaluation (the flags of ``harness run``; the defaults are the command's).

    ``tasks``: task names (a list, or a comma-separated string). ``data_root`` / ``image_root``: ``[TASK=]DIR``
    items (a bare ``DIR`` for every task). Task options: ``option`` holds ``KEY=VALUE`` items (``--option``),
    ``options`` options by key (the tasks' dedicated flags, which win), ``option_flags`` the flag that set each of
    ``options`` (named in error messages). ``argv``: the command line recorded in the manifest (default:
    ``sys.argv``). The API key of the openai engine is read from the environment variable ``api_key_env``; the
    judge's from ``judge_api_key_env``.
    """

    tasks: str | Sequence[str]
    model: str | None = None
    engine: str | None = None
    output_path: str | Path = "runs"
    run_name: str | None = None
    limit: int | float | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    data_root: Sequence[str] = ()
    image_root: Sequence[str] = ()
    option: Sequence[str] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    option_flags: Mapping[str, str] = field(default_factory=dict)
    template: str | None = None
    dtype: str = "auto"
    device: str | None = None
    seed: int = 1234
    on_image_error: str = "skip"
    overwrite: bool = False
    progress: bool = True
    # vllm engine
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool = False
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    # openai engine
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None
    concurrency: int = 64
    timeout: float = 120.0
    max_retries: int = 5
    # judge
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 4
    judge_timeout: float = 120.0
    judge_max_retries: int = 6
    no_judge_cache: bool = False
    argv: Sequence[str] | None = None

    @property
    def task_names(self) -> list[str]:
        items = self.tasks.split(",") if isinstance(self.tasks, str) else self.tasks
        return [t.strip() for t in items if t.strip()]

    @property
    def tasks_text(self) -> str:
        return self.tasks if isinstance(self.tasks, str) else ",".join(self.tasks)


# --------------------------------------------------------------------------- helpers
def limited_samples(task: Any, limit: int | float | None) -> list:
    """The task's samples, the first ``limit`` of them (a fraction: ceil(fraction x samples), at least 1); a
    warning when an integer limit exceeds the task's samples."""
    import math

    if limit is None:
        return task.samples()
    if isinstance(limit, float):
        every = task.samples()
        return every[: max(1, math.ceil(len(every) * limit))]
    samples = task.samples(limit)
    if len(samples) < limit:
        log.warning(
            "%s: --limit %d is more than its %d samples; running all %d", task.name, limit, len(samples), len(samples)
        )
    return samples


def per_task(values: Sequence[str], task_names: list[str], flag: str) -> dict[str, str]:
    """Parse repeated ``[TASK=]DIR`` values into a mapping (key ``""`` = every task)."""
    out: dict[str, str] = {}
    for value in values:
        name, eq, path = value.partition("=")
        if eq and name in task_names:
            out[name] = path
        elif eq and re.fullmatch(r"[A-Za-z0-9_:.-]+", name) and not Path(value).exists():
            raise ConfigError(f"{flag} {value}: {name!r} is not one of the tasks of this run ({', '.join(task_names)})")
        else:
            out[""] = value
    return out


def slug(text: str) -> str:
    text = text.rstrip("/\\")
    base = Path(text).name or text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "model"


def task_options(
    items: Sequence[str], flagged_values: Mapping[str, Any], flags: Mapping[str, str], classes: list | None = None
) -> dict[str, Any]:
    """The task options of ``KEY=VALUE`` ``items`` and of ``flagged_values`` (which win; ``flags`` names the flag
    of each). With ``classes`` (the requested task classes), a key that none of them reads is a
    :class:`ConfigError` naming the closest known keys."""

    options: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value
    options.update(flagged_values)
    if classes is not None:
        check_option_keys(classes, options, dict(flags))
    return options


def make_judge(settings: Any, task: Any, reviews: str | None = None):
    """The judge for ``task``: saved replies (``reviews``), an OpenAI-compatible judge, or None if unneeded.
    ``settings`` has the judge settings of :class:`EvalConfig` (``judge_model``, ...)."""
    if reviews is not None:
        return task.read_reviews(reviews)
    if not task.needs_judge():
        return None
    from harness.judge_openai import OpenAIJudge

    model = settings.judge_model or task.default_judge_model
    if model is None:
        raise ConfigError(f"task {task.name} needs a judge: pass --judge-model")
    return OpenAIJudge(
        model,
        base_url=settings.judge_base_url or task.default_judge_base_url(model),
        api_key_env=settings.judge_api_key_env,
        concurrency=settings.judge_concurrency,
        use_cache=not settings.no_judge_cache,
        timeout_s=getattr(settings, "judge_timeout", 120.0),
        max_retries=getattr(settings, "judge_max_retries", 6),
    )


def _embedded_model(progress: bool = True) -> str:
    """The default model: the lab model (:mod:`trainers.lab_model`), trained on first use and cached."""

    return str(default_model(progress=progress))


def _resolve_tasks(config: EvalConfig) -> list:

    names = config.task_names
    if not names:
        raise ConfigError("--tasks is empty; `harness tasks` lists the task names")
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks names a task twice: {config.tasks_text}")
    classes = [get_task(n) for n in names]  # unknown names fail here, before any model loads
    data_roots = per_task(config.data_root, names, "--data-root")
    image_roots = per_task(config.image_root, names, "--image-root")
    options = task_options(config.option, config.options, config.option_flags, classes)
    tasks = []
    for cls in classes:
        data_root = data_roots.get(cls.name, data_roots.get(""))
        image_root = image_roots.get(cls.name, image_roots.get(""))
        if data_root is not None and not Path(data_root).is_dir():
            raise ConfigError(f"--data-root {data_root} (task {cls.name}) is not a directory")
        task = cls(data_root=data_root, image_root=image_root, options=options)
        task.check_files()
        tasks.append(task)
    return tasks


def _describe_model(config: EvalConfig, engine_name: str) -> tuple[str, dict[str, Any], str, Any]:
    """(model string handed to the engine, manifest entry, default run name, model family adapter or None)."""

    model = config.model
    if model is None:
        if engine_name == "openai":
            raise ConfigError("--engine openai needs --model (the served model name, or its checkpoint path)")
        from trainers.lab_model import LAB_MODEL_NAME

        model = _embedded_model(progress=config.progress)
        default_name = LAB_MODEL_NAME
    else:
        default_name = slug(config.served_model or model)
    if engine_name == "openai" and not Path(model).exists():
        return model, {"name": model, "path": None, "content_hash": None}, default_name, None
    if model in engines.ENGINES and not Path(model).exists():
        raise ConfigError(
            f"--model {model}: no such checkpoint; {model!r} is an engine: choose it with --engine "
            f"{model} (--model is a checkpoint directory or, with --engine openai, a served model)"
        )
    info, family = resolve_model(model, config.template)
    entry = {
        "name": default_name,
        "path": str(Path(model).resolve()),
        "content_hash": info.content_hash,
        "architecture": info.architecture,
        "family": info.family,
    }
    return model, entry, default_name, family


def _log_interrupted(store, started: float, exc: KeyboardInterrupt, limit: int | float | None) -> None:
    """Record an interrupted invocation in ``runs.jsonl`` with its counts so far (best effort)."""
    counts = getattr(exc, "run_counts", {})
    info = {"started": started, **counts, "limit": limit, "interrupted": getattr(exc, "signal_name", "SIGINT")}
    if counts.get("seconds"):
        info["samples_per_s"] = round(counts.get("generated", 0) / counts["seconds"], 3)
    try:
        store.log_run(info)
    except OSError as err:
        log.warning("%s: could not record the interrupted run: %s", store.dir, err.strerror or err)


# --------------------------------------------------------------------------- evaluate
def evaluate(config: EvalConfig) -> RunRecord:
    """Run and score every task of ``config`` (see the module docstring); the :class:`RunRecord` of the run.

    A full disk, quota, read-only file system or permission error while writing the run is a
    :class:`harness.runner.DiskWriteError`; finished predictions are kept."""

    with disk_errors(Path(config.output_path)):
        return _evaluate(config)


def _evaluate(config: EvalConfig) -> RunRecord:

    tasks = _resolve_tasks(config)
    engine_name = config.engine or engines.default_engine()
    model, model_entry, default_name, family = _describe_model(config, engine_name)
    run_name = config.run_name or default_name
    run_dir = Path(config.output_path) / run_name

    stores = {t.name: RunStore(run_dir / t.name) for t in tasks}
    for store in stores.values():
        store._ensure_writable()  # fail before loading a model

    api_key = os.environ.get(config.api_key_env) if engine_name == "openai" else None
    options = EngineOptions(
        batch_size=config.batch_size,
        dtype=config.dtype,
        device=config.device,
        template=config.template,
        tensor_parallel_size=config.tensor_parallel_size,
        data_parallel_size=config.data_parallel_size,
        enforce_eager=config.enforce_eager,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        base_url=config.base_url,
        api_key=api_key,
        served_model=config.served_model,
        concurrency=config.concurrency,
        timeout_s=config.timeout,
        max_retries=config.max_retries,
        extra_body=dict(family.server_request_fields) if (family and engine_name == "openai") else None,
    )
    judges = {t.name: make_judge(config, t) for t in tasks}  # judge settings fail before any model loads
    decoding = Decoding(seed=config.seed)
    env = environment(None if config.argv is None else list(config.argv))  # the command as given, secrets redacted
    records: list[TaskRecord] = []
    started = time.time()
    with engines.create_engine(engine_name, model, decoding, options) as engine:
        described = engine.describe()
        for task in tasks:
            samples = limited_samples(task, config.limit)
            data_hashes = {str(p.relative_to(task.data_root)): content_hash(p) for p in task.check_files()}
            settings = {
                "model": {k: model_entry.get(k) for k in ("path", "content_hash")} | {"name": model_entry["name"]},
                "engine": {k: v for k, v in described.items() if k not in _NON_SEMANTIC},
                "task": {"name": task.name, "version": task.version, "data": data_hashes},
                "max_new_tokens": config.max_new_tokens,
            }
            manifest = Manifest(
                model=model_entry,
                engine=described,
                task={
                    "name": task.name,
                    "version": task.version,
                    "data_root": str(task.data_root),
                    "data_files": data_hashes,
                },
                scorer=task.provenance(),
                decoding=decoding.to_dict(),
                max_new_tokens_override=config.max_new_tokens,
                **env,
            )
            store = stores[task.name]
            with disk_errors(store.dir / "manifest.json"):
                store.open(manifest.to_dict(), settings, overwrite=config.overwrite)
            log.info("%s: %d samples -> %s", task.name, len(samples), store.dir)
            t0 = time.time()
            judge = judges[task.name]
            try:
                result = run_task(
                    task,
                    engine,
                    store,
                    samples,
                    max_new_tokens=config.max_new_tokens,
                    on_image_error=config.on_image_error,
                    progress=config.progress,
                    judge=judge,
                )
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: still logged in runs.jsonl
                _log_interrupted(store, t0, exc, config.limit)
                raise
            with disk_errors(store.dir / "judge.json"):
                if judge is not None:
                    atomic_write_json(
                        store.dir / "judge.json", {**judge.describe(), "ledger": judge.ledger().to_dict()}
                    )
            with disk_errors(store.dir / "runs.jsonl"):
                store.log_run(
                    {
                        "started": t0,
                        "seconds": round(result.seconds, 3),
                        "generated": result.n_generated,
                        "resumed": result.n_resumed,
                        "failed": result.n_failed,
                        "samples_per_s": round(result.samples_per_s, 3),
                        "limit": config.limit,
                    }
                )
            records.append(
                TaskRecord(
                    task=result.task,
                    dir=store.dir,
                    headline=dict(result.metrics.headline),
                    counts=dict(result.metrics.counts),
                    n_samples=result.n_samples,
                    n_resumed=result.n_resumed,
                    n_generated=result.n_generated,
                    n_failed=result.n_failed,
                    seconds=result.seconds,
                )
            )
    return RunRecord(
        run_name=run_name,
        run_dir=run_dir,
        engine=engine_name,
        model=str(model_entry.get("name") or ""),
        tasks=tuple(records),
        seconds=time.time() - started,
    )
