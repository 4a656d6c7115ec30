"""The ``harness`` command line's parser: the subcommands and their flags, the tasks' own flags built from their
declarations (:func:`harness.task.task_flags`)."""

from __future__ import annotations

import argparse
import logging

from harness.argtypes import int_at_least
from harness.sweep import add_sweep_arguments
from harness.task import task_flags
from reports.cli import add_report_parser
from trainers.cli import add_train_arguments
from trainers.vtc.pipeline import add_build_vtc_arguments

log = logging.getLogger("harness")

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

    add_train_arguments(train)

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
