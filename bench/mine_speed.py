"""Speed and memory of VTC pair mining: the paper's within-batch search against a global faiss search, on the same
random embeddings, and the resulting estimate for the paper's 17 million images.

For each size N (default 10^5 and 10^6) the script draws N unit CLIP vectors (``--clip-dim`` 768, CLIP ViT-L/14's
projection) into a memory-mapped file, and plants near pairs: a fraction ``--planted`` of the rows are noisy copies
(CLIP cosine ~0.97) of another random row, so both searches have pairs to find; the DINOv2 vectors
(``--dino-dim`` 1024) are independent random unit vectors, drawn per row only when a pair needs them (they never
enter the search, only the filter). Then it times the project's own search functions
(:mod:`trainers.vtc.mine`):

- **batch**: :func:`search_within_batches`, every pair inside consecutive batches of ``--batch-size`` (2048). Each
  batch costs the same, so the first ``--max-batches`` batches are timed and the rate is exact for the whole pool
  (``--max-batches 0``: all of them).
- **faiss**: :func:`search_faiss`, an exact ``IndexFlatIP`` over all N vectors (build timed), searched for
  ``--faiss-k`` neighbours from ``--faiss-queries`` query rows. A flat search costs the same per query, so the
  full-pool time is the per-query time x N (``--faiss-queries 0``: every row).

- **faiss-ivf** / **faiss-hnsw**: the approximate global indexes (:func:`build_index`: ``IndexIVFFlat`` with
  ``4 sqrt(N)`` lists and ``nprobe`` 32, ``IndexHNSWFlat`` with M 32, efSearch 128 by default; the mining
  defaults, ``--nprobe`` / ``--hnsw-m`` / ``--ef-search`` to change them), build and ``--faiss-queries`` searches
  timed, and their **recall against exact search** (:func:`index_recall`) on ``--recall-queries`` random queries:
  recall@k of all k neighbours, and of the exact neighbours above the CLIP floor (the ones mining keeps). On the
  default uniform random vectors the k nearest neighbours of a row are all at cosine ~0.1 and nearly tied, so
  recall@k is a worst case; the near pairs (planted, or ``--clusters`` for clustered vectors) are what mining
  needs. Their full-pool and 17M estimates scale the measured build and per-query times: IVF build with
  N^1.5 (k-means and assignment both grow with N x nlist), IVF query with sqrt(N) (``nprobe / nlist`` of the
  pool), HNSW build with N log N and query with log N.

Reported per run: similarity evaluations per second ("pairs/s": pairs of images compared), the pairs found and the
recall of the planted pairs among the rows searched (the batch search only finds a planted pair when both rows fall
in one batch: about B/N of them), the full-pool time, and memory: the peak of NumPy allocations during the search
(tracemalloc) plus, for faiss, the index (N x D x 4 bytes, outside NumPy). The estimate for ``--target`` images
(17,000,000) scales the largest measured size: batch time linearly in N, flat faiss time with N^2, the flat index
linearly; the embeddings themselves take ``target x (clip + dino dims) x 4`` bytes on disk (read through mmap).

    python bench/mine_speed.py [--sizes 100000,1000000] [--threads 2] [--max-batches 100] [--faiss-queries 1000]
                               [--methods batch,faiss,faiss-ivf,faiss-hnsw] [--recall-queries 1000]
                               [--clusters 0] [--json results.json]

The default run takes about two minutes on two cores without the approximate indexes (and ~3 GB of temporary
disk for the 10^6 vectors, under ``--tmp``, removed afterwards); building IVF and HNSW indexes over 10^6 768-d
vectors takes tens of minutes on two cores: ``--clip-dim 128`` for a short run. Timings depend on the machine's
BLAS and on other load: compare methods within one run. Measured figures and the 17M estimate they give are in
:mod:`trainers.vtc.mine`'s docstring; they came from (one thread each, on 2 shared cores)::

    python bench/mine_speed.py --sizes 100000 --threads 1 --clusters 1000          # 2.2 min, all four methods
    python bench/mine_speed.py --sizes 1000000 --threads 1 --clusters 1000 --methods batch,faiss       # 1.6 min
    python bench/mine_speed.py --sizes 1000000 --clip-dim 128 --threads 1 --clusters 1000 \\
        --methods batch,faiss,faiss-ivf                                                # 1.7 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated pool sizes (default 100000,1000000)")
    p.add_argument("--clip-dim", type=int, default=768)
    p.add_argument("--dino-dim", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-batches", type=int, default=100, help="batches timed per size (0: all)")
    p.add_argument("--faiss-k", type=int, default=10)
    p.add_argument("--faiss-queries", type=int, default=1000, help="query rows timed per size (0: all)")
    p.add_argument("--planted", type=float, default=0.01, help="fraction of rows planted as near pairs")
    p.add_argument("--threads", type=int, default=2, help="BLAS and OpenMP threads (default 2)")
    p.add_argument("--target", type=int, default=17_000_000, help="pool size of the estimate (default 17M)")
    p.add_argument("--tmp", default=None, help="folder of the temporary memory-mapped vectors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        default="batch,faiss,faiss-ivf,faiss-hnsw",
        help="comma-separated: batch, faiss (exact), faiss-ivf, faiss-hnsw",
    )
    p.add_argument("--recall-queries", type=int, default=1000, help="queries of the recall against exact search")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per query (default: mining's, 32)")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(N), the mining default)")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default: mining's, 32)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default: mining's, 128)")
    p.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="draw the CLIP vectors around this many random centres (0: uniform on the sphere)",
    )
    p.add_argument(
        "--spread", type=float, default=1.0, help="with --clusters: noise per coordinate around a unit-variance centre"
    )
    p.add_argument(
        "--gpu-tflops",
        type=float,
        default=30.0,
        help="sustained FP32 TFLOP/s for the GPU estimate of the global searches (an assumption)",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


class RandomRows:
    """Unit rows drawn on demand, row ``r`` from a generator seeded with (seed, r): the DINOv2 side of the bench."""

    def __init__(self, n: int, dim: int, seed: int):
        self.n, self.dim, self.seed = n, dim, seed

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.dim

    def __len__(self) -> int:
        return self.n

    def take(self, index: Any) -> Any:
        import numpy as np

        out = np.empty((len(index), self.dim), np.float32)
        for k, r in enumerate(np.asarray(index).tolist()):
            out[k] = np.random.default_rng((self.seed, r)).standard_normal(self.dim, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def rows(self, start: int, stop: int) -> Any:
        import numpy as np

        return self.take(np.arange(start, stop))


def make_clip(
    path: Path, n: int, dim: int, planted: float, seed: int, clusters: int = 0, spread: float = 1.0
) -> tuple[Any, set[tuple[int, int]]]:
    """A memory-mapped (n, dim) float32 file of unit rows (uniform, or around ``clusters`` centres) with planted near
    pairs; returns it and the planted pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    clip = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) if clusters else None
    chunk = 65536
    for s in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        if centres is not None:
            block = centres[rng.integers(0, clusters, len(block))] + spread * block
        clip[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    k = int(planted * n)
    rows = np.sort(rng.choice(n, size=k, replace=False))
    partners = rng.integers(0, n - 1, size=k)  # a random other row, anywhere in the pool
    partners += partners >= rows
    pairs = set()
    for row, partner in zip(rows.tolist(), partners.tolist(), strict=True):
        noise = rng.standard_normal(dim, dtype=np.float32) * (0.25 / np.sqrt(dim))  # cosine ~0.97
        v = clip[partner] + noise
        clip[row] = v / np.linalg.norm(v)
        pairs.add((min(partner, row), max(partner, row)))
    # a planted partner may itself be replaced later: keep the pairs whose cosine really is above 0.95
    if pairs:
        a, b = (np.array(x) for x in zip(*sorted(pairs), strict=True))
        cos = np.einsum("nd,nd->n", clip[a], clip[b])
        pairs = {(int(i), int(j)) for i, j, c in zip(a, b, cos, strict=True) if c > 0.95}
    clip.flush()
    return clip, pairs


def measure(fn: Any) -> tuple[Any, float, int]:
    """(result, seconds, peak bytes of NumPy allocations) of ``fn()``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trainers.vtc.mine import import_faiss

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    faiss = import_faiss() if any(m.startswith("faiss") for m in methods) else None
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="mine-speed-") as tmp:
        for n in sizes:
            results += bench_size(n, args, Path(tmp), methods, faiss)
    return {"settings": vars(args), "results": results, "estimate": estimate(results, args)}


def bench_size(n: int, args: argparse.Namespace, tmp: Path, methods: list[str], faiss: Any) -> list[dict[str, Any]]:
    """Both searches on one pool of ``n`` vectors."""
    from dataclasses import replace
    from functools import partial

    import numpy as np

    from trainers.vtc.mine import MineConfig, search_faiss, search_within_batches

    t0 = time.perf_counter()
    clip, planted = make_clip(
        tmp / f"clip-{n}.npy", n, args.clip_dim, args.planted, args.seed, args.clusters, args.spread
    )
    print(
        f"N={n:,}: drew {n:,} x {args.clip_dim} CLIP vectors with {len(planted):,} planted pairs "
        f"({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    dino = RandomRows(n, args.dino_dim, args.seed + 1)
    config = MineConfig(batch_size=args.batch_size, faiss_k=args.faiss_k)
    results: list[dict[str, Any]] = []
    if "batch" in methods:
        rows = n if args.max_batches <= 0 else min(n, args.max_batches * args.batch_size)
        found, seconds, peak = measure(partial(search_within_batches, clip[:rows], dino, config))
        got = set(found.candidates.as_tuples())
        inside = {p for p in planted if p[1] < rows}
        results.append(
            {
                "method": "batch",
                "n": n,
                "rows_searched": rows,
                "seconds": seconds,
                "pairs_per_s": found.compared / seconds,
                "compared": found.compared,
                "found": len(got),
                "planted_in_rows": len(inside),
                "recall": len(got & inside) / len(inside) if inside else None,
                "full_seconds": seconds * n / rows,
                "numpy_peak_bytes": peak,
                "index_bytes": 0,
            }
        )
    if "faiss" in methods:
        q = n if args.faiss_queries <= 0 else min(n, args.faiss_queries)
        queries = np.random.default_rng(args.seed + 2).choice(n, size=q, replace=False)
        flat = replace(config, method="faiss")
        found, seconds, peak = measure(partial(search_faiss, clip, dino, flat, queries=queries))
        # the index is built inside search_faiss: build one alone to separate building from searching
        t1 = time.perf_counter()
        index = faiss.IndexFlatIP(args.clip_dim)
        for s in range(0, n, 16384):
            index.add(np.ascontiguousarray(clip[s : s + 16384]))
        build = time.perf_counter() - t1
        del index
        search = max(seconds - build, 1e-9)
        qset = set(queries.tolist())
        touched = {p for p in planted if p[0] in qset or p[1] in qset}
        got = set(found.candidates.as_tuples())
        results.append(
            {
                "method": "faiss",
                "n": n,
                "queries": q,
                "seconds": seconds,
                "build_seconds": build,
                "search_seconds": search,
                "pairs_per_s": found.compared / search,
                "compared": found.compared,
                "found": len(got),
                "planted_in_rows": len(touched),
                "recall": len(got & touched) / len(touched) if touched else None,
                "full_seconds": build + search * n / q,
                "numpy_peak_bytes": peak,
                "index_bytes": n * args.clip_dim * 4,
            }
        )
    for method in (m for m in methods if m in ("faiss-ivf", "faiss-hnsw")):
        results.append(bench_approximate(method, clip, dino, planted, config, args))
    del clip
    return results


def approx_config(method: str, config: Any, args: argparse.Namespace) -> Any:
    from dataclasses import replace

    changes: dict[str, Any] = {"method": method, "faiss_nlist": args.nlist}
    for name, value in (("faiss_nprobe", args.nprobe), ("hnsw_m", args.hnsw_m), ("hnsw_ef_search", args.ef_search)):
        if value is not None:
            changes[name] = value
    return replace(config, **changes)


def bench_approximate(
    method: str, clip: Any, dino: Any, planted: set[tuple[int, int]], config: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """Build, search and recall of one approximate index over the pool."""
    from functools import partial

    import numpy as np

    from trainers.vtc.mine import build_index, index_recall, ivf_lists, search_faiss

    n = len(clip)
    cfg = approx_config(method, config, args)
    t0 = time.perf_counter()
    index = build_index(clip, cfg)
    build = time.perf_counter() - t0
    print(f"N={n:,}: {method} built in {build:.1f} s", file=sys.stderr)
    q = n if args.faiss_queries <= 0 else min(n, args.faiss_queries)
    queries = np.random.default_rng(args.seed + 2).choice(n, size=q, replace=False)
    found, search, peak = measure(partial(search_faiss, clip, dino, cfg, queries=queries, index=index))
    recall = index_recall(clip, cfg, index=index, sample=args.recall_queries, k=args.faiss_k, seed=args.seed + 3)
    del index
    qset = set(queries.tolist())
    touched = {p for p in planted if p[0] in qset or p[1] in qset}
    got = set(found.candidates.as_tuples())
    nlist = ivf_lists(n, cfg) if method == "faiss-ivf" else None
    row = {
        "method": method,
        "n": n,
        "queries": q,
        "build_seconds": build,
        "search_seconds": search,
        "seconds": build + search,
        "pairs_per_s": found.compared / max(search, 1e-9),
        "compared": found.compared,
        "found": len(got),
        "planted_in_rows": len(touched),
        "recall": len(got & touched) / len(touched) if touched else None,
        "recall_at_k": recall["recall_at_k"],
        "recall_above": recall["recall_above"],
        "recall_queries": recall["queries"],
        "neighbours_above": recall["neighbours_above"],
        "exact_seconds_per_query": recall["exact_seconds"] / recall["queries"],
        "search_seconds_per_query": search / q,
        "full_seconds": build + search * n / q,
        "numpy_peak_bytes": peak,
        "nlist": nlist,
        "nprobe": cfg.faiss_nprobe if nlist else None,
        "hnsw_m": cfg.hnsw_m if method == "faiss-hnsw" else None,
        "ef_search": cfg.hnsw_ef_search if method == "faiss-hnsw" else None,
        "index_bytes": n * (args.clip_dim * 4 + (8 if method == "faiss-ivf" else cfg.hnsw_m * 2 * 4 * 1.1)),
    }
    return row


def estimate(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Time and memory for ``args.target`` images, from the largest size measured per method."""
    out: dict[str, Any] = {
        "target": args.target,
        "embeddings_disk_bytes": args.target * (args.clip_dim + args.dino_dim) * 4,
    }
    import math

    t = args.target
    for method in ("batch", "faiss", "faiss-ivf", "faiss-hnsw"):
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        r = max(rows, key=lambda x: x["n"])
        scale = t / r["n"]
        per_query = r.get("search_seconds", 0.0) / max(r.get("queries", 1), 1)
        if method == "batch":
            seconds = r["full_seconds"] * scale
            memory = r["numpy_peak_bytes"]
            compared = t * (args.batch_size - 1) / 2
        elif method == "faiss":
            seconds = r["build_seconds"] * scale + per_query * scale * t
            memory = t * args.clip_dim * 4 + r["numpy_peak_bytes"]
            compared = t * (t - 1) / 2
        elif method == "faiss-ivf":
            seconds = r["build_seconds"] * scale**1.5 + per_query * math.sqrt(scale) * t
            memory = t * (args.clip_dim * 4 + 8) + r["numpy_peak_bytes"]
            nlist = r["nlist"] if args.nlist else max(1, min(int(4 * math.sqrt(t)), t // 39))
            # the queries' scan of nprobe lists plus every row's assignment to a list, in similarity evaluations
            compared = t * min(r["nprobe"], nlist) * t / nlist + t * nlist
        else:
            grow = math.log(t) / math.log(r["n"])
            seconds = r["build_seconds"] * scale * grow + per_query * grow * t
            memory = t * (args.clip_dim * 4 + r["hnsw_m"] * 2 * 4 * 1.1) + r["numpy_peak_bytes"]
            compared = r["compared"] / r["queries"] * grow * t
        entry = {"from_n": r["n"], "seconds": seconds, "memory_bytes": memory, "pairs_compared": compared}
        if method in ("faiss", "faiss-ivf"):  # 2 x dim FLOP per similarity evaluation, on a GPU at the assumed rate
            entry["gpu_seconds"] = compared * 2 * args.clip_dim / (args.gpu_tflops * 1e12)
        if method in ("faiss-ivf", "faiss-hnsw"):
            entry["recall_at_k"], entry["recall_above"] = r["recall_at_k"], r["recall_above"]
        out[method] = entry
    return out


def report(data: dict[str, Any]) -> str:
    header = (
        f"{'method':<10} {'N':>10} {'searched':>12} {'pairs/s':>12} {'found':>7} {'recall':>7} "
        f"{'full pool':>11} {'memory':>11}"
    )
    lines = [header]
    for r in data["results"]:
        searched = f"{r['rows_searched']:,} rows" if r["method"] == "batch" else f"{r['queries']:,} q"
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        memory = r["numpy_peak_bytes"] + r["index_bytes"]
        lines.append(
            f"{r['method']:<10} {r['n']:>10,} {searched:>12} {r['pairs_per_s']:>12.3g} {r['found']:>7,} "
            f"{recall:>7} {duration(r['full_seconds']):>11} {gib(memory):>11}"
        )
    approx = [r for r in data["results"] if r["method"] in ("faiss-ivf", "faiss-hnsw")]
    if approx:
        lines.append("")
        lines.append(
            "Approximate indexes against exact search (recall on random queries; speed-up per query and "
            "for the full pool, build included, over the exact flat search):"
        )
        lines.append(
            f"{'method':<10} {'N':>10} {'settings':>20} {'build':>9} {'ms/query':>9} {'speed-up':>9} "
            f"{'pool':>7} {'recall@k':>9} {'recall>thr':>11} {'(n)':>6}"
        )
        for r in approx:
            exact = next((e for e in data["results"] if e["method"] == "faiss" and e["n"] == r["n"]), None)
            exact_per_q = exact["search_seconds"] / exact["queries"] if exact else r["exact_seconds_per_query"]
            settings = (
                f"nlist {r['nlist']}, nprobe {r['nprobe']}"
                if r["method"] == "faiss-ivf"
                else f"M {r['hnsw_m']}, ef {r['ef_search']}"
            )
            above = "-" if r["recall_above"] is None else f"{r['recall_above']:.3f}"
            pool = f"{exact['full_seconds'] / r['full_seconds']:.1f}x" if exact else "-"
            lines.append(
                f"{r['method']:<10} {r['n']:>10,} {settings:>20} {duration(r['build_seconds']):>9} "
                f"{r['search_seconds_per_query'] * 1e3:>9.3f} "
                f"{exact_per_q / max(r['search_seconds_per_query'], 1e-12):>8.1f}x {pool:>7} "
                f"{r['recall_at_k']:>9.3f} {above:>11} {r['neighbours_above']:>6}"
            )
    est = data["estimate"]
    lines.append("")
    lines.append(
        f"Estimate for {est['target']:,} images (embeddings on disk: {gib(est['embeddings_disk_bytes'])} "
        "float32, read through mmap):"
    )
    for method, what in (
        ("batch", "within batches"),
        ("faiss", "faiss flat, global"),
        ("faiss-ivf", "faiss IVF, global"),
        ("faiss-hnsw", "faiss HNSW, global"),
    ):
        if method in est:
            e = est[method]
            gpu = (
                f"; GPU ~{duration(e['gpu_seconds'])} at {data['settings']['gpu_tflops']:.0f} TFLOP/s (assumed)"
                if "gpu_seconds" in e
                else ""
            )
            rec = f"; recall@k {e['recall_at_k']:.3f} at N={e['from_n']:,}" if "recall_at_k" in e else ""
            lines.append(
                f"  {what:<19} {duration(e['seconds']):>10} on this machine's threads, memory "
                f"{gib(e['memory_bytes'])}, {e['pairs_compared']:.3g} pairs compared "
                f"(scaled from N={e['from_n']:,}){gpu}{rec}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy and faiss load their thread pools
    data = run(args)
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
