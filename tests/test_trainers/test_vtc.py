"""VTC data construction (``trainers.vtc``, ``harness build-vtc``).

- mining on injected embeddings whose similarities are known exactly (thresholds, batch boundaries, duplicates,
  one pair per image, the faiss path when faiss is installed);
- embedding with tiny randomly initialised CLIP and DINOv2 models built here (shapes, determinism, unreadable images,
  resume after a killed shard, settings that changed);
- labelling, the review page and its decisions, and writing, against the local fake OpenAI-compatible server with
  canned replies (malformed JSON, refusals, timeouts, server errors, outputs that break the checks);
- end to end on drawn images: ``harness build-vtc`` into records that ``read_preferences`` accepts and that
  ``harness train --method jompo`` trains on.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai_server import Behaviour, Fail, FakeOpenAIServer, Malformed, Slow

from harness.cli import main
from harness.errors import ConfigError, DataError
from harness.judge_openai import OpenAIJudge
from trainers.data import read_preferences
from trainers.vtc import contrast_types, find_contrast_type
from trainers.vtc.embed import (
    EmbedConfig,
    ImagePool,
    embed_images,
    load_embeddings,
    open_source,
)
from trainers.vtc.label import (
    Label,
    TypeScore,
    choose_type,
    image_data_url,
    parse_label,
    read_labels,
    run_label_stage,
)
from trainers.vtc.mine import (
    MineConfig,
    MinedPair,
    PairArrays,
    merge_duplicates,
    mine,
    one_pair_per_image,
    pair_id,
)
from trainers.vtc.review import apply_decisions, read_decisions, write_review_pages
from trainers.vtc.write import check_written, parse_written, run_write_stage

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:  # pragma: no cover - faiss is optional
    HAVE_FAISS = False

needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed (pip install faiss-cpu)")
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "cyan", "magenta", "brown", "pink", "grey"]


# --------------------------------------------------------------------------------------------------------------------
# injected embeddings


def pair_vectors(spec: list[tuple[float, float] | None], dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """CLIP and DINOv2 rows where row ``2k`` and ``2k + 1`` have exactly the cosines ``spec[k]`` and every other two
    rows are orthogonal (each pair uses its own two axes); ``None`` makes two unrelated rows."""
    n = 2 * len(spec)
    clip, dino = np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32)
    for k, sims in enumerate(spec):
        a, b = 2 * k, 2 * k + 1
        c, d = sims if sims is not None else (0.0, 0.0)
        for matrix, cos in ((clip, c), (dino, d)):
            matrix[a, 2 * k] = 1.0
            matrix[b, 2 * k] = cos
            matrix[b, 2 * k + 1] = math.sqrt(max(0.0, 1 - cos * cos))
    return clip, dino


def cosines(
    clip: np.ndarray, dino: np.ndarray, pairs: list[tuple[int, int, float, float]], dim: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite rows so that each listed (i, j) has the given cosines: i keeps its own axis, j is placed on i's axis
    plus a fresh axis (rows must not be reused across pairs)."""
    axis = int(max(np.nonzero(clip.any(axis=0))[0].max(initial=-1), np.nonzero(dino.any(axis=0))[0].max(initial=-1)))
    for i, j, c, d in pairs:
        for matrix, cos in ((clip, c), (dino, d)):
            base = matrix[i] / np.linalg.norm(matrix[i])
            axis += 1
            fresh = np.zeros(dim, np.float32)
            fresh[axis] = 1.0
            matrix[j] = cos * base + math.sqrt(max(0.0, 1 - cos * cos)) * fresh
    return clip, dino


def found(result) -> set[tuple[str, str]]:
    return {(p.id_a, p.id_b) for p in result.pairs}


def test_thresholds_are_strict_and_both_apply():
    # pairs (0,1) kept; (2,3) CLIP too low; (4,5) DINOv2 too high; (6,7) kept; (8,9) unrelated
    clip, dino = pair_vectors([(0.97, 0.30), (0.94, 0.30), (0.97, 0.70), (0.951, 0.59), None])
    result = mine(clip, dino, MineConfig(batch_size=2048))
    assert found(result) == {("0", "1"), ("6", "7")}
    kept = {(p.id_a, p.id_b): p for p in result.pairs}
    assert kept[("0", "1")].clip == pytest.approx(0.97, abs=1e-5)
    assert kept[("0", "1")].dino == pytest.approx(0.30, abs=1e-5)
    assert result.counts["above_clip_threshold"] == 3 and result.counts["pairs"] == 2
    # the thresholds are flags: loosen DINOv2, tighten CLIP
    result = mine(clip, dino, MineConfig(clip_threshold=0.96, dino_threshold=0.8))
    assert found(result) == {("0", "1"), ("4", "5")}


def test_within_batch_mining_misses_pairs_across_batch_boundaries():
    clip, dino = pair_vectors([None, None, None, None])  # 8 unrelated rows
    clip, dino = cosines(clip, dino, [(0, 1, 0.97, 0.2), (3, 4, 0.98, 0.1), (6, 7, 0.96, 0.3)])
    # batches of 4: [0..3] [4..7]; (3, 4) straddles the boundary
    result = mine(clip, dino, MineConfig(batch_size=4))
    assert found(result) == {("0", "1"), ("6", "7")}
    assert result.counts["compared"] == 2 * 6  # two batches of 4: 6 pairs each
    # one batch holding everything finds all three
    assert found(mine(clip, dino, MineConfig(batch_size=8))) == {("0", "1"), ("3", "4"), ("6", "7")}
    # a batch size that does not divide the pool: [0..2] [3..5] [6, 7] -> all three; batches of 2 cut (3, 4)
    assert found(mine(clip, dino, MineConfig(batch_size=3))) == {("0", "1"), ("3", "4"), ("6", "7")}
    assert found(mine(clip, dino, MineConfig(batch_size=2))) == {("0", "1"), ("6", "7")}


@needs_faiss
def test_faiss_search_finds_pairs_across_batches():
    clip, dino = pair_vectors([None, None, None, None])
    clip, dino = cosines(clip, dino, [(0, 1, 0.97, 0.2), (3, 4, 0.98, 0.1), (6, 7, 0.96, 0.3)])
    for k in (0, 1, 3):  # 0: range search
        result = mine(clip, dino, MineConfig(method="faiss", faiss_k=k))
        assert found(result) == {("0", "1"), ("3", "4"), ("6", "7")}, k
    assert len(mine(clip, dino, MineConfig(method="batch", batch_size=4)).pairs) == 2


@needs_faiss
def test_faiss_equals_an_exhaustive_search_on_random_clusters():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    clip = np.repeat(centres, 5, axis=0) + 0.12 * rng.standard_normal((200, 32)).astype(np.float32)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    dino = rng.standard_normal((200, 16)).astype(np.float32)
    dino /= np.linalg.norm(dino, axis=1, keepdims=True)
    config = MineConfig(clip_threshold=0.97, dino_threshold=0.6)
    exhaustive = mine(clip, dino, replace(config, batch_size=200))  # one batch = every pair
    assert len(exhaustive.pairs) > 20
    assert found(mine(clip, dino, replace(config, method="faiss", faiss_k=0))) == found(exhaustive)
    assert found(mine(clip, dino, replace(config, method="faiss", faiss_k=8))) == found(exhaustive)
    batched = mine(clip, dino, MineConfig(clip_threshold=0.97, batch_size=64))
    assert found(batched) < found(exhaustive)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    clip, dino = pair_vectors([(0.97, 0.3)])
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        mine(clip, dino, MineConfig(method="faiss"))


def test_duplicates_merge_pairs_and_identical_files_drop_them():
    clip, dino = pair_vectors([(0.97, 0.3), None, None])
    # row 2 is a near duplicate of row 0 (CLIP 0.999, DINOv2 0.99), row 3 pairs with row 2 like row 1 with row 0
    clip, dino = cosines(clip, dino, [(0, 2, 0.999, 0.99)])
    clip[3], dino[3] = clip[1], dino[1]  # row 3 = a copy of row 1's embedding
    result = mine(clip, dino, MineConfig())
    # without duplicate handling the pairs 0-1, 0-3, 2-1, 2-3 all pass; the groups {0, 2} and {1, 3} leave one
    assert len(found(result)) == 1, found(result)
    assert result.counts["duplicate_images"] >= 1 and result.counts["dropped_duplicates"] >= 1
    # identical file hashes: rows 4 and 5 are a candidate pair by their embeddings but the same file
    clip2, dino2 = pair_vectors([(0.97, 0.3), (0.97, 0.3)])
    sha = ["a", "b", "c", "c"]
    result = mine(clip2, dino2, MineConfig(), sha256=sha)
    assert found(result) == {("0", "1")}
    # the near-duplicate criterion is a flag: with dup_dino above 0.99 the rows 0 and 2 are distinct images
    result = mine(clip, dino, MineConfig(dup_dino=0.995))
    assert len(found(result)) > 1


def test_merge_duplicates_keeps_the_highest_clip_pair():
    pairs = PairArrays(
        np.array([0, 2]), np.array([1, 1]), np.array([0.96, 0.98], np.float32), np.array([0.2, 0.3], np.float32)
    )
    rep = np.array([0, 1, 0])  # rows 0 and 2 are one image
    merged, dropped = merge_duplicates(pairs, rep)
    assert merged.as_tuples() == [(2, 1)] and dropped == 1


def test_one_pair_per_image_is_greedy_by_clip_similarity():
    # A=0 B=1 C=2 D=3: A-B 0.99, A-C 0.97, C-D 0.96, B-D 0.955
    pairs = PairArrays(
        np.array([0, 0, 2, 1]),
        np.array([1, 2, 3, 3]),
        np.array([0.99, 0.97, 0.96, 0.955], np.float32),
        np.array([0.5, 0.1, 0.2, 0.3], np.float32),
    )
    assert sorted(one_pair_per_image(pairs).as_tuples()) == [(0, 1), (2, 3)]
    # ties on CLIP: the lower DINOv2 similarity wins
    tie = PairArrays(
        np.array([0, 0]), np.array([1, 2]), np.array([0.97, 0.97], np.float32), np.array([0.5, 0.1], np.float32)
    )
    assert one_pair_per_image(tie).as_tuples() == [(0, 2)]
    # through mine(): rows 1 and 2 both hang on row 0 (so 1-2 pairs too); the flag keeps the best pair only
    clip, dino = pair_vectors([None, None])
    clip, dino = cosines(clip, dino, [(0, 1, 0.99, 0.2), (0, 2, 0.97, 0.2)])
    assert found(mine(clip, dino, MineConfig())) == {("0", "1"), ("0", "2"), ("1", "2")}
    assert found(mine(clip, dino, MineConfig(one_pair_per_image=True))) == {("0", "1")}


def test_pairs_carry_ids_sources_and_stable_ids():
    clip, dino = pair_vectors([(0.97, 0.3), (0.97, 0.3)])
    ids = ["coco/a.jpg", "coco/b.jpg", "laion/c.jpg", "imagenet/d.jpg"]
    sources = ["coco", "coco", "laion", "imagenet"]
    result = mine(clip, dino, MineConfig(), ids=ids, sources=sources)
    assert [p.source for p in result.pairs] == ["coco", "imagenet+laion"]
    assert result.per_source == {"coco": 1, "imagenet+laion": 1}
    assert result.pairs[0].pair_id == pair_id("coco/a.jpg", "coco/b.jpg")
    assert result.pairs[0].pair_id.startswith("vtc-") and len(result.pairs[0].pair_id) == 20


def test_mine_config_rejects_bad_settings():
    with pytest.raises(ConfigError):
        MineConfig(method="global")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MineConfig(clip_threshold=1.5)
    with pytest.raises(ConfigError):
        MineConfig(batch_size=1)


def clustered_vectors(n: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """``n`` unit rows around ``clusters`` random centres (Gaussian noise of ``spread`` per coordinate)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@needs_faiss
@pytest.mark.parametrize("method", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_index_recall_is_high_with_the_defaults(method):
    """recall@10 against exact search on 300 sampled queries, 6,000 clustered vectors: the IVF scans 32 of its
    about 150 lists, so the search really is approximate."""
    from trainers.vtc.mine import exact_neighbours, index_recall, ivf_lists

    clip = clustered_vectors(6000, 32, 300, 0.25)
    config = MineConfig(method=method, clip_threshold=0.9)
    assert ivf_lists(len(clip), config) > 4 * config.faiss_nprobe
    recall = index_recall(clip, config, sample=300, seed=1)
    assert recall["queries"] == 300 and recall["k"] == 10
    assert recall["recall_at_k"] >= 0.9, recall
    assert recall["neighbours_above"] > 100 and recall["recall_above"] >= 0.9, recall
    assert index_recall(clip, replace(config, method="faiss"), sample=50)["recall_at_k"] == 1.0
    # the exact reference excludes the query itself and is sorted best first
    sims, labels = exact_neighbours(clip, np.array([0, 5999]), 3, chunk=1000)
    brute = clip[[0, 5999]] @ clip.T
    brute[[0, 1], [0, 5999]] = -np.inf
    assert labels.tolist() == np.argsort(-brute, axis=1)[:, :3].tolist()
    assert np.all(np.diff(sims, axis=1) <= 0)


@needs_faiss
def test_approximate_mining_equals_exact_search_on_an_easy_set():
    """Tight clusters, 102 IVF lists (32 scanned): IVF and HNSW mine the pairs exact search mines, with k neighbours and with a
    range search; the summary's recall is recorded."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((800, 32)).astype(np.float32)
    clip = np.repeat(centres, 5, axis=0) + 0.06 * rng.standard_normal((4000, 32)).astype(np.float32)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)  # 800 clusters of 5: k = 8 reaches every cluster mate
    dino = rng.standard_normal((4000, 16)).astype(np.float32)
    dino /= np.linalg.norm(dino, axis=1, keepdims=True)
    base = MineConfig(clip_threshold=0.97, dino_threshold=0.6)
    for k in (8, 0):
        exact = mine(clip, dino, replace(base, method="faiss", faiss_k=k))
        assert len(exact.pairs) > 500 and exact.recall is None
        for method in ("faiss-ivf", "faiss-hnsw"):
            approx = mine(clip, dino, replace(base, method=method, faiss_k=k, faiss_recall_sample=200))
            assert found(approx) == found(exact), (method, k, len(found(exact) ^ found(approx)))
            assert approx.recall is not None and approx.recall["recall_above"] >= 0.99
            assert approx.counts["compared"] < exact.counts["compared"]  # it did not compare every pair
    off = mine(clip, dino, replace(base, method="faiss-ivf", faiss_recall_sample=0))
    assert off.recall is None


@needs_faiss
def test_faiss_gpu_path_is_used_when_faiss_sees_a_gpu(monkeypatch):
    """With faiss reporting a GPU, the flat and IVF indexes (and the IVF's k-means) are copied to the GPUs; HNSW and
    range search stay on the CPU. Here the copy is a stand-in that keeps the CPU index."""
    import faiss

    from trainers.vtc.mine import build_index

    copied: list[str] = []

    def to_all_gpus(index, co=None, ngpu=-1):
        copied.append(type(index).__name__)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus)
    clip = clustered_vectors(2000, 16, 100, 0.2)
    build_index(clip, MineConfig(method="faiss"))
    assert copied == ["IndexFlatIP"]
    copied.clear()
    index = build_index(clip, MineConfig(method="faiss-ivf"))
    assert copied == ["IndexFlatIP", "IndexIVFFlat"] and index.ntotal == 2000  # k-means assignments, then the index
    copied.clear()
    build_index(clip, MineConfig(method="faiss-hnsw"))
    build_index(clip, MineConfig(method="faiss-ivf", faiss_k=0))
    build_index(clip, MineConfig(method="faiss", faiss_device="cpu"))
    assert copied == []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(ConfigError, match="no GPU support"):
        build_index(clip, MineConfig(method="faiss-ivf", faiss_device="gpu"))


@pytest.mark.parametrize(
    "settings, flag",
    [
        ({"method": "faiss-lsh"}, "--mining"),
        ({"faiss_nprobe": 0}, "--faiss-nprobe"),
        ({"faiss_nlist": -1}, "--faiss-nlist"),
        ({"faiss_nlist": 16, "faiss_nprobe": 32}, "--faiss-nprobe"),
        ({"hnsw_m": 1}, "--hnsw-m"),
        ({"hnsw_ef_search": 0}, "--hnsw-ef-search"),
        ({"hnsw_ef_construction": 0}, "--hnsw-ef-construction"),
        ({"faiss_device": "tpu"}, "--faiss-device"),
        ({"faiss_recall_sample": -5}, "--faiss-recall-sample"),
        ({"method": "faiss-hnsw", "faiss_device": "gpu"}, "faiss-hnsw"),
        ({"method": "faiss-ivf", "faiss_device": "gpu", "faiss_k": 0}, "--faiss-k 0"),
        ({"method": "faiss", "faiss_device": "gpu", "faiss_k": 5000}, "--faiss-k"),
    ],
)
def test_bad_approximate_index_settings_are_one_line_config_errors(settings, flag):
    with pytest.raises(ConfigError) as err:
        MineConfig(**settings)
    assert flag in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# images and tiny encoders


def draw(colour: str, k: int, size: tuple[int, int] = (48, 40)) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.ellipse((4 + k % 10, 4, 30 + k % 10, 30), fill=colour)
    d.rectangle((0, 34, 6 + 3 * k, 39), fill="black")
    return img


def make_pool_folder(root: Path, n: int = 8, *, broken: bool = True, duplicate: bool = True) -> Path:
    """``n`` drawn PNGs in ``coco/`` and ``laion/`` (half each), a corrupt JPEG and an exact copy of one image."""
    for k in range(n):
        source = "coco" if k < n // 2 else "laion"
        (root / source).mkdir(parents=True, exist_ok=True)
        draw(COLOURS[k % len(COLOURS)], k).save(root / source / f"{k:02d}_{COLOURS[k % len(COLOURS)]}.png")
    if broken:
        (root / "coco" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    if duplicate:
        shutil.copy(root / "coco" / "00_red.png", root / "laion" / "zz_copy_of_red.png")
    return root


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory) -> tuple[str, str]:
    """A tiny full CLIP checkpoint (vision and text towers, like openai/clip-vit-*) and a tiny DINOv2, random."""
    import torch
    import transformers
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
    )

    root = tmp_path_factory.mktemp("encoders")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            clip = CLIPModel(
                CLIPConfig(
                    text_config={
                        "vocab_size": 32,
                        "hidden_size": 16,
                        "intermediate_size": 32,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "max_position_embeddings": 8,
                        "bos_token_id": 0,
                        "eos_token_id": 1,
                        "pad_token_id": 1,
                    },
                    vision_config={
                        "image_size": 32,
                        "patch_size": 8,
                        "hidden_size": 32,
                        "intermediate_size": 64,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 2,
                    },
                    projection_dim=24,
                )
            )
            dino = Dinov2Model(
                Dinov2Config(
                    image_size=32,
                    patch_size=8,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                )
            )
        clip.save_pretrained(root / "clip")
        dino.save_pretrained(root / "dino")
    finally:
        transformers.logging.set_verbosity(verbosity)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(root / "dino")
    return str(root / "clip"), str(root / "dino")


def test_image_sources_folder_list_and_dataset(tmp_path):
    folder = make_pool_folder(tmp_path / "pool", n=4)
    pool = open_source(folder)
    assert [it.id for it in pool.items][:2] == ["coco/00_red.png", "coco/01_blue.png"]
    assert {it.source for it in pool.items} == {"coco", "laion"}
    assert pool.open(pool.item("coco/00_red.png")).size == (48, 40)

    listing = tmp_path / "list.txt"
    listing.write_text("# images\npool/coco/00_red.png\tmscoco\n\npool/laion/02_green.png\n", encoding="utf-8")
    pool = open_source(listing)
    assert [(it.id, it.source) for it in pool.items] == [
        ("pool/coco/00_red.png", "mscoco"),
        ("pool/laion/02_green.png", "pool"),
    ]
    assert Path(pool.items[0].path).is_file()
    listing.write_text("pool/coco/00_red.png\npool/coco/00_red.png\n", encoding="utf-8")
    with pytest.raises(DataError, match="listed twice"):
        open_source(listing)

    import datasets

    images = [draw(c, k) for k, c in enumerate(COLOURS[:3])]
    ds = datasets.Dataset.from_dict(
        {"picture": images, "origin": ["cc3m", "cc3m", "openimages"]},
        features=datasets.Features({"picture": datasets.Image(), "origin": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "hfds"))
    pool = open_source(tmp_path / "hfds", source_column="origin")
    assert pool.kind == "dataset" and pool.image_column == "picture"
    assert [(it.id, it.source) for it in pool.items] == [("0", "cc3m"), ("1", "cc3m"), ("2", "openimages")]
    assert np.array_equal(np.asarray(pool.open(pool.items[2])), np.asarray(images[2]))
    copy = pool.file_for(pool.items[1], tmp_path / "materialised")
    assert Path(copy).is_file() and Path(copy).parent == tmp_path / "materialised"
    pool.save(tmp_path / "index.jsonl")
    again = ImagePool.load(tmp_path / "index.jsonl")  # reopens the dataset lazily
    assert np.array_equal(np.asarray(again.open(again.items[0])), np.asarray(images[0]))
    with pytest.raises(ConfigError, match="Hugging Face dataset"):
        open_source(folder, source_column="origin")


def test_embed_shapes_determinism_and_unreadable_images(tmp_path, tiny_encoders):
    clip_path, dino_path = tiny_encoders
    pool = open_source(make_pool_folder(tmp_path / "pool"))  # 8 images + broken + copy = 10 files
    config = EmbedConfig(clip_path, dino_path, shard_size=4, batch_size=3)
    first = embed_images(pool, tmp_path / "a", config, progress=False)
    assert first.shards_total == 3 and first.shards_done == [0, 1, 2] and first.complete
    assert first.images_embedded == 9 and first.images_unreadable == 1
    emb = load_embeddings(tmp_path / "a")
    assert emb.clip.shape == (9, 24) and emb.dino.shape == (9, 32)  # CLIP projection 24, DINOv2 hidden 32
    clip = emb.clip.rows(0, 9)
    assert np.allclose(np.linalg.norm(clip, axis=1), 1, atol=1e-5)
    assert "coco/zz_broken.jpg" not in emb.ids and len(emb.ids) == 9
    assert emb.sha256[emb.ids.index("coco/00_red.png")] == emb.sha256[emb.ids.index("laion/zz_copy_of_red.png")]
    bad = [json.loads(line) for line in (tmp_path / "a" / "embed" / "unreadable.jsonl").read_text().splitlines()]
    assert [b["id"] for b in bad] == ["coco/zz_broken.jpg"] and bad[0]["error"]
    summary = json.loads((tmp_path / "a" / "embed" / "summary.json").read_text())
    assert summary["per_source"]["coco"] == {"images": 5, "embedded": 4, "unreadable": 1}
    # the same image gives the same vector, and a second run gives identical arrays
    assert np.allclose(clip[emb.ids.index("coco/00_red.png")], clip[emb.ids.index("laion/zz_copy_of_red.png")])
    embed_images(pool, tmp_path / "b", config, progress=False)
    again = load_embeddings(tmp_path / "b")
    assert np.array_equal(again.clip.rows(0, 9), clip) and np.array_equal(again.dino.rows(0, 9), emb.dino.rows(0, 9))
    # sharded reads: rows across a shard boundary and gathered rows equal the whole matrix's
    assert np.array_equal(emb.clip.rows(2, 7), clip[2:7])
    assert np.array_equal(emb.clip.take(np.array([8, 0, 4])), clip[[8, 0, 4]])
    # the CLIP vector is CLIPModel.get_image_features, normalised
    import torch
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_path).eval()
    pixels = AutoImageProcessor.from_pretrained(clip_path)(
        images=[pool.open(pool.item("coco/01_blue.png"))], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        ref = model.get_image_features(pixel_values=pixels)
    ref = (ref if isinstance(ref, torch.Tensor) else ref.pooler_output)[0].numpy()
    assert np.allclose(clip[emb.ids.index("coco/01_blue.png")], ref / np.linalg.norm(ref), atol=1e-5)


def test_embed_resumes_after_a_killed_shard(tmp_path, tiny_encoders):
    clip_path, dino_path = tiny_encoders
    pool = open_source(make_pool_folder(tmp_path / "pool", broken=False, duplicate=False))
    config = EmbedConfig(clip_path, dino_path, shard_size=3, batch_size=2)
    out = tmp_path / "out"
    embed_images(pool, out, config, progress=False)
    before = load_embeddings(out).clip.rows(0, 8)
    shards = out / "embed" / "shards"
    # a killed run: the last shard's final file never written, a temporary file left behind
    (shards / "shard-00002.json").unlink()
    (shards / ".shard-00002.clip.npy.abc123.tmp").write_bytes(b"partial")
    with pytest.raises(ConfigError, match="unfinished"):
        load_embeddings(out)
    mtime = (shards / "shard-00000.clip.npy").stat().st_mtime_ns
    result = embed_images(pool, out, config, progress=False)
    assert result.shards_done == [2] and result.shards_skipped == [0, 1] and result.complete
    assert not list(shards.glob(".*.tmp"))
    assert (shards / "shard-00000.clip.npy").stat().st_mtime_ns == mtime  # finished shards untouched
    assert np.array_equal(load_embeddings(out).clip.rows(0, 8), before)
    # two ranks share the shards: rank 1 of 2 only does its own (1), rank 0 finishes the rest
    out2 = tmp_path / "ranks"
    r1 = embed_images(pool, out2, config, rank=1, world_size=2, progress=False)
    assert r1.shards_done == [1] and not r1.complete
    r0 = embed_images(pool, out2, config, rank=0, world_size=2, progress=False)
    assert r0.shards_done == [0, 2] and r0.complete
    assert np.array_equal(load_embeddings(out2).clip.rows(0, 8), before)
    # other settings never mix with existing shards
    with pytest.raises(ConfigError, match="dino_pooling"):
        embed_images(pool, out, EmbedConfig(clip_path, dino_path, dino_pooling="mean", shard_size=3), progress=False)


# --------------------------------------------------------------------------------------------------------------------
# the fake LLM


def completion(text: str) -> Behaviour:
    """A canned chat completion whose reply is ``text`` (the fake server's Malformed sends a body verbatim)."""
    body = {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    return Malformed(body=json.dumps(body))


class CannedLLM(FakeOpenAIServer):
    """The fake OpenAI-compatible server, answering each chat request with ``reply(texts, image_urls)``: a reply
    text, or a scripted behaviour (Fail, Slow...)."""

    def __init__(self, reply: Callable[[list[str], list[str]], str | Behaviour]):
        self.reply = reply
        super().__init__(models=("fake-4o",))

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        texts, urls = [], []
        for message in body.get("messages", []):
            for part in message.get("content") or []:
                if part.get("type") == "text":
                    texts.append(part["text"])
                elif part.get("type") == "image_url":
                    urls.append(part["image_url"]["url"])
        out = self.reply(texts, urls)
        return completion(out) if isinstance(out, str) else out


def llm(server: FakeOpenAIServer, tmp_path: Path, **kwargs: Any) -> OpenAIJudge:
    options = {
        "api_key_env": "VTC_TEST_NO_KEY",
        "concurrency": 2,
        "timeout_s": 5.0,
        "max_retries": 0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.02,
        "cache_dir": tmp_path / "llm-cache",
        "progress": False,
    }
    return OpenAIJudge("fake-4o", base_url=server.base_url, **{**options, **kwargs})


def label_json(best: str, *, zero: bool = False, drop: str | None = None) -> str:
    scores = []
    for t in contrast_types():
        if t.name == drop:
            continue
        hit = t.name == best and not zero
        scores.append(
            {
                "type": t.name,
                "importance": 0 if zero else (8 if hit else 2),
                "hallucination_likelihood": 0 if zero else (7 if hit else 1),
                "rationale": f"the images {'differ' if hit else 'agree'} in {t.key}",
            }
        )
    return json.dumps({"difference": f"the shape differs in {best}", "scores": scores})


def write_json(
    prompt: str = "Describe this image in detail.",
    r1: str = "There is a red circle on the left .",
    r2: str = "There is a blue circle on the left .",
    t1: tuple[str, ...] = ("red circle",),
    t2: tuple[str, ...] = ("blue circle",),
) -> str:
    return json.dumps(
        {
            "prompt": prompt,
            "response_1": r1,
            "response_2": r2,
            "contrast_terms_1": list(t1),
            "contrast_terms_2": list(t2),
        }
    )


def labelled_dir(root: Path, n_pairs: int) -> tuple[Path, list[MinedPair], dict[str, str]]:
    """An output folder with an image pool and ``n_pairs`` mined pairs (no embeddings needed), and, for each pair,
    the data URL of its first image (how the canned server recognises the pair)."""
    pool = open_source(make_pool_folder(root / "pool", n=2 * n_pairs, broken=False, duplicate=False))
    out = root / "out"
    (out / "embed").mkdir(parents=True)
    (out / "mine").mkdir()
    pool.save(out / "embed" / "images.jsonl")
    pairs = []
    for k in range(n_pairs):
        a, b = pool.items[2 * k], pool.items[2 * k + 1]
        pairs.append(MinedPair(pair_id(a.id, b.id), a.id, b.id, 0.97, 0.3, a.source, b.source))
    (out / "mine" / "pairs.jsonl").write_text("".join(json.dumps(p.to_record()) + "\n" for p in pairs))
    first = {image_data_url(pool.open(pool.item(p.id_a))): p.pair_id for p in pairs}
    return out, pairs, first


# --------------------------------------------------------------------------------------------------------------------
# label


def test_parse_label_is_strict_and_choose_type_breaks_ties():
    scores, difference = parse_label(label_json("color and appearance"))
    assert difference == "the shape differs in color and appearance" and len(scores) == 9
    assert choose_type(scores).type == "color and appearance"
    assert [s.type for s in parse_label("```json\n" + label_json("text and symbols") + "\n```")[0]] == [
        t.name for t in contrast_types()
    ]
    bad = json.loads(label_json("color and appearance"))
    bad["scores"][0]["importance"] = 11
    for reply, kind in [
        ('{"difference": "x", "scores": [', "malformed"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        (json.dumps(bad), "malformed"),
        (label_json("color and appearance", drop="text and symbols"), "malformed"),
        ('["not", "an", "object"]', "malformed"),
    ]:
        with pytest.raises(Exception) as info:
            parse_label(reply)
        assert getattr(info.value, "kind", None) == kind, reply
    # ties: higher hallucination likelihood first, then the paper's order
    tie = (
        TypeScore("quantity and count", 6, 4, "r"),
        TypeScore("color and appearance", 4, 6, "r"),
        TypeScore("text and symbols", 4, 6, "r"),
    )
    assert choose_type(tie).type == "color and appearance"
    assert choose_type((TypeScore("quantity and count", 0, 0, "r"),)) is None
    assert find_contrast_type("Colour and Appearance").name == "color and appearance"


def test_label_stage_counts_malformed_refusals_and_timeouts(tmp_path):
    out, pairs, first = labelled_dir(tmp_path, 8)
    plan: dict[int, str | Behaviour] = {
        0: label_json("color and appearance"),
        1: "```json\n" + label_json("quantity and count") + "\n```",
        2: '{"difference": "a red and a blue circle", "scores": [',
        3: "I'm sorry, but I can't help with comparing these images.",
        4: label_json("color and appearance", drop="viewpoint and perspective"),
        5: Slow(5.0),  # longer than the 1 s timeout: no reply, no retry
        6: Fail(500),
        7: label_json("color and appearance", zero=True),
    }
    index = {pid: k for k, pid in enumerate(p.pair_id for p in pairs)}

    def reply(texts: list[str], urls: list[str]) -> str | Behaviour:
        assert len(urls) == 2 and texts[0] == "Image 1:" and "nine contrast types" in texts[-1]
        return plan[index[first[urls[0]]]]

    with CannedLLM(reply) as server:
        judge = llm(server, tmp_path, timeout_s=1.0)
        summary = run_label_stage(out, judge, progress=False)
    assert summary.counts == {
        "labelled": 2,
        "failed": 2,
        "refusal": 1,
        "malformed": 2,
        "no_difference": 1,
        "unreadable": 0,
    }
    assert summary.types == {"color and appearance": 1, "quantity and count": 1}
    assert summary.ledger["failed"] == 2
    labels = {lab.pair_id: lab for lab in read_labels(out)}
    good = labels[pairs[0].pair_id]
    assert good.contrast_type == "color and appearance" and len(good.scores) == 9
    assert good.score_of("color and appearance").overall == 15 and good.difference
    unlabelled = [json.loads(line) for line in (out / "label" / "unlabelled.jsonl").read_text().splitlines()]
    assert sorted(u["status"] for u in unlabelled) == [
        "failed",
        "failed",
        "malformed",
        "malformed",
        "no_difference",
        "refusal",
    ]
    assert labels[pairs[3].pair_id].reply.startswith("I'm sorry")

    # a rerun keeps the labelled pairs, answers the parsed-but-bad replies from the cache, asks again for the failed
    plan.update({5: label_json("state and condition"), 6: label_json("text and symbols")})
    with CannedLLM(reply) as server:
        summary = run_label_stage(out, llm(server, tmp_path), progress=False)
        asked = len(server.chat_requests)
    assert asked == 2 and summary.reused == 2
    assert summary.counts["labelled"] == 4 and summary.counts["failed"] == 0


# --------------------------------------------------------------------------------------------------------------------
# review and write


def write_labels(out: Path, pairs: list[MinedPair], types: list[str]) -> None:
    labels = []
    for p, t in zip(pairs, types, strict=True):
        scores, difference = parse_label(label_json(t))
        labels.append(Label(p.pair_id, "labelled", t, difference, scores, model="fake-4o"))
    (out / "label").mkdir(exist_ok=True)
    (out / "label" / "labels.jsonl").write_text("".join(json.dumps(lab.to_record()) + "\n" for lab in labels))


def test_review_page_and_decisions(tmp_path):
    out, pairs, _ = labelled_dir(tmp_path, 3)
    write_labels(out, pairs, ["color and appearance", "quantity and count", "text and symbols"])
    labels = read_labels(out)
    labels[0] = replace(labels[0], difference="<script>alert(1)</script> differs")
    pool = ImagePool.load(out / "embed" / "images.jsonl")
    pages = write_review_pages(out, labels, pairs, pool, page_size=2)
    assert [p.name for p in pages] == ["review-0001.html", "review-0002.html"]
    html = pages[0].read_text()
    assert html.count('src="data:image/jpeg;base64,') == 4
    assert pairs[0].pair_id in html and pairs[1].pair_id in html and pairs[2].pair_id not in html
    assert "Export decisions" in html and '"review-0001"' in html and "vtc-review-decisions" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html  # escaped
    assert "http://" not in html and "https://" not in html and "<link" not in html  # self-contained
    assert html.count('value="accept" checked') == 2

    decisions = tmp_path / "decisions.json"
    decisions.write_text(
        json.dumps(
            {
                "format": "vtc-review-decisions",
                "version": 1,
                "page": "review-0001",
                "decisions": [
                    {"pair_id": pairs[0].pair_id, "decision": "accept", "contrast_type": "quantity and count"},
                    {"pair_id": pairs[1].pair_id, "decision": "reject", "contrast_type": "quantity and count"},
                    {"pair_id": "vtc-unknown", "decision": "accept"},
                ],
            }
        )
    )
    outcome = apply_decisions(labels, read_decisions([decisions]))
    assert [(lab.pair_id, t.name) for lab, t in outcome.accepted] == [(pairs[0].pair_id, "quantity and count")]
    assert outcome.counts == {
        "labelled": 3,
        "accepted": 1,
        "rejected": 1,
        "changed": 1,
        "undecided": 1,
        "not_labelled": 1,
    }
    assert len(apply_decisions(labels, None).accepted) == 3  # no review: every labelled pair
    decisions.write_text(json.dumps({"decisions": [{"pair_id": pairs[0].pair_id, "decision": "maybe"}]}))
    with pytest.raises(DataError, match="accept or reject"):
        read_decisions([decisions])
    decisions.write_text(json.dumps([{"pair_id": pairs[0].pair_id, "decision": "accept", "contrast_type": "mood"}]))
    with pytest.raises(DataError, match="unknown contrast type"):
        read_decisions([decisions])


def test_written_output_checks():
    check_written(parse_written(write_json()))
    for reply, kind in [
        (write_json(r2="There is a red circle on the left ."), "identical"),
        (write_json(t1=("green square",)), "no_contrast"),
        (write_json(t1=(), t2=()), "no_contrast"),
        (write_json(t1=("circle",), t2=("circle",)), "no_contrast"),
        (write_json(prompt="How does image 1 differ from image 2?"), "mentions_pair"),
        (write_json(r1="Unlike the second image, there is a red circle ."), "mentions_pair"),
        ('{"prompt": "Describe this image."}', "malformed"),
        ("Sorry, I cannot do that.", "refusal"),
    ]:
        with pytest.raises(Exception) as info:
            check_written(parse_written(reply))
        assert getattr(info.value, "kind", None) == kind, reply


def test_write_stage_checks_outputs_and_writes_canonical_records(tmp_path):
    out, pairs, first = labelled_dir(tmp_path, 5)
    write_labels(out, pairs, ["color and appearance"] * 5)
    index = {pid: k for k, pid in enumerate(p.pair_id for p in pairs)}
    plan = {
        0: write_json(),
        1: write_json(r2="There is a red circle on the left ."),
        2: write_json(t1=("green square",)),
        3: write_json(prompt="Compare image 1 with image 2."),
        4: '{"prompt": "Describe this image.", "response_1": ',
    }
    seen_tasks: list[str] = []

    def reply(texts: list[str], urls: list[str]) -> str | Behaviour:
        task = "vqa" if "Task: contrastive question answering" in texts[-1] else "description"
        seen_tasks.append(task)
        assert "color and appearance" in texts[-1] and "Examples" in texts[-1]
        k = index[first[urls[0]]]
        if k == 0 and task == "vqa":
            return write_json(
                "What colour is the circle?", "The circle is red .", "The circle is blue .", ("red",), ("blue",)
            )
        return plan[k]

    with CannedLLM(reply) as server:
        summary = run_write_stage(out, llm(server, tmp_path), progress=False)
    assert sorted(seen_tasks) == ["description"] * 5 + ["vqa"] * 5
    assert summary.counts == {
        "written": 2,
        "failed": 0,
        "refusal": 0,
        "malformed": 2,
        "identical": 2,
        "no_contrast": 2,
        "mentions_pair": 2,
    }
    assert summary.records == 2 and summary.pairs == 1 and summary.tasks == {"description": 1, "vqa": 1}
    records = read_preferences(out / "vtc.jsonl")
    assert [r.id for r in records] == [f"{pairs[0].pair_id}-description", f"{pairs[0].pair_id}-vqa"]
    rec = records[1]
    assert rec.question == "What colour is the circle?" and rec.y_w == "The circle is red ."
    assert rec.y_l == "The circle is blue ." and rec.contrast_type == "color and appearance" and rec.source == "coco"
    assert Path(rec.image_w).name == Path(pairs[0].id_a).name and Path(rec.image_l).name == Path(pairs[0].id_b).name

    # with decisions: only the accepted pair, with the type the reviewer chose, in the prompt and the record
    decisions = tmp_path / "decisions.json"
    decisions.write_text(
        json.dumps(
            {
                "decisions": [
                    {
                        "pair_id": pairs[0].pair_id,
                        "decision": "accept",
                        "contrast_type": "positional and relational context",
                    },
                    {"pair_id": pairs[1].pair_id, "decision": "reject"},
                ]
            }
        )
    )
    prompts: list[str] = []

    def reply2(texts: list[str], urls: list[str]) -> str:
        prompts.append(texts[-1])
        return write_json()

    with CannedLLM(reply2) as server:
        summary = run_write_stage(
            out, llm(server, tmp_path), tasks=("description",), decisions=[decisions], progress=False
        )
    assert len(prompts) == 1 and "positional and relational context" in prompts[0]
    assert summary.review["accepted"] == 1 and summary.review["undecided"] == 3
    records = read_preferences(out / "vtc.jsonl")
    assert len(records) == 1 and records[0].contrast_type == "positional and relational context"


# --------------------------------------------------------------------------------------------------------------------
# end to end


def generic_reply(texts: list[str], urls: list[str]) -> str:
    prompt = texts[-1]
    if "nine contrast types" in prompt:
        return label_json("color and appearance")
    if "Task: contrastive question answering" in prompt:
        return write_json("what colour is the shape ?", "it is red .", "it is blue .", ("red",), ("blue",))
    return write_json(
        "describe the image .", "there is a red circle on the left .", "there is a blue circle on the left ."
    )


def test_build_vtc_end_to_end_into_harness_train(tmp_path, tiny_encoders, capsys):
    clip_path, dino_path = tiny_encoders
    images = make_pool_folder(tmp_path / "pool", n=8)
    out = tmp_path / "vtc"
    with CannedLLM(generic_reply) as server:
        # random tiny encoders carry no meaning: thresholds that let distinct drawings pair up
        common = ["--log-level", "WARNING", "build-vtc", "--output", out, "--no-progress"]
        args = [
            *common,
            "--images",
            images,
            "--clip-model",
            clip_path,
            "--dino-model",
            dino_path,
            "--shard-size",
            4,
            "--workers",
            0,
            "--clip-threshold",
            0.0,
            "--dino-threshold",
            0.9999,
            "--dup-clip",
            0.9999,
            "--dup-dino",
            0.9999,
            "--one-pair-per-image",
            "--llm-model",
            "fake-4o",
            "--llm-base-url",
            server.base_url,
            "--llm-api-key-env",
            "VTC_TEST_NO_KEY",
            "--llm-cache-dir",
            tmp_path / "llm-cache",
            "--llm-max-retries",
            0,
        ]
        assert main([str(a) for a in args]) == 0
        asked = len(server.chat_requests)
        printed = capsys.readouterr().out
        assert printed.strip().endswith(str(out / "vtc.jsonl"))
        assert "Contrast types of the written pairs" in printed and "color and appearance" in printed
        # rerunning everything costs nothing: shards, pairs and labels are kept, replies come from the cache
        assert main([str(a) for a in args]) == 0
        assert len(server.chat_requests) == asked
    mined = json.loads((out / "mine" / "summary.json").read_text())
    n_pairs = mined["counts"]["pairs"]
    assert n_pairs >= 3 and mined["counts"]["duplicate_images"] == 1  # the copied file
    records = read_preferences(out / "vtc.jsonl")
    assert len(records) == 2 * n_pairs
    assert {r.contrast_type for r in records} == {"color and appearance"}
    assert {r.source for r in records} <= {"coco", "laion", "coco+laion"}
    assert all(Path(r.image_w).is_file() and Path(r.image_l).is_file() and r.image_w != r.image_l for r in records)
    report = json.loads((out / "report" / "report.json").read_text())
    color = next(r for r in report["contrast_types"] if r["contrast_type"] == "color and appearance")
    assert color["count"] == n_pairs and color["share"] == 100.0
    assert report["per_source"][-1] == {
        "source": "Total",
        "mined": n_pairs,
        "labelled": n_pairs,
        "accepted": n_pairs,
        "written_pairs": n_pairs,
        "records": 2 * n_pairs,
    }
    assert (out / "report" / "contrast_types.csv").read_text().startswith("contrast_type,count,share\n")
    assert (out / "review" / "review-0001.html").is_file()

    trained = tmp_path / "jompo"
    code = main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--method",
            "jompo",
            "--data",
            str(out / "vtc.jsonl"),
            "--output",
            str(trained),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--no-bf16",
            "--no-gradient-checkpointing",
            "--report-to",
            "none",
            "--lr",
            "1e-3",
            "--warmup-ratio",
            "0",
            "--save-steps",
            "100",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (trained / "config.json").is_file()


def test_build_vtc_user_errors(tmp_path, capsys):
    assert main(["--log-level", "ERROR", "build-vtc", "--output", str(tmp_path / "x"), "--stage", "mine"]) == 2
    assert "run `harness build-vtc --stage embed` first" in capsys.readouterr().err
    assert main(["--log-level", "ERROR", "build-vtc", "--output", str(tmp_path / "x"), "--stage", "embed"]) == 2
    assert "--images" in capsys.readouterr().err
    assert (
        main(
            [
                "--log-level",
                "ERROR",
                "build-vtc",
                "--output",
                str(tmp_path / "x"),
                "--images",
                str(tmp_path / "nowhere"),
            ]
        )
        == 2
    )
    assert "image source not found" in capsys.readouterr().err


def test_vtc_report_sets_the_papers_table6_beside_the_written_pairs():
    from trainers.vtc.pipeline import contrast_type_table, format_report, paper_table6, with_paper_table6

    paper = paper_table6()
    assert sum(paper.values()) == 5025 and paper["color and appearance"] == 1745
    assert paper["text and symbols"] == 131 and set(paper) == {t.name for t in contrast_types()}
    rows = with_paper_table6(contrast_type_table({"color and appearance": 3, "text and symbols": 1}))
    colour = next(r for r in rows if r["contrast_type"] == "color and appearance")
    assert (colour["count"], colour["share"], colour["paper_count"], colour["paper_share"]) == (3, 75.0, 1745, 34.7)
    assert rows[-1]["contrast_type"] == "Total" and rows[-1]["paper_count"] == 5025
    text = format_report(
        {
            "contrast_types": rows,
            "contrast_types_vs_paper": rows,
            "per_source": [
                {"source": "Total", "mined": 0, "labelled": 0, "accepted": 0, "written_pairs": 0, "records": 0}
            ],
        }
    )
    assert "paper %" in text and "1745" in text
