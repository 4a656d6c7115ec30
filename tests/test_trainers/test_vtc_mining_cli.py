"""``harness build-vtc --stage mine`` with the global searches: the index flags (``--mining faiss-ivf|faiss-hnsw``,
``--faiss-nlist``, ``--faiss-nprobe``, ``--hnsw-*``, ``--faiss-device``, ``--faiss-recall-sample``) reach the mining
settings, bad values are one-line errors naming the flag, and an approximate run records its recall against exact
search in ``DIR/mine/summary.json`` and in the log.

The embeddings are written here in the embed stage's layout (one shard of tiny clustered vectors), so no encoder runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from harness.cli import build_parser, main
from harness.errors import ConfigError
from trainers.vtc.embed import ImageItem, ImagePool, load_embeddings, shard_name
from trainers.vtc.mine import MINING_METHODS, MineConfig, log_recall
from trainers.vtc.pipeline import config_from_args

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:  # pragma: no cover - faiss is optional
    HAVE_FAISS = False

needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed (pip install faiss-cpu)")


def write_embeddings(out: Path, clip: np.ndarray, dino: np.ndarray) -> None:
    """``out/embed`` as the embed stage leaves it: the pool index, the manifest and one finished shard."""
    n = len(clip)
    embed = out / "embed"
    (embed / "shards").mkdir(parents=True)
    pool = ImagePool(
        "list",
        str(out / "images.txt"),
        [ImageItem(k, f"img{k:05d}", "coco" if k % 2 else "laion", f"/pool/{k}.png") for k in range(n)],
    )
    pool.save(embed / "images.jsonl")
    settings = {"format": 1, "source": pool.describe(), "ids_sha256": pool.ids_digest(), "shard_size": n}
    (embed / "manifest.json").write_text(json.dumps({"settings": settings}))
    np.save(embed / "shards" / f"{shard_name(0)}.clip.npy", clip.astype(np.float32))
    np.save(embed / "shards" / f"{shard_name(0)}.dino.npy", dino.astype(np.float32))
    (embed / "shards" / f"{shard_name(0)}.json").write_text(
        json.dumps(
            {
                "ids": [it.id for it in pool.items],
                "sha256": [f"{k:064x}" for k in range(n)],
                "unreadable": [],
                "clip_dim": clip.shape[1],
                "dino_dim": dino.shape[1],
            }
        )
    )


def easy_set(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """4,000 CLIP rows in 800 tight clusters of 5 (32-d), random DINOv2 rows: many pairs above CLIP 0.97."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((800, 32)).astype(np.float32)
    clip = np.repeat(centres, 5, axis=0) + 0.06 * rng.standard_normal((4000, 32)).astype(np.float32)
    dino = rng.standard_normal((4000, 16)).astype(np.float32)
    return (clip / np.linalg.norm(clip, axis=1, keepdims=True), dino / np.linalg.norm(dino, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """A folder holding the easy set's embeddings; each test copies what it mines into its own output."""
    root = tmp_path_factory.mktemp("vtc-embedded")
    write_embeddings(root, *easy_set())
    assert len(load_embeddings(root).ids) == 4000
    return root


def mine_args(out: Path, *flags: object) -> list[str]:
    return [
        "--log-level",
        "INFO",
        "build-vtc",
        "--output",
        str(out),
        "--stage",
        "mine",
        "--no-progress",
        "--clip-threshold",
        "0.97",
        *map(str, flags),
    ]


def copy_embeddings(src: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(src / "embed", out / "embed")
    return out


# --------------------------------------------------------------------------------------------------------------------
# flags -> settings


def test_every_index_flag_reaches_the_mine_settings():
    args = build_parser().parse_args(
        [
            "build-vtc",
            "--output",
            "x",
            "--mining",
            "faiss-ivf",
            "--faiss-k",
            "6",
            "--faiss-nlist",
            "64",
            "--faiss-nprobe",
            "8",
            "--hnsw-m",
            "12",
            "--hnsw-ef-construction",
            "40",
            "--hnsw-ef-search",
            "24",
            "--faiss-device",
            "cpu",
            "--faiss-recall-sample",
            "50",
        ]
    )
    config = config_from_args(args).mine_config()
    assert config == MineConfig(
        method="faiss-ivf",
        faiss_k=6,
        faiss_nlist=64,
        faiss_nprobe=8,
        hnsw_m=12,
        hnsw_ef_construction=40,
        hnsw_ef_search=24,
        faiss_device="cpu",
        faiss_recall_sample=50,
    )
    # without flags, the command line's defaults are the library's
    assert config_from_args(build_parser().parse_args(["build-vtc", "--output", "x"])).mine_config() == MineConfig()
    for method in MINING_METHODS:
        parsed = build_parser().parse_args(["build-vtc", "--output", "x", "--mining", method])
        assert config_from_args(parsed).mine_config().method == method


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--mining", "faiss-lsh"], "--mining"),
        (["--faiss-nprobe", "0"], "--faiss-nprobe"),
        (["--faiss-nprobe", "-3"], "--faiss-nprobe"),
        (["--faiss-nlist", "-1"], "--faiss-nlist"),
        (["--hnsw-m", "1"], "--hnsw-m"),
        (["--hnsw-ef-search", "0"], "--hnsw-ef-search"),
        (["--hnsw-ef-construction", "0"], "--hnsw-ef-construction"),
        (["--faiss-recall-sample", "-1"], "--faiss-recall-sample"),
        (["--faiss-device", "tpu"], "--faiss-device"),
        (["--faiss-nprobe", "many"], "--faiss-nprobe"),
    ],
)
def test_malformed_index_flags_are_usage_errors_naming_the_flag(tmp_path, capsys, flags, flag):
    with pytest.raises(SystemExit) as info:
        main(["build-vtc", "--output", str(tmp_path / "out"), "--stage", "mine", *flags])
    assert info.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and flag in error[0], error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (
            ["--mining", "faiss-ivf", "--faiss-nlist", "16", "--faiss-nprobe", "32"],
            "--faiss-nprobe (32) cannot exceed --faiss-nlist (16)",
        ),
        (["--mining", "faiss-hnsw", "--faiss-device", "gpu"], "--mining faiss-hnsw runs on the CPU"),
        (["--mining", "faiss-ivf", "--faiss-device", "gpu", "--faiss-k", "0"], "--faiss-k 0"),
    ],
)
def test_inconsistent_index_flags_are_one_line_config_errors(tmp_path, capsys, flags, needle):
    """Checked before any stage runs: the error is about the flags, not about the missing embeddings."""
    code = main(["--log-level", "WARNING", "build-vtc", "--output", str(tmp_path / "out"), "--stage", "mine", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("harness:")]
    assert len(lines) == 1 and needle in lines[0], err


# --------------------------------------------------------------------------------------------------------------------
# the mine stage with an approximate index


def summary(out: Path) -> dict:
    return json.loads((out / "mine" / "summary.json").read_text())


def pairs(out: Path) -> set[tuple[str, str]]:
    lines = (out / "mine" / "pairs.jsonl").read_text().splitlines()
    return {(r["id_a"], r["id_b"]) for r in map(json.loads, lines)}


@needs_faiss
def test_build_vtc_ivf_mining_records_its_recall_and_finds_the_exact_pairs(tmp_path, embedded, caplog):
    exact = copy_embeddings(embedded, tmp_path / "exact")
    assert main(mine_args(exact, "--mining", "faiss", "--faiss-k", 8)) == 0
    assert "recall" not in summary(exact)  # exact search: nothing to measure
    assert len(pairs(exact)) > 500

    ivf = copy_embeddings(embedded, tmp_path / "ivf")
    caplog.set_level(logging.INFO, logger="harness.vtc.mine")
    flags = [
        "--mining",
        "faiss-ivf",
        "--faiss-k",
        8,
        "--faiss-nlist",
        50,
        "--faiss-nprobe",
        10,
        "--faiss-recall-sample",
        200,
        "--faiss-device",
        "cpu",
    ]
    assert main(mine_args(ivf, *flags)) == 0
    got = summary(ivf)
    settings = got["settings"]
    assert (settings["method"], settings["faiss_nlist"], settings["faiss_nprobe"], settings["faiss_k"]) == (
        "faiss-ivf",
        50,
        10,
        8,
    )
    recall = got["recall"]
    assert (recall["method"], recall["queries"], recall["k"]) == ("faiss-ivf", 200, 8)
    assert 0.9 <= recall["recall_at_k"] <= 1.0 and recall["neighbours_above"] > 50 and recall["recall_above"] >= 0.99
    assert recall["exact_seconds"] > 0 and recall["index_seconds"] > 0
    assert got["counts"]["compared"] < summary(exact)["counts"]["compared"]  # 10 of 50 lists scanned
    assert pairs(ivf) == pairs(exact)
    logged = [r.getMessage() for r in caplog.records if "recall against exact search" in r.getMessage()]
    assert len(logged) == 1 and "faiss-ivf" in logged[0] and "200 queries" in logged[0]

    # the same flags again: mining is skipped; another nprobe mines again
    before = (ivf / "mine" / "summary.json").read_text()
    assert main(mine_args(ivf, *flags)) == 0
    assert (ivf / "mine" / "summary.json").read_text() == before
    assert main(mine_args(ivf, *flags[:-6], "--faiss-nprobe", 20, "--faiss-recall-sample", 100)) == 0
    assert summary(ivf)["settings"]["faiss_nprobe"] == 20 and summary(ivf)["recall"]["queries"] == 100


@needs_faiss
def test_build_vtc_hnsw_mining_records_its_settings_and_recall(tmp_path, embedded):
    out = copy_embeddings(embedded, tmp_path / "hnsw")
    assert (
        main(
            mine_args(
                out,
                "--mining",
                "faiss-hnsw",
                "--faiss-k",
                8,
                "--hnsw-m",
                16,
                "--hnsw-ef-construction",
                64,
                "--hnsw-ef-search",
                48,
                "--faiss-recall-sample",
                100,
            )
        )
        == 0
    )
    got = summary(out)
    assert (got["settings"]["hnsw_m"], got["settings"]["hnsw_ef_construction"], got["settings"]["hnsw_ef_search"]) == (
        16,
        64,
        48,
    )
    assert got["recall"]["method"] == "faiss-hnsw" and got["recall"]["queries"] == 100
    assert got["recall"]["recall_above"] >= 0.99
    # --faiss-recall-sample 0: no measurement, no recall in the summary
    off = copy_embeddings(embedded, tmp_path / "off")
    assert main(mine_args(off, "--mining", "faiss-hnsw", "--faiss-k", 8, "--faiss-recall-sample", 0)) == 0
    assert "recall" not in summary(off) and pairs(off) == pairs(out)


def test_low_recall_is_a_warning_naming_the_flag_to_raise(caplog):
    caplog.set_level(logging.INFO, logger="harness.vtc.mine")
    base = {
        "queries": 100,
        "k": 10,
        "recall_at_k": 0.6,
        "neighbours_above": 40,
        "exact_seconds": 0.2,
        "index_seconds": 0.01,
    }
    log_recall({**base, "method": "faiss-ivf", "recall_above": 0.8})
    log_recall({**base, "method": "faiss-hnsw", "recall_above": 0.9})
    log_recall({**base, "method": "faiss-ivf", "recall_above": 1.0})
    log_recall({**base, "method": "faiss-ivf", "recall_above": None, "neighbours_above": 0})
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.WARNING and "--faiss-nprobe" in levels[0][1] and "0.800" in levels[0][1]
    assert levels[1][0] == logging.WARNING and "--hnsw-ef-search" in levels[1][1]
    assert [lv for lv, _ in levels[2:]] == [logging.INFO, logging.INFO]
    assert "2.000 ms exact" in levels[2][1] and "0.100 ms" in levels[2][1]


def test_mine_config_errors_name_the_command_line_flags():
    """MineConfig's messages use the flag names, so a library caller and a CLI user read the same text."""
    with pytest.raises(ConfigError, match="--faiss-nprobe"):
        MineConfig(method="faiss-ivf", faiss_nlist=4, faiss_nprobe=5)


@needs_faiss
def test_a_flat_search_counts_every_row_per_query():
    """The exact search's ``compared`` is queries x N whatever the method names (the bench passes the batch
    defaults): pairs per second of the flat search are counted on it."""
    from dataclasses import replace

    from trainers.vtc.mine import search_faiss

    clip, dino = easy_set()
    queries = np.arange(0, 4000, 40)
    for method in ("faiss", "batch"):
        found = search_faiss(clip, dino, replace(MineConfig(), method=method), queries=queries)
        assert found.compared == len(queries) * len(clip), method
