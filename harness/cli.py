"""Command line: ``harness run | score | train | report | sweep | build-vtc | tasks | toy-data | lab-data``.

User errors (:class:`harness.errors.HarnessError`) print one clear message and exit with status 2;
finished predictions are always kept.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from harness.argtypes import int_at_least
from harness.errors import ConfigError, HarnessError
from harness.task import task_flags

log = logging.getLogger("harness")


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


class _SamplesAlwaysLogged(argparse.Action):
    """``--log-samples`` (lm-eval's flag): accepted; every sample is always written to the run directory."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        log.info(
            "%s: samples are always logged (predictions.jsonl and scores.jsonl of each run directory)", option_string
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Measure and reduce hallucination in vision-language models: evaluate (run, score), train, "
        "sweep, report, build VTC data.",
    )
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", default="INFO", choices=levels)
    common = argparse.ArgumentParser(add_help=False)  # --log-level after the command too
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    task_opts = argparse.ArgumentParser(add_help=False)
    g = task_opts.add_argument_group("task options")
    for flag in task_flags():  # declared by the tasks (harness.task.TaskFlag)
        g.add_argument(flag.flag, dest=flag.key, metavar=flag.metavar, choices=flag.choices, help=flag.help)
    g.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="any other task option (repeatable)"
    )
    judge_opts = argparse.ArgumentParser(add_help=False)
    j = judge_opts.add_argument_group("judge (LLM-judged tasks: mmhal, object_halbench --objhal-method gpt, ...)")
    j.add_argument("--judge-model", help="judge model (default: the one the official scorer used, e.g. gpt-4-0314)")
    j.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge (default: $OPENAI_BASE_URL)")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable with the judge's key")
    j.add_argument("--judge-concurrency", type=_positive_int, default=4)
    j.add_argument(
        "--judge-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds to wait for each judge reply (default: 120)",
    )
    j.add_argument(
        "--judge-max-retries",
        type=int_at_least(0),
        default=6,
        metavar="N",
        help="retries of a failed or timed-out judge request (default: 6); a hung judge holds a "
        "request about SECONDS x (N + 1)",
    )
    j.add_argument("--no-judge-cache", action="store_true", help="do not read or write the judge's disk cache")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        parents=[common, task_opts, judge_opts],
        help="generate responses with a model and score them",
        description="Evaluate a model on tasks; a rerun of the same command resumes.",
    )
    run.add_argument(
        "--model",
        help="checkpoint directory (hf, vllm) or served model name (openai); "
        "default: the lab model, a tiny LLaVA trained on the lab world (docs/lab.md)",
    )
    run.add_argument("--tasks", required=True, help="comma-separated task names (`harness tasks` lists them)")
    run.add_argument(
        "--engine",
        choices=["hf", "vllm", "openai"],
        help="inference engine (default: vllm on a CUDA machine with vLLM, else hf)",
    )
    run.add_argument(
        "--limit",
        type=_limit,
        help="only the first N samples of each task, or a fraction below 1 of each task's samples",
    )
    run.add_argument(
        "--log-samples",
        "--log_samples",
        action=_SamplesAlwaysLogged,
        default=argparse.SUPPRESS,
        help="accepted for lm-eval's habit: samples are always logged in the run directory",
    )
    run.add_argument(
        "--batch-size",
        type=_positive_int,
        help="hf: requests per generate call; vllm: requests kept queued in the engine (default 1024)",
    )
    run.add_argument(
        "--output-path",
        "--output",
        "--output_path",
        "-o",
        dest="output_path",
        default="runs",
        help="root of the run directories (default: ./runs)",
    )
    run.add_argument("--run-name", help="name of the model's folder under --output-path (default: from --model)")
    run.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="[TASK=]DIR",
        help="benchmark files in their original layout; repeat as TASK=DIR for several tasks",
    )
    run.add_argument(
        "--image-root",
        action="append",
        default=[],
        metavar="[TASK=]DIR",
        help="benchmark images (default: the data root)",
    )
    run.add_argument("--max-new-tokens", type=_positive_int, help="override every sample's token budget")
    run.add_argument("--template", help="prompt template of the model family (default: the family's own)")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run.add_argument("--device", help="hf engine device (default: cuda if available, else cpu)")
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument(
        "--on-image-error",
        choices=["skip", "stop"],
        default="skip",
        help="unreadable image: record the sample as failed and go on (skip), or stop",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="discard predictions made with other settings in the run directory"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    vllm = run.add_argument_group("vllm engine")
    vllm.add_argument("--tensor-parallel-size", type=_positive_int, default=1)
    vllm.add_argument("--data-parallel-size", type=_positive_int, default=1)
    vllm.add_argument("--enforce-eager", action="store_true")
    vllm.add_argument("--max-model-len", type=_positive_int)
    vllm.add_argument("--gpu-memory-utilization", type=float)
    api = run.add_argument_group("openai engine")
    api.add_argument(
        "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)"
    )
    api.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (default: OPENAI_API_KEY); "
        "keys are never written to logs or run files",
    )
    api.add_argument("--served-model", help="model name sent to the server (default: --model)")
    api.add_argument(
        "--concurrency",
        type=_positive_int,
        default=64,
        help="requests kept in flight at all times (default: 64, sized for a vLLM server; at most 1000)",
    )
    api.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    api.add_argument("--max-retries", type=int, default=5)

    score = sub.add_parser(
        "score",
        parents=[common, task_opts, judge_opts],
        help="score responses produced elsewhere, in the benchmark's own format",
        description="Score a responses file in the benchmark's official format; prints the metrics as JSON on stdout.",
    )
    score.add_argument("task", help="task name (`harness tasks` lists them)")
    score.add_argument("--responses", required=True, help="responses file in the benchmark's official format")
    score.add_argument("--data-root", help="benchmark files in their original layout")
    score.add_argument("--image-root", help="benchmark images (some tasks read them to build samples)")
    score.add_argument(
        "--reviews",
        help="saved judge replies instead of calling a judge: a JSON list of reply "
        "texts in question order, or the benchmark's official review file",
    )
    score.add_argument("--records", help="also write the per-sample scoring records to this JSONL file")

    sub.add_parser("tasks", parents=[common], help="list the registered tasks and the data files each needs")

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a model: SFT, or JoMPO / DPO / MPO / ablations",
        description="Train with a paper recipe (--config configs/*.yaml) and/or flags; flags "
        "override the recipe. Several GPUs: accelerate launch --config_file "
        "configs/accelerate/zero2.yaml -m harness train ...",
    )
    from trainers.cli import add_train_arguments

    add_train_arguments(train)

    from reports.cli import add_report_parser

    add_report_parser(sub, parents=[common])

    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="a grid of trainings, each evaluated, then a report",
        description="Expand a grid (methods x data sizes x betas x epochs x seeds x rejected "
        "images) into train -> evaluate jobs plus one evaluation of the base model, "
        "run them here or on Slurm, and write the report. Rerunning skips finished "
        "jobs and resumes the others. Quick start: harness sweep --preset toy",
    )
    from harness.sweep import add_sweep_arguments

    add_sweep_arguments(sweep)

    build_vtc = sub.add_parser(
        "build-vtc",
        parents=[common],
        help="build VTC contrast data from an image pool (CLIP-blind pairs + LLM)",
        description="Embed an image pool with CLIP and DINOv2, mine CLIP-blind pairs, label their contrast type and "
        "write prompt / response pairs with an LLM, into preference records for `harness train`; each "
        "stage resumes. Several GPUs for the embedding: accelerate launch -m harness build-vtc --stage "
        "embed ...",
    )
    from trainers.vtc.pipeline import add_build_vtc_arguments

    add_build_vtc_arguments(build_vtc)

    toy = sub.add_parser(
        "toy-data",
        parents=[common],
        help="write the toy benchmark (AMBER file formats), toy contrast pairs or toy captions",
    )
    toy.add_argument("output", help="folder to create")
    toy.add_argument(
        "--kind",
        choices=["amber", "preferences", "sft"],
        default="amber",
        help="amber: the toy benchmark (default); preferences: toy contrast pairs in the trainers' "
        "preference format; sft: toy captions for supervised fine-tuning",
    )
    toy.add_argument(
        "--n",
        "--n-images",
        dest="n",
        type=_positive_int,
        default=None,
        help="images (amber), pairs (preferences) or captions (sft)",
    )
    toy.add_argument("--seed", type=int, default=0)

    lab = sub.add_parser(
        "lab-data",
        parents=[common],
        help="write a laboratory dataset (docs/lab.md): lab_amber, lab_objhal, the SFT records or the contrast pairs",
    )
    lab.add_argument("output", help="folder to create")
    lab.add_argument(
        "--kind",
        choices=["amber", "objhal", "mmhal", "sft", "preferences"],
        default="preferences",
        help="preferences: contrast pairs in the trainers' preference format (default); amber, objhal, mmhal: "
        "the lab benchmarks; sft: the biased world's captions and yes/no answers",
    )
    lab.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a lab setting (repeatable): a prior strength (co_occurrence, colour, count, position, "
        "state: 0 to 1), n_pairs, n_eval, n_objhal, n_train, pair_types (a,b,...), seed",
    )
    return parser


# --------------------------------------------------------------------------- helpers
def _flag_options(args) -> tuple[dict[str, Any], dict[str, str]]:
    """(task options set by the tasks' dedicated flags, the flag of each)."""
    values: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for key, flag in ((f.key, f.flag) for f in task_flags()):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
            flags[key] = flag
    return values, flags


def _task_options(args, classes: list | None = None) -> dict[str, Any]:
    """The task options of ``--option KEY=VALUE`` and the dedicated flags. With ``classes`` (the requested task
    classes), a key that none of them reads is a :class:`ConfigError` naming the closest known keys."""
    from harness.evaluate import task_options

    return task_options(args.option, *_flag_options(args), classes)


def eval_config(args):
    """The :class:`harness.evaluate.EvalConfig` of ``harness run``'s arguments."""
    from harness.evaluate import EvalConfig

    values, flags = _flag_options(args)
    return EvalConfig(
        tasks=args.tasks,
        model=args.model,
        engine=args.engine,
        output_path=args.output_path,
        run_name=args.run_name,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        data_root=list(args.data_root),
        image_root=list(args.image_root),
        option=list(args.option),
        options=values,
        option_flags=flags,
        template=args.template,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        on_image_error=args.on_image_error,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        enforce_eager=args.enforce_eager,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        served_model=args.served_model,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
        judge_model=args.judge_model,
        judge_base_url=args.judge_base_url,
        judge_api_key_env=args.judge_api_key_env,
        judge_concurrency=args.judge_concurrency,
        judge_timeout=args.judge_timeout,
        judge_max_retries=args.judge_max_retries,
        no_judge_cache=args.no_judge_cache,
        argv=getattr(args, "argv", None),
    )


# --------------------------------------------------------------------------- commands
def cmd_score(args) -> int:
    import json

    from harness.evaluate import make_judge
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
    judge = make_judge(args, task, args.reviews)
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
        raise ConfigError(
            f"--responses {responses} is a directory; task {cls.name} expects one responses file in its official format"
        )
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

    make = {"amber": toy.generate_toy_amber, "preferences": toy.generate_toy_preferences, "sft": toy.generate_toy_sft}[
        args.kind
    ]
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
    if args.kind in ("amber", "objhal", "mmhal"):
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
    """``harness run``: :func:`harness.evaluate.evaluate` of the arguments, then the summary table. SIGTERM is
    handled as Ctrl-C (exit 143 instead of 130); a full disk, quota, read-only file system or permission error
    while writing the run is a one-line error; finished predictions are kept."""
    from harness.evaluate import evaluate

    config = eval_config(args)
    with _sigterm_as_interrupt():
        record = evaluate(config)
    print_summary(record)
    return 0


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


def print_summary(record) -> None:
    """A one-screen table of the headline metrics of a :class:`harness.records.RunRecord` (stdout), with how many
    answers the task's parser could read."""
    rows = []
    warnings = []
    for result in record.tasks:
        metrics = " ".join(f"{k}={v}" for k, v in result.headline.items())
        parsed = parse_counts(result.counts)
        read = "" if parsed is None else f"{parsed[0]}/{parsed[0] + parsed[1]}"
        if parsed is not None and parsed[1]:
            warnings.append(
                f"{result.task}: {parsed[1]} of {parsed[0] + parsed[1]} answers could not be parsed "
                f"(scored as the official scorer scores them: wrong, or not counted)"
            )
        rows.append(
            (
                result.task,
                str(result.n_samples),
                str(result.n_resumed),
                str(result.n_failed),
                f"{result.samples_per_s:.2f}",
                read,
                metrics,
            )
        )
    header = ("task", "samples", "resumed", "failed", "samples/s", "parsed", "metrics")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(f"\n{record.run_name} · engine {record.engine} · {record.seconds:.1f}s")
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for w in warnings:
        print(w)
    for result in record.tasks:
        print(f"{result.task}: {result.dir}")


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


COMMANDS = {
    "run": cmd_run,
    "score": cmd_score,
    "tasks": cmd_tasks,
    "toy-data": cmd_toy_data,
    "lab-data": cmd_lab_data,
    "train": cmd_train,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "build-vtc": cmd_build_vtc,
}


def main(argv: list[str] | None = None) -> int:
    from harness.redact import install_log_redaction, redact, register_run_secrets
    from harness.store import release_locks

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv) if argv is None else ["harness", *map(str, argv)]
    register_run_secrets(vars(args))  # the keys this run reads, the credentials in its endpoint URLs
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    install_log_redaction()  # no credential in any log line, the httpx and openai loggers' included
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        what = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted"
        print(f"harness: {what}; finished predictions are kept, rerun the same command to resume", file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    finally:
        release_locks()  # the run directories this command wrote


if __name__ == "__main__":
    sys.exit(main())
