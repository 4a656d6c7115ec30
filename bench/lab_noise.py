"""The lab experiment: does a preference method remove the prior-driven hallucination of the lab model?

Steps (each skipped when its output is already there, so a rerun resumes):

1. the lab model (:func:`trainers.lab_model.ensure_lab_model`: SFT on the lab's biased training world, cached);
2. the contrast pairs (:func:`tasks.lab.generate_lab_preferences`) into ``OUT/data/pairs``;
3. ``harness run`` of the SFT model on ``lab_amber`` and ``lab_objhal`` (``OUT/runs/sft``);
4. for each method and seed: ``harness train --method M --model SFT --data pairs --output OUT/models/M-sS`` with
   the fixed lab recipe (:data:`RECIPE`), then ``harness run`` of the trained model (``OUT/runs/M-sS``);
5. ``OUT/summary.json`` and a Markdown table on stdout: each headline metric's value for SFT, and its mean, standard
   deviation (the seed noise floor) and range over the seeds of each method; a method *helps* on a metric when it
   lowers it below SFT by more than three times its seed standard deviation.

Usage::

    python bench/lab_noise.py [--output OUT] [--methods dpo,mpo,jompo] [--seeds 0,1,2]

Runs on the CPU in about 15 minutes on 2 cores (one thread: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import harness  # noqa: E402, F401  (import hook before transformers)

#: The lab's preference recipe, fixed before any method was run: the paper's beta, full fine-tuning of the language
#: model and projector, one tenth of the SFT learning rate, constant, two epochs of the 300 pairs at batch 8.
RECIPE = {
    "beta": "0.05",
    "lr": "1e-4",
    "lr-scheduler": "constant",
    "warmup-ratio": "0",
    "max-steps": "75",
    "batch-size": "8",
    "grad-accum": "1",
    "modules": "language_model,projector",
    "save-steps": "100000",
    "report-to": "none",
    "logging-steps": "5",
}
TASKS = "lab_amber,lab_objhal"
#: The headline numbers compared: (task, key, the breakdown count of the items a rate is taken over, or None).
METRICS = [
    ("lab_amber", "Yes/No error (conflicting)", "lab/probe:conflicting:questions"),
    ("lab_amber", "Yes/No error (consistent)", "lab/probe:consistent:questions"),
    ("lab_amber", "lab/probe:gap:error", "gap"),
    ("lab_amber", "Accuracy", None),
    ("lab_amber", "CHAIR (conflicting)", None),
    ("lab_amber", "CHAIR (consistent)", None),
    ("lab_amber", "CHAIR", None),
    ("lab_amber", "Hal (conflicting)", "lab/conflicting:responses"),
    ("lab_amber", "Hal", None),
    ("lab_amber", "Cog", None),
    ("lab_amber", "Cover", None),
    ("lab_objhal", "CHAIRi (conflicting)", None),
    ("lab_objhal", "CHAIRi (consistent)", None),
    ("lab_objhal", "CHAIRs (conflicting)", "lab/conflicting:responses"),
    ("lab_objhal", "CHAIRs (consistent)", "lab/consistent:responses"),
    ("lab_objhal", "Object Recall", None),
]
HIGHER_IS_BETTER = {"Accuracy", "Cover", "Object Recall"}
#: The prior-driven hallucination: what a method should lower.
PRIOR_DRIVEN = [
    ("lab_amber", "Yes/No error (conflicting)"),
    ("lab_amber", "CHAIR (conflicting)"),
    ("lab_objhal", "CHAIRi (conflicting)"),
    ("lab_objhal", "CHAIRs (conflicting)"),
]


def _cli(args: list[str]) -> None:
    import tasks.lab  # noqa: F401  (registers lab_amber and lab_objhal)
    from harness.cli import main

    code = main(["--log-level", "WARNING", *args])
    if code != 0:
        raise SystemExit(f"harness {' '.join(args)} failed with status {code}")


def evaluate(model: Path, runs: Path, name: str) -> dict[str, dict[str, float]]:
    out = {}
    if not all((runs / name / t / "metrics.json").is_file() for t in TASKS.split(",")):
        _cli(
            [
                "run",
                "--model",
                str(model),
                "--tasks",
                TASKS,
                "--output-path",
                str(runs),
                "--run-name",
                name,
                "--batch-size",
                "64",
                "--no-progress",
                "--engine",
                "hf",
            ]
        )
    for task in TASKS.split(","):
        data = json.loads((runs / name / task / "metrics.json").read_text())
        out[task] = {
            **data["headline"],
            **{
                f"{k}:{kk}": vv
                for k, v in data.get("breakdown", {}).items()
                if k.startswith("lab/")
                for kk, vv in v.items()
            },
        }
    return out


def train(method: str, seed: int, sft: Path, pairs: Path, models: Path) -> Path:
    out = models / f"{method}-s{seed}"
    if (out / "train_manifest.json").is_file():
        return out
    flags = [f"--{k}={v}" for k, v in RECIPE.items()]
    _cli(
        [
            "train",
            "--method",
            method,
            "--model",
            str(sft),
            "--data",
            str(pairs),
            "--output",
            str(out),
            "--full",
            "--no-bf16",
            "--seed",
            str(seed),
            *flags,
        ]
    )
    return out


def summarise(results: dict[str, dict[str, dict[str, float]]], methods: list[str], seeds: list[int]) -> dict:
    """Per metric: SFT's value; per method the seed values, mean, standard deviation and range, the improvement
    over SFT (positive: better), the evaluation-sampling standard error of SFT's value (a rate over n items:
    ``sqrt(p (1 - p) / n)``; else none) and whether the improvement exceeds three times the noise floor
    ``max(seed sd, sampling se)``."""
    summary: dict = {"recipe": RECIPE, "metrics": {}}
    for task, key, n_key in METRICS:
        sft = results["sft"][task].get(key)
        if sft is None:
            continue
        se = None
        if n_key == "gap":  # conflicting minus consistent probe error: the two sampling errors combined
            parts = []
            for label in ("conflicting", "consistent"):
                p, n = (
                    results["sft"][task][f"lab/probe:{label}:error"],
                    results["sft"][task][f"lab/probe:{label}:questions"],
                )
                parts.append(p / 100 * (1 - p / 100) / n)
            se = round(100 * sum(parts) ** 0.5, 2)
        elif n_key is not None and results["sft"][task].get(n_key):
            n = results["sft"][task][n_key]
            se = round(100 * (max(sft, 0.0) / 100 * (1 - min(sft, 100.0) / 100) / n) ** 0.5, 2)
        row: dict = {"sft": sft, "sampling_se": se}
        for m in methods:
            vals = [results[f"{m}-s{s}"][task].get(key) for s in seeds]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            mean = statistics.fmean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            better = (mean - sft) if key in HIGHER_IS_BETTER else (sft - mean)
            floor = max(sd, se or 0.0)
            row[m] = {
                "values": vals,
                "mean": round(mean, 2),
                "sd": round(sd, 2),
                "range": [min(vals), max(vals)],
                "improvement": round(better, 2),
                "beyond_3sd": bool(better > 3 * sd and better > 0),
                "beyond_3_noise": bool(better > 3 * floor and better > 0),
            }
        summary["metrics"][f"{task}/{key}"] = row
    return summary


def markdown(summary: dict, methods: list[str]) -> str:
    lines = [
        "| metric | SFT (sampling se) | " + " | ".join(f"{m} mean ± sd [min, max]" for m in methods) + " |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, row in summary["metrics"].items():
        cells = []
        for m in methods:
            r = row.get(m)
            if r is None:
                cells.append("")
                continue
            flag = " **better**" if r["beyond_3_noise"] else (" (better by > 3 sd only)" if r["beyond_3sd"] else "")
            cells.append(f"{r['mean']:.1f} ± {r['sd']:.1f} [{r['range'][0]:.1f}, {r['range'][1]:.1f}]{flag}")
        se = f" ({row['sampling_se']})" if row["sampling_se"] is not None else ""
        lines.append(f"| {name} | {row['sft']}{se} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/lab")
    parser.add_argument("--methods", default="dpo,mpo,jompo")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", help="the SFT model (default: the lab model, trained on first use)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from tasks.lab import LabConfig, generate_lab_preferences
    from trainers.lab_model import ensure_lab_model

    out = Path(args.output).absolute()
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    times: dict[str, float] = {}
    t = time.perf_counter()
    sft = Path(args.model) if args.model else ensure_lab_model()
    times["sft_model"] = time.perf_counter() - t
    pairs = out / "data" / "pairs" / "preferences.jsonl"
    if not pairs.is_file():
        generate_lab_preferences(pairs.parent, LabConfig())
    results = {}
    t = time.perf_counter()
    results["sft"] = evaluate(sft, out / "runs", "sft")
    times["eval_sft"] = time.perf_counter() - t
    for m in methods:
        for s in seeds:
            t = time.perf_counter()
            model = train(m, s, sft, pairs, out / "models")
            times[f"train_{m}-s{s}"] = time.perf_counter() - t
            t = time.perf_counter()
            results[f"{m}-s{s}"] = evaluate(model, out / "runs", f"{m}-s{s}")
            times[f"eval_{m}-s{s}"] = time.perf_counter() - t
    summary = summarise(results, methods, seeds)
    summary["seconds"] = {k: round(v, 1) for k, v in times.items()}
    summary["sft_model"] = str(sft)
    (out / "summary.json").write_text(json.dumps({**summary, "results": results}, indent=2) + "\n")
    print(markdown(summary, methods))
    for task, key in PRIOR_DRIVEN:
        row = summary["metrics"].get(f"{task}/{key}", {})
        winners = [m for m in methods if row.get(m, {}).get("beyond_3_noise")]
        print(f"{task}/{key}: lowered beyond 3x the noise floor by {', '.join(winners) or 'no method'}")
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
