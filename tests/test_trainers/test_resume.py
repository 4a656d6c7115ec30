"""`harness train --resume` continues from the checkpoint's weights, optimizer, scheduler and RNG: an interrupted run
(stopped after a checkpoint, or killed while writing one) resumed to the end has the loss curve and final weights of
an uninterrupted run, bit for bit on CPU. Incomplete checkpoints are skipped with a warning; a checkpoint whose
weights do not match the model is an error."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from harness.cli import main
from trainers.config import TrainConfig

STEPS = 6


def _config(model: str, data: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "model": model,
        "data": str(data),
        "output": str(out),
        "method": "jompo",
        "lora": False,
        "bf16": False,
        "batch_size": 1,
        "grad_accum": 1,
        "lr": 1e-3,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.0,
        "beta": 0.5,
        "report_to": ["none"],
        "max_steps": STEPS,
        "save_steps": 2,
        "save_total_limit": None,
        "logging_steps": 1,
        "gradient_checkpointing": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def _train(config: TrainConfig) -> Path:
    if config.method == "sft":
        from trainers.sft import train_sft

        return train_sft(config)
    from trainers.trainer import train_preference

    return train_preference(config)


def _losses(out: Path) -> dict[int, float]:
    return {
        e["step"]: e["loss"] for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in e
    }


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _cut_after(reference: Path, out: Path, step: int) -> Path:
    """``out``: the uninterrupted run's folder as it was right after checkpoint ``step`` (later checkpoints and the
    final model gone), as a run killed then would leave it."""
    shutil.copytree(reference, out)
    for ckpt in (out / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    for p in out.iterdir():
        if p.is_file():
            p.unlink()
    return out


def _assert_same_run(resumed: Path, reference: Path, base: str) -> None:
    ref_losses, res_losses = _losses(reference), _losses(resumed)
    assert sorted(res_losses) == list(range(1, STEPS + 1))
    assert res_losses == ref_losses  # every step's loss, exactly
    ref_w, res_w = _weights(reference), _weights(resumed)
    assert _max_diff(res_w, ref_w) == 0.0
    from safetensors.torch import load_file

    base_w = load_file(str(Path(base) / "model.safetensors"))
    assert _max_diff(res_w, base_w) > 0  # trained, not the starting weights
    assert any(k.startswith("vision_tower.vision_model.") for k in res_w)  # the final model keeps llava-hf names


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory, shape_image) -> Path:
    root = tmp_path_factory.mktemp("resume-data")
    records = []
    for i, (c1, c2) in enumerate([("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green")]):
        shape_image(c1).save(root / f"{i}w.png")
        shape_image(c2).save(root / f"{i}l.png")
        records.append(
            {
                "id": f"ex{i}",
                "question": "what colour is the shape ?",
                "image_w": f"{i}w.png",
                "image_l": f"{i}l.png",
                "y_w": f"it is {c1} .",
                "y_l": f"it is {c2} .",
            }
        )
    path = root / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def reference_run(tiny_llava_path, pref_data, tmp_path_factory) -> Path:
    """The uninterrupted run: 6 steps of JoMPO (4 records, batch 1: checkpoint 2 mid-epoch, 4 at an epoch's end)."""
    return _train(_config(tiny_llava_path, pref_data, tmp_path_factory.mktemp("reference") / "run"))


@pytest.mark.parametrize("step", [2, 4])
def test_resume_after_a_checkpoint_equals_the_uninterrupted_run(
    step, reference_run, tiny_llava_path, pref_data, tmp_path
):
    out = _cut_after(reference_run, tmp_path / "run", step)
    _train(_config(tiny_llava_path, pref_data, out, resume=True))
    _assert_same_run(out, reference_run, tiny_llava_path)


def test_a_kill_during_a_checkpoint_save_resumes_from_the_previous_one(
    reference_run, tiny_llava_path, pref_data, tmp_path, monkeypatch, caplog
):
    """Killed while writing checkpoint-4 (after its weights, before its optimizer state): no checkpoint-4 folder
    exists (it was being written under .staging); --resume continues from checkpoint-2, to the same end."""
    import transformers

    from trainers import trainer as tr

    out = tmp_path / "run"
    original = transformers.Trainer._save_optimizer_and_scheduler

    def killed(self, output_dir):
        if self.state.global_step == 4:
            raise SystemExit("killed")
        return original(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(SystemExit):
        _train(_config(tiny_llava_path, pref_data, out))
    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", original)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".staging", "checkpoint-2"]
    assert (out / "checkpoints/.staging/checkpoint-4/model.safetensors").is_file()  # the half-written one
    assert tr.checkpoint_problem(out / "checkpoints/.staging/checkpoint-4") == "no trainer_state.json"
    assert not (out / "train_manifest.json").exists()
    # a partially written checkpoint-4 in place (as an older version, or a copy cut short, would leave it)
    shutil.copytree(out / "checkpoints/.staging/checkpoint-4", out / "checkpoints/checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="harness.train"):
        _train(_config(tiny_llava_path, pref_data, out, resume=True))
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "checkpoint-4" in r.getMessage()
    ]
    assert warnings and "skipping incomplete checkpoint" in warnings[0] and "checkpoint-2" in warnings[0]
    _assert_same_run(out, reference_run, tiny_llava_path)
    assert not (out / "checkpoints/.staging").exists()
    assert tr.checkpoint_problem(out / "checkpoints/checkpoint-4") is None  # rewritten whole


def _break(ckpt: Path, how: str) -> None:
    if how == "empty":
        shutil.rmtree(ckpt)
        ckpt.mkdir()
    elif how == "no_state":
        (ckpt / "trainer_state.json").unlink()
    elif how == "no_weights":
        (ckpt / "model.safetensors").unlink()
    elif how == "no_optimizer":
        (ckpt / "optimizer.pt").unlink()
    elif how == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "truncated_optimizer":
        data = (ckpt / "optimizer.pt").read_bytes()
        (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "how", ["empty", "no_state", "no_weights", "no_optimizer", "truncated_weights", "truncated_optimizer"]
)
def test_an_incomplete_checkpoint_is_skipped_for_the_last_complete_one(how, reference_run, tmp_path, caplog):
    from trainers.trainer import checkpoint_problem, resume_checkpoint

    out = _cut_after(reference_run, tmp_path / "run", 4)
    _break(out / "checkpoints/checkpoint-4", how)
    assert checkpoint_problem(out / "checkpoints/checkpoint-4") is not None
    with caplog.at_level(logging.WARNING, logger="harness.train"):
        chosen = resume_checkpoint(TrainConfig(output=str(out), resume=True))
    assert Path(chosen).name == "checkpoint-2"
    assert any(r.levelno == logging.WARNING and "checkpoint-4" in r.getMessage() for r in caplog.records)
    assert not (out / "checkpoints/checkpoint-4").exists()  # moved aside, out of the rotation
    assert len(list((out / "checkpoints/.incomplete").iterdir())) == 1


def test_no_complete_checkpoint_is_one_line_error(reference_run, tiny_llava_path, pref_data, tmp_path, capsys):
    out = _cut_after(reference_run, tmp_path / "run", 4)
    _break(out / "checkpoints/checkpoint-4", "empty")
    _break(out / "checkpoints/checkpoint-2", "no_state")
    code = main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--method",
            "jompo",
            "--model",
            tiny_llava_path,
            "--data",
            str(pref_data),
            "--output",
            str(out),
            "--resume",
            "--report-to",
            "none",
            "--no-bf16",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("harness: error:")]
    assert len(line) == 1 and "no complete checkpoint" in line[0]
    assert "checkpoint-4: empty" in line[0] and "checkpoint-2: no trainer_state.json" in line[0]


def test_checkpoint_keys_that_do_not_match_the_model_are_an_error(
    reference_run, tiny_llava_path, pref_data, tmp_path, capsys
):
    from safetensors.torch import load_file, save_file

    out = _cut_after(reference_run, tmp_path / "run", 2)
    path = out / "checkpoints/checkpoint-2/model.safetensors"
    tensors = load_file(str(path))
    save_file(
        {("x." + k if "layers.0." in k else k): v for k, v in tensors.items()}, str(path), metadata={"format": "pt"}
    )
    code = main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--method",
            "jompo",
            "--model",
            tiny_llava_path,
            "--data",
            str(pref_data),
            "--output",
            str(out),
            "--resume",
            "--report-to",
            "none",
            "--no-bf16",
            "--max-steps",
            str(STEPS),
            "--save-steps",
            "2",
            "--batch-size",
            "1",
            "--grad-accum",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "do not match the model" in err and "missing" in err and "unexpected" in err
    assert not (out / "model.safetensors").exists()  # nothing trained on from the wrong weights


def test_a_checkpoint_under_the_original_names_resumes_exactly(reference_run, tiny_llava_path, pref_data, tmp_path):
    """Checkpoints of earlier versions hold the llava-hf names (as the final model does): loaded through
    transformers' own name conversion, they resume exactly too."""
    import transformers
    from safetensors import safe_open

    out = _cut_after(reference_run, tmp_path / "run", 2)
    ckpt = out / "checkpoints/checkpoint-2"
    from safetensors.torch import load_file

    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_llava_path)  # loaded from llava-hf names
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    model.save_pretrained(str(ckpt))  # saved back under them, with the checkpoint's weights
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert any(k.startswith("vision_tower.vision_model.") for k in f.keys())  # noqa: SIM118
    _train(_config(tiny_llava_path, pref_data, out, resume=True))
    _assert_same_run(out, reference_run, tiny_llava_path)


def test_lora_resume_equals_the_uninterrupted_run(tiny_llava_path, pref_data, tmp_path):
    """LoRA with dropout (so the restored RNG state matters), the adapter as reference, merged at the end."""
    lora = {
        "lora": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "lr": 5e-3,
        "modules": ["language_model", "projector"],
    }
    reference = _train(_config(tiny_llava_path, pref_data, tmp_path / "ref", **lora))
    out = _cut_after(reference, tmp_path / "run", 4)
    shutil.rmtree(out / "adapter")
    _train(_config(tiny_llava_path, pref_data, out, resume=True, **lora))
    _assert_same_run(out, reference, tiny_llava_path)


def test_sft_resume_equals_the_uninterrupted_run(tiny_llava_path, tmp_path, shape_image):
    root = tmp_path / "sft"
    root.mkdir()
    lines = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        shape_image(colour).save(root / f"{i}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"{i}.png",
                    "question": "what colour is the shape ?",
                    "answer": f"it is {colour} .",
                }
            )
        )
    (root / "sft.jsonl").write_text("\n".join(lines) + "\n")
    reference = _train(_config(tiny_llava_path, root / "sft.jsonl", tmp_path / "ref", method="sft"))
    out = _cut_after(reference, tmp_path / "run", 2)
    _train(_config(tiny_llava_path, root / "sft.jsonl", out, method="sft", resume=True))
    _assert_same_run(out, reference, tiny_llava_path)


def test_resume_refuses_checkpoints_made_from_another_starting_model(
    reference_run, tiny_llava_path, pref_data, tmp_path
):
    """Checkpoints record the starting model's content hash: resuming them on a changed model (an upstream stage
    trained again) is a one-line error, never a mix of two runs."""
    from safetensors.torch import load_file, save_file

    from harness.errors import ConfigError

    start = json.loads((reference_run / "start_model.json").read_text())
    assert start["path"] == str(Path(tiny_llava_path).resolve()) and len(start["content_hash"]) == 64
    changed = tmp_path / "changed-start"
    shutil.copytree(tiny_llava_path, changed)
    weights = load_file(str(changed / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(changed / "model.safetensors"), metadata={"format": "pt"})
    out = _cut_after(reference_run, tmp_path / "resumed", 2)
    (out / "start_model.json").write_text(json.dumps({**start, "path": str(changed)}))
    with pytest.raises(ConfigError, match="were made from .* but --model .* is now"):
        _train(_config(str(changed), pref_data, out, resume=True))
