"""Benchmark: peak memory and wall time of the ``--reference cache:FILE`` precompute
(:func:`trainers.trainer.precompute_reference_cache`) on the tiny LLaVA-1.5, with 336-px images on disk.

Each measurement runs in a fresh process and reports that process's peak resident memory (``ru_maxrss``: it
includes the decoded PIL images, which tracemalloc does not see, and torch's buffers):

- **streamed** (the precompute): the rows of each micro-batch are built, their images decoded, scored and
  dropped; at ``--sizes`` 100 and 1,000 examples the peak should be flat (within 10%);
- **in memory** (``--legacy``, the way the precompute used to work): every example's rows, with their decoded
  images, are built first, then scored; its peak grows with the number of examples (about 2 x 336 x 336 x 3
  bytes per JoMPO example for the decoded images);
- **2 processes vs 1**: the streamed precompute at the largest size under ``torchrun --nproc_per_node 2`` (gloo on
  CPU; each process scores half the micro-batches) against one process, ``--threads`` torch threads each. The
  time is the precompute's wall time on rank 0 (the model load included, process start-up excluded); both files
  are checked byte-identical.

    python bench/reference_precompute.py [--sizes 100,1000] [--method jompo] [--batch 4] [--threads 1]
                                         [--legacy/--no-legacy] [--json out.json]

It takes about a minute on two cores. On a shared machine the 2-process speed-up is bounded by the free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square"]
CORPUS = [
    "there is a red circle on the left .",
    "there is a blue square on the right .",
    "a green triangle is above a yellow circle .",
    "what colour is the shape ? it is red .",
    "describe the image . the image shows a small blue triangle and a large green circle .",
]


def make_data(root: Path, n: int, size: int) -> Path:
    """``n`` contrast records with two ``size``-px PNG images each (the bench's own, drawn once per run)."""
    from PIL import Image, ImageDraw

    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        c1, c2 = COLOURS[i % 4], COLOURS[(i + 1) % 4]
        shape = SHAPES[(i // 4) % 2]
        for colour, tag in ((c1, "w"), (c2, "l")):
            img = Image.new("RGB", (size, size), "white")
            box = (size // 8 + i % 7, size // 8, size - size // 8, size - size // 8 - i % 5)
            (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=colour)
            img.save(root / f"img/{i}{tag}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"ex{i}",
                    "question": "describe the image .",
                    "image_w": str(root / f"img/{i}w.png"),
                    "image_l": str(root / f"img/{i}l.png"),
                    "y_w": f"the image shows a {c1} {shape} .",
                    "y_l": f"the image shows a {c2} {shape} .",
                }
            )
        )
    path = root / "pref.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def child(args: argparse.Namespace) -> None:
    """One measurement (run in its own process): prints ``RESULT {json}`` on rank 0."""
    import torch

    import harness  # noqa: F401  (torchvision import hook before transformers)

    torch.set_num_threads(args.threads)
    from harness.models import resolve_model
    from trainers.config import TrainConfig
    from trainers.data import read_preferences
    from trainers.losses import required_rows
    from trainers.trainer import (
        PreferenceCollator,
        load_model,
        load_processor,
        loss_config_for,
        precompute_reference_cache,
        reference_meta,
    )

    out = Path(args.out)
    config = TrainConfig(
        method=args.method,
        model=args.model,
        data=args.data,
        output=str(out.parent / "o"),
        lora=False,
        bf16=False,
        batch_size=args.batch,
        report_to=["none"],
        reference=f"cache:{out}",
    )
    _, family = resolve_model(config.model)
    processor = load_processor(config.model)
    rows_needed = required_rows(loss_config_for(config))
    examples = read_preferences(config.data)
    collator = PreferenceCollator(
        family, processor, rows_needed, strategy=config.rejected_image, seed=config.corruption_seed
    )
    t0 = time.perf_counter()
    if args.mode == "legacy":
        from trainers.reference import precompute_reference

        rows = [row for ex in examples for row in collator.rows([ex])]  # every image decoded up front
        precompute_reference(
            load_model(config.model),
            family,
            processor,
            rows,
            out,
            reference_meta(config, family, rows_needed),
            batch_size=args.batch * len(rows_needed),
            progress=False,
        )
        rank = 0
    else:
        import logging

        logging.disable(logging.WARNING)
        os.environ.setdefault("TQDM_DISABLE", "1")
        precompute_reference_cache(config, family, processor, collator, examples, out)
        rank = int(os.environ.get("RANK", "0"))
    seconds = time.perf_counter() - t0
    if rank == 0:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(
            "RESULT "
            + json.dumps(
                {
                    "seconds": seconds,
                    "peak_rss_bytes": peak,
                    "rows": len(examples) * len(rows_needed),
                    "world": int(os.environ.get("WORLD_SIZE", "1")),
                }
            ),
            flush=True,
        )


def launch(args: argparse.Namespace, mode: str, data: Path, model: str, out: Path, n_proc: int = 1) -> dict:
    base = [
        __file__,
        "--child",
        "--mode",
        mode,
        "--data",
        str(data),
        "--model",
        model,
        "--out",
        str(out),
        "--method",
        args.method,
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
    ]
    if n_proc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n_proc), *base]
    else:
        cmd = [sys.executable, *base]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line.split(" ", 1)[1]), "mode": mode, "processes": n_proc, "total_seconds": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000", help="numbers of examples (default 100,1000)")
    p.add_argument("--method", default="jompo", help="preference method (its rows per example)")
    p.add_argument("--batch", type=int, default=4, help="examples per micro-batch (--batch-size)")
    p.add_argument("--image-size", type=int, default=336, help="side of the images on disk (default 336)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument(
        "--legacy", action=argparse.BooleanOptionalAction, default=True, help="also measure the rows-in-memory pass"
    )
    p.add_argument("--json", help="also write the results here")
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    import harness  # noqa: F401
    from harness.models.tiny import build_tiny_llava

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="ref-precompute-") as tmp:
        root = Path(tmp)
        model = str(build_tiny_llava(root / "llava", CORPUS, seed=0))
        data = {n: make_data(root / f"data{n}", n, args.image_size) for n in sizes}
        for n in sizes:
            for mode in ("streamed", "legacy") if args.legacy else ("streamed",):
                r = launch(args, mode, data[n], model, root / f"{mode}-{n}.jsonl")
                results.append({"examples": n, **r})
                print(
                    f"{mode:<9} {n:>6,} examples ({r['rows']:,} rows): peak RSS {r['peak_rss_bytes'] / 2**20:7.1f} MiB,"
                    f" precompute {r['seconds']:6.2f} s",
                    file=sys.stderr,
                )
        n = max(sizes)
        two = launch(args, "streamed", data[n], model, root / f"two-{n}.jsonl", n_proc=2)
        results.append({"examples": n, **two})
        identical = (root / f"two-{n}.jsonl").read_bytes() == (root / f"streamed-{n}.jsonl").read_bytes()
    by = {(r["mode"], r["examples"], r["processes"]): r for r in results}
    lo, hi = min(sizes), max(sizes)
    streamed_growth = by[("streamed", hi, 1)]["peak_rss_bytes"] / by[("streamed", lo, 1)]["peak_rss_bytes"] - 1
    summary = {
        "streamed_peak_growth": streamed_growth,
        "streamed_flat_within_10pct": abs(streamed_growth) <= 0.10,
        "two_vs_one_speedup": by[("streamed", hi, 1)]["seconds"] / by[("streamed", hi, 2)]["seconds"],
        "two_process_file_identical": identical,
    }
    if args.legacy:
        summary["legacy_peak_growth"] = (
            by[("legacy", hi, 1)]["peak_rss_bytes"] / by[("legacy", lo, 1)]["peak_rss_bytes"] - 1
        )
        summary["legacy_bytes_per_example"] = (
            by[("legacy", hi, 1)]["peak_rss_bytes"] - by[("legacy", lo, 1)]["peak_rss_bytes"]
        ) / (hi - lo)
    print(
        f"tiny LLaVA-1.5, {args.method}, {args.image_size}-px images, micro-batch {args.batch} examples, "
        f"{args.threads} thread(s) per process"
    )
    print(f"{'pass':<10}{'examples':>9}{'procs':>6}{'peak RSS MiB':>14}{'precompute s':>14}")
    for r in results:
        print(
            f"{r['mode']:<10}{r['examples']:>9,}{r['processes']:>6}{r['peak_rss_bytes'] / 2**20:>14.1f}"
            f"{r['seconds']:>14.2f}"
        )
    print(
        f"streamed peak RSS {lo:,} -> {hi:,} examples: {streamed_growth * 100:+.1f}% "
        f"({'flat' if summary['streamed_flat_within_10pct'] else 'NOT flat'} within 10%)"
    )
    if args.legacy:
        print(
            f"in-memory peak RSS {lo:,} -> {hi:,} examples: {summary['legacy_peak_growth'] * 100:+.1f}% "
            f"({summary['legacy_bytes_per_example'] / 2**20:.2f} MiB per example)"
        )
    print(
        f"2 processes vs 1 at {hi:,} examples: {summary['two_vs_one_speedup']:.2f}x; file byte-identical: {identical}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "results": results, "summary": summary}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
