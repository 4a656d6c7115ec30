"""Throughput of ``harness run``'s evaluation loop against the bare engine, in the same process.

    python bench/engine_overhead.py [--engine hf] [--n 64] [--repeats 3] [--batch-size 8]

Both sides decode the same requests with the same engine instance on the embedded tiny model and toy task:
the baseline builds the requests and calls ``engine.generate`` batch by batch; the harness side runs
``harness.runner.evaluate`` into a fresh run store (ordering, appending and fsyncing predictions, scoring,
progress bar). Both are warmed up once, then alternate ``--repeats`` times and the medians are compared. Prints the ratio
harness/baseline of samples per second (goal: >= 0.95), for the generation loop (requests built, responses
ordered, predictions written) and for the whole of ``evaluate`` (scoring included: a fixed cost that the tiny
model's ~3 ms per sample makes visible and a real model's generation time hides).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engines import EngineOptions, create_engine  # noqa: E402
from harness.models.tiny import ensure_embedded_model  # noqa: E402
from harness.runner import build_request, evaluate  # noqa: E402
from harness.store import RunStore  # noqa: E402
from harness.task import get_task  # noqa: E402
from harness.types import Decoding  # noqa: E402
from tasks.toy import corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--n", type=int, default=160, help="samples per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()

    model = str(ensure_embedded_model(corpus()))
    task = get_task("toy_amber")()
    samples = task.samples(args.n)
    opts = EngineOptions(batch_size=args.batch_size, dtype="float32", enforce_eager=True)
    engine = create_engine(args.engine, model, Decoding(), opts)

    def baseline() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(samples), args.batch_size):
            reqs = [build_request(s, args.max_new_tokens) for s in samples[i:i + args.batch_size]]
            for _ in engine.generate(reqs):
                pass
        return len(samples) / (time.perf_counter() - t0)

    def harness(tmp: Path, k: int) -> tuple[float, float]:
        """(samples/s of the whole evaluate(), samples/s of its generation loop without scoring)"""
        store = RunStore(tmp / f"run{k}")
        store.open({}, {"bench": k})
        t0 = time.perf_counter()
        result = evaluate(task, engine, store, samples, max_new_tokens=args.max_new_tokens, progress=True)
        return len(samples) / (time.perf_counter() - t0), len(samples) / result.seconds

    base, harn, loop = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        baseline()  # warm-up of both paths (model, image decoding, the scorer's NLTK data)
        harness(Path(tmp), -1)
        for k in range(args.repeats):
            base.append(baseline())
            whole, gen = harness(Path(tmp), k)
            harn.append(whole)
            loop.append(gen)
    engine.close()
    b, h, g = statistics.median(base), statistics.median(harn), statistics.median(loop)

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"engine={args.engine} n={args.n} batch={args.batch_size} repeats={args.repeats}")
    print(f"baseline (engine.generate):         {b:.2f} samples/s   runs: {runs(base)}")
    print(f"harness generation loop:            {g:.2f} samples/s   runs: {runs(loop)}")
    print(f"harness evaluate (incl. scoring):   {h:.2f} samples/s   runs: {runs(harn)}")
    print(f"ratio generation loop/baseline: {g / b:.3f}  (goal >= 0.95)")
    print(f"ratio evaluate/baseline:        {h / b:.3f}")


if __name__ == "__main__":
    main()
