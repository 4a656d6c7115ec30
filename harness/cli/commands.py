"""The subcommands of ``harness``: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError, HarnessError
from harness.evaluate import EvalConfig, evaluate, make_judge, task_options
from harness.io import dumps_record
from harness.runner import Terminated
from harness.sweep import cmd_sweep as sweep
from harness.task import Task, all_tasks, get_task, task_flags
from reports.cli import cmd_report as report
from trainers.cli import run_train
from trainers.vtc.pipeline import run_build_vtc


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

    return task_options(args.option, *_flag_options(args), classes)


def eval_config(args):
    """The :class:`harness.evaluate.EvalConfig` of ``harness run``'s arguments."""

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

    return run_train(args)


def cmd_report(args) -> int:

    return report(args)


def cmd_sweep(args) -> int:

    return sweep(args)


def cmd_build_vtc(args) -> int:

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
