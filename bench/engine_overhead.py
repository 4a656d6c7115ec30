"""Throughput of ``harness run``'s evaluation loop against the bare engine, in the same process.

    python bench/engine_overhead.py [--engine hf|vllm|openai|all] [--n 120] [--images 8] [--repeats 3]
                                    [--server vllm|fake] [--concurrency 64] [--task amber_like|toy_amber]

Each engine runs on the embedded tiny LLaVA. The default data is AMBER-like: ``--images`` 640x480 JPEG photos of
noise (decoding one takes a few milliseconds, as AMBER's do), each asked one generative question ("Describe
this image.", ``--gen-tokens`` new tokens) and then yes/no questions (``--disc-tokens``) until there are ``--n``
samples, the generative half first, then the discriminative questions cycling over the images, as AMBER's
15,220 questions on 1,004 images do. ``--task toy_amber`` runs the toy task instead (scored by AMBER's scorer).

The bare engine, per engine, decodes each image once (a dict) and then:

- ``hf``: ``engine.generate`` batch by batch (``--batch-size``);
- ``vllm``: one ``LLM.generate`` call with every request (``engine.generate`` on the whole list);
- ``openai``: the openai SDK from ``--concurrency`` threads, each image PNG-encoded once, the same messages and
  sampling parameters the engine sends, against a local server: ``--server vllm`` starts vLLM's OpenAI server
  (``python -m harness.serve``, on CPU with vLLM's CPU build); ``--server fake`` uses the scripted test server
  (``tests/fake_openai_server.py``) answering each request after ``--fake-delay`` seconds.

The harness side runs ``harness.runner.evaluate`` into a fresh run store with the same engine instance
(streaming requests, decoding images ahead, ordering and appending predictions, scoring, progress bar). Both are
warmed up once, then alternate ``--repeats`` times, and the medians are compared: the ratio harness/bare of
samples per second (goal: >= 0.95) for the generation loop (requests built, responses ordered, predictions
written) and for the whole of ``evaluate`` (scoring included; the AMBER-like task scores nothing); the median of
the per-repeat ratios is printed too (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engines import EngineOptions, create_engine  # noqa: E402
from harness.engines.base import Engine  # noqa: E402
from harness.models.tiny import ensure_embedded_model  # noqa: E402
from harness.runner import evaluate  # noqa: E402
from harness.store import RunStore  # noqa: E402
from harness.task import Task, get_task  # noqa: E402
from harness.types import Decoding, Metrics, Request, Sample  # noqa: E402
from tasks.toy import corpus  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star", "diamond")


class AmberLike(Task):
    """``n`` questions on ``n_images`` JPEG photos: one generative question per image, then yes/no questions."""

    name = "amber_like"
    version = "1"
    description = "AMBER-shaped benchmark data for the overhead benchmark"

    def __init__(self, root: Path, n: int, n_images: int, gen_tokens: int, disc_tokens: int):
        self._root, self._n, self._n_images = root, n, n_images
        self._gen_tokens, self._disc_tokens = gen_tokens, disc_tokens
        super().__init__()

    def load_samples(self) -> list[Sample]:
        import numpy as np
        from PIL import Image

        from harness.types import ImageRef

        self._root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        paths = []
        for k in range(self._n_images):
            path = self._root / f"AMBER_{k + 1}.jpg"
            if not path.exists():
                pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
        samples = []
        for i in range(self._n):
            k = i % self._n_images
            if i < self._n_images:
                prompt, budget = "Describe this image.", self._gen_tokens
            else:
                prompt, budget = (
                    f"Is there a {SHAPES[(i // self._n_images) % len(SHAPES)]} in this image?",
                    self._disc_tokens,
                )
            samples.append(
                Sample(id=str(i + 1), prompt=prompt, images=(ImageRef(path=paths[k]),), max_new_tokens=budget)
            )
        return samples

    def score(self, samples: Sequence[Sample], responses, judge: Any = None) -> Metrics:
        return Metrics(self.name, {"answered": float(sum(s.id in responses for s in samples))})


def decoded_requests(samples: Sequence[Sample], budget: Callable[[Sample], int]) -> list[Request]:
    """Requests with each image decoded once (what a careful script does)."""
    images: dict[Any, Any] = {}
    out = []
    for s in samples:
        decoded = []
        for ref in s.images:
            if ref not in images:
                images[ref] = ref.load(s.id)
            decoded.append(images[ref])
        out.append(Request(s.id, s.prompt, tuple(decoded), budget(s)))
    return out


def bare_batches(engine: Engine, samples, budget, batch: int) -> float:
    t0 = time.perf_counter()
    requests = decoded_requests(samples, budget)
    for i in range(0, len(requests), batch):
        for _ in engine.generate(requests[i : i + batch]):
            pass
    return len(samples) / (time.perf_counter() - t0)


def bare_openai(engine: Any, samples, budget, concurrency: int) -> float:
    """The openai SDK from ``concurrency`` threads, with the engine's messages and parameters."""
    import openai

    from harness.engines.openai import build_messages, encode_png_data_url

    client = openai.OpenAI(base_url=engine.base_url, api_key="EMPTY", max_retries=0, timeout=600)
    urls: dict[int, str] = {}

    def one(req: Request) -> None:
        messages = build_messages(req, lambda img: urls[id(img)])
        client.chat.completions.create(
            model=engine.served_model, messages=messages, **engine.sampling_params(req.max_new_tokens)
        )

    t0 = time.perf_counter()
    requests = decoded_requests(samples, budget)
    for req in requests:
        for img in req.images:
            if id(img) not in urls:
                urls[id(img)] = encode_png_data_url(img)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))
    rate = len(samples) / (time.perf_counter() - t0)
    client.close()
    return rate


def measure(label: str, engine: Engine, task: Task, samples, bare: Callable[[], float], repeats: int) -> dict:
    def harness(tmp: Path, k: int) -> tuple[float, float, float]:
        """(samples/s of the whole evaluate(), of its generation loop, mean completion tokens)"""
        store = RunStore(tmp / f"run{k}")
        store.open({}, {"bench": k})
        t0 = time.perf_counter()
        result = evaluate(task, engine, store, samples, progress=False)
        whole = len(samples) / (time.perf_counter() - t0)
        tokens = [r.get("completion_tokens") or 0 for r in store.load_finished().values()]
        return whole, len(samples) / result.seconds, sum(tokens) / max(1, len(tokens))

    base, harn, loop = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare()  # warm-up of both paths
        _, _, mean_tokens = harness(Path(tmp), -1)
        for k in range(repeats):
            base.append(bare())
            whole, gen, _ = harness(Path(tmp), k)
            harn.append(whole)
            loop.append(gen)
    b, h, g = statistics.median(base), statistics.median(harn), statistics.median(loop)

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"\n[{label}] n={len(samples)} repeats={repeats} mean completion tokens={mean_tokens:.1f}")
    print(f"bare engine:                        {b:.2f} samples/s   runs: {runs(base)}")
    print(f"harness generation loop:            {g:.2f} samples/s   runs: {runs(loop)}")
    print(f"harness evaluate (incl. scoring):   {h:.2f} samples/s   runs: {runs(harn)}")
    paired = [x / y for x, y in zip(loop, base, strict=True)]  # each harness run against the bare run before it
    print(
        f"ratio generation loop/bare: {g / b:.3f}  (goal >= 0.95)   paired runs: {runs(paired)}, "
        f"median {statistics.median(paired):.3f}"
    )
    print(f"ratio evaluate/bare:        {h / b:.3f}")
    sys.stdout.flush()
    return {"engine": label, "bare": b, "loop": g, "evaluate": h, "paired": statistics.median(paired)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "openai", "all"])
    ap.add_argument("--task", default="amber_like", choices=["amber_like", "toy_amber"])
    ap.add_argument("--n", type=int, default=120, help="samples per measurement")
    ap.add_argument("--images", type=int, default=8, help="unique images (amber_like)")
    ap.add_argument("--gen-tokens", type=int, default=128, help="budget of the generative questions (amber_like)")
    ap.add_argument("--disc-tokens", type=int, default=16, help="budget of the yes/no questions (amber_like)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="budget of every sample (toy_amber)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8, help="hf batch")
    ap.add_argument("--concurrency", type=int, default=64, help="openai requests in flight")
    ap.add_argument("--server", default="vllm", choices=["vllm", "fake"], help="openai: the server")
    ap.add_argument("--fake-delay", type=float, default=0.05, help="--server fake: seconds per reply")
    args = ap.parse_args()

    model = str(ensure_embedded_model(corpus()))
    with tempfile.TemporaryDirectory() as data_dir:
        if args.task == "toy_amber":
            task: Task = get_task("toy_amber")()
            samples = [
                Sample(s.id, s.prompt, s.images, s.reference, s.meta, args.max_new_tokens) for s in task.samples(args.n)
            ]
        else:
            task = AmberLike(Path(data_dir), args.n, args.images, args.gen_tokens, args.disc_tokens)
            samples = task.samples()

        def budget(s: Sample) -> int:
            return s.max_new_tokens or task.default_max_new_tokens

        engines = ["hf", "vllm", "openai"] if args.engine == "all" else [args.engine]
        results = []
        for name in engines:
            if name == "hf":
                opts = EngineOptions(batch_size=args.batch_size, dtype="float32", device="cpu")
                with create_engine("hf", model, Decoding(), opts) as engine:
                    results.append(
                        measure(
                            f"hf batch={args.batch_size}",
                            engine,
                            task,
                            samples,
                            lambda: bare_batches(engine, samples, budget, args.batch_size),
                            args.repeats,
                        )
                    )
            elif name == "vllm":
                opts = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
                with create_engine("vllm", model, Decoding(), opts) as engine:
                    results.append(
                        measure(
                            "vllm offline",
                            engine,
                            task,
                            samples,
                            lambda: bare_batches(engine, samples, budget, len(samples)),
                            args.repeats,
                        )
                    )
            else:
                results.append(bench_openai(args, model, task, samples, budget))
    print("\nsummary (harness/bare samples per second, same run):")
    for r in results:
        print(
            f"  {r['engine']:<32} generation loop {r['loop'] / r['bare']:.3f} (paired median {r['paired']:.3f})"
            f"   evaluate {r['evaluate'] / r['bare']:.3f}"
        )


def bench_openai(args, model: str, task: Task, samples, budget) -> dict:
    from harness.engines.openai import OpenAIEngine
    from harness.models.llava import LlavaFamily

    stop: Callable[[], None]
    if args.server == "vllm":
        from harness.serve import start_vllm_server, stop_server

        process, base_url = start_vllm_server(
            model,
            extra_args=[
                "--dtype",
                "float32",
                "--max-model-len",
                "1024",
                "--max-num-seqs",
                str(max(args.concurrency, 8)),
            ],
        )
        extra = dict(LlavaFamily.server_request_fields)

        def stop() -> None:
            stop_server(process)

        label = f"openai (vLLM server) c={args.concurrency}"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from fake_openai_server import OK, FakeOpenAIServer

        server = FakeOpenAIServer(models=(model,))
        server._httpd.socket.listen(1024)  # a queue for every client connecting at once
        server._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # no 40 ms ACK wait per reply
        server.always("", OK(delay_s=args.fake_delay))
        server.start()
        base_url, extra = server.base_url, None
        stop = server.stop
        label = f"openai (fake server, {args.fake_delay * 1000:.0f} ms) c={args.concurrency}"
    try:
        opts = EngineOptions(
            base_url=base_url, served_model=model, concurrency=args.concurrency, extra_body=extra, timeout_s=600
        )
        with OpenAIEngine(model, Decoding(), opts) as engine:
            return measure(
                label,
                engine,
                task,
                samples,
                lambda: bare_openai(engine, samples, budget, args.concurrency),
                args.repeats,
            )
    finally:
        stop()


if __name__ == "__main__":
    main()
