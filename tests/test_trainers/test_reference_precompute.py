"""The ``--reference cache:FILE`` precompute: every process scores a share of the micro-batches, images are decoded
one micro-batch at a time, and the file is byte-identical to a one-process pass (and to the rows-in-memory pass)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.errors import HarnessError
from trainers.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
COLOURS = [
    ("red", "blue", "circle"),
    ("green", "yellow", "square"),
    ("blue", "red", "square"),
    ("yellow", "green", "circle"),
    ("red", "green", "square"),
]

# run under torchrun: the trainer's precompute, counting the rows each rank scores
LAUNCHED = r"""
import json, sys
import harness  # noqa: F401
from accelerate import PartialState
from pathlib import Path
import trainers.reference as reference
from trainers.config import TrainConfig
from trainers.trainer import precompute_reference_cache
sys.path.insert(0, sys.argv[2])
from test_reference_precompute import collator_for

scored = []
original = reference.row_logps
def counting(model, family, batch, **kw):
    scored.extend(batch.keys)
    return original(model, family, batch, **kw)
reference.row_logps = counting

config = TrainConfig(**json.loads(sys.argv[1]))
family, processor, collator, examples = collator_for(config)
precompute_reference_cache(config, family, processor, collator, examples, Path(config.reference_cache))
state = PartialState()
# one file per rank: two ranks printing at once can interleave their lines on a shared stdout
Path(sys.argv[3], f"scored-{state.process_index}.json").write_text(json.dumps(
    {"rank": state.process_index, "world": state.num_processes, "keys": [list(k) for k in scored]}))
"""


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory, shape_image) -> Path:
    root = tmp_path_factory.mktemp("pref-precompute")
    (root / "img").mkdir()
    records = []
    for i, (c1, c2, shape) in enumerate(COLOURS):
        shape_image(c1, shape).save(root / f"img/{i}w.png")
        shape_image(c2, shape).save(root / f"img/{i}l.png")
        records.append(
            {
                "id": f"ex{i}",
                "question": "what colour is the shape ?",
                "image_w": str(root / f"img/{i}w.png"),
                "image_l": str(root / f"img/{i}l.png"),
                "y_w": f"it is {c1} .",
                "y_l": f"it is {c2} .",
            }
        )
    path = root / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _config(model: str, data: Path, cache: Path, **kw) -> TrainConfig:
    base = {
        "model": model,
        "data": str(data),
        "output": str(cache.parent / "out"),
        "lora": False,
        "bf16": False,
        "batch_size": 1,
        "report_to": ["none"],
        "method": "mpo",
        "reference": f"cache:{cache}",
    }
    base.update(kw)
    return TrainConfig(**base)


def collator_for(config: TrainConfig):
    """(family, processor, collator, examples) as the trainer builds them, without the policy."""
    from harness.models import resolve_model
    from trainers.data import read_preferences
    from trainers.losses import required_rows
    from trainers.trainer import PreferenceCollator, load_processor, loss_config_for

    _, family = resolve_model(config.model)
    processor = load_processor(config.model)
    rows_needed = required_rows(loss_config_for(config))
    examples = read_preferences(config.data)
    collator = PreferenceCollator(
        family,
        processor,
        rows_needed,
        strategy=config.rejected_image,
        seed=config.corruption_seed,
        max_length=config.max_length,
    )
    return family, processor, collator, examples


def _rows_in_memory_cache(config: TrainConfig, path: Path) -> bytes:
    """The file as the precompute wrote it before sharding: every example's rows (images decoded) in one list,
    scored ``batch_size x rows per example`` rows at a time."""
    from trainers.reference import precompute_reference
    from trainers.trainer import load_model, reference_meta

    family, processor, collator, examples = collator_for(config)
    rows = [row for ex in examples for row in collator.rows([ex])]
    precompute_reference(
        load_model(config.model),
        family,
        processor,
        rows,
        path,
        reference_meta(config, family, collator.rows_needed),
        batch_size=config.batch_size * len(collator.rows_needed),
        progress=False,
    )
    return path.read_bytes()


def test_two_processes_share_the_rows_and_write_the_one_process_file(tiny_llava_path, pref_data, tmp_path):
    """Two CPU processes (torchrun, gloo; `accelerate launch --cpu` starts one process without mpirun): each rank scores its own contiguous half of the micro-batches
    (5 examples of 3 MPO rows, one example per micro-batch: ranks get 2 and 3) and the merged file is byte-identical
    to the one-process pass and to the rows-in-memory pass."""
    from trainers.trainer import precompute_reference_cache

    one = tmp_path / "one" / "ref.jsonl"
    config = _config(tiny_llava_path, pref_data, one)
    family, processor, collator, examples = collator_for(config)
    precompute_reference_cache(config, family, processor, collator, examples, one)
    assert one.read_bytes() == _rows_in_memory_cache(config, tmp_path / "legacy.jsonl")

    two = tmp_path / "two" / "ref.jsonl"
    launched = tmp_path / "launched.py"
    launched.write_text(LAUNCHED)
    settings = dataclasses.asdict(_config(tiny_llava_path, pref_data, two))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(launched),
        json.dumps(settings),
        str(Path(__file__).resolve().parent),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted((json.loads(p.read_text()) for p in tmp_path.glob("scored-*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    ids = [sorted({k[0] for k in r["keys"]}) for r in reports]
    assert ids == [["ex0", "ex1"], ["ex2", "ex3", "ex4"]]  # contiguous shares, nothing scored twice
    assert [len(r["keys"]) for r in reports] == [6, 9]
    assert two.read_bytes() == one.read_bytes()
    assert not (two.parent / ".ref.jsonl.shards").exists()  # shards removed after the merge


def test_images_are_decoded_one_micro_batch_at_a_time(tiny_llava_path, pref_data, tmp_path, monkeypatch):
    """The images of a micro-batch are loaded just before it is scored, not all examples' images first."""
    from trainers import reference
    from trainers.trainer import PreferenceCollator, precompute_reference_cache

    events: list[tuple[str, object]] = []
    images, score = PreferenceCollator.images, reference.row_logps

    def loading(self, example):
        events.append(("load", example.id))
        return images(self, example)

    def scoring(model, family, batch, **kw):
        events.append(("score", sorted({k[0] for k in batch.keys})))
        return score(model, family, batch, **kw)

    monkeypatch.setattr(PreferenceCollator, "images", loading)
    monkeypatch.setattr(reference, "row_logps", scoring)
    cache = tmp_path / "ref.jsonl"
    config = _config(tiny_llava_path, pref_data, cache, batch_size=2)
    family, processor, collator, examples = collator_for(config)
    precompute_reference_cache(config, family, processor, collator, examples, cache)
    assert events == [
        ("load", "ex0"),
        ("load", "ex1"),
        ("score", ["ex0", "ex1"]),
        ("load", "ex2"),
        ("load", "ex3"),
        ("score", ["ex2", "ex3"]),
        ("load", "ex4"),
        ("score", ["ex4"]),
    ]
    assert len(cache.read_text().splitlines()) == 1 + 5 * 3


def _tiny_setup(tiny_llava_path):
    from harness.models import resolve_model
    from trainers.logprobs import Row
    from trainers.reference import ReferenceMeta
    from trainers.trainer import load_model, load_processor

    _, family = resolve_model(tiny_llava_path)
    rows = [
        Row(question="what colour is the shape ?", response=f"it is {c} .", image=None, key=(f"r{i}", "none", "w"))
        for i, c in enumerate(["red", "blue", "green", "yellow", "red", "blue", "green"])
    ]
    meta = ReferenceMeta.for_model(tiny_llava_path, family)
    return load_model(tiny_llava_path), family, load_processor(tiny_llava_path), rows, meta


def test_ranks_in_threads_merge_to_the_one_process_file(tiny_llava_path, tmp_path):
    """Three ranks (threads) over 7 rows in batches of 2 (4 batches): rank 0 merges, in rank order, the bytes a
    single process writes; every rank returns the rows it scored."""
    from trainers.reference import (
        RowList,
        precompute_reference,
        precompute_reference_sharded,
        shard_range,
    )

    model, family, processor, rows, meta = _tiny_setup(tiny_llava_path)
    single = precompute_reference(
        model, family, processor, rows, tmp_path / "single.jsonl", meta, batch_size=2, progress=False
    )
    batches = RowList(rows, batch_size=2)
    assert [list(shard_range(len(batches), r, 3)) for r in range(3)] == [[0], [1], [2, 3]]
    out, scored, errors = tmp_path / "sharded.jsonl", {}, []

    def rank(r: int) -> None:
        try:
            scored[r] = precompute_reference_sharded(
                model,
                family,
                processor,
                batches,
                out,
                meta,
                rank=r,
                world_size=3,
                progress=False,
                poll_seconds=0.01,
                timeout=60,
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (2, 1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert scored == {0: 2, 1: 2, 2: 3}
    assert out.read_bytes() == single.read_bytes()
    assert not (tmp_path / ".sharded.jsonl.shards").exists()


def test_a_failed_rank_ends_the_others_wait_with_its_error(tiny_llava_path, tmp_path):
    from trainers.reference import RowList, precompute_reference_sharded

    model, family, processor, rows, meta = _tiny_setup(tiny_llava_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "rank-00001.failed").write_text("RuntimeError: CUDA out of memory")
    with pytest.raises(HarnessError, match="rank 1 failed: RuntimeError: CUDA out of memory"):
        precompute_reference_sharded(
            model,
            family,
            processor,
            RowList(rows, 4),
            tmp_path / "ref.jsonl",
            meta,
            rank=0,
            world_size=2,
            shard_dir=shards,
            progress=False,
            poll_seconds=0.01,
            timeout=30,
        )
    assert not (tmp_path / "ref.jsonl").exists()

    class Broken(RowList):
        def rows(self, index):
            raise OSError("image file vanished")

    with pytest.raises(OSError):
        precompute_reference_sharded(
            model,
            family,
            processor,
            Broken(rows, 4),
            tmp_path / "ref2.jsonl",
            meta,
            rank=1,
            world_size=2,
            shard_dir=tmp_path / "s2",
            progress=False,
        )
    assert "image file vanished" in (tmp_path / "s2" / "rank-00001.failed").read_text()


def test_duplicate_keys_fail_on_every_rank_before_scoring(tiny_llava_path, tmp_path):
    from trainers.reference import RowList, precompute_reference_sharded

    model, family, processor, rows, meta = _tiny_setup(tiny_llava_path)
    rows = rows[:3] + [rows[0]]
    for r in (0, 1):
        with pytest.raises(HarnessError, match="appears twice"):
            precompute_reference_sharded(
                model,
                family,
                processor,
                RowList(rows, 2),
                tmp_path / "ref.jsonl",
                meta,
                rank=r,
                world_size=2,
                progress=False,
                timeout=5,
            )
    assert not any(tmp_path.iterdir())
