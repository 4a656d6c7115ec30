"""Toy AMBER: determinism, exact ground truth (checked on the pixels), parity with AMBER's file formats, the
interim scorer on hand-computed examples, clear errors for missing and malformed files, and corpus coverage."""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.types import Response, Sample
from tasks import toy
from tasks._amber_format import QUERY_FILES, dimension, dumps

AMBER_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "amber"
N = 40


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy.generate_toy_amber(tmp_path_factory.mktemp("toy") / "toy_amber", n_images=N, seed=0)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(root: Path, rel: str):
    return json.loads((root / rel).read_text(encoding="utf-8"))


# --- determinism and generation --------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(root: Path, tmp_path: Path) -> None:
    again = toy.generate_toy_amber(tmp_path / "again", n_images=N, seed=0)
    assert _hashes(again) == _hashes(root)
    assert len([p for p in _hashes(root) if p.startswith("image/")]) == N


def test_other_seed_differs_and_prefix_is_stable(root: Path, tmp_path: Path) -> None:
    other = toy.generate_toy_amber(tmp_path / "other", n_images=3, seed=1)
    assert _hashes(other)["annotations.json"] != _hashes(root)["annotations.json"]
    small = toy.generate_toy_amber(tmp_path / "small", n_images=3, seed=0)
    for k in (1, 2, 3):
        assert (small / f"image/TOY_{k}.png").read_bytes() == (root / f"image/TOY_{k}.png").read_bytes()


def test_generation_is_idempotent_and_replaces_other_settings(tmp_path: Path) -> None:
    out = toy.generate_toy_amber(tmp_path / "d", n_images=3)
    mtime = (out / "annotations.json").stat().st_mtime_ns
    assert toy.generate_toy_amber(out, n_images=3) == out
    assert (out / "annotations.json").stat().st_mtime_ns == mtime
    toy.generate_toy_amber(out, n_images=4)
    assert len(_load(out, "query/query_generative.json")) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="does not hold a toy AMBER dataset"):
        toy.generate_toy_amber(foreign, n_images=2)
    with pytest.raises(ConfigError):
        toy.generate_toy_amber(tmp_path / "zero", n_images=0)


# --- ground truth ----------------------------------------------------------------------------------------------------


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (left, top, right, bottom; exclusive) of the 4-connected components of ``mask``."""
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, xs, ys = deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            xs.append(x)
            ys.append(y)
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return boxes


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def test_pixels_match_the_recorded_scenes(root: Path) -> None:
    for scene in toy.read_scenes(root):
        pixels = np.asarray(Image.open(root / "image" / scene.image).convert("RGB"))
        assert pixels.shape == (toy.IMAGE_SIZE, toy.IMAGE_SIZE, 3)
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for obj in scene.objects:
            x, y = obj.centre
            assert tuple(pixels[y, x]) == toy.COLOURS[obj.colour], (scene.image, obj)
            left, top, right, bottom = obj.box
            covered[top:bottom, left:right] = True
        assert (pixels[~covered] == toy.BACKGROUND).all(), scene.image  # nothing drawn outside the boxes
        for name, rgb in toy.COLOURS.items():
            blobs = _components((pixels == rgb).all(axis=-1))
            objs = [o for o in scene.objects if o.colour == name]
            assert len(blobs) == len(objs), (scene.image, name)  # one blob per shape: counts are exact
            assert all(any(_inside(b, o.box) for o in objs) for b in blobs)
        for i, a in enumerate(scene.objects):  # boxes never overlap
            for b in scene.objects[i + 1 :]:
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]


def test_annotations_agree_with_the_scenes(root: Path) -> None:
    scenes = {s.image: s for s in toy.read_scenes(root)}
    annotations = {e["id"]: e for e in _load(root, "annotations.json")}
    numbers = {"one": 1, "two": 2, "three": 3}
    for q in _load(root, "query/query_all.json"):
        scene, entry = scenes[q["image"]], annotations[q["id"]]
        shapes = [o.shape for o in scene.objects]
        colour = {o.shape: o.colour for o in scene.objects}
        if entry["type"] == "generative":
            assert q["query"] == "Describe this image."
            assert set(entry["truth"]) == set(shapes)
            assert set(entry["hallu"]) == set(toy.SHAPES) - set(shapes)
            continue
        if m := re.fullmatch(r"Is there a (\w+) in this image\?", q["query"]):
            assert entry["type"] == "discriminative-hallucination"
            expected = m[1] in shapes
        elif m := re.fullmatch(r"Is the (\w+) (\w+) in this image\?", q["query"]):
            assert entry["type"] == "discriminative-attribute-state"
            expected = colour[m[1]] == m[2]
        elif m := re.fullmatch(r"(?:Is|Are) there (\w+) (\w+?)s? in this image\?", q["query"]):
            assert entry["type"] == "discriminative-attribute-number"
            expected = shapes.count(m[2]) == numbers[m[1]]
        elif m := re.fullmatch(r"Is the (\w+) (on the left of|on the right of|above|below) the (\w+)\?", q["query"]):
            assert shapes.count(m[1]) == shapes.count(m[3]) == 1
            (a,), (b,) = ([o.box for o in scene.objects if o.shape == s] for s in (m[1], m[3]))
            expected = {
                "on the left of": a[2] <= b[0],
                "on the right of": b[2] <= a[0],
                "above": a[3] <= b[1],
                "below": b[3] <= a[1],
            }[m[2]]
            assert entry["type"] == ("discriminative-relation" if expected else "relation")
        else:
            raise AssertionError(f"unexpected query {q['query']!r}")
        assert entry["truth"] == ("yes" if expected else "no"), q


def test_captions_describe_the_scenes(root: Path) -> None:
    pairs = toy.captions(root)
    assert len(pairs) == N
    numbers = {"a": 1, "an": 1, "two": 2, "three": 3}
    for scene, (path, text) in zip(toy.read_scenes(root), pairs):
        assert path == root / "image" / scene.image and path.is_file()
        listing = text.split(".")[0]
        found = {
            m[3]: (m[2], numbers[m[1]])
            for m in re.finditer(r"\b(a|an|two|three) (\w+) (\w+?)s?\b(?=,| and|$)", listing)
        }
        assert found == {
            s: (next(o.colour for o in scene.objects if o.shape == s), sum(o.shape == s for o in scene.objects))
            for s in {o.shape for o in scene.objects}
        }


# --- format parity with AMBER ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not AMBER_DIR.is_dir(), reason="AMBER data files not present")
def test_same_formats_as_amber(root: Path) -> None:
    real = json.loads((AMBER_DIR / "annotations.json").read_text())
    real_keys = {e["type"]: list(e) for e in real}
    ours = _load(root, "annotations.json")
    for entry in ours:
        assert list(entry) == real_keys[entry["type"]], entry
        assert type(entry["truth"]) is type(next(e["truth"] for e in real if e["type"] == entry["type"]))
    assert [e["id"] for e in ours] == list(range(1, len(ours) + 1))
    assert [e["type"] for e in ours[:N]] == ["generative"] * N and "generative" not in {e["type"] for e in ours[N:]}
    # discriminative blocks in AMBER's order: attribute, then existence, then relation
    blocks = [dimension(e["type"]) for e in ours[N:]]
    assert blocks == sorted(blocks, key=["attribute", "existence", "relation"].index)
    assert sorted(p.name for p in (AMBER_DIR / "query").iterdir()) == sorted(Path(p).name for p in QUERY_FILES.values())
    for rel in QUERY_FILES.values():
        real_q, our_q = json.loads((AMBER_DIR / rel).read_text()), _load(root, rel)
        assert {tuple(q) for q in our_q} == {tuple(q) for q in real_q} == {("id", "image", "query")}
        types = {e["id"]: e["type"] for e in ours}
        real_types = {e["id"]: e["type"] for e in real}
        assert {types[q["id"]] for q in our_q} <= {real_types[q["id"]] for q in real_q}
        assert [q["id"] for q in our_q] == sorted(q["id"] for q in our_q)
    assert (root / "metrics.txt").read_bytes() == (AMBER_DIR / "metrics.txt").read_bytes()
    # the same JSON layout (indent 4, no trailing newline) and text layouts
    head = (AMBER_DIR / "query/query_all.json").read_text()[:40]
    assert (root / "query/query_all.json").read_text().startswith(head.split("1")[0])
    relation = _load(root, "relation.json")
    assert isinstance(relation, dict) and all(isinstance(v, list) for v in relation.values())
    assert set(relation) >= set(toy.SHAPES)
    safe = (root / "safe_words.txt").read_text()
    assert not safe.endswith("\n") and set(safe.split("\n")) <= set(relation)


# --- the task --------------------------------------------------------------------------------------------------------


def test_task_samples(root: Path) -> None:
    task = toy.ToyAmber(data_root=root)
    samples = task.samples()
    assert len(samples) == 4 * N
    first = samples[0]
    assert (first.id, first.prompt, first.meta, first.max_new_tokens) == (
        "1",
        "Describe this image.",
        {"type": "generative"},
        64,
    )
    assert first.reference == _load(root, "annotations.json")[0]
    assert first.images[0].load(first.id).size == (toy.IMAGE_SIZE, toy.IMAGE_SIZE)
    assert {s.max_new_tokens for s in samples[N:]} == {8}
    assert len(task.samples(limit=5)) == 5


def test_default_root_is_generated_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    task = toy.ToyAmber()
    assert task.data_root == tmp_path / "data" / "toy_amber-v1"
    assert len(task.samples()) == 4 * toy.DEFAULT_N_IMAGES


def test_given_root_is_not_generated(tmp_path: Path) -> None:
    with pytest.raises(MissingDataFile, match="annotations.json") as info:
        toy.ToyAmber(data_root=tmp_path).samples()
    assert "harness toy-data" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_named(root: Path, tmp_path: Path) -> None:
    copy = toy.generate_toy_amber(tmp_path / "copy", n_images=2)
    (copy / "relation.json").unlink()
    with pytest.raises(MissingDataFile) as info:
        toy.ToyAmber(data_root=copy).samples()
    assert info.value.path == str(copy / "relation.json")


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    copy = toy.generate_toy_amber(tmp_path / "copy", n_images=2)
    lines = (copy / "annotations.json").read_text().split("\n")
    lines[4] = lines[4].replace('"', "", 1)  # break line 5
    (copy / "annotations.json").write_text("\n".join(lines))
    with pytest.raises(DataError) as info:
        toy.ToyAmber(data_root=copy).samples()
    assert info.value.line == 5 and "annotations.json, line 5" in str(info.value)


def test_query_without_annotation_or_field_names_file_and_id(tmp_path: Path) -> None:
    copy = toy.generate_toy_amber(tmp_path / "copy", n_images=2)
    path = copy / "query/query_all.json"
    queries = json.loads(path.read_text())
    path.write_text(dumps(queries + [{"id": 999, "image": "TOY_1.png", "query": "Describe this image."}]))
    with pytest.raises(DataError, match=r"query_all\.json: query id 999 has no entry in annotations\.json"):
        toy.ToyAmber(data_root=copy).samples()
    del queries[1]["query"]
    path.write_text(dumps(queries))
    with pytest.raises(DataError, match=r"query_all\.json: query id 2: missing .* 'query'"):
        toy.ToyAmber(data_root=copy).samples()
    annotations = json.loads((copy / "annotations.json").read_text())
    del annotations[0]["hallu"]
    (copy / "annotations.json").write_text(dumps(annotations))
    with pytest.raises(DataError, match=r"annotations\.json: annotation id 1: field 'hallu'"):
        toy.ToyAmber(data_root=copy).samples()


# --- the interim scorer ----------------------------------------------------------------------------------------------


def _gen(sid: str, truth: list[str], hallu: list[str]) -> Sample:
    return Sample(
        sid,
        "Describe this image.",
        reference={"id": int(sid), "type": "generative", "truth": truth, "hallu": hallu},
        meta={"type": "generative"},
    )


def _disc(sid: str, kind: str, truth: str) -> Sample:
    return Sample(sid, "?", reference={"id": int(sid), "type": kind, "truth": truth}, meta={"type": kind})


def test_reference_answers_score_perfectly(root: Path) -> None:
    task = toy.ToyAmber(data_root=root)
    samples = task.samples()
    answers = dict((str(i), text) for i, (_, text) in enumerate(toy.captions(root), start=1))
    responses = {s.id: Response(s.id, answers.get(s.id) or s.reference["truth"].capitalize(), "stop") for s in samples}
    metrics = task.score(samples, responses)  # AMBER's official scorer, similarity "none"
    assert metrics.headline == {
        "CHAIR": 0.0,
        "Cover": 100.0,
        "Hal": 0.0,
        "Cog": 0.0,
        "Accuracy": 100.0,
        "Precision": 100.0,
        "Recall": 100.0,
        "F1": 100.0,
        "AMBER Score": 100.0,
    }
    assert metrics.counts["failed"] == 0 and metrics.counts["scored"] == 4 * N
    assert any("similarity: none" in note for note in metrics.notes)
    only_generative = task.score(samples[:2], responses)
    assert set(only_generative.headline) == {"CHAIR", "Cover", "Hal", "Cog"}
    # the official scorer compares answers exactly: "Yes." is not "Yes"
    dotted = {
        sid: Response(sid, r.text + ".", "stop") if r.text in ("Yes", "No") else r for sid, r in responses.items()
    }
    assert task.score(samples, dotted).headline["Accuracy"] == 0.0


# --- corpus ----------------------------------------------------------------------------------------------------------


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)}


def test_corpus_covers_the_toy_world(root: Path) -> None:
    corpus = toy.corpus()
    assert corpus == toy.corpus() and len(corpus) == len(set(corpus))
    vocab = _words(corpus)
    used = [q["query"] for q in _load(root, "query/query_all.json")] + [t for _, t in toy.captions(root)]
    for seed in (1, 2):  # other worlds use no other words
        scenes = [toy.make_scene(seed, i) for i in range(100)]
        used += [toy.caption(s) for s in scenes]
        used += [q.query for i, s in enumerate(scenes) for q in toy.questions(s, i, seed).values()]
    used += [toy.LLAVA_SYSTEM, "USER: Describe this image. ASSISTANT: Yes", "No"]
    used += list(_load(root, "relation.json")) + [w for ws in _load(root, "relation.json").values() for w in ws]
    assert _words(used) <= vocab, _words(used) - vocab


# --- training data ---------------------------------------------------------------------------------------------------


def test_toy_preferences_are_contrast_pairs(tmp_path: Path) -> None:
    import json as _json
    import random as _random

    path = toy.generate_toy_preferences(tmp_path / "a", n_pairs=16, seed=0)
    again = toy.generate_toy_preferences(tmp_path / "b", n_pairs=16, seed=0)
    assert path.read_bytes() == again.read_bytes()
    records = [_json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 16 and len({r["id"] for r in records}) == 16
    assert {r["contrast_type"] for r in records} == set(toy.CONTRAST_TYPES.values())
    vocab = _words(toy.corpus())
    for r in records:
        assert r["y_w"] != r["y_l"]
        assert (tmp_path / "a" / r["image_w"]).read_bytes() != (tmp_path / "a" / r["image_l"]).read_bytes()
        assert (tmp_path / "a" / r["image_w"]).read_bytes() == (tmp_path / "b" / r["image_w"]).read_bytes()
        assert _words([r["question"], r["y_w"], r["y_l"]]) <= vocab  # the tiny model's tokenizer knows them
        if r["question"] != toy.GENERATIVE_QUERY:
            assert r["y_w"].startswith("Yes. ") and r["y_l"].startswith("No. ")
    # each edit changes exactly what it says
    scene = toy.make_scene(10_000, 3)
    changed, question, y_w, y_l = toy.contrast_scene(scene, "colour", _random.Random(0))
    assert [o.box for o in changed.objects] == [o.box for o in scene.objects]
    assert sum(a.colour != b.colour for a, b in zip(scene.objects, changed.objects)) >= 1
    assert {o.shape for o in changed.objects} == {o.shape for o in scene.objects}


def test_toy_sft_captions(tmp_path: Path) -> None:
    import json as _json

    path = toy.generate_toy_sft(tmp_path, n=3)
    records = [_json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == ["sft-0", "sft-0-qa", "sft-1", "sft-1-qa", "sft-2", "sft-2-qa"]
    assert records[0]["answer"] == toy.caption(toy.make_scene(20_000, 0))
    scene = toy.make_scene(20_000, 1)
    q = toy.questions(scene, 1, 20_000)["attribute"]
    assert (records[3]["question"], records[3]["answer"]) == (q.query, q.truth.capitalize())
    assert {r["answer"] for r in records[1::2]} <= {"Yes", "No"}
    assert all((tmp_path / r["image"]).is_file() for r in records)
