"""Preference records: canonical JSONL round trip, the RLAIF-V / TRL / mDPO loaders, errors, rejected images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from harness.errors import DataError
from trainers.data import (
    CROP_KEEP,
    STRATEGIES,
    PreferenceExample,
    crop_box,
    diffusion_alpha_bar,
    mdpo_question,
    read_preferences,
    rejected_image,
    strategy_seed,
    write_preferences,
)


def _draw(path: Path, colour: str = "red", size: tuple[int, int] = (40, 32)) -> Path:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).ellipse((4, 4, size[0] - 4, size[1] - 4), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _png_bytes(colour: str, size: tuple[int, int] = (24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _record(i: int, **changes) -> dict:
    rec = {
        "id": f"ex-{i}",
        "question": "What shape is it?",
        "image_w": f"images/w{i}.png",
        "image_l": f"images/l{i}.png",
        "y_w": "A red circle.",
        "y_l": "A blue square.",
        "contrast_type": "color",
        "source": "vtc",
    }
    rec.update(changes)
    return rec


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for i in range(3):
        _draw(tmp_path / "images" / f"w{i}.png", "red")
        _draw(tmp_path / "images" / f"l{i}.png", "blue")
    return tmp_path


# --------------------------------------------------------------------------------------------------------------------
# canonical JSONL


def test_canonical_read_resolves_paths_and_round_trips(data_dir: Path):
    src = _jsonl(data_dir / "prefs.jsonl", [_record(0), _record(1, image_l=None, contrast_type=None), _record(2)])
    examples = read_preferences(src)
    assert [e.id for e in examples] == ["ex-0", "ex-1", "ex-2"]
    assert examples[0].image_w == str(data_dir / "images" / "w0.png")
    assert examples[1].image_l is None and examples[1].contrast_type is None
    assert examples[0] == PreferenceExample(
        "ex-0", "What shape is it?", str(data_dir / "images/w0.png"), str(data_dir / "images/l0.png"),
        "A red circle.", "A blue square.", "color", "vtc",
    )  # fmt: skip

    out = data_dir / "copy" / "prefs.jsonl"
    write_preferences(out, examples)
    assert read_preferences(out) == examples
    # inside the output folder, paths are written relative to it
    write_preferences(data_dir / "again.jsonl", examples)
    first = json.loads((data_dir / "again.jsonl").read_text().splitlines()[0])
    assert first["image_w"] == "images/w0.png"
    assert read_preferences(data_dir / "again.jsonl") == examples


def test_image_root_and_text_only_records(data_dir: Path, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    src = _jsonl(elsewhere / "p.jsonl", [_record(0), _record(1, image_w=None, image_l=None)])
    with pytest.raises(DataError, match="ex-0"):
        read_preferences(src)  # relative to the file's folder: not there
    examples = read_preferences(src, image_root=data_dir)
    assert examples[0].image_w == str(data_dir / "images/w0.png")
    assert examples[1].image_w is None


def test_canonical_errors_name_file_line_and_field(data_dir: Path):
    cases = [
        (_record(1, y_w=3), "'y_w'"),
        ({k: v for k, v in _record(1).items() if k != "question"}, "'question' is missing"),
        (_record(1, y_l="  "), "'y_l' is empty"),
        (_record(1, imagew="x.png"), "'imagew'"),
    ]
    for bad, field in cases:
        path = _jsonl(data_dir / "bad.jsonl", [_record(0), bad])
        with pytest.raises(DataError) as info:
            read_preferences(path)
        message = str(info.value)
        assert str(path) in message and "line 2" in message and field in message, message
        assert info.value.line == 2

    path = data_dir / "broken.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        read_preferences(path)


def test_duplicate_ids_and_missing_images(data_dir: Path):
    path = _jsonl(data_dir / "dup.jsonl", [_record(0), _record(1), _record(0)])
    with pytest.raises(DataError, match=r"duplicate id 'ex-0' \(first seen at line 1\)") as info:
        read_preferences(path)
    assert info.value.line == 3

    path = _jsonl(data_dir / "missing.jsonl", [_record(0), _record(1, image_l="images/nope.png")])
    with pytest.raises(DataError) as info:
        read_preferences(path)
    message = str(info.value)
    assert "'ex-1'" in message and "image_l" in message and str(data_dir / "images/nope.png") in message
    assert "line 2" in message

    with pytest.raises(DataError, match="duplicate id"):
        write_preferences(data_dir / "out.jsonl", [PreferenceExample("a", "q", None, None, "x", "y")] * 2)
    with pytest.raises(DataError, match="not found"):
        read_preferences(data_dir / "absent.jsonl")


# --------------------------------------------------------------------------------------------------------------------
# loaders


def test_rlaif_v_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    red, green = _png_bytes("red"), _png_bytes("green")
    rows = [
        {"ds_name": "RLAIF-V", "image": {"bytes": red, "path": "a.jpg"}, "question": "What colour?",
         "chosen": "Red.", "rejected": "Green.", "origin_dataset": "coco", "origin_split": "{}", "idx": "q-0",
         "image_path": "coco/a.jpg"},
        {"ds_name": "RLAIF-V", "image": {"bytes": red, "path": "a.jpg"}, "question": "Is it round?",
         "chosen": "No, it is square.", "rejected": "Yes.", "origin_dataset": "coco", "origin_split": "{}",
         "idx": "q-1", "image_path": "coco/a.jpg"},
        {"ds_name": "RLAIF-V", "image": {"bytes": green, "path": None}, "question": "Describe it.",
         "chosen": "A green square.", "rejected": "A cat.", "origin_dataset": "vg", "origin_split": "{}",
         "idx": "q-2", "image_path": "vg/b.jpg"},
    ]  # fmt: skip
    path = tmp_path / "RLAIF-V-Dataset_000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    images = tmp_path / "imgs"
    examples = read_preferences(path, image_root=images)
    assert [e.id for e in examples] == ["q-0", "q-1", "q-2"]
    e = examples[0]
    assert (e.question, e.y_w, e.y_l, e.image_l, e.source) == ("What colour?", "Red.", "Green.", None, "rlaif-v")
    assert Path(e.image_w).parent == images and Path(e.image_w).suffix == ".png"
    assert Path(e.image_w).read_bytes() == red
    assert examples[1].image_w == e.image_w  # one file per distinct image
    assert len(list(images.iterdir())) == 2
    assert read_preferences(path, image_root=images) == examples  # idempotent

    rows[1]["chosen"] = None
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError) as info:
        read_preferences(path, image_root=images)
    assert "row 2" in str(info.value) and "'chosen'" in str(info.value) and str(path) in str(info.value)


def _trl_row(question: str, image: object, chosen: str, rejected: str, **extra) -> dict:
    return {
        "images": [image],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        **extra,
    }


def test_trl_conversational_jsonl(data_dir: Path):
    rows = [
        _trl_row("What colour is it?", "images/w0.png", "Red.", "Blue.", id="t-0"),
        _trl_row("Is it round?", "images/w1.png", "Yes.", "No."),
        {  # implicit prompt, standard (string) content, no image
            "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
            "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
        },
    ]
    path = _jsonl(data_dir / "trl.jsonl", rows)
    examples = read_preferences(path)
    assert [e.id for e in examples] == ["t-0", "trl-2", "trl-3"]
    assert examples[0].question == "What colour is it?" and examples[0].y_w == "Red." and examples[0].y_l == "Blue."
    assert examples[0].image_w == str(data_dir / "images/w0.png") and examples[0].source == "trl"
    assert examples[2].image_w is None and examples[2].question == "Say hi." and examples[2].y_l == "No."

    bad = _trl_row("Q?", "images/w0.png", "a", "b")
    bad["prompt"].append({"role": "assistant", "content": "x"})
    with pytest.raises(DataError, match="line 1.*'prompt'"):
        read_preferences(_jsonl(data_dir / "bad_trl.jsonl", [bad]), fmt="trl")
    two = _trl_row("Q?", "images/w0.png", "a", "b")
    two["images"] = ["images/w0.png", "images/w1.png"]
    with pytest.raises(DataError, match="'images'"):
        read_preferences(_jsonl(data_dir / "bad_trl.jsonl", [two]))


def test_trl_parquet_with_embedded_images(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blue = _png_bytes("blue")
    rows = [_trl_row("What colour?", {"bytes": blue, "path": None}, "Blue.", "Red.")]
    rows[0]["prompt"][0]["content"][0]["text"] = None  # what `datasets` stores for an image part
    rows[0]["chosen"][0]["content"][0].setdefault("text", None)
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    [example] = read_preferences(path, image_root=tmp_path / "imgs")
    assert example.id == "train-1" and example.question == "What colour?" and example.y_w == "Blue."
    assert Path(example.image_w).read_bytes() == blue


def test_mdpo_json(data_dir: Path):
    prompt = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is the weather like? ASSISTANT:"
    )
    items = [
        {"img_path": "images/w0.png", "prompt": prompt, "chosen": "Rainy.", "rejected": "Sunny."},
        {
            "img_path": "images/w1.png",
            "prompt": prompt.replace("weather", "mood"),
            "chosen": "Calm.",
            "rejected": "Sad.",
        },
    ]
    path = data_dir / "mdpo.json"
    path.write_text(json.dumps(items, indent=2))
    examples = read_preferences(path)
    assert [e.id for e in examples] == ["mdpo-1", "mdpo-2"]
    assert examples[0].question == "What is the weather like?"
    assert examples[1].question == "What is the mood like?"
    assert examples[0].image_w == str(data_dir / "images/w0.png") and examples[0].source == "mdpo"
    assert mdpo_question("<image>\nHow many?") == "How many?"

    items[1].pop("rejected")
    path.write_text(json.dumps(items))
    with pytest.raises(DataError, match="record 2: field 'rejected' is missing"):
        read_preferences(path)


# --------------------------------------------------------------------------------------------------------------------
# rejected images


def _pattern(path: Path, size: tuple[int, int] = (200, 150)) -> Path:
    """Each pixel holds its own coordinates: R = x, G = y."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    Image.fromarray(arr).save(path)
    return path


def _example(i: int | str, image_w: Path | None, image_l: Path | None = None) -> PreferenceExample:
    return PreferenceExample(
        f"ex-{i}", "q", None if image_w is None else str(image_w), None if image_l is None else str(image_l), "a", "b"
    )


def test_strategy_seed_is_stable():
    assert strategy_seed("ex-1", "crop", 0) == strategy_seed("ex-1", "crop", 0)
    assert len({strategy_seed("ex-1", "crop", 0), strategy_seed("ex-2", "crop", 0), strategy_seed("ex-1", "crop", 1),
                strategy_seed("ex-1", "diffusion", 0)}) == 4  # fmt: skip
    assert strategy_seed("ex-1", "crop", 0) == int.from_bytes(
        __import__("hashlib").sha256(b"crop\x000\x00ex-1").digest()[:8], "big"
    )


@pytest.mark.parametrize("strategy", ["crop", "diffusion", "black", "random"])
def test_rejected_images_are_deterministic(tmp_path: Path, strategy: str):
    pool = [_example(i, _pattern(tmp_path / f"p{i}.png", (60 + i, 40))) for i in range(6)]

    def render(example: PreferenceExample, seed: int = 0) -> bytes:
        return rejected_image(example, strategy, seed=seed, pool=pool).tobytes()

    assert render(pool[0]) == render(pool[0])
    if strategy != "black":
        others = {render(_example(f"other-{k}", Path(pool[0].image_w))) for k in range(4)}
        assert len(others | {render(pool[0])}) > 1  # a different id gives a different image
        assert len({render(pool[0], seed) for seed in range(4)}) > 1


def test_crop_keeps_at_least_80_percent(tmp_path: Path):
    w, h = 200, 150
    path = _pattern(tmp_path / "pattern.png", (w, h))
    kept = []
    for i in range(30):
        out = np.asarray(rejected_image(_example(i, path), "crop"))
        assert out.shape == (h, w, 3)
        xs, ys = out[..., 0], out[..., 1]
        area = (int(xs.max()) - int(xs.min()) + 1) * (int(ys.max()) - int(ys.min()) + 1)
        assert area >= CROP_KEEP[0] * w * h
        kept.append(area / (w * h))
        # the crop is resized back: coordinates grow left to right and top to bottom
        assert (np.diff(xs.astype(int), axis=1) >= 0).all() and (np.diff(ys.astype(int), axis=0) >= 0).all()
    assert min(kept) < 0.9 and max(kept) <= 1.0  # it does remove something

    rng = np.random.default_rng(0)
    for _ in range(2000):
        left, top, right, bottom = crop_box(37, 23, rng)
        assert 0 <= left < right <= 37 and 0 <= top < bottom <= 23
        assert (right - left) * (bottom - top) >= 0.8 * 37 * 23


def test_black_is_black(tmp_path: Path):
    path = _draw(tmp_path / "w.png", "red", (33, 21))
    out = rejected_image(_example(0, path), "black")
    assert out.mode == "RGB" and out.size == (33, 21)
    assert not np.asarray(out).any()


def test_diffusion_noise_level(tmp_path: Path):
    w, h = 96, 64
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, w // 2 :] = 255  # left half black (x0 = -1), right half white (x0 = +1)
    path = tmp_path / "bw.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(rejected_image(_example(0, path), "diffusion")).astype(np.float64) / 127.5 - 1.0
    assert out.shape == (h, w, 3)

    abar = diffusion_alpha_bar(500)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert abar == pytest.approx(np.prod(1 - betas[:500]))
    assert 0.07 < abar < 0.09
    # expected mean and spread of clip(sqrt(abar) x0 + sqrt(1 - abar) eps, -1, 1), by Monte Carlo
    eps = np.random.default_rng(123).standard_normal(400_000)
    for x0, region in ((-1.0, out[:, : w // 2]), (1.0, out[:, w // 2 :])):
        ref = np.clip(np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps, -1, 1)
        assert region.mean() == pytest.approx(ref.mean(), abs=0.03)
        assert region.std() == pytest.approx(ref.std(), abs=0.03)
    # neighbouring pixels carry independent noise
    left = out[:, : w // 2, 0]
    corr = np.corrcoef(left[:, :-1].ravel(), left[:, 1:].ravel())[0, 1]
    assert abs(corr) < 0.05


def test_random_never_picks_itself(tmp_path: Path):
    shared = _draw(tmp_path / "shared.png", "red")
    pool = [_example(0, shared), _example(1, shared), _example(2, _draw(tmp_path / "g.png", "green")),
            _example(3, None)]  # fmt: skip
    green = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    for seed in range(20):
        out = np.asarray(rejected_image(pool[0], "random", seed=seed, pool=pool))
        assert np.array_equal(out, green)  # neither itself, nor the same image file, nor an image-less record
    lonely = [_example(0, shared), _example(1, shared)]
    with pytest.raises(DataError, match="no other example"):
        rejected_image(lonely[0], "random", pool=lonely)

    pool = [_example(i, _draw(tmp_path / f"c{i}.png", c)) for i, c in enumerate(["red", "green", "blue", "black"])]
    picks = set()
    for i in range(40):
        me = _example(f"x{i}", Path(pool[i % 4].image_w))
        out = rejected_image(me, "random", pool=pool).tobytes()
        assert out != Image.open(me.image_w).convert("RGB").tobytes()
        picks.add(out)
    assert len(picks) == 4  # it draws across the whole pool


def test_contrast_uses_image_l(tmp_path: Path):
    w, lose = _draw(tmp_path / "w.png", "red"), _draw(tmp_path / "l.png", "blue")
    out = rejected_image(_example(0, w, lose), "contrast")
    assert out.tobytes() == Image.open(lose).convert("RGB").tobytes()
    with pytest.raises(DataError, match="'ex-1'.*image_l"):
        rejected_image(_example(1, w), "contrast")


def test_strategy_errors(tmp_path: Path):
    from harness.errors import ImageError

    assert STRATEGIES == ("crop", "diffusion", "black", "random", "contrast")
    with pytest.raises(ValueError, match="unknown"):
        rejected_image(_example(0, None), "blur")
    with pytest.raises(DataError, match="needs image_w"):
        rejected_image(_example(0, None), "crop")
    with pytest.raises(ImageError, match="ex-0"):
        rejected_image(_example(0, tmp_path / "gone.png"), "crop")
    rel = _example(0, Path("w.png"))
    _draw(tmp_path / "w.png", "red", (10, 10))
    assert rejected_image(rel, "black", image_root=tmp_path).size == (10, 10)
