"""Command line: ``harness run | score | train | report | sweep | build-vtc | tasks | toy-data``.

User errors (:class:`harness.errors.HarnessError`) print one clear message and exit with status 2;
finished predictions are always kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, HarnessError

log = logging.getLogger("harness")

# Engine description keys that do not change predictions (left out of the run fingerprint).
_NON_SEMANTIC = {"batch_size", "concurrency", "timeout_s", "max_retries"}


# --------------------------------------------------------------------------- parsing
def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a clear message otherwise."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "positive_int" if minimum == 1 else f"int_at_least_{minimum}"
    return parse


_positive_int = int_at_least(1)


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
    g.add_argument("--amber-similarity", metavar="SPEC",
                   help="AMBER word similarity: spacy:MODEL (default spacy:en_core_web_lg), none, or table:FILE")
    g.add_argument("--amber-answer", metavar="MODE",
                   help="AMBER yes/no answers: official (exact 'Yes'/'No', default), strip, or yes-no")
    g.add_argument("--objhal-method", choices=["chair", "gpt"],
                   help="Object HalBench: judge-free CHAIR (default) or GPT object extraction through the judge")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other task option (repeatable)")
    judge_opts = argparse.ArgumentParser(add_help=False)
    j = judge_opts.add_argument_group("judge (LLM-judged tasks: mmhal, object_halbench --objhal-method gpt, ...)")
    j.add_argument("--judge-model", help="judge model (default: the one the official scorer used, e.g. gpt-4-0314)")
    j.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge (default: $OPENAI_BASE_URL)")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable with the judge's key")
    j.add_argument("--judge-concurrency", type=_positive_int, default=4)
    j.add_argument("--no-judge-cache", action="store_true", help="do not read or write the judge's disk cache")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common, task_opts, judge_opts], help="generate responses with a model and score them",
                         description="Evaluate a model on tasks; a rerun of the same command resumes.")
    run.add_argument("--model", help="checkpoint directory (hf, vllm) or served model name (openai); "
                                     "default: the embedded tiny LLaVA model")
    run.add_argument("--tasks", required=True, help="comma-separated task names (`harness tasks` lists them)")
    run.add_argument("--engine", choices=["hf", "vllm", "openai"],
                     help="inference engine (default: vllm on a CUDA machine with vLLM, else hf)")
    run.add_argument("--limit", type=_positive_int, help="only the first N samples of each task")
    run.add_argument("--batch-size", type=_positive_int, help="requests per engine call")
    run.add_argument("--output-path", default="runs", help="root of the run directories (default: ./runs)")
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
    api.add_argument("--concurrency", type=_positive_int, default=8)
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


def _task_options(args) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value
    for key in ("amber_similarity", "amber_answer", "objhal_method"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
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
                       concurrency=args.judge_concurrency, use_cache=not args.no_judge_cache)


def _embedded_model() -> str:
    from harness.models.tiny import ensure_embedded_model
    from tasks.toy import corpus

    return str(ensure_embedded_model(corpus()))


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
    options = _task_options(args)
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
    from harness.models import resolve_model

    model = args.model
    if model is None:
        if engine_name == "openai":
            raise ConfigError("--engine openai needs --model (the served model name, or its checkpoint path)")
        model = _embedded_model()
        default_name = "tiny-llava-v1"
    else:
        default_name = _slug(args.served_model or model)
    if engine_name == "openai" and not Path(model).exists():
        return model, {"name": model, "path": None, "content_hash": None}, default_name, None
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
    task = cls(data_root=args.data_root, image_root=args.image_root, options=_task_options(args))
    judge = _make_judge(args, task, args.reviews)
    metrics, coverage = task.score_file(args.responses, judge)
    out = metrics.to_dict()
    out["coverage"] = coverage
    if provenance := task.provenance():
        out["scorer"] = provenance
    if judge is not None:
        out["judge"] = {**judge.describe(), "ledger": judge.ledger().to_dict()}
    if args.records:
        Path(args.records).write_text("".join(dumps_record(r) + "\n" for r in metrics.records), encoding="utf-8")
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


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


def cmd_run(args) -> int:
    from harness import engines
    from harness.cache import content_hash
    from harness.engines import EngineOptions, create_engine
    from harness.io import atomic_write_json
    from harness.manifest import environment
    from harness.runner import evaluate
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
    env = environment()
    results = []
    started = time.time()
    with create_engine(engine_name, model, decoding, options) as engine:
        described = engine.describe()
        for task in tasks:
            samples = task.samples(args.limit)
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
            store.open(manifest, settings, overwrite=args.overwrite)
            log.info("%s: %d samples -> %s", task.name, len(samples), store.dir)
            t0 = time.time()
            judge = judges[task.name]
            result = evaluate(task, engine, store, samples, max_new_tokens=args.max_new_tokens,
                              on_image_error=args.on_image_error, progress=not args.no_progress, judge=judge)
            if judge is not None:
                atomic_write_json(store.dir / "judge.json", {**judge.describe(), "ledger": judge.ledger().to_dict()})
            store.log_run({"started": t0, "seconds": round(result.seconds, 3), "generated": result.n_generated,
                           "resumed": result.n_resumed, "failed": result.n_failed,
                           "samples_per_s": round(result.samples_per_s, 3), "limit": args.limit})
            results.append((result, store))
    print_summary(results, engine_name, run_name, time.time() - started)
    return 0


def print_summary(results, engine_name: str, run_name: str, seconds: float) -> None:
    """A one-screen table of the headline metrics (stdout)."""
    rows = []
    for result, store in results:
        metrics = " ".join(f"{k}={v}" for k, v in result.metrics.headline.items())
        rows.append((result.task, str(result.n_samples), str(result.n_resumed), str(result.n_failed),
                     f"{result.samples_per_s:.2f}", metrics))
    header = ("task", "samples", "resumed", "failed", "samples/s", "metrics")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(f"\n{run_name} · engine {engine_name} · {seconds:.1f}s")
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
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


COMMANDS = {"run": cmd_run, "score": cmd_score, "tasks": cmd_tasks, "toy-data": cmd_toy_data, "train": cmd_train,
            "report": cmd_report, "sweep": cmd_sweep, "build-vtc": cmd_build_vtc}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished predictions are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
