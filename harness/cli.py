"""Command line: ``harness run | score | train | report | sweep | build-vtc | tasks | toy-data | lab-data``.

User errors (:class:`harness.errors.HarnessError`) print one clear message and exit with status 2;
finished predictions are always kept.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.argtypes import int_at_least
from harness.errors import ConfigError, HarnessError
from harness.task import task_flags

log = logging.getLogger("harness")

# Engine description keys that do not change predictions (left out of the run fingerprint).
_NON_SEMANTIC = {"batch_size", "concurrency", "timeout_s", "max_retries"}


# --------------------------------------------------------------------------- parsing


_positive_int = int_at_least(1)


def _limit(text: str) -> int | float:
    """``--limit``: N >= 1 samples per task, or a fraction in (0, 1) of each task's samples (lm-eval's habit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of samples or a fraction below 1, got {text!r}") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected an integer >= 1 or a fraction in (0, 1), got {text!r}")


def limited_samples(task: Any, limit: int | float | None) -> list:
    """The task's samples, the first ``limit`` of them (a fraction: ceil(fraction x samples), at least 1); a
    warning when an integer limit exceeds the task's samples."""
    import math

    if limit is None:
        return task.samples()
    if isinstance(limit, float):
        every = task.samples()
        return every[:max(1, math.ceil(len(every) * limit))]
    samples = task.samples(limit)
    if len(samples) < limit:
        log.warning("%s: --limit %d is more than its %d samples; running all %d", task.name, limit, len(samples),
                    len(samples))
    return samples


class _SamplesAlwaysLogged(argparse.Action):
    """``--log-samples`` (lm-eval's flag): accepted; every sample is always written to the run directory."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        log.info("%s: samples are always logged (predictions.jsonl and scores.jsonl of each run directory)",
                 option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Measure and reduce hallucination in vision-language models: evaluate (run, score), train, "
                    "sweep, report, build VTC data.")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", default="INFO", choices=levels)
    common = argparse.ArgumentParser(add_help=False)  # --log-level after the command too
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    task_opts = argparse.ArgumentParser(add_help=False)
    g = task_opts.add_argument_group("task options")
    for flag in task_flags():  # declared by the tasks (harness.task.TaskFlag)
        g.add_argument(flag.flag, dest=flag.key, metavar=flag.metavar, choices=flag.choices, help=flag.help)
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other task option (repeatable)")
    judge_opts = argparse.ArgumentParser(add_help=False)
    j = judge_opts.add_argument_group("judge (LLM-judged tasks: mmhal, object_halbench --objhal-method gpt, ...)")
    j.add_argument("--judge-model", help="judge model (default: the one the official scorer used, e.g. gpt-4-0314)")
    j.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge (default: $OPENAI_BASE_URL)")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable with the judge's key")
    j.add_argument("--judge-concurrency", type=_positive_int, default=4)
    j.add_argument("--judge-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="seconds to wait for each judge reply (default: 120)")
    j.add_argument("--judge-max-retries", type=int_at_least(0), default=6, metavar="N",
                   help="retries of a failed or timed-out judge request (default: 6); a hung judge holds a "
                        "request about SECONDS x (N + 1)")
    j.add_argument("--no-judge-cache", action="store_true", help="do not read or write the judge's disk cache")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common, task_opts, judge_opts], help="generate responses with a model and score them",
                         description="Evaluate a model on tasks; a rerun of the same command resumes.")
    run.add_argument("--model", help="checkpoint directory (hf, vllm) or served model name (openai); "
                                     "default: the lab model, a tiny LLaVA trained on the lab world (docs/lab.md)")
    run.add_argument("--tasks", required=True, help="comma-separated task names (`harness tasks` lists them)")
    run.add_argument("--engine", choices=["hf", "vllm", "openai"],
                     help="inference engine (default: vllm on a CUDA machine with vLLM, else hf)")
    run.add_argument("--limit", type=_limit,
                     help="only the first N samples of each task, or a fraction below 1 of each task's samples")
    run.add_argument("--log-samples", "--log_samples", action=_SamplesAlwaysLogged, default=argparse.SUPPRESS,
                     help="accepted for lm-eval's habit: samples are always logged in the run directory")
    run.add_argument("--batch-size", type=_positive_int,
                     help="hf: requests per generate call; vllm: requests kept queued in the engine (default 1024)")
    run.add_argument("--output-path", "--output", "--output_path", "-o", dest="output_path", default="runs",
                     help="root of the run directories (default: ./runs)")
    run.add_argument("--run-name", help="name of the model's folder under --output-path (default: from --model)")
    run.add_argument("--data-root", action="append", default=[], metavar="[TASK=]DIR",
                     help="benchmark files in their original layout; repeat as TASK=DIR for several tasks")
    run.add_argument("--image-root", action="append", default=[], metavar="[TASK=]DIR",
                     help="benchmark images (default: the data root)")
    run.add_argument("--max-new-tokens", type=_positive_int, help="override every sample's token budget")
    run.add_argument("--template", help="prompt template of the model family (default: the family's own)")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run.add_argument("--device", help="hf engine device (default: cuda if available, else cpu)")
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument("--on-image-error", choices=["skip", "stop"], default="skip",
                     help="unreadable image: record the sample as failed and go on (skip), or stop")
    run.add_argument("--overwrite", action="store_true",
                     help="discard predictions made with other settings in the run directory")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    vllm = run.add_argument_group("vllm engine")
    vllm.add_argument("--tensor-parallel-size", type=_positive_int, default=1)
    vllm.add_argument("--data-parallel-size", type=_positive_int, default=1)
    vllm.add_argument("--enforce-eager", action="store_true")
    vllm.add_argument("--max-model-len", type=_positive_int)
    vllm.add_argument("--gpu-memory-utilization", type=float)
    api = run.add_argument_group("openai engine")
    api.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                                        "(default: $OPENAI_BASE_URL)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key (default: OPENAI_API_KEY); "
                          "keys are never written to logs or run files")
    api.add_argument("--served-model", help="model name sent to the server (default: --model)")
    api.add_argument("--concurrency", type=_positive_int, default=64,
                     help="requests kept in flight at all times (default: 64, sized for a vLLM server; at most 1000)")
    api.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    api.add_argument("--max-retries", type=int, default=5)

    score = sub.add_parser("score", parents=[common, task_opts, judge_opts],
                           help="score responses produced elsewhere, in the benchmark's own format",
                           description="Score a responses file in the benchmark's official format; prints the "
                                       "metrics as JSON on stdout.")
    score.add_argument("task", help="task name (`harness tasks` lists them)")
    score.add_argument("--responses", required=True, help="responses file in the benchmark's official format")
    score.add_argument("--data-root", help="benchmark files in their original layout")
    score.add_argument("--image-root", help="benchmark images (some tasks read them to build samples)")
    score.add_argument("--reviews", help="saved judge replies instead of calling a judge: a JSON list of reply "
                                         "texts in question order, or the benchmark's official review file")
    score.add_argument("--records", help="also write the per-sample scoring records to this JSONL file")

    sub.add_parser("tasks", parents=[common], help="list the registered tasks and the data files each needs")

    train = sub.add_parser("train", parents=[common], help="train a model: SFT, or JoMPO / DPO / MPO / ablations",
                           description="Train with a paper recipe (--config configs/*.yaml) and/or flags; flags "
                                       "override the recipe. Several GPUs: accelerate launch --config_file "
                                       "configs/accelerate/zero2.yaml -m harness train ...")
    from trainers.cli import add_train_arguments

    add_train_arguments(train)

    from reports.cli import add_report_parser

    add_report_parser(sub, parents=[common])

    sweep = sub.add_parser("sweep", parents=[common], help="a grid of trainings, each evaluated, then a report",
                           description="Expand a grid (methods x data sizes x betas x epochs x seeds x rejected "
                                       "images) into train -> evaluate jobs plus one evaluation of the base model, "
                                       "run them here or on Slurm, and write the report. Rerunning skips finished "
                                       "jobs and resumes the others. Quick start: harness sweep --preset toy")
    from harness.sweep import add_sweep_arguments

    add_sweep_arguments(sweep)

    build_vtc = sub.add_parser(
        "build-vtc", parents=[common], help="build VTC contrast data from an image pool (CLIP-blind pairs + LLM)",
        description="Embed an image pool with CLIP and DINOv2, mine CLIP-blind pairs, label their contrast type and "
                    "write prompt / response pairs with an LLM, into preference records for `harness train`; each "
                    "stage resumes. Several GPUs for the embedding: accelerate launch -m harness build-vtc --stage "
                    "embed ...")
    from trainers.vtc.pipeline import add_build_vtc_arguments

    add_build_vtc_arguments(build_vtc)

    toy = sub.add_parser("toy-data", parents=[common],
                         help="write the toy benchmark (AMBER file formats), toy contrast pairs or toy captions")
    toy.add_argument("output", help="folder to create")
    toy.add_argument("--kind", choices=["amber", "preferences", "sft"], default="amber",
                     help="amber: the toy benchmark (default); preferences: toy contrast pairs in the trainers' "
                          "preference format; sft: toy captions for supervised fine-tuning")
    toy.add_argument("--n", "--n-images", dest="n", type=_positive_int, default=None,
                     help="images (amber), pairs (preferences) or captions (sft)")
    toy.add_argument("--seed", type=int, default=0)

    lab = sub.add_parser("lab-data", parents=[common],
                         help="write a laboratory dataset (docs/lab.md): lab_amber, lab_objhal, the SFT records or "
                              "the contrast pairs")
    lab.add_argument("output", help="folder to create")
    lab.add_argument("--kind", choices=["amber", "objhal", "sft", "preferences"], default="preferences",
                     help="preferences: contrast pairs in the trainers' preference format (default); amber, objhal: "
                          "the lab benchmarks; sft: the biased world's captions and yes/no answers")
    lab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a lab setting (repeatable): a prior strength (co_occurrence, colour, count, position, "
                          "state: 0 to 1), n_pairs, n_eval, n_objhal, n_train, pair_types (a,b,...), seed")
    return parser


# --------------------------------------------------------------------------- helpers
def _per_task(values: list[str], task_names: list[str], flag: str) -> dict[str, str]:
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


def _slug(text: str) -> str:
    text = text.rstrip("/\\")
    base = Path(text).name or text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "model"


def _task_options(args, classes: list | None = None) -> dict[str, Any]:
    """The task options of ``--option KEY=VALUE`` and the dedicated flags. With ``classes`` (the requested task
    classes), a key that none of them reads is a :class:`ConfigError` naming the closest known keys."""
    from harness.task import check_option_keys

    options: dict[str, Any] = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value
    flagged = {}
    for key, flag in ((f.key, f.flag) for f in task_flags()):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
            flagged[key] = flag
    if classes is not None:
        check_option_keys(classes, options, flagged)
    return options


def _make_judge(args, task, reviews: str | None = None):
    """The judge for ``task``: saved replies (``reviews``), an OpenAI-compatible judge, or None if unneeded."""
    if reviews is not None:
        return task.read_reviews(reviews)
    if not task.needs_judge():
        return None
    from harness.judge_openai import OpenAIJudge

    model = args.judge_model or task.default_judge_model
    if model is None:
        raise ConfigError(f"task {task.name} needs a judge: pass --judge-model")
    return OpenAIJudge(model, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
                       concurrency=args.judge_concurrency, use_cache=not args.no_judge_cache,
                       timeout_s=getattr(args, "judge_timeout", 120.0),
                       max_retries=getattr(args, "judge_max_retries", 6))


def _embedded_model(progress: bool = True) -> str:
    """The default model: the lab model (:mod:`trainers.lab_model`), trained on first use and cached."""
    from trainers.lab_model import default_model

    return str(default_model(progress=progress))


def _resolve_tasks(args) -> list:
    from harness.task import get_task

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks is empty; `harness tasks` lists the task names")
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks names a task twice: {args.tasks}")
    classes = [get_task(n) for n in names]  # unknown names fail here, before any model loads
    data_roots = _per_task(args.data_root, names, "--data-root")
    image_roots = _per_task(args.image_root, names, "--image-root")
    options = _task_options(args, classes)
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


def _describe_model(args, engine_name: str) -> tuple[str, dict[str, Any], str, Any]:
    """(model string handed to the engine, manifest entry, default run name, model family adapter or None)."""
    from harness import engines
    from harness.models import resolve_model

    model = args.model
    if model is None:
        if engine_name == "openai":
            raise ConfigError("--engine openai needs --model (the served model name, or its checkpoint path)")
        from trainers.lab_model import LAB_MODEL_NAME

        model = _embedded_model(progress=not getattr(args, "no_progress", False))
        default_name = LAB_MODEL_NAME
    else:
        default_name = _slug(args.served_model or model)
    if engine_name == "openai" and not Path(model).exists():
        return model, {"name": model, "path": None, "content_hash": None}, default_name, None
    if model in engines.ENGINES and not Path(model).exists():
        raise ConfigError(f"--model {model}: no such checkpoint; {model!r} is an engine: choose it with --engine "
                          f"{model} (--model is a checkpoint directory or, with --engine openai, a served model)")
    info, family = resolve_model(model, args.template)
    entry = {"name": default_name, "path": str(Path(model).resolve()), "content_hash": info.content_hash,
             "architecture": info.architecture, "family": info.family}
    return model, entry, default_name, family


# --------------------------------------------------------------------------- commands
def cmd_score(args) -> int:
    import json

    from harness.io import dumps_record
    from harness.task import get_task

    cls = get_task(args.task)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ConfigError(f"--data-root {args.data_root} is not a directory")
    options = _task_options(args, [cls])
    _check_responses_path(cls, args.responses)
    if args.records:
        _check_writable_file(args.records, "--records")  # before scoring, which can take long
    task = cls(data_root=args.data_root, image_root=args.image_root, options=options)
    judge = _make_judge(args, task, args.reviews)
    metrics, coverage = task.score_file(args.responses, judge)
    out = metrics.to_dict()
    out["coverage"] = coverage
    if provenance := task.provenance():
        out["scorer"] = provenance
    if judge is not None:
        out["judge"] = {**judge.describe(), "ledger": judge.ledger().to_dict()}
    if args.records:
        try:
            Path(args.records).write_text("".join(dumps_record(r) + "\n" for r in metrics.records), encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"--records {args.records}: cannot write it: {exc.strerror or exc}") from exc
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _check_responses_path(cls, responses: str) -> None:
    """``--responses`` names an existing file (or, for tasks that read folders and answer specs, anything the task
    itself checks); one-line errors instead of ``IsADirectoryError`` / ``FileNotFoundError`` tracebacks."""
    from harness.errors import DataError
    from harness.task import Task

    if cls.responses_accept_directory:
        return
    if cls.read_responses is Task.read_responses and cls.score_file is Task.score_file:
        return  # no response format: read_responses says so
    path = Path(responses)
    if path.is_dir():
        raise ConfigError(f"--responses {responses} is a directory; task {cls.name} expects one responses file in "
                          f"its official format")
    if not path.exists():
        raise DataError("responses file not found", path=path)
    if not path.is_file():
        raise ConfigError(f"--responses {responses} is not a regular file")


def _check_writable_file(value: str, flag: str) -> None:
    """:class:`ConfigError` unless ``value`` can be created or overwritten (its folder exists and is writable)."""
    path = Path(value)
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"{flag} {value} is a directory; expected a file path")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {value}: folder {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {value}: the file is not writable")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {value}: folder {parent} is not writable")


def cmd_tasks(args) -> int:
    from harness.task import all_tasks

    registry = all_tasks()
    width = max((len(n) for n in registry), default=4)
    for name, cls in registry.items():
        print(f"{name:<{width}}  {cls.description}")
        by_source: dict[str, list[str]] = {}
        for f in cls.data_files:
            by_source.setdefault(f.source, []).append(f.relpath)
        for source, files in by_source.items():
            print(f"{'':<{width}}    needs {', '.join(files)}  <- {source}")
    return 0


def cmd_toy_data(args) -> int:
    from tasks import toy

    make = {"amber": toy.generate_toy_amber, "preferences": toy.generate_toy_preferences,
            "sft": toy.generate_toy_sft}[args.kind]
    print(make(args.output, *([args.n] if args.n else []), seed=args.seed))
    return 0


def cmd_lab_data(args) -> int:
    from tasks import lab

    values: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. colour=0.8)")
        values[key.strip()] = _lab_value(key.strip(), raw.strip())
    config = lab.LabConfig.from_dict(values)
    if args.kind in ("amber", "objhal"):
        print(lab.generate_lab_benchmark(args.output, args.kind, config))
    elif args.kind == "sft":
        print(lab.generate_lab_sft(args.output, config))
    else:
        print(lab.generate_lab_preferences(args.output, config))
    return 0


def _lab_value(key: str, raw: str) -> Any:
    """A ``--set`` value of ``harness lab-data``: a list for pair_types, else an int or a float where it is one."""
    if key == "pair_types":
        return [t.strip() for t in raw.split(",") if t.strip()]
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


def cmd_run(args) -> int:
    """``harness run``. SIGTERM is handled as Ctrl-C (exit 143 instead of 130); a full disk, quota, read-only file
    system or permission error while writing the run is a one-line error; finished predictions are kept."""
    from harness.runner import disk_errors

    with _sigterm_as_interrupt(), disk_errors(Path(args.output_path)):
        return _run_tasks(args)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`harness.runner.Terminated` (a KeyboardInterrupt) in the main thread."""
    import signal
    import threading

    from harness.runner import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM does not cut the clean-up short
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_interrupted(store, started: float, exc: KeyboardInterrupt, limit: int | None) -> None:
    """Record an interrupted invocation in ``runs.jsonl`` with its counts so far (best effort)."""
    counts = getattr(exc, "run_counts", {})
    info = {"started": started, **counts, "limit": limit, "interrupted": getattr(exc, "signal_name", "SIGINT")}
    if counts.get("seconds"):
        info["samples_per_s"] = round(counts.get("generated", 0) / counts["seconds"], 3)
    try:
        store.log_run(info)
    except OSError as err:
        log.warning("%s: could not record the interrupted run: %s", store.dir, err.strerror or err)


def _run_tasks(args) -> int:
    from harness import engines
    from harness.cache import content_hash
    from harness.engines import EngineOptions, create_engine
    from harness.io import atomic_write_json
    from harness.manifest import environment
    from harness.runner import disk_errors, evaluate
    from harness.store import RunStore
    from harness.types import Decoding

    tasks = _resolve_tasks(args)
    engine_name = args.engine or engines.default_engine()
    model, model_entry, default_name, family = _describe_model(args, engine_name)
    run_name = args.run_name or default_name

    stores = {t.name: RunStore(Path(args.output_path) / run_name / t.name) for t in tasks}
    for store in stores.values():
        store._ensure_writable()  # fail before loading a model

    api_key = os.environ.get(args.api_key_env) if engine_name == "openai" else None
    options = EngineOptions(
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, template=args.template,
        tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
        enforce_eager=args.enforce_eager, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, base_url=args.base_url, api_key=api_key,
        served_model=args.served_model, concurrency=args.concurrency, timeout_s=args.timeout,
        max_retries=args.max_retries,
        extra_body=dict(family.server_request_fields) if (family and engine_name == "openai") else None,
    )
    judges = {t.name: _make_judge(args, t) for t in tasks}  # judge settings fail before any model loads
    decoding = Decoding(seed=args.seed)
    env = environment(getattr(args, "argv", None))  # the command as given, secrets redacted
    results = []
    started = time.time()
    with create_engine(engine_name, model, decoding, options) as engine:
        described = engine.describe()
        for task in tasks:
            samples = limited_samples(task, args.limit)
            data_hashes = {str(p.relative_to(task.data_root)): content_hash(p) for p in task.check_files()}
            settings = {
                "model": {k: model_entry.get(k) for k in ("path", "content_hash")} | {"name": model_entry["name"]},
                "engine": {k: v for k, v in described.items() if k not in _NON_SEMANTIC},
                "task": {"name": task.name, "version": task.version, "data": data_hashes},
                "max_new_tokens": args.max_new_tokens,
            }
            manifest = {
                "model": model_entry, "engine": described, "task": {"name": task.name, "version": task.version,
                                                                    "data_root": str(task.data_root),
                                                                    "data_files": data_hashes},
                "scorer": task.provenance(),
                "decoding": decoding.to_dict(), "max_new_tokens_override": args.max_new_tokens,
                **env,
            }
            store = stores[task.name]
            with disk_errors(store.dir / "manifest.json"):
                store.open(manifest, settings, overwrite=args.overwrite)
            log.info("%s: %d samples -> %s", task.name, len(samples), store.dir)
            t0 = time.time()
            judge = judges[task.name]
            try:
                result = evaluate(task, engine, store, samples, max_new_tokens=args.max_new_tokens,
                                  on_image_error=args.on_image_error, progress=not args.no_progress, judge=judge)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: still logged in runs.jsonl
                _log_interrupted(store, t0, exc, args.limit)
                raise
            with disk_errors(store.dir / "judge.json"):
                if judge is not None:
                    atomic_write_json(store.dir / "judge.json",
                                      {**judge.describe(), "ledger": judge.ledger().to_dict()})
            with disk_errors(store.dir / "runs.jsonl"):
                store.log_run({"started": t0, "seconds": round(result.seconds, 3), "generated": result.n_generated,
                               "resumed": result.n_resumed, "failed": result.n_failed,
                               "samples_per_s": round(result.samples_per_s, 3), "limit": args.limit})
            results.append((result, store))
    print_summary(results, engine_name, run_name, time.time() - started)
    return 0


def parse_counts(counts: dict[str, Any]) -> tuple[int, int] | None:
    """(parsed, unparsed) answers of a task whose scorer parses responses or judge replies, from its counts:
    AMBER's yes/no answers (``answered_other``: neither "Yes" nor "No"), ScienceQA's option letters
    (``failed_parse``), judged tasks' ratings (``unparsed`` of ``judged`` / ``graded``); None for other tasks."""
    if "answered_other" in counts and "discriminative" in counts:
        return counts["discriminative"] - counts["answered_other"], counts["answered_other"]
    if "failed_parse" in counts and "scored" in counts:
        return counts["scored"] - counts["failed_parse"], counts["failed_parse"]
    total = counts.get("judged", counts.get("graded"))
    if "unparsed" in counts and total is not None:
        return total - counts["unparsed"], counts["unparsed"]
    return None


def print_summary(results, engine_name: str, run_name: str, seconds: float) -> None:
    """A one-screen table of the headline metrics (stdout), with how many answers the task's parser could read."""
    rows = []
    warnings = []
    for result, store in results:
        metrics = " ".join(f"{k}={v}" for k, v in result.metrics.headline.items())
        parsed = parse_counts(result.metrics.counts)
        read = "" if parsed is None else f"{parsed[0]}/{parsed[0] + parsed[1]}"
        if parsed is not None and parsed[1]:
            warnings.append(f"{result.task}: {parsed[1]} of {parsed[0] + parsed[1]} answers could not be parsed "
                            f"(scored as the official scorer scores them: wrong, or not counted)")
        rows.append((result.task, str(result.n_samples), str(result.n_resumed), str(result.n_failed),
                     f"{result.samples_per_s:.2f}", read, metrics))
    header = ("task", "samples", "resumed", "failed", "samples/s", "parsed", "metrics")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(f"\n{run_name} · engine {engine_name} · {seconds:.1f}s")
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for w in warnings:
        print(w)
    for result, store in results:
        print(f"{result.task}: {store.dir}")


def cmd_train(args) -> int:
    from trainers.cli import run_train

    return run_train(args)


def cmd_report(args) -> int:
    from reports.cli import cmd_report as report

    return report(args)


def cmd_sweep(args) -> int:
    from harness.sweep import cmd_sweep as sweep

    return sweep(args)


def cmd_build_vtc(args) -> int:
    from trainers.vtc.pipeline import run_build_vtc

    return run_build_vtc(args)


COMMANDS = {"run": cmd_run, "score": cmd_score, "tasks": cmd_tasks, "toy-data": cmd_toy_data, "lab-data": cmd_lab_data, "train": cmd_train,
            "report": cmd_report, "sweep": cmd_sweep, "build-vtc": cmd_build_vtc}


def main(argv: list[str] | None = None) -> int:
    from harness.redact import install_log_redaction, redact, register_run_secrets
    from harness.store import release_locks

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv) if argv is None else ["harness", *map(str, argv)]
    register_run_secrets(vars(args))  # the keys this run reads, the credentials in its endpoint URLs
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    install_log_redaction()  # no credential in any log line, the httpx and openai loggers' included
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        what = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted"
        print(f"harness: {what}; finished predictions are kept, rerun the same command to resume",
              file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    finally:
        release_locks()  # the run directories this command wrote


if __name__ == "__main__":
    sys.exit(main())
