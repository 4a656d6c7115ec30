"""Stage 2 of ``harness build-vtc``: mine CLIP-blind pairs, image pairs with CLIP cosine similarity above
``clip_threshold`` (0.95) and DINOv2 cosine similarity below ``dino_threshold`` (0.6), both strict.

Four search strategies (``method``):

- ``"batch"``, the paper's: the images are cut, in pool order, into consecutive batches of ``batch_size`` (2048)
  and all pairs *within* a batch are compared (one ``B x B`` matrix product per batch). Pairs whose two images fall
  in different batches are never found: the batch boundaries decide which pairs exist. Time grows linearly with
  the pool (``N / B`` products of ``B x B x D``); memory is one batch.
- ``"faiss"``: a global nearest-neighbour search over the CLIP embeddings (``faiss.IndexFlatIP`` on the
  L2-normalised vectors: inner product = cosine), ``faiss_k`` neighbours per image (``faiss_k=0``: a range search,
  every neighbour above the CLIP threshold). It finds the pairs the batches cut apart, so many more pairs at scale,
  at a cost that grows with the square of the pool (exact search) and an index that holds all CLIP vectors
  (``N x D x 4`` bytes). ``bench/mine_speed.py`` measures both and extrapolates to 17 million images. faiss is an
  optional dependency (``pip install faiss-cpu``, tested with 1.15.1; ``faiss-gpu`` on GPU machines).
- ``"faiss-ivf"`` and ``"faiss-hnsw"``: the same global search in an approximate index (:func:`build_index`), for
  pools where exact search is too slow. IVF-Flat: ``faiss_nlist`` lists (default ``4 sqrt(N)``: 16,500 at 17M),
  spherical k-means on ``40 x nlist`` sampled rows, ``faiss_nprobe`` (32) lists scanned per query; HNSW: ``hnsw_m``
  (32) links per node, ``hnsw_ef_construction`` (80), ``hnsw_ef_search`` (128). Both hold every CLIP vector (HNSW
  also ``2 M`` links per row). Their recall against exact search is measured on ``faiss_recall_sample`` (1,000)
  random queries (:func:`index_recall`: recall@k, and of the exact neighbours above the CLIP threshold, the pairs
  mining keeps) and written to the mine summary, so a run says what the approximation lost.

With ``faiss_device="auto"`` (default) the flat and IVF indexes, and the IVF's k-means, go on the GPU(s) when
faiss has GPU support (``faiss.get_num_gpus() > 0``), sharded across GPUs; HNSW and range search (``faiss_k=0``)
have no faiss GPU implementation and stay on the CPU. ``"gpu"`` requires a GPU, ``"cpu"`` never uses one.

Both compare only CLIP vectors in the search; DINOv2 similarities are computed for the pairs above the CLIP
threshold. Then:

1. **Duplicates.** Two images are duplicates when their files have the same SHA-256, or when they are near
   duplicates (CLIP > ``dup_clip`` 0.995 and DINOv2 > ``dup_dino`` 0.95, links found by the same search). Each group
   of duplicates keeps its first image in pool order; a pair whose images are duplicates of each other is dropped,
   and pairs that differ only by a duplicate (A-B and A'-B when A' copies A) are merged into one, keeping the
   highest CLIP similarity. (Web-scale pools such as LAION hold many copies of one picture.)
2. **One pair per image** (``one_pair_per_image``): greedily, by decreasing CLIP similarity (ties: lower DINOv2
   similarity first, then pool order), a pair is kept when neither image is in a kept pair.

Pairs are written sorted by (image a, image b) in pool order, image a first, to ``DIR/mine/pairs.jsonl``; each has
a stable id (``vtc-`` + 16 hex digits of SHA-256 of the two image ids) so that labels and records survive a
re-mining. ``DIR/mine/summary.json`` holds the settings, the counts at each step and the per-source counts (a
pair's source is the source of its images, ``a+b`` when they differ).

Cost at the paper's scale (``bench/mine_speed.py``)
---------------------------------------------------
Measured with one thread on 2 shared CPU cores (OpenBLAS, faiss-cpu 1.15.1), 768-d CLIP vectors around 1,000
random centres with 1% planted near pairs (``--clusters 1000``): both exact searches evaluate about 2-4 x 10^7
pairs per second, so their cost is the number of pairs they compare.

==================  ===============  ==================  ==============================================
N images            within batches   faiss flat, global  memory
==================  ===============  ==================  ==============================================
10^5                4.3 s            4.1 min             batch 33 MiB; faiss index 0.3 GiB
10^6                43 s             8.9 h               batch 33 MiB; faiss index 2.9 GiB
17 x 10^6 (est.)    12 min           107 days            batch 33 MiB; faiss index 49 GiB (N x 768 x 4)
==================  ===============  ==================  ==============================================

Within batches compares ``N (B - 1) / 2`` pairs (1.7 x 10^10 at 17M), linear in N; an exact global search compares
``N (N - 1) / 2`` (1.4 x 10^14), about ``N / B`` = 8,300 times more at 17M, and holds every CLIP vector in memory.
At 17M the exact global search needs a GPU (faiss-gpu; 4.4 x 10^17 FLOP, about 2 h at a sustained 30 TFLOP/s FP32:
an estimate, not measured here) or an approximate index (``faiss-ivf``, ``faiss-hnsw``). The batch search reads
the embeddings through mmap: 17M images take 49 GiB (CLIP, 768-d) + 65 GiB (DINOv2-L, 1024-d) of float32 on disk.
Planted near pairs show what the batches miss: the batch search found 0.3-1.5% of them (about ``B / N``), the
global searches all.

The approximate indexes with their defaults, same vectors and thread; recall against exact search on 1,000 random
queries (recall@10 / of the exact neighbours above 0.95), speed-up over the exact flat search per query and for
the whole pool (build included):

===================  ==========  ==============  ==========================  ====================================
N x dim              index       build           ms per query (speed-up)     recall@10 / above threshold (n)
===================  ==========  ==============  ==========================  ====================================
10^5 x 768           IVF         12.5 s          0.72 (3.4x; pool 2.9x)      1.000 / 1.000 (21)
10^5 x 768           HNSW        86 s            0.85 (2.9x; pool 1.4x)      1.000 / 1.000 (21)
10^6 x 128           IVF         50 s            0.38 (10x; pool 8.8x)       1.000 / 1.000 (18)
===================  ==========  ==============  ==========================  ====================================

(HNSW over 10^6 vectors takes several minutes to build on one thread and was not rerun; an earlier run at
10^6 x 128: 7.7 min build, 0.57 ms per query, recall 0.985 / 0.944.) Scaled to 17M x 768 from 10^5 (IVF build
with N^1.5 and queries with sqrt(N), HNSW with N log N and log N): IVF about 52 h and HNSW about 12 h on one CPU
thread, against 82-107 days for exact search (from 10^5 and 10^6); from 10^6 x 128, IVF 8.5 h against 12.8 days.
IVF compares ~8 x 10^11 pairs at 17M, under a minute of GPU arithmetic. The recall at 17M is not measured here:
a real run records its own (``faiss_recall_sample``). On uniform random vectors (no clusters) recall@10 is low (IVF
0.2-0.4, HNSW 0.7-0.95: the 10 nearest rows are nearly tied at cosine ~0.1) while the near pairs above the
threshold are still all found; the recall the mine summary records is the one of the real embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from harness.errors import ConfigError, MissingPackage
from harness.io import (
    atomic_write_json,
    atomic_write_text,
    dumps_record,
    iter_jsonl,
    read_json,
)

log = logging.getLogger("harness.vtc.mine")

FAISS_PIN = "faiss-cpu==1.15.1"
_PAIR_CHUNK = 1 << 16  # pairs whose DINOv2 similarity is computed at once


class Rows(Protocol):
    """A matrix read by row ranges and by row indices: a NumPy array or :class:`trainers.vtc.embed.ShardedRows`."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...


def _rows(x: Any, start: int, stop: int) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x[start:stop], dtype=np.float32)
    return x.rows(start, stop)


def _take(x: Any, index: np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.asarray(x[index], dtype=np.float32)
    return x.take(index)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


MINING_METHODS = ("batch", "faiss", "faiss-ivf", "faiss-hnsw")
FAISS_DEVICES = ("auto", "cpu", "gpu")
GPU_MAX_K = 2048  # faiss-gpu's largest k and nprobe


@dataclass(frozen=True)
class MineConfig:
    """Mining settings (the CLI's flags); see the module docstring.

    The ``faiss_*`` / ``hnsw_*`` settings apply to the global searches: ``faiss_nlist`` inverted lists
    (0: ``4 sqrt(N)``, at most ``N / 39``) of which ``faiss_nprobe`` are scanned per query (``faiss-ivf``);
    ``hnsw_m`` links per node, ``hnsw_ef_construction`` and ``hnsw_ef_search`` candidate lists when building and
    searching (``faiss-hnsw``); ``faiss_device`` ``auto`` puts the flat and IVF indexes on the GPU(s) when faiss
    has GPU support; ``faiss_recall_sample`` queries (0: none) measure an approximate index's recall against
    exact search (:func:`index_recall`), recorded in the mine summary.
    """

    clip_threshold: float = 0.95
    dino_threshold: float = 0.6
    method: Literal["batch", "faiss", "faiss-ivf", "faiss-hnsw"] = "batch"
    batch_size: int = 2048
    faiss_k: int = 10
    dup_clip: float = 0.995
    dup_dino: float = 0.95
    one_pair_per_image: bool = False
    faiss_nlist: int = 0
    faiss_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    faiss_device: Literal["auto", "cpu", "gpu"] = "auto"
    faiss_recall_sample: int = 1000

    def __post_init__(self) -> None:
        if self.method not in MINING_METHODS:
            raise ConfigError(f"--mining must be one of {', '.join(MINING_METHODS)}, got {self.method!r}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.faiss_k < 0:
            raise ConfigError(f"--faiss-k must be >= 0 (0: range search), got {self.faiss_k}")
        for name in ("clip_threshold", "dino_threshold", "dup_clip", "dup_dino"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a cosine similarity in [-1, 1], got {value}")
        if self.faiss_nlist < 0:
            raise ConfigError(f"--faiss-nlist must be >= 0 (0: 4 sqrt(N)), got {self.faiss_nlist}")
        if self.faiss_nprobe < 1:
            raise ConfigError(f"--faiss-nprobe must be at least 1, got {self.faiss_nprobe}")
        if self.faiss_nlist and self.faiss_nprobe > self.faiss_nlist:
            raise ConfigError(
                f"--faiss-nprobe ({self.faiss_nprobe}) cannot exceed --faiss-nlist "
                f"({self.faiss_nlist}): it is the number of lists scanned per query"
            )
        if self.hnsw_m < 2:
            raise ConfigError(f"--hnsw-m must be at least 2, got {self.hnsw_m}")
        for name in ("hnsw_ef_construction", "hnsw_ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.faiss_device not in FAISS_DEVICES:
            raise ConfigError(f"--faiss-device must be one of {', '.join(FAISS_DEVICES)}, got {self.faiss_device!r}")
        if self.faiss_recall_sample < 0:
            raise ConfigError(f"--faiss-recall-sample must be >= 0 (0: not measured), got {self.faiss_recall_sample}")
        if self.faiss_device == "gpu":
            if self.method == "faiss-hnsw":
                raise ConfigError(
                    "--mining faiss-hnsw runs on the CPU (faiss has no GPU HNSW index); use "
                    "--mining faiss-ivf or faiss on the GPU, or --faiss-device auto"
                )
            if self.method.startswith("faiss") and self.faiss_k == 0:
                raise ConfigError(
                    "--faiss-k 0 (range search) has no GPU implementation in faiss; give --faiss-k N "
                    "or --faiss-device cpu"
                )
            if self.faiss_k + 1 > GPU_MAX_K or (self.method == "faiss-ivf" and self.faiss_nprobe > GPU_MAX_K):
                raise ConfigError(
                    f"faiss-gpu searches at most {GPU_MAX_K} neighbours and lists; lower --faiss-k "
                    "/ --faiss-nprobe or use --faiss-device cpu"
                )

    @property
    def approximate(self) -> bool:
        """Whether the global search is approximate (IVF or HNSW), so that its recall is worth measuring."""
        return self.method in ("faiss-ivf", "faiss-hnsw")


@dataclass
class PairArrays:
    """Pairs of row indices ``i < j`` with their CLIP and DINOv2 cosine similarities (parallel arrays)."""

    i: np.ndarray
    j: np.ndarray
    clip: np.ndarray
    dino: np.ndarray

    @classmethod
    def empty(cls) -> PairArrays:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: Sequence[PairArrays]) -> PairArrays:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("i", "j", "clip", "dino")))

    def __len__(self) -> int:
        return len(self.i)

    def select(self, mask: np.ndarray) -> PairArrays:
        return PairArrays(self.i[mask], self.j[mask], self.clip[mask], self.dino[mask])

    def sorted(self) -> PairArrays:
        order = np.lexsort((self.j, self.i))
        return self.select(order)

    def as_tuples(self) -> list[tuple[int, int]]:
        return list(zip(self.i.tolist(), self.j.tolist()))


@dataclass
class SearchResult:
    """What a search found: candidate pairs (both thresholds), near-duplicate links, and how much it compared."""

    candidates: PairArrays
    duplicates: PairArrays
    compared: int = 0
    above_clip: int = 0


def _dino_sims(dino: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), _PAIR_CHUNK):
        a, b = _take(dino, i[s : s + _PAIR_CHUNK]), _take(dino, j[s : s + _PAIR_CHUNK])
        out[s : s + _PAIR_CHUNK] = np.einsum("nd,nd->n", a, b)
    return out


def _classify(
    dino: Any, i: np.ndarray, j: np.ndarray, clip: np.ndarray, config: MineConfig, result: SearchResult
) -> None:
    """Split pairs already above min(clip threshold, dup_clip) into candidates and near-duplicate links."""
    if len(i) == 0:
        return
    d = _dino_sims(dino, i, j)
    dup = (clip > config.dup_clip) & (d > config.dup_dino)
    above = clip > config.clip_threshold
    result.above_clip += int(above.sum())
    cand = above & (d < config.dino_threshold) & ~dup
    result.candidates = PairArrays.concat([result.candidates, PairArrays(i[cand], j[cand], clip[cand], d[cand])])
    result.duplicates = PairArrays.concat([result.duplicates, PairArrays(i[dup], j[dup], clip[dup], d[dup])])


def search_within_batches(clip: Any, dino: Any, config: MineConfig, *, progress: bool = False) -> SearchResult:
    """The paper's search: every pair inside each batch of ``config.batch_size`` consecutive rows, none across."""
    from tqdm import tqdm

    n = len(clip)
    floor = min(config.clip_threshold, config.dup_clip)
    result = SearchResult(PairArrays.empty(), PairArrays.empty())
    starts = range(0, n, config.batch_size)
    for start in tqdm(starts, desc="mine (batches)", unit="batch", file=sys.stderr, disable=None if progress else True):
        block = _rows(clip, start, min(start + config.batch_size, n))
        m = len(block)
        sims = block @ block.T
        a, b = np.nonzero(sims > floor)  # sparse: cheaper than masking the upper triangle first
        upper = a < b
        a, b = a[upper], b[upper]
        result.compared += m * (m - 1) // 2
        _classify(
            dino, a.astype(np.int64) + start, b.astype(np.int64) + start, sims[a, b].astype(np.float32), config, result
        )
    return result


def import_faiss() -> Any:
    """The faiss module, or a :class:`ConfigError` saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingPackage(
            "faiss",
            "--mining faiss (--mining batch needs nothing extra; faiss-gpu on a CUDA machine)",
            FAISS_PIN,
            detail=str(exc),
        ) from None
    return faiss


def faiss_gpus(faiss: Any, device: str = "auto") -> int:
    """How many GPUs the faiss indexes go on: 0 on the CPU (``device="cpu"``, a CPU-only faiss, no GPU)."""
    if device == "cpu":
        return 0
    count = getattr(faiss, "get_num_gpus", lambda: 0)()
    if device == "gpu" and count < 1:
        raise ConfigError(
            "--faiss-device gpu: this faiss has no GPU support or sees no GPU (install faiss-gpu, "
            "or use --faiss-device auto)"
        )
    return int(count)


def _to_gpus(faiss: Any, index: Any) -> Any:
    """``index`` copied onto all GPUs, sharded (each GPU holds 1/G of the vectors) when faiss offers it."""
    options = getattr(faiss, "GpuMultipleClonerOptions", None)
    co = None
    if options is not None:
        co = options()
        co.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=co)


def ivf_lists(n: int, config: MineConfig) -> int:
    """The number of IVF lists: ``config.faiss_nlist``, or ``4 sqrt(n)`` capped so each list has 39 training
    vectors (faiss's minimum), at least 1."""
    if config.faiss_nlist:
        return max(1, min(config.faiss_nlist, n))
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def build_index(clip: Any, config: MineConfig, *, faiss: Any = None, add_chunk: int = 16384, seed: int = 0) -> Any:
    """The inner-product faiss index of ``config.method`` over all CLIP rows (unit norm: inner product = cosine).

    ``faiss``: ``IndexFlatIP`` (exact). ``faiss-ivf``: ``IndexIVFFlat`` with :func:`ivf_lists` lists, spherical
    k-means trained on ``40 x nlist`` rows drawn at random (all rows when fewer), ``nprobe`` lists scanned per
    query. ``faiss-hnsw``: ``IndexHNSWFlat`` (``hnsw_m``, ``hnsw_ef_construction``, ``hnsw_ef_search``), CPU
    only. The flat and IVF indexes go on the GPU(s) (:func:`faiss_gpus`), the IVF's k-means too.
    """
    faiss = faiss or import_faiss()
    n, dim = clip.shape
    # HNSW has no GPU index, range search (faiss_k=0) no GPU implementation
    gpus = 0 if config.method == "faiss-hnsw" or config.faiss_k == 0 else faiss_gpus(faiss, config.faiss_device)
    if config.method == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.method == "faiss-ivf":
        nlist = ivf_lists(n, config)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True
        index.cp.seed = seed
        if gpus:  # k-means assignments on the GPU(s)
            index.clustering_index = _to_gpus(faiss, faiss.IndexFlatIP(dim))
        size = min(n, 40 * nlist)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else np.arange(n)
        index.train(_take(clip, rows) if size < n else _rows(clip, 0, n))
        index.nprobe = min(config.faiss_nprobe, nlist)
    else:
        index = faiss.IndexFlatIP(dim)
    if gpus:
        index = _to_gpus(faiss, index)
        if config.method == "faiss-ivf":
            with contextlib.suppress(AttributeError):
                faiss.GpuParameterSpace().set_index_parameter(
                    index, "nprobe", min(config.faiss_nprobe, ivf_lists(n, config))
                )
    for start in range(0, n, add_chunk):
        index.add(_rows(clip, start, min(start + add_chunk, n)))
    return index


def _search(index: Any, x: np.ndarray, k: int, floor: float, faiss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lims, sims, labels) of a range search above ``floor`` (``k == 0``) or of a k-NN search (``lims`` then
    counts ``k`` per query)."""
    if k == 0:
        lims, sims, labels = index.range_search(x, floor)
        return np.asarray(lims, np.int64), sims, labels
    sims, labels = index.search(x, k)
    return np.arange(0, len(x) * k + 1, k, dtype=np.int64), sims.reshape(-1), labels.reshape(-1)


def _distance_count(faiss: Any, method: str) -> int | None:
    stats = {"faiss-ivf": "indexIVF_stats", "faiss-hnsw": "hnsw_stats"}.get(method)
    cvar = getattr(faiss, "cvar", None)
    if stats is None or cvar is None or not hasattr(cvar, stats):
        return None
    return int(getattr(cvar, stats).ndis)


def _reset_distance_count(faiss: Any, method: str) -> None:
    stats = {"faiss-ivf": "indexIVF_stats", "faiss-hnsw": "hnsw_stats"}.get(method)
    cvar = getattr(faiss, "cvar", None)
    if stats is not None and cvar is not None and hasattr(cvar, stats):
        getattr(cvar, stats).reset()


def search_faiss(
    clip: Any,
    dino: Any,
    config: MineConfig,
    *,
    progress: bool = False,
    query_chunk: int = 16384,
    queries: np.ndarray | None = None,
    index: Any = None,
) -> SearchResult:
    """Global search: each row's ``faiss_k`` nearest CLIP neighbours (or, with ``faiss_k=0``, all above the CLIP
    threshold) in the index of ``config.method`` (:func:`build_index`: exact flat, IVF or HNSW; or ``index``, one
    built already). ``queries`` restricts the search to some rows (the benchmark). ``compared`` counts the
    similarities evaluated (for IVF and HNSW faiss's own count on the CPU, else ``queries x N x nprobe / nlist``
    for IVF)."""
    from tqdm import tqdm

    faiss = import_faiss()
    n, _ = clip.shape
    floor = min(config.clip_threshold, config.dup_clip)
    if index is None:
        index = build_index(clip, config, faiss=faiss)
    result = SearchResult(PairArrays.empty(), PairArrays.empty())
    query_rows = np.arange(n, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    found_i, found_j, found_s = [], [], []
    k = min(config.faiss_k + 1, n) if config.faiss_k else 0  # + 1: a row finds itself
    _reset_distance_count(faiss, config.method)
    for s in tqdm(
        range(0, len(query_rows), query_chunk),
        desc=f"mine ({config.method})",
        unit="chunk",
        file=sys.stderr,
        disable=None if progress else True,
    ):
        rows = query_rows[s : s + query_chunk]
        x = _take(clip, rows) if queries is not None else _rows(clip, int(rows[0]), int(rows[-1]) + 1)
        lims, sims, labels = _search(index, x, k, floor, faiss)
        q = np.repeat(rows, np.diff(lims))
        keep = (labels >= 0) & (labels != q) & (sims > floor)
        q, other, sim = q[keep], labels[keep].astype(np.int64), sims[keep].astype(np.float32)
        found_i.append(np.minimum(q, other))
        found_j.append(np.maximum(q, other))
        found_s.append(sim)
    counted = _distance_count(faiss, config.method)
    if not config.approximate:  # a flat index compares each query with every row
        result.compared = len(query_rows) * n
    elif counted is not None and counted > 0:
        result.compared = counted
    else:  # on the GPU faiss counts nothing: the IVF's expected share
        nlist = ivf_lists(n, config)
        result.compared = int(len(query_rows) * n * min(config.faiss_nprobe, nlist) / nlist)
    if found_i:
        i, j, sim = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
        key = i * n + j
        _, first = np.unique(key, return_index=True)  # a pair found from both of its images counts once
        _classify(dino, i[first], j[first], sim[first], config, result)
    return result


def exact_neighbours(clip: Any, queries: np.ndarray, k: int, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows (inner product) of each query row, itself excluded: ``(sims, labels)``, both
    ``[len(queries), k]``, best first. Reads the pool in chunks (no second copy of it in memory)."""
    queries = np.asarray(queries, dtype=np.int64)
    n = len(clip)
    k = min(k, n - 1)
    x = _take(clip, queries)
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_l = np.full((len(queries), k), -1, np.int64)
    for start in range(0, n, chunk):
        block = _rows(clip, start, min(start + chunk, n))
        sims = x @ block.T
        own = (queries >= start) & (queries < start + len(block))
        sims[np.nonzero(own)[0], queries[own] - start] = -np.inf  # not its own neighbour
        labels = np.broadcast_to(np.arange(start, start + len(block)), sims.shape)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_l = np.concatenate([best_l, labels], axis=1)
        top = (
            np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            if all_s.shape[1] > k
            else np.broadcast_to(np.arange(all_s.shape[1]), (len(queries), all_s.shape[1]))
        )
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_l = np.take_along_axis(all_l, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_l, order, axis=1)


def index_recall(
    clip: Any, config: MineConfig, *, index: Any = None, sample: int | None = None, k: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Recall of the index of ``config.method`` against exact search on ``sample`` random query rows (default
    ``config.faiss_recall_sample``).

    ``recall_at_k``: the share of each query's exact ``k`` nearest neighbours (``k`` default ``config.faiss_k``,
    10 for a range search; the query itself excluded) that the index returns among its ``k``. ``recall_above``:
    the same restricted to the exact neighbours above the CLIP floor (``min(clip_threshold, dup_clip)``), the
    ones mining keeps; ``None`` when the sample has none. ``index``: one built already (else built here)."""
    faiss = import_faiss()
    n = len(clip)
    k = k or config.faiss_k or 10
    k = min(k, n - 1)
    sample = config.faiss_recall_sample if sample is None else sample
    q = min(max(sample, 1), n)
    queries = np.sort(np.random.default_rng(seed).choice(n, size=q, replace=False))
    floor = min(config.clip_threshold, config.dup_clip)
    t0 = time.perf_counter()
    exact_s, exact_l = exact_neighbours(clip, queries, k)
    exact_seconds = time.perf_counter() - t0
    if index is None:
        index = build_index(clip, config, faiss=faiss)
    t0 = time.perf_counter()
    _, labels = index.search(_take(clip, queries), k + 1)
    approx_seconds = time.perf_counter() - t0
    hits = hits_above = total_above = 0
    for r, row in enumerate(queries.tolist()):
        got = [int(x) for x in labels[r] if x >= 0 and x != row][:k]
        got_set = set(got)
        truth = exact_l[r].tolist()
        hits += sum(1 for t in truth if t in got_set)
        above = [t for t, s in zip(truth, exact_s[r].tolist()) if s > floor]
        total_above += len(above)
        hits_above += sum(1 for t in above if t in got_set)
    return {
        "method": config.method,
        "queries": q,
        "k": k,
        "recall_at_k": hits / (q * k) if q * k else None,
        "neighbours_above": total_above,
        "recall_above": hits_above / total_above if total_above else None,
        "exact_seconds": exact_seconds,
        "index_seconds": approx_seconds,
    }


RECALL_WARNING = 0.95  # below this recall of the neighbours above the CLIP floor, the mine stage warns


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def log_recall(recall: dict[str, Any]) -> None:
    """Log :func:`index_recall`'s figures; a warning when the index missed more than 5% of the exact neighbours
    above the CLIP floor (the pairs mining keeps), naming the flag that trades speed for recall."""
    what = (
        f"mine: {recall['method']} recall against exact search on {recall['queries']} queries: "
        f"recall@{recall['k']} {_share(recall['recall_at_k'])}, above the CLIP floor "
        f"{_share(recall['recall_above'])} ({recall['neighbours_above']} exact neighbours); per query "
        f"{1e3 * recall['index_seconds'] / max(recall['queries'], 1):.3f} ms against "
        f"{1e3 * recall['exact_seconds'] / max(recall['queries'], 1):.3f} ms exact"
    )
    above = recall["recall_above"]
    if above is not None and above < RECALL_WARNING:
        knob = "--faiss-nprobe" if recall["method"] == "faiss-ivf" else "--hnsw-ef-search"
        log.warning("%s: pairs are being missed; raise %s, or use --mining faiss (exact)", what, knob)
    else:
        log.info("%s", what)


# --------------------------------------------------------------------------------------------------------------------
# duplicates and one pair per image


def duplicate_representatives(n: int, links: PairArrays, sha256: Sequence[str] | None = None) -> np.ndarray:
    """For each row, the first row (in pool order) of its group of duplicates: same file hash or near-duplicate
    links (union-find)."""
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:  # path compression
            parent[x], x = root, int(parent[x])
        return root

    touched: set[int] = set()

    def union(a: int, b: int) -> None:
        touched.update((a, b))
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    if sha256 is not None:
        first: dict[str, int] = {}
        for row, digest in enumerate(sha256):
            if digest in first:
                union(first[digest], row)
            else:
                first[digest] = row
    for a, b in links.as_tuples():
        union(a, b)
    rep = np.arange(n, dtype=np.int64)
    for x in touched:  # rows in no group are their own representative
        rep[x] = find(x)
    return rep


def merge_duplicates(pairs: PairArrays, rep: np.ndarray) -> tuple[PairArrays, int]:
    """Pairs mapped onto their groups' representatives: pairs inside one group dropped, pairs joining the same two
    groups merged (the highest CLIP similarity kept, its own rows and similarities). Returns (pairs, dropped)."""
    if len(pairs) == 0:
        return pairs, 0
    ri, rj = rep[pairs.i], rep[pairs.j]
    lo, hi = np.minimum(ri, rj), np.maximum(ri, rj)
    keep = lo != hi
    order = np.lexsort((pairs.j, pairs.i, -pairs.clip))  # best first, ties in pool order
    order = order[keep[order]]
    n = int(rep.max()) + 1 if len(rep) else 1
    _, first = np.unique((lo * n + hi)[order], return_index=True)
    chosen = np.sort(order[first])
    return pairs.select(chosen), len(pairs) - len(chosen)


def one_pair_per_image(pairs: PairArrays) -> PairArrays:
    """Greedy: by decreasing CLIP similarity (ties: lower DINOv2 similarity, then pool order), keep a pair when
    neither of its images is in a kept pair."""
    order = np.lexsort((pairs.j, pairs.i, pairs.dino, -pairs.clip))
    used: set[int] = set()
    kept = []
    for k in order.tolist():
        a, b = int(pairs.i[k]), int(pairs.j[k])
        if a in used or b in used:
            continue
        used.update((a, b))
        kept.append(k)
    return pairs.select(np.sort(np.array(kept, dtype=np.int64)))


# --------------------------------------------------------------------------------------------------------------------
# the stage


@dataclass(frozen=True)
class MinedPair:
    """One CLIP-blind pair: two images (a before b in pool order), their similarities and their source."""

    pair_id: str
    id_a: str
    id_b: str
    clip: float
    dino: float
    source_a: str
    source_b: str

    @property
    def source(self) -> str:
        return self.source_a if self.source_a == self.source_b else "+".join(sorted((self.source_a, self.source_b)))

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "source": self.source}


def pair_id(id_a: str, id_b: str) -> str:
    """``vtc-`` + 16 hex digits of SHA-256 of the two image ids: stable across runs and mining methods."""
    return "vtc-" + hashlib.sha256(f"{id_a}\0{id_b}".encode()).hexdigest()[:16]


@dataclass
class MineResult:
    """The kept pairs and the counts of each step."""

    pairs: list[MinedPair]
    counts: dict[str, int] = field(default_factory=dict)
    per_source: dict[str, int] = field(default_factory=dict)
    recall: dict[str, Any] | None = None  # an approximate index's recall against exact search (index_recall)


def mine(
    clip: Any,
    dino: Any,
    config: MineConfig,
    *,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    sha256: Sequence[str] | None = None,
    progress: bool = False,
) -> MineResult:
    """Mine pairs from unit-norm CLIP and DINOv2 rows (NumPy arrays or sharded rows), ``ids`` / ``sources`` /
    ``sha256`` per row (defaults: the row numbers, one source, no hashes)."""
    n = len(clip)
    if len(dino) != n:
        raise ConfigError(f"{n} CLIP rows but {len(dino)} DINOv2 rows")
    ids = [str(x) for x in range(n)] if ids is None else list(ids)
    sources = ["images"] * n if sources is None else list(sources)
    recall = None
    if config.method.startswith("faiss"):
        index = build_index(clip, config)
        found = search_faiss(clip, dino, config, progress=progress, index=index)
        if config.approximate and config.faiss_recall_sample and n > 1:
            recall = index_recall(clip, config, index=index)
            log_recall(recall)
        del index
    else:
        found = search_within_batches(clip, dino, config, progress=progress)
    rep = duplicate_representatives(n, found.duplicates, sha256)
    pairs, dropped_dup = merge_duplicates(found.candidates, rep)
    before_one = len(pairs)
    if config.one_pair_per_image:
        pairs = one_pair_per_image(pairs)
    pairs = pairs.sorted()
    mined = [
        MinedPair(
            pair_id(ids[a], ids[b]), ids[a], ids[b], round(float(c), 6), round(float(d), 6), sources[a], sources[b]
        )
        for a, b, c, d in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.clip.tolist(), pairs.dino.tolist())
    ]
    counts = {
        "images": n,
        "compared": int(found.compared),
        "above_clip_threshold": int(found.above_clip),
        "candidates": len(found.candidates),
        "duplicate_images": int((rep != np.arange(n)).sum()),
        "dropped_duplicates": dropped_dup,
        "dropped_one_pair_per_image": before_one - len(pairs),
        "pairs": len(mined),
    }
    per_source = dict(sorted(Counter(p.source for p in mined).items()))
    return MineResult(mined, counts, per_source, recall)


def read_pairs(out_dir: str | os.PathLike[str]) -> list[MinedPair]:
    """The pairs of ``DIR/mine/pairs.jsonl`` (a :class:`ConfigError` when the mine stage has not run)."""
    path = Path(out_dir) / "mine" / "pairs.jsonl"
    if not path.is_file():
        raise ConfigError(f"no mined pairs at {path}: run `harness build-vtc --stage mine` first")
    fields = ("pair_id", "id_a", "id_b", "clip", "dino", "source_a", "source_b")
    return [MinedPair(*(obj[f] for f in fields)) for _, obj in iter_jsonl(path)]


def run_mine_stage(out_dir: str | os.PathLike[str], config: MineConfig, *, progress: bool = True) -> dict[str, Any]:
    """Mine ``DIR/embed`` into ``DIR/mine``; skipped when the pairs exist for the same settings and embeddings."""
    from trainers.vtc.embed import load_embeddings

    out = Path(out_dir)
    emb = load_embeddings(out)
    mine_dir = out / "mine"
    summary_path = mine_dir / "summary.json"
    settings = {
        **asdict(config),
        "embeddings": read_json(out / "embed" / "manifest.json")["settings"]["ids_sha256"],
        "rows": len(emb.ids),
    }
    if summary_path.is_file() and (mine_dir / "pairs.jsonl").is_file():
        old = read_json(summary_path)
        if old.get("settings") == settings:
            log.info("mine: %d pairs already mined with these settings (%s)", old["counts"]["pairs"], mine_dir)
            if old.get("recall"):
                log_recall(old["recall"])
            return old
    t0 = time.time()
    result = mine(emb.clip, emb.dino, config, ids=emb.ids, sources=emb.sources, sha256=emb.sha256, progress=progress)
    mine_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mine_dir / "pairs.jsonl", "".join(dumps_record(p.to_record()) + "\n" for p in result.pairs))
    summary = {
        "settings": settings,
        "counts": result.counts,
        "per_source": result.per_source,
        "seconds": round(time.time() - t0, 3),
    }
    if result.recall is not None:
        summary["recall"] = result.recall
    atomic_write_json(summary_path, summary)
    log.info("mine: %d pairs from %d images (%s)", len(result.pairs), len(emb.ids), config.method)
    return summary


__all__ = [
    "FAISS_DEVICES",
    "FAISS_PIN",
    "MINING_METHODS",
    "MineConfig",
    "MineResult",
    "MinedPair",
    "PairArrays",
    "SearchResult",
    "build_index",
    "duplicate_representatives",
    "exact_neighbours",
    "faiss_gpus",
    "import_faiss",
    "index_recall",
    "ivf_lists",
    "log_recall",
    "merge_duplicates",
    "mine",
    "normalize",
    "one_pair_per_image",
    "pair_id",
    "read_pairs",
    "run_mine_stage",
    "search_faiss",
    "search_within_batches",
]
