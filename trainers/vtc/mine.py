"""Stage 2 of ``harness build-vtc``: mine CLIP-blind pairs, image pairs with CLIP cosine similarity above
``clip_threshold`` (0.95) and DINOv2 cosine similarity below ``dino_threshold`` (0.6), both strict.

Two search strategies (``method``):

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
Measured on 2 shared CPU cores (OpenBLAS, faiss-cpu 1.15.1), random 768-d CLIP vectors, two runs of the default
bench (the spread is other load on the machine): both searches evaluate about 3-6 x 10^7 pairs per second, so
their cost is the number of pairs they compare.

==================  ===============  ==================  ==============================================
N images            within batches   faiss flat, global  memory
==================  ===============  ==================  ==============================================
10^5                2-4 s            1-5 min             batch 33 MiB; faiss index 0.3 GiB
10^6                17-35 s          5-10 h              batch 32 MiB; faiss index 2.9 GiB
17 x 10^6 (est.)    5-10 min         60-115 days         batch 32 MiB; faiss index 49 GiB (N x 768 x 4)
==================  ===============  ==================  ==============================================

Within batches compares ``N (B - 1) / 2`` pairs (1.7 x 10^10 at 17M), linear in N; an exact global search compares
``N (N - 1) / 2`` (1.4 x 10^14), about ``N / B`` = 8,300 times more at 17M, and holds every CLIP vector in memory.
At 17M the exact global search needs a GPU (faiss-gpu; 4.4 x 10^17 FLOP, a few hours at an H100's FP32 rate: an
estimate, not measured here) or an approximate index (IVF/HNSW, not implemented: ``--mining faiss`` is exact). The
batch search reads the embeddings through mmap: 17M images take 49 GiB (CLIP, 768-d) + 65 GiB (DINOv2-L, 1024-d)
of float32 on disk. Planted near pairs show what the batches miss: the batch search found 1.4-2.1% of them (about
``B / N``), the global search all.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class MineConfig:
    """Mining settings (the CLI's flags); see the module docstring."""

    clip_threshold: float = 0.95
    dino_threshold: float = 0.6
    method: Literal["batch", "faiss"] = "batch"
    batch_size: int = 2048
    faiss_k: int = 10
    dup_clip: float = 0.995
    dup_dino: float = 0.95
    one_pair_per_image: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("batch", "faiss"):
            raise ConfigError(f"--mining must be batch or faiss, got {self.method!r}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.faiss_k < 0:
            raise ConfigError(f"--faiss-k must be >= 0 (0: range search), got {self.faiss_k}")
        for name in ("clip_threshold", "dino_threshold", "dup_clip", "dup_dino"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a cosine similarity in [-1, 1], got {value}")


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
        a, b = _take(dino, i[s:s + _PAIR_CHUNK]), _take(dino, j[s:s + _PAIR_CHUNK])
        out[s:s + _PAIR_CHUNK] = np.einsum("nd,nd->n", a, b)
    return out


def _classify(dino: Any, i: np.ndarray, j: np.ndarray, clip: np.ndarray, config: MineConfig,
              result: SearchResult) -> None:
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
    for start in tqdm(starts, desc="mine (batches)", unit="batch", file=sys.stderr,
                      disable=None if progress else True):
        block = _rows(clip, start, min(start + config.batch_size, n))
        m = len(block)
        sims = block @ block.T
        a, b = np.nonzero(sims > floor)  # sparse: cheaper than masking the upper triangle first
        upper = a < b
        a, b = a[upper], b[upper]
        result.compared += m * (m - 1) // 2
        _classify(dino, a.astype(np.int64) + start, b.astype(np.int64) + start, sims[a, b].astype(np.float32),
                  config, result)
    return result


def import_faiss() -> Any:
    """The faiss module, or a :class:`ConfigError` saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingPackage("faiss", "--mining faiss (--mining batch needs nothing extra; faiss-gpu on a CUDA "
                             "machine)", FAISS_PIN, detail=str(exc)) from None
    return faiss


def search_faiss(clip: Any, dino: Any, config: MineConfig, *, progress: bool = False,
                 query_chunk: int = 16384, queries: np.ndarray | None = None) -> SearchResult:
    """Global search: each row's ``faiss_k`` nearest CLIP neighbours (or, with ``faiss_k=0``, all above the CLIP
    threshold) in an exact inner-product index. ``queries`` restricts the search to some rows (the benchmark)."""
    from tqdm import tqdm

    faiss = import_faiss()
    n, dim = clip.shape
    floor = min(config.clip_threshold, config.dup_clip)
    index = faiss.IndexFlatIP(dim)
    for start in range(0, n, query_chunk):
        index.add(_rows(clip, start, min(start + query_chunk, n)))
    result = SearchResult(PairArrays.empty(), PairArrays.empty())
    query_rows = np.arange(n, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    found_i, found_j, found_s = [], [], []
    for s in tqdm(range(0, len(query_rows), query_chunk), desc="mine (faiss)", unit="chunk", file=sys.stderr,
                  disable=None if progress else True):
        rows = query_rows[s:s + query_chunk]
        x = _take(clip, rows) if queries is not None else _rows(clip, int(rows[0]), int(rows[-1]) + 1)
        if config.faiss_k == 0:
            lims, sims, labels = index.range_search(x, floor)
            q = np.repeat(rows, np.diff(lims).astype(np.int64))
        else:
            k = min(config.faiss_k + 1, n)  # + 1: a row finds itself
            sims, labels = index.search(x, k)
            q = np.repeat(rows, k)
            sims, labels = sims.reshape(-1), labels.reshape(-1)
        result.compared += len(rows) * n
        keep = (labels >= 0) & (labels != q) & (sims > floor)
        q, other, sim = q[keep], labels[keep].astype(np.int64), sims[keep].astype(np.float32)
        found_i.append(np.minimum(q, other))
        found_j.append(np.maximum(q, other))
        found_s.append(sim)
    if found_i:
        i, j, sim = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
        key = i * n + j
        _, first = np.unique(key, return_index=True)  # a pair found from both of its images counts once
        _classify(dino, i[first], j[first], sim[first], config, result)
    return result


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


def mine(clip: Any, dino: Any, config: MineConfig, *, ids: Sequence[str] | None = None,
         sources: Sequence[str] | None = None, sha256: Sequence[str] | None = None,
         progress: bool = False) -> MineResult:
    """Mine pairs from unit-norm CLIP and DINOv2 rows (NumPy arrays or sharded rows), ``ids`` / ``sources`` /
    ``sha256`` per row (defaults: the row numbers, one source, no hashes)."""
    n = len(clip)
    if len(dino) != n:
        raise ConfigError(f"{n} CLIP rows but {len(dino)} DINOv2 rows")
    ids = [str(x) for x in range(n)] if ids is None else list(ids)
    sources = ["images"] * n if sources is None else list(sources)
    if config.method == "faiss":
        found = search_faiss(clip, dino, config, progress=progress)
    else:
        found = search_within_batches(clip, dino, config, progress=progress)
    rep = duplicate_representatives(n, found.duplicates, sha256)
    pairs, dropped_dup = merge_duplicates(found.candidates, rep)
    before_one = len(pairs)
    if config.one_pair_per_image:
        pairs = one_pair_per_image(pairs)
    pairs = pairs.sorted()
    mined = [MinedPair(pair_id(ids[a], ids[b]), ids[a], ids[b], round(float(c), 6), round(float(d), 6),
                       sources[a], sources[b])
             for a, b, c, d in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.clip.tolist(), pairs.dino.tolist())]
    counts = {"images": n, "compared": int(found.compared), "above_clip_threshold": int(found.above_clip),
              "candidates": len(found.candidates), "duplicate_images": int((rep != np.arange(n)).sum()),
              "dropped_duplicates": dropped_dup, "dropped_one_pair_per_image": before_one - len(pairs),
              "pairs": len(mined)}
    per_source = dict(sorted(Counter(p.source for p in mined).items()))
    return MineResult(mined, counts, per_source)


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
    settings = {**asdict(config), "embeddings": read_json(out / "embed" / "manifest.json")["settings"]["ids_sha256"],
                "rows": len(emb.ids)}
    if summary_path.is_file() and (mine_dir / "pairs.jsonl").is_file():
        old = read_json(summary_path)
        if old.get("settings") == settings:
            log.info("mine: %d pairs already mined with these settings (%s)", old["counts"]["pairs"], mine_dir)
            return old
    t0 = time.time()
    result = mine(emb.clip, emb.dino, config, ids=emb.ids, sources=emb.sources, sha256=emb.sha256,
                  progress=progress)
    mine_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mine_dir / "pairs.jsonl", "".join(dumps_record(p.to_record()) + "\n" for p in result.pairs))
    summary = {"settings": settings, "counts": result.counts, "per_source": result.per_source,
               "seconds": round(time.time() - t0, 3)}
    atomic_write_json(summary_path, summary)
    log.info("mine: %d pairs from %d images (%s)", len(result.pairs), len(emb.ids), config.method)
    return summary


__all__ = [
    "FAISS_PIN", "MineConfig", "MineResult", "MinedPair", "PairArrays", "SearchResult", "duplicate_representatives",
    "import_faiss", "merge_duplicates", "mine", "normalize", "one_pair_per_image", "pair_id", "read_pairs",
    "run_mine_stage", "search_faiss", "search_within_batches",
]
