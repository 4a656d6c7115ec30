"""Preference training on tiny models: every method learns, DPO equals TRL's, `harness train` writes checkpoints that
`harness run` evaluates, resuming continues the step count, recipes load, bad input fails clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import ConfigError
from trainers.config import TrainConfig, load_config, read_recipe

REPO = Path(__file__).resolve().parents[2]
COLOURS = [
    ("red", "blue", "circle"),
    ("green", "yellow", "square"),
    ("blue", "red", "square"),
    ("yellow", "green", "circle"),
]


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory, shape_image) -> Path:
    """Four contrast records (same question, two images that differ in colour, each answer grounded in one)."""
    root = tmp_path_factory.mktemp("pref")
    (root / "img").mkdir()
    records = []
    for i, (c1, c2, shape) in enumerate(COLOURS):
        shape_image(c1, shape).save(root / f"img/{i}w.png")
        shape_image(c2, shape).save(root / f"img/{i}l.png")
        records.append(
            {
                "id": f"ex{i}",
                "question": "what colour is the shape ?",
                "image_w": f"img/{i}w.png",
                "image_l": f"img/{i}l.png",
                "y_w": f"it is {c1} .",
                "y_l": f"it is {c2} .",
                "contrast_type": "color",
                "source": "test",
            }
        )
    path = root / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_llava_ref(tmp_path_factory, shapes_corpus) -> str:
    """A second tiny LLaVA (seed 1, same vocabulary): a reference that differs from the policy."""
    from harness.models.tiny import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("ref") / "llava1", shapes_corpus, seed=1))


def _config(model: str, data: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "model": model,
        "data": str(data),
        "output": str(out),
        "lora": False,
        "bf16": False,
        "batch_size": 4,
        "grad_accum": 1,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "report_to": ["none"],
        "save_steps": 1000,
        "logging_steps": 1,
    }
    base.update(kw)
    return TrainConfig(**base)


def _loss_on(trainer, batch) -> float:
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


# --------------------------------------------------------------------------------------------------- the methods


@pytest.mark.parametrize(
    "method, family, lora",
    [("dpo", "llava", False), ("mpo", "llava", False), ("jompo", "llava", False), ("jompo", "qwen2vl", True)],
)
def test_each_method_lowers_its_loss_on_a_fixed_batch(method, family, lora, request, pref_data, tmp_path):
    from trainers.trainer import build_preference_trainer

    model = request.getfixturevalue("tiny_llava_path" if family == "llava" else "tiny_qwen2vl_path")
    extra = (
        {
            "lora": True,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "modules": ["language_model", "vision_tower", "projector"],
        }
        if lora
        else {}
    )
    config = _config(
        model, pref_data, tmp_path / "out", method=method, lr=5e-3 if lora else 1e-3, max_steps=4, beta=0.5, **extra
    )
    trainer = build_preference_trainer(config)
    batch = trainer.data_collator(trainer.train_dataset.examples)  # the whole data set: every step sees it
    rows = {"dpo": 2, "mpo": 3, "jompo": 6}[method]
    assert len(batch["rows"]) == 4 * rows
    before = _loss_on(trainer, batch)
    if method == "jompo":
        assert before == pytest.approx(math.log(144), abs=1e-4)  # policy == reference: 2 ln 2 + 2 ln 6
    elif method == "dpo":
        assert before == pytest.approx(math.log(2), abs=1e-5)
    trainer.train()
    after = _loss_on(trainer, batch)
    assert after < before - 0.05, (before, after)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 4
    first = logs[0]
    assert first["tokens_per_second"] > 0
    assert "rewards/m_w/y_w" in first and "margins/dpo" in first and "accuracy/dpo" in first
    if method == "jompo":
        assert {"loss/dpo", "loss/sym", "loss/vrpo", "accuracy/vrpo/y_w", "rewards/m_none/y_l"} <= set(first)
    if method == "mpo":
        assert {"loss/image_cond", "rewards/m_rej/y_w", "accuracy/image_cond"} <= set(first)


def test_dpo_equals_trl_dpo_trainer(tiny_llava_path, tiny_llava_ref, pref_data, tmp_path):
    """Same tiny model, reference and batch: our DPO and trl.DPOTrainer (its vision path, the processor as
    processing_class) give the same loss, rewards, margins and accuracy."""
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    from trainers.trainer import build_preference_trainer

    ours = build_preference_trainer(
        _config(
            tiny_llava_path,
            pref_data,
            tmp_path / "ours",
            method="dpo",
            reference="copy",
            reference_model=tiny_llava_ref,
            beta=0.1,
        )
    )
    examples = ours.train_dataset.examples
    ours.model.train()
    with torch.no_grad():
        loss, out = ours.compute_loss(ours.model, ours.data_collator(examples), return_outputs=True)
    metrics = {k: float(v) for k, v in out["metrics"].items()}

    family = ours.family
    # TRL's vision collator tokenizes prompt and completions without special tokens: the prompt carries the BOS
    records = [
        {
            "image": Image.open(e.image_w).convert("RGB"),
            "prompt": "<s>" + family.render_prompt(e.question, 1),
            "chosen": f" {e.y_w}</s>",
            "rejected": f" {e.y_l}</s>",
        }
        for e in examples
    ]
    dataset = Dataset.from_list(records)
    trl_trainer = DPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(tiny_llava_path, dtype=torch.float32),
        ref_model=AutoModelForImageTextToText.from_pretrained(tiny_llava_ref, dtype=torch.float32),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=0.1,
            per_device_train_batch_size=4,
            report_to=[],
            max_length=None,
            bf16=False,
            gradient_checkpointing=False,
        ),
        train_dataset=dataset,
        processing_class=AutoProcessor.from_pretrained(tiny_llava_path),
    )
    trl_batch = trl_trainer.data_collator([dataset[i] for i in range(len(dataset))])
    trl_trainer.model.train()
    with torch.no_grad():
        trl_loss = float(trl_trainer.compute_loss(trl_trainer.model, trl_batch))
    trl_metrics = {k: v[-1] for k, v in trl_trainer._metrics["train"].items()}

    assert abs(float(loss) - math.log(2)) > 0.01  # policy and reference differ: a real comparison
    assert float(loss) == pytest.approx(trl_loss, abs=1e-5)
    assert metrics["rewards/m_w/y_w"] == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-4)
    assert metrics["rewards/m_w/y_l"] == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-4)
    assert metrics["margins/dpo"] == pytest.approx(trl_metrics["rewards/margins"], abs=1e-4)
    assert metrics["accuracy/dpo"] == pytest.approx(trl_metrics["rewards/accuracies"])


def test_reference_cache_is_computed_once_and_matches_the_copy(tiny_llava_path, pref_data, tmp_path):
    from trainers.trainer import build_preference_trainer

    cache = tmp_path / "ref.jsonl"
    with_copy = build_preference_trainer(
        _config(tiny_llava_path, pref_data, tmp_path / "a", method="mpo", reference="copy")
    )
    with_cache = build_preference_trainer(
        _config(tiny_llava_path, pref_data, tmp_path / "b", method="mpo", reference=f"cache:{cache}")
    )
    assert cache.is_file() and len(cache.read_text().splitlines()) == 1 + 4 * 3
    batch = with_copy.data_collator(with_copy.train_dataset.examples)["rows"]
    expected = with_copy.reference.logps(batch)
    assert torch.allclose(with_cache.reference.logps(batch), expected, atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2vl"])
def test_mixed_image_and_text_only_records_train_on_both_families(family, request, pref_data, tmp_path):
    """Records without images give rows without image tokens or pixels; a micro-batch of only such rows still
    calls the vision tower once (times zero), so LoRA on the vision tower gets a (zero) gradient on every step."""
    from trainers.trainer import build_preference_trainer

    model = request.getfixturevalue("tiny_llava_path" if family == "llava" else "tiny_qwen2vl_path")
    records = [json.loads(line) for line in pref_data.read_text().splitlines()]
    for i, rec in enumerate(records):
        rec["image_w"] = str(pref_data.parent / rec["image_w"]) if i % 2 == 0 else None
        rec["image_l"] = None
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = _config(
        model,
        data,
        tmp_path / "out",
        method="dpo",
        lora=True,
        lora_r=4,
        lora_alpha=8,
        modules=["language_model", "vision_tower", "projector"],
        batch_size=2,
        max_steps=2,
        lr=1e-2,
    )
    trainer = build_preference_trainer(config)
    examples = trainer.train_dataset.examples
    mixed = trainer.data_collator(examples[:2])["rows"]
    assert mixed.image_index.tolist() == [0, 0, -1, -1] and mixed.num_unique_images == 1
    text_only = trainer.data_collator([examples[1], examples[3]])
    loss = trainer.compute_loss(trainer.model, text_only)
    loss.backward()
    vision_grads = {
        n: p.grad
        for n, p in trainer.model.named_parameters()
        if p.requires_grad and ("vision_tower" in n or ".visual." in n)
    }
    assert vision_grads and all(g is not None and float(g.abs().sum()) == 0.0 for g in vision_grads.values()), [
        n for n, g in vision_grads.items() if g is None
    ]
    trainer.model.zero_grad(set_to_none=True)
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2]


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tiny_llava_path, pref_data, tmp_path):
    """DDP on CPU (gloo) through `accelerate launch`, the documented multi-GPU entry point; one rank's micro-batch
    is text-only while the other's has images."""
    import os
    import subprocess
    import sys

    records = [json.loads(line) for line in pref_data.read_text().splitlines()]
    for i, rec in enumerate(records):
        rec["image_w"] = str(pref_data.parent / rec["image_w"]) if i % 2 == 0 else None
        rec["image_l"] = None
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "harness",
        "--log-level",
        "WARNING",
        "train",
        "--method",
        "dpo",
        "--model",
        tiny_llava_path,
        "--data",
        str(data),
        "--output",
        str(out),
        "--lora",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--modules",
        "language_model,vision_tower,projector",
        "--max-steps",
        "4",
        "--batch-size",
        "1",
        *map(str, FAST[2:]),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()


# --------------------------------------------------------------------------------------------------- the CLI


def run_cli(*args) -> int:
    return main(["--log-level", "WARNING", *map(str, args)])


FAST = [
    "--batch-size",
    2,
    "--grad-accum",
    1,
    "--no-bf16",
    "--no-gradient-checkpointing",
    "--report-to",
    "none",
    "--lr",
    "1e-3",
    "--warmup-ratio",
    0,
]


def test_train_lora_then_harness_run_evaluates_the_checkpoint(tiny_llava_path, pref_data, tmp_path, capsys):
    """The issue's "done when": a checkpoint written by `harness train` is evaluated by `harness run`."""
    out = tmp_path / "jompo"
    code = run_cli(
        "train",
        "--config",
        REPO / "configs/jompo_llava15_7b.yaml",
        "--model",
        tiny_llava_path,
        "--data",
        pref_data,
        "--output",
        out,
        "--lora",
        "--lora-r",
        4,
        "--lora-alpha",
        8,
        "--max-steps",
        2,
        *FAST,
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip().endswith(str(out))
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "config.json").is_file() and (out / "processor_config.json").is_file()
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["method"] == "jompo" and saved["beta"] == 0.05 and saved["lora"] is True and saved["max_steps"] == 2
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora" in k for k in keys)  # merged
    assert any(k.startswith("vision_tower.vision_model.") for k in keys)  # llava-hf / vLLM names
    assert any(k.startswith("language_model.model.") for k in keys)

    code = run_cli(
        "run", "--model", out, "--tasks", "toy_amber", "--limit", 4, "--output-path", tmp_path / "runs", "--no-progress"
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "runs" / "jompo" / "toy_amber" / "metrics.json").read_text())
    assert metrics["counts"]["samples"] == 4 and metrics["counts"]["failed"] == 0


def test_resume_continues_the_step_count(tiny_llava_path, pref_data, tmp_path, capsys):
    out = tmp_path / "dpo"
    common = [
        "train",
        "--method",
        "dpo",
        "--model",
        tiny_llava_path,
        "--data",
        pref_data,
        "--output",
        out,
        "--full",
        "--save-steps",
        2,
        *FAST,
    ]
    assert run_cli(*common, "--max-steps", 2) == 0
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    capsys.readouterr()

    assert run_cli(*common, "--max-steps", 4) == 2  # checkpoints there and no --resume: refused
    assert "--resume" in capsys.readouterr().err

    assert run_cli(*common, "--max-steps", 4, "--resume") == 0
    capsys.readouterr()
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == [1, 2, 3, 4]  # the resumed run's log continues the first one's


def test_recipes_hold_the_paper_settings():
    sft = load_config(REPO / "configs/sft_llava15.yaml")
    assert (sft.method, sft.lora, sft.lora_r, sft.lora_alpha, sft.epochs, sft.batch_size, sft.grad_accum) == (
        "sft",
        True,
        256,
        512,
        2.0,
        4,
        4,
    )
    assert set(sft.modules) == {"language_model", "vision_tower", "projector"}
    for method in ("jompo", "dpo", "mpo"):
        for model in ("llava15_7b", "llava15_13b", "qwen2vl_7b"):
            c = load_config(REPO / f"configs/{method}_{model}.yaml")
            assert c.method == method
            assert (c.lr, c.lr_scheduler, c.warmup_ratio, c.beta, c.epochs, c.batch_size, c.grad_accum, c.bf16) == (
                5e-7,
                "cosine",
                0.03,
                0.05,
                2.0,
                4,
                8,
                True,
            )
    assert load_config(REPO / "configs/mpo_llava15_7b.yaml").rejected_image == "crop"
    for name in ("zero2", "zero3", "fsdp"):
        import yaml

        cfg = yaml.safe_load((REPO / f"configs/accelerate/{name}.yaml").read_text())
        assert cfg["mixed_precision"] == "bf16"
    # flags override the recipe; None means "not given"
    c = load_config(REPO / "configs/jompo_llava15_7b.yaml", {"lr": 1e-6, "beta": None})
    assert c.lr == 1e-6 and c.beta == 0.05


def test_unknown_yaml_key_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method: jompo\nbeta: 0.1\nlearning_rate: 1e-6\n")
    with pytest.raises(ConfigError) as err:
        read_recipe(recipe)
    assert str(recipe) in str(err.value) and "learning_rate" in str(err.value) and "lr" in str(err.value)


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "case", ["missing_data", "malformed", "unknown_method", "unknown_key", "bad_value", "no_image_l"]
)
def test_bad_input_is_one_clear_error(case, tiny_llava_path, pref_data, tmp_path, capsys):
    data = pref_data
    args = ["--method", "jompo"]
    if case == "missing_data":
        data = tmp_path / "nope.jsonl"
    elif case == "malformed":
        data = tmp_path / "bad.jsonl"
        data.write_text(pref_data.read_text().splitlines()[0] + "\n" + '{"id": "x", "question": "q"}\n')
        args += ["--image-root", pref_data.parent]
    elif case == "unknown_method":
        args = ["--method", "jmpo"]
    elif case == "unknown_key":
        recipe = tmp_path / "r.yaml"
        recipe.write_text("method: dpo\nbetaa: 0.1\n")
        args = ["--config", recipe]
    elif case == "bad_value":
        args = ["--method", "dpo", "--rejected-image", "blur"]
    elif case == "no_image_l":
        data = tmp_path / "nol.jsonl"
        rec = json.loads(pref_data.read_text().splitlines()[0])
        rec["image_w"] = str(pref_data.parent / rec["image_w"])
        rec["image_l"] = None
        data.write_text(json.dumps(rec) + "\n")
    code = run_cli("train", *args, "--model", tiny_llava_path, "--data", data, "--output", tmp_path / "o", *FAST)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.startswith("harness: error:")
    expected = {
        "missing_data": "nope.jsonl",
        "malformed": "line 2",
        "unknown_method": "did you mean jompo",
        "unknown_key": "betaa",
        "bad_value": "blur",
        "no_image_l": "image_l",
    }[case]
    assert expected in err, err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_gpu_check_runs_its_phases_on_a_tiny_model_on_cpu(monkeypatch):
    """`bench/gpu_check.py --size small`: the GPU check's code (generation, DPO/MPO/JoMPO steps, our trainer's and
    TRL's DPO step) on a tiny model on CPU, one JSON-serialisable result with no failed phase."""
    import importlib.util
    import sys

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)
    spec.loader.exec_module(gpu_check)
    threads = torch.get_num_threads()
    try:
        result = gpu_check.run(gpu_check.parse_args(["--size", "small", "--steps", "1"]))
    finally:
        torch.set_num_threads(threads)
    json.dumps(result)
    assert result["device"] == "cpu" and result["model"]["image_tokens"] == 16
    failed = {k: v for k, v in result.items() if isinstance(v, dict) and ("error" in v or "skipped" in v)}
    assert not failed, failed
    gen = result["generation"]
    assert gen["generated_tokens"] == gen["requests"] * gen["new_tokens_per_request"]  # no early stop: fixed lengths
    steps = result["steps"]
    assert [steps[m]["rows_per_example"] for m in ("dpo", "mpo", "jompo")] == [2, 3, 6]
    assert all(steps[m]["tokens_per_s"] > 0 and steps[m]["model_tflops_per_step"] > 0 for m in ("dpo", "mpo", "jompo"))
    trainers = result["trainers"]
    assert trainers["ours_dpo"]["step_seconds"] > 0
    assert "trl_dpo" in trainers and ("step_seconds" in trainers["trl_dpo"] or "skipped" in trainers["trl_dpo"])
