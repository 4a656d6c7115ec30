"""SFT on tiny models: answer tokens only, the loss decreases, `harness train --method sft` output loads, bad records
fail with the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import DataError
from trainers.config import TrainConfig
from trainers.sft import build_sft_trainer, read_sft_records

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory, shape_image) -> Path:
    root = tmp_path_factory.mktemp("sft")
    (root / "img").mkdir()
    records = []
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")]):
        shape_image(colour, shape).save(root / f"img/{i}.png")
        records.append(
            {
                "id": f"s{i}",
                "image": f"img/{i}.png",
                "question": "describe the image .",
                "answer": f"there is a {colour} {shape} .",
            }
        )
    records.append(
        {"id": "s3", "image": None, "question": "how many shapes are there ?", "answer": "there are two shapes ."}
    )  # text-only: a mixed image / no-image batch
    path = root / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("family, lora", [("llava", False), ("qwen2vl", True)])
def test_sft_lowers_the_answer_nll(family, lora, request, sft_data, tmp_path):
    model = request.getfixturevalue("tiny_llava_path" if family == "llava" else "tiny_qwen2vl_path")
    extra = (
        {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "modules": ["language_model", "vision_tower", "projector"]}
        if lora
        else {}
    )
    config = TrainConfig(
        method="sft",
        model=model,
        data=str(sft_data),
        output=str(tmp_path / "out"),
        bf16=False,
        lora=lora,
        batch_size=4,
        grad_accum=1,
        lr=5e-3 if lora else 1e-3,
        max_steps=4,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        report_to=["none"],
        save_steps=1000,
        **extra,
    )
    trainer = build_sft_trainer(config)
    records = trainer.train_dataset.records
    batch = trainer.data_collator(records)
    rows = batch["rows"]
    # only answer tokens are scored: the answer's words plus the end-of-turn marker
    tokenizer = trainer.processing_class.tokenizer
    for i, record in enumerate(records):
        scored = rows.input_ids[i][rows.response_mask[i]].tolist()
        words = tokenizer.convert_ids_to_tokens(scored)
        assert words[:-1] == record.answer.split() and words[-1] in ("</s>", "<|im_end|>")
    assert rows.image_index.tolist()[-1] == -1  # the text-only record has no image

    def loss() -> float:
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch))

    before = loss()
    trainer.train()
    after = loss()
    assert after < before * 0.8, (before, after)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs and logs[0]["tokens_per_second"] > 0 and "nll_per_token" in logs[0]


def test_harness_train_sft_writes_a_model_harness_run_loads(tiny_llava_path, sft_data, tmp_path, capsys):
    out = tmp_path / "sft"
    code = main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--method",
            "sft",
            "--config",
            str(REPO / "configs/sft_llava15.yaml"),
            "--model",
            tiny_llava_path,
            "--data",
            str(sft_data),
            "--output",
            str(out),
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
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
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.json").is_file()
    code = main(
        [
            "--log-level",
            "WARNING",
            "run",
            "--model",
            str(out),
            "--tasks",
            "toy_amber",
            "--limit",
            "2",
            "--output-path",
            str(tmp_path / "runs"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"id": "a", "image": null, "question": "q ?"}', "field 'answer'"),
        ('{"id": "a", "image": "img/missing.png", "question": "q ?", "answer": "a ."}', "file not found"),
        ('{"image": null, "question": "q ?", "answer": "a ."}', "field 'id'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "a", "image": null, "question": "q", "answer": "a"', "invalid JSON"),
    ],
)
def test_bad_sft_records_name_file_line_and_field(line, expected, sft_data, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(sft_data.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_sft_records(path, image_root=sft_data.parent)
    assert str(path) in str(err.value) and "line 2" in str(err.value) and expected in str(err.value)


def test_sft_cli_missing_data_exits_2(tiny_llava_path, tmp_path, capsys):
    code = main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--method",
            "sft",
            "--model",
            tiny_llava_path,
            "--data",
            str(tmp_path / "none.jsonl"),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "none.jsonl" in err and "Traceback" not in err
