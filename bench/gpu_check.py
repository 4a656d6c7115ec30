"""GPU check: preference-training steps and generation on a LLaVA-1.5-7B-shaped model, one JSON on stdout.

Everything runs from configs in code, no download: the model is built with random bf16 weights
(``bench/train_step.py``'s ``_llava_config("7b")``: CLIP ViT-L/14-336 + a Vicuna-7B-shaped Llama, 7.1B
parameters), next to a skeleton checkpoint folder (``config.json`` and a processor: a word-level tokenizer of the
model's 32,064 ids, CLIP's 336-px image processor, the llava_v1 chat template; no weights) for the code that reads
one. The phases, each timed after a warm-up step, with CUDA synchronised:

1. **generation**: the ``hf`` engine (:class:`harness.engines.hf.HFEngine`, its model load replaced by the
   in-memory model) on ``--gen-requests`` 336-px image questions, ``--gen-tokens`` new tokens each: generated
   tokens/s and requests/s;
2. **steps**: one DPO, MPO and JoMPO step (LoRA r=256 on the language model, reference = adapter disabled,
   gradient checkpointing, AdamW) on a micro-batch of ``--batch`` examples built as the collator does (2, 3 and 6
   rows per example; 576 image tokens per image row, ~``--response-tokens`` tokens per response): step time,
   tokens/s, peak memory and MFU (model FLOPs: ``6 N T`` for the language model's ``N`` parameters over the ``T``
   tokens, policy forward + backward + reference forward, plus ``4 N_vision`` per image token for the two vision
   forwards; gradient-checkpointing recomputation not counted) against ``--peak-tflops`` (H100/H200 dense bf16:
   989);
3. **trainers**: a DPO step through our :class:`trainers.trainer.PreferenceTrainer` (collator: 336-px PNGs on
   disk, tokenization, the Trainer loop) and through ``trl.DPOTrainer`` beside it on the same records, model and
   settings, when trl imports (``--extra-path`` adds folders or pure-Python wheels to ``sys.path`` first); step
   time is the median interval between optimizer steps.

Phases that would start after ``--time-budget`` seconds are skipped (reported as such), so a run fits its slot.

    python bench/gpu_check.py                     # on the GPU (bf16, 7B-shaped)
    python bench/gpu_check.py --size small        # the same code on CPU with a tiny model (also: --dry-run)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WORDS = [
    "there",
    "is",
    "a",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "triangle",
    "on",
    "the",
    "left",
    "right",
    "above",
    "below",
    "image",
    "shows",
    "small",
    "large",
    "shape",
    "what",
    "colour",
    "how",
    "many",
    "shapes",
    "are",
    "two",
    "describe",
    "it",
]
METHOD_ROWS = {"dpo": 2, "mpo": 3, "jompo": 6}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["7b", "small"], default="7b", help="model size (small: CPU, tiny)")
    p.add_argument("--dry-run", action="store_true", help="the same as --size small")
    p.add_argument("--batch", type=int, default=None, help="examples per micro-batch (default 4; small: 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per phase after a warm-up (default 3)")
    p.add_argument("--response-tokens", type=int, default=None, help="tokens per response (default 300; small 24)")
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--gen-requests", type=int, default=None, help="generation requests (default 32; small 4)")
    p.add_argument("--gen-tokens", type=int, default=None, help="new tokens per request (default 128; small 8)")
    p.add_argument("--gen-batch", type=int, default=16, help="hf engine batch size")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 256; small 8)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds after which phases are skipped")
    p.add_argument("--phases", default="generation,steps,trainers", help="comma-separated phases to run")
    p.add_argument("--extra-path", action="append", default=[], help="a folder or wheel put on sys.path (trl)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (small mode; default 1)")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.size = "small"
    small = args.size == "small"
    defaults = {
        "batch": (4, 2),
        "steps": (3, 2),
        "response_tokens": (300, 24),
        "gen_requests": (32, 4),
        "gen_tokens": (128, 8),
        "lora_r": (256, 8),
        "threads": (None, 1),
    }
    for name, (big, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else big)
    return args


# ------------------------------------------------------------------------------------------------- the model


def build_skeleton(folder: Path, size: str) -> tuple[Any, int, dict[str, int]]:
    """``config.json`` + processor of the model in ``folder`` (no weights); returns (LlavaConfig, image tokens,
    special token ids). The tokenizer is word-level with exactly the model's vocabulary size (filler words), so
    every id the random model generates decodes."""
    from train_step import _llava_config
    from transformers import CLIPImageProcessor, LlavaProcessor

    from harness.models import tiny

    vocab_size = 32064 if size == "7b" else 1000

    def tokenizer_with(fillers: int) -> Any:
        corpus = [" ".join(WORDS), tiny.LLAVA_TEMPLATE_TEXT, " ".join(f"tok{i}" for i in range(fillers))]
        return tiny.word_level_tokenizer(
            corpus,
            tiny.LLAVA_SPECIALS,
            bos="<s>",
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )

    base = len(tokenizer_with(0))
    tokenizer = tokenizer_with(vocab_size - base)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} ids, expected {vocab_size}")
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"), ("image", "<image>"))
    }
    config, image_tokens = _llava_config(size, token_ids=ids, vocab_size=vocab_size)
    config.architectures = ["LlavaForConditionalGeneration"]
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    side = config.vision_config.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True
        ),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tiny.LLAVA_V1_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    tokenizer.chat_template = tiny.LLAVA_V1_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return config, image_tokens, ids


def build_model(config: Any, device: Any, dtype: Any) -> Any:
    """The model of ``config`` with random weights, built directly on ``device`` in ``dtype``."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
    )
    # random weights: EOS, padding and the image token are never generated, so every request runs to its budget
    model.generation_config.suppress_tokens = [text.eos_token_id, text.pad_token_id, config.image_token_index]
    return model


def param_counts(model: Any) -> dict[str, int]:
    total = lm = vision = embed = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if "vision_tower" in name:
            vision += p.numel()
        elif "embed_tokens" in name:
            embed += p.numel()
        elif "language_model" in name or "lm_head" in name:
            lm += p.numel()
    return {"total": total, "language_model": lm, "vision_tower": vision, "embeddings": embed}


# ------------------------------------------------------------------------------------------------- measurement


class Clock:
    def __init__(self, device: Any):
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def model_flops(counts: dict[str, int], tokens: int, image_tokens_total: int) -> float:
    """Model FLOPs of one preference step (see the module docstring)."""
    return 6.0 * counts["language_model"] * tokens + 4.0 * counts["vision_tower"] * image_tokens_total


def phase_generation(args: argparse.Namespace, folder: Path, model: Any, device: Any, clock: Clock) -> dict:
    from unittest import mock

    import transformers
    from PIL import Image

    from harness.engines import EngineOptions
    from harness.engines.hf import HFEngine
    from harness.types import Decoding, Request

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    with mock.patch.object(transformers.AutoModelForImageTextToText, "from_pretrained", return_value=model):
        engine = HFEngine(
            str(folder),
            Decoding(max_new_tokens=args.gen_tokens),
            EngineOptions(batch_size=args.gen_batch, dtype=dtype, device=device.type),
        )
    side = model.config.vision_config.image_size
    images = [Image.new("RGB", (side, side), colour) for colour in ("red", "blue", "green", "yellow")]
    requests = [
        Request(
            sample_id=str(i), prompt="describe the image .", images=(images[i % 4],), max_new_tokens=args.gen_tokens
        )
        for i in range(args.gen_requests)
    ]
    list(engine.generate(requests[: min(len(requests), args.gen_batch)]))  # warm-up
    clock.reset_peak()
    clock.sync()
    t0 = time.perf_counter()
    responses = list(engine.generate(requests))
    clock.sync()
    seconds = time.perf_counter() - t0
    generated = sum(r.completion_tokens or 0 for r in responses)
    return {
        "engine": "hf",
        "requests": len(responses),
        "batch_size": args.gen_batch,
        "new_tokens_per_request": args.gen_tokens,
        "generated_tokens": generated,
        "seconds": seconds,
        "generated_tokens_per_s": generated / seconds,
        "requests_per_s": len(responses) / seconds,
        "prompt_tokens_per_request": responses[0].prompt_tokens if responses else None,
        "peak_memory_gib": clock.peak_gib(),
    }


def add_lora(model: Any, args: argparse.Namespace) -> Any:
    from peft import LoraConfig, get_peft_model

    from trainers.trainer import enable_row_forward, lora_target_modules

    enable_row_forward(model, "llava")
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules=lora_target_modules(model, ["language_model"]),
        ),
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    return model


def phase_steps(
    args: argparse.Namespace,
    model: Any,
    config: Any,
    image_tokens: int,
    counts: dict[str, int],
    device: Any,
    clock: Clock,
    deadline: float,
) -> dict:
    """One raw step per method: policy forward + backward, adapter-disabled reference forward, AdamW."""
    import torch
    from train_step import preference_rows

    from trainers.losses import get_method, required_rows

    out: dict[str, Any] = {}
    for method in ("dpo", "mpo", "jompo"):
        if time.monotonic() > deadline:
            out[method] = {"skipped": "time budget"}
            continue
        loss_config = get_method(method)
        rows_needed = list(required_rows(loss_config))
        batch = preference_rows(
            config, image_tokens, rows_needed, args.batch, args.prompt_tokens, args.response_tokens, device
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        step = functools.partial(_raw_step, model, batch, loss_config, rows_needed, args.batch, optimizer)
        step()  # warm-up
        clock.sync()
        clock.reset_peak()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        clock.sync()
        seconds = (time.perf_counter() - t0) / args.steps
        tokens = int(batch.attention_mask.sum())
        image_rows = int((batch.image_index >= 0).sum())
        flops = model_flops(counts, tokens, image_rows * image_tokens)
        out[method] = {
            "rows": len(batch),
            "rows_per_example": len(rows_needed),
            "tokens": tokens,
            "step_seconds": seconds,
            "seconds_per_example": seconds / args.batch,
            "tokens_per_s": tokens / seconds,
            "model_tflops_per_step": flops / 1e12,
            "mfu": _mfu(flops, seconds, args, device),
            "peak_memory_gib": clock.peak_gib(),
        }
        del optimizer, batch, step
        _free(device)
    if "step_seconds" in out.get("jompo", {}) and "step_seconds" in out.get("dpo", {}):
        out["jompo_over_dpo"] = out["jompo"]["step_seconds"] / out["dpo"]["step_seconds"]
    return out


def _raw_step(model: Any, batch: Any, loss_config: Any, rows_needed: list, n_examples: int, optimizer: Any) -> None:
    import torch

    from trainers.logprobs import row_logps
    from trainers.losses import compute_loss

    def split(values: torch.Tensor) -> dict:
        per = values.view(n_examples, len(rows_needed))
        return {row: per[:, j] for j, row in enumerate(rows_needed)}

    logps = row_logps(model, "llava", batch)
    with torch.no_grad(), model.disable_adapter():
        ref = row_logps(model, "llava", batch)
    loss, _ = compute_loss(loss_config, split(logps), split(ref))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _mfu(flops: float, seconds: float, args: argparse.Namespace, device: Any) -> float | None:
    return flops / seconds / (args.peak_tflops * 1e12) if device.type == "cuda" else None


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_records(root: Path, n: int, side: int, response_tokens: int) -> list[Any]:
    """``n`` contrast records with ``side``-px PNG images on disk and responses of ``response_tokens`` words."""
    from PIL import Image, ImageDraw

    from trainers.data import PreferenceExample

    (root / "img").mkdir(parents=True, exist_ok=True)
    colours = ["red", "blue", "green", "yellow"]
    examples = []
    for i in range(n):
        paths = []
        for tag, colour in (("w", colours[i % 4]), ("l", colours[(i + 1) % 4])):
            img = Image.new("RGB", (side, side), "white")
            ImageDraw.Draw(img).ellipse((side // 8, side // 8, side - side // 8, side - side // 8), fill=colour)
            path = root / f"img/{i}{tag}.png"
            img.save(path)
            paths.append(str(path))

        def words(seed: int) -> str:
            return " ".join(WORDS[(seed * 7 + k * 3) % len(WORDS)] for k in range(response_tokens - 1))

        examples.append(
            PreferenceExample(
                id=f"ex{i}",
                question="describe the image .",
                image_w=paths[0],
                image_l=paths[1],
                y_w=words(i),
                y_l=words(i + 1),
            )
        )
    return examples


def _step_timer(clock: Clock) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            clock.sync()
            self.ends.append(time.perf_counter())

    return StepTimer()


def _step_seconds(timer: Any) -> float:
    gaps = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def phase_trainers(
    args: argparse.Namespace,
    folder: Path,
    model: Any,
    counts: dict[str, int],
    image_tokens: int,
    device: Any,
    clock: Clock,
    deadline: float,
    tmp: Path,
) -> dict:
    """A DPO step through our PreferenceTrainer and through trl.DPOTrainer, same records, model and settings."""
    import torch
    import transformers

    from harness.models import resolve_model
    from trainers.losses import get_method, required_rows
    from trainers.trainer import (
        PreferenceCollator,
        PreferenceDataset,
        PreferenceTrainer,
    )

    side = model.config.vision_config.image_size
    _, family = resolve_model(str(folder))
    processor = transformers.AutoProcessor.from_pretrained(str(folder))
    examples = make_records(tmp / "records", args.batch * (args.steps + 1), side, args.response_tokens)
    loss_config = get_method("dpo", beta=0.1)
    rows_needed = required_rows(loss_config)
    collator = PreferenceCollator(family, processor, rows_needed)
    batch = collator(examples[: args.batch])["rows"]
    tokens = int(batch.attention_mask.sum())
    flops = model_flops(counts, tokens, int((batch.image_index >= 0).sum()) * image_tokens)
    bf16 = device.type == "cuda"
    common = {
        "per_device_train_batch_size": args.batch,
        "max_steps": args.steps + 1,
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": [],
        "bf16": bf16,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "remove_unused_columns": False,
        "use_cpu": device.type != "cuda",
    }
    out: dict[str, Any] = {"tokens_per_step": tokens, "model_tflops_per_step": flops / 1e12}

    def record(name: str, timer: Any) -> None:
        seconds = _step_seconds(timer)
        out[name] = {
            "step_seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "mfu": _mfu(flops, seconds, args, device),
            "peak_memory_gib": clock.peak_gib(),
        }

    clock.reset_peak()
    timer = _step_timer(clock)
    ours = PreferenceTrainer(
        model=model,
        args=transformers.TrainingArguments(output_dir=str(tmp / "ours"), **common),
        train_dataset=PreferenceDataset(examples),
        data_collator=collator,
        processing_class=processor,
        loss_config=loss_config,
        rows_needed=rows_needed,
        reference="adapter",
        family=family,
        callbacks=[timer],
    )
    ours.train()
    record("ours_dpo", timer)
    del ours
    _free(device)

    if time.monotonic() > deadline:
        out["trl_dpo"] = {"skipped": "time budget"}
        return out
    try:
        import trl
        from datasets import Dataset
        from PIL import Image
        from trl import DPOConfig, DPOTrainer
    except Exception as exc:  # noqa: BLE001 - any import failure means no trl comparison
        out["trl_dpo"] = {"skipped": f"trl does not import: {type(exc).__name__}: {exc}"[:300]}
        return out
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
    clock.reset_peak()
    timer = _step_timer(clock)
    trl_common = {k: v for k, v in common.items() if k != "remove_unused_columns"}
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=DPOConfig(
            output_dir=str(tmp / "trl"), beta=0.1, max_length=None, gradient_checkpointing=False, **trl_common
        ),
        train_dataset=Dataset.from_list(records),
        processing_class=processor,
        callbacks=[timer],
    )
    trainer.train()
    record("trl_dpo", timer)
    out["trl_version"] = trl.__version__
    out["ours_over_trl"] = out["ours_dpo"]["step_seconds"] / out["trl_dpo"]["step_seconds"]
    del trainer
    _free(device)
    torch.manual_seed(0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    start = time.monotonic()
    deadline = start + args.time_budget
    for path in args.extra_path:
        sys.path.insert(0, path)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.size == "7b" and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clock = Clock(device)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    result: dict[str, Any] = {
        "size": args.size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
    }
    if args.size == "7b" and device.type != "cuda":
        result["warning"] = "no CUDA device: the 7B-shaped model runs on the CPU (use --size small for a check)"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "skeleton"
        config, image_tokens, _ = build_skeleton(folder, args.size)
        t0 = time.perf_counter()
        model = build_model(config, device, dtype)
        clock.sync()
        counts = param_counts(model)
        result["model"] = {"params": counts, "image_tokens": image_tokens, "build_seconds": time.perf_counter() - t0}
        state = {"model": model}

        def lora_model() -> Any:
            if not getattr(state["model"], "peft_config", None):
                state["model"] = add_lora(state["model"], args)
            return state["model"]

        work = {
            "generation": lambda: phase_generation(args, folder, state["model"], device, clock),
            "steps": lambda: phase_steps(args, lora_model(), config, image_tokens, counts, device, clock, deadline),
            "trainers": lambda: phase_trainers(
                args, folder, lora_model(), counts, image_tokens, device, clock, deadline, tmp
            ),
        }
        for name in ("generation", "steps", "trainers"):  # generation first: the model before LoRA wraps it
            if name not in phases:
                continue
            if time.monotonic() > deadline:
                result[name] = {"skipped": "time budget"}
                continue
            t0 = time.perf_counter()
            try:
                result[name] = work[name]()
            except Exception as exc:  # noqa: BLE001 - one failed phase must not hide the others
                result[name] = {
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-2000:],
                }
            result[name]["phase_seconds"] = time.perf_counter() - t0
            _free(device)
    result["seconds"] = time.monotonic() - start
    import resource

    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    import harness  # noqa: F401  (torchvision import hook before transformers)

    with contextlib.redirect_stdout(sys.stderr):  # libraries' prints must not mix with the JSON
        result = run(args)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
