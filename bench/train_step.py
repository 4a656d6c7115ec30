"""Benchmark: seconds per example of a preference-training step, JoMPO vs MPO vs DPO, and our DPO vs trl.DPOTrainer.

Everything is measured in the same run, on the same tiny LLaVA-1.5 model (built in code), data and settings (full
fine-tuning, frozen reference copy, float32, per-device batch 4, no gradient accumulation), and the ratios are
printed against the baselines measured here:

- JoMPO / DPO: JoMPO scores 6 rows per example against DPO's 2 (MPO: 3), in one forward; goal <= 2.0
  (``--goal-jompo``);
- our DPO / trl.DPOTrainer's DPO (trl's vision path with the processor as processing_class): goal <= 0.92
  (``--goal-trl``).

A timing is ``Trainer.train()``'s ``train_runtime`` over ``--steps`` optimizer steps (collation, policy forward and
backward, reference forward, optimizer step), after a warm-up run of each trainer; the four trainers then take turns
for ``--repeats`` rounds (a load that changes during the run weighs on all of them alike) and the best run of each
is kept. The ratios of single rounds are printed beside them: on a shared machine they spread widely.

Measured with ``--steps 8 --repeats 8 --threads 1`` on 2 shared CPU cores (two runs): JoMPO/DPO 1.62 and 1.82
(rounds 1.31-2.08), our DPO / trl 0.62 and 0.55 (rounds 0.48-0.72). A JoMPO micro-batch of 4 examples holds 24
rows and 1,360 tokens against DPO's 8 rows and 496 tokens (3x rows, 2.7x tokens). Collation tokenizes every
distinct text of the micro-batch in one processor call (the ``m_w`` and ``m_l`` rows of a response share one
text). The language model runs on the rows packed as prefix trees (:func:`trainers.logprobs.row_logps`): a prefix
that rows share (the system prompt, a prompt with its image, the start of the responses) is computed once, so the
micro-batch is 4 sequences of 118 positions for JoMPO (472 against 1,488 padded row positions) and 2 of 100 for
DPO (200 against 496). Per example, timed inside ``train()`` (ms, DPO -> JoMPO): policy forward 2.1 -> 3.5,
reference forward 1.7 -> 3.1, the whole training step 5.8 -> 11.0 (unpacked rows and one tokenizer call per
text: 3.0 -> 10.0, 2.7 -> 9.8 and 9.3 -> 32.1). The reference forward costs what the policy forward does; it runs
under ``torch.inference_mode``, in eval mode, in the policy's dtype, and encodes the batch's unique images once.

``--gpu-7b`` instead times a JoMPO step in bf16 on a LLaVA-1.5-7B-sized random model on CUDA (LoRA r=256 on the
language model, the reference is the adapter disabled; 4 examples = 24 rows of ~680 tokens) and prints tokens/s
and the model FLOPs utilization against ``--peak-tflops`` (H100/H200 dense bf16: 989). ``--gpu-7b --size small``
runs the same code on a small model, on CPU, as a check.

    python bench/train_step.py [--steps 8] [--repeats 3] [--threads 1]
    python bench/train_step.py --gpu-7b [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import harness  # noqa: E402, F401  (torchvision import hook before transformers)

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square"]
CORPUS = [
    "there is a red circle on the left .",
    "there is a blue square on the right .",
    "a green triangle is above a yellow circle .",
    "what colour is the shape ? it is red .",
    "describe the image . the image shows a small blue triangle and a large green circle .",
]


def _draw(colour: str, shape: str, size: int = 48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    box = (size // 8, size // 8, size - size // 8, size - size // 8)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=colour)
    return img


def make_data(root: Path, n: int) -> Path:
    """``n`` contrast records (two images differing in colour, each answer grounded in one)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        c1, c2 = COLOURS[i % 4], COLOURS[(i + 1) % 4]
        shape = SHAPES[(i // 4) % 2]
        _draw(c1, shape).save(root / f"img/{i}w.png")
        _draw(c2, shape).save(root / f"img/{i}l.png")
        lines.append(
            json.dumps(
                {
                    "id": f"ex{i}",
                    "question": "describe the image .",
                    "image_w": f"img/{i}w.png",
                    "image_l": f"img/{i}l.png",
                    "y_w": f"the image shows a {c1} {shape} .",
                    "y_l": f"the image shows a {c2} {shape} .",
                }
            )
        )
    path = root / "pref.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def interleaved_runtimes(trainers: dict, repeats: int) -> dict[str, list[float]]:
    """``train()``'s ``train_runtime`` of each trainer, ``repeats`` times, the trainers taking turns (a load that
    drifts during the run then weighs on all of them alike); each trainer first runs once as a warm-up."""
    for trainer in trainers.values():
        trainer.train()  # warm-up (allocator, kernels, first-call costs)
    times: dict[str, list[float]] = {key: [] for key in trainers}
    for _ in range(repeats):
        for key, trainer in trainers.items():
            times[key].append(trainer.train().metrics["train_runtime"])
    return times


def ours(method: str, model: str, data: Path, out: Path, steps: int, batch: int):
    from trainers.config import TrainConfig
    from trainers.trainer import build_preference_trainer

    config = TrainConfig(
        method=method,
        model=model,
        data=str(data),
        output=str(out),
        lora=False,
        bf16=False,
        reference="copy",
        batch_size=batch,
        grad_accum=1,
        max_steps=steps,
        lr=1e-5,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        logging_steps=steps,
        save_steps=10**6,
        report_to=["none"],
    )
    trainer = build_preference_trainer(config)
    trainer.args.disable_tqdm = True
    return _quiet(trainer)


def trl_dpo(model: str, data: Path, out: Path, steps: int, batch: int):
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    from harness.models import resolve_model
    from trainers.data import read_preferences

    _, family = resolve_model(model)
    examples = read_preferences(data)
    records = [
        {
            "image": Image.open(e.image_w).convert("RGB"),
            "prompt": "<s>" + family.render_prompt(e.question, 1),
            "chosen": f" {e.y_w}</s>",
            "rejected": f" {e.y_l}</s>",
        }
        for e in examples
    ]
    args = DPOConfig(
        output_dir=str(out),
        beta=0.05,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        logging_steps=steps,
        save_steps=10**6,
        report_to=[],
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = DPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32),
        ref_model=AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=AutoProcessor.from_pretrained(model),
    )
    return _quiet(trainer)


def cpu_benchmark(args: argparse.Namespace) -> None:
    import torch

    from harness.models.tiny import build_tiny_llava

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(build_tiny_llava(root / "llava", CORPUS, seed=0))
        data = make_data(root / "data", args.batch * args.steps)
        trainers = {m: ours(m, model, data, root / m, args.steps, args.batch) for m in ("dpo", "mpo", "jompo")}
        trainers["trl_dpo"] = trl_dpo(model, data, root / "trl", args.steps, args.batch)
        runs = interleaved_runtimes(trainers, args.repeats)
    per_example = {k: [t / (args.steps * args.batch) for t in v] for k, v in runs.items()}
    times = {k: min(v) for k, v in per_example.items()}
    print(
        f"tiny LLaVA-1.5, CPU ({args.threads} thread(s)), per-device batch {args.batch}, {args.steps} steps, "
        f"best of {args.repeats} interleaved runs"
    )
    print(f"{'step':<18}{'rows/example':>13}{'ms/example':>12}{'ratio':>8}{'slowest run':>13}")
    rows = {"dpo": 2, "mpo": 3, "jompo": 6, "trl_dpo": 2}
    labels = {"dpo": "DPO (ours)", "mpo": "MPO (ours)", "jompo": "JoMPO (ours)", "trl_dpo": "DPO (trl)"}
    for key in ("dpo", "mpo", "jompo", "trl_dpo"):
        base = times["trl_dpo"] if key == "trl_dpo" else times["dpo"]
        print(
            f"{labels[key]:<18}{rows[key]:>13}{times[key] * 1e3:>12.2f}{times[key] / base:>8.2f}"
            f"{max(per_example[key]) * 1e3:>13.2f}"
        )
    jompo_ratio = times["jompo"] / times["dpo"]
    trl_ratio = times["dpo"] / times["trl_dpo"]
    # the ratios of each round of the interleaved runs: their spread is the noise of this machine
    rounds = [(j / d, d / t) for d, j, t in zip(runs["dpo"], runs["jompo"], runs["trl_dpo"], strict=True)]
    spread_j = f"{min(r[0] for r in rounds):.2f}-{max(r[0] for r in rounds):.2f}"
    spread_t = f"{min(r[1] for r in rounds):.2f}-{max(r[1] for r in rounds):.2f}"
    print(
        f"JoMPO/DPO time ratio: {jompo_ratio:.2f} (goal <= {args.goal_jompo}: "
        f"{'met' if jompo_ratio <= args.goal_jompo else 'NOT met'}; per round {spread_j})"
    )
    print(f"MPO/DPO time ratio: {times['mpo'] / times['dpo']:.2f}")
    print(
        f"our DPO / trl.DPOTrainer ratio: {trl_ratio:.2f} (goal <= {args.goal_trl}: "
        f"{'met' if trl_ratio <= args.goal_trl else 'NOT met'}; per round {spread_t})"
    )


# ------------------------------------------------------------------------------------------------ GPU, 7B-sized


def _llava_config(size: str, token_ids: dict[str, int] | None = None, vocab_size: int | None = None):
    """(LlavaConfig, image tokens) of a LLaVA-1.5-7B-shaped (``"7b"``) or a small model; ``token_ids`` (``bos``,
    ``eos``, ``pad``, ``image``) and ``vocab_size`` match it to a tokenizer (default: the image token is the last
    id)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    ids = dict(token_ids or {})
    if size == "7b":  # LLaVA-1.5-7B: CLIP ViT-L/14-336, Vicuna-7B
        vision = CLIPVisionConfig(
            image_size=336,
            patch_size=14,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            projection_dim=768,
        )
        text = LlamaConfig(
            vocab_size=vocab_size or 32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            **_special_ids(ids),
        )
    else:
        vision = CLIPVisionConfig(
            image_size=56,
            patch_size=14,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=64,
        )
        text = LlamaConfig(
            vocab_size=vocab_size or 1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
            **_special_ids(ids),
        )
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids.get("image", text.vocab_size - 1),
        image_seq_length=image_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return config, image_tokens


def _special_ids(ids: dict[str, int]) -> dict[str, int]:
    return {f"{name}_token_id": ids[name] for name in ("bos", "eos", "pad") if name in ids}


def preference_rows(
    config, image_tokens: int, rows_needed, n_examples: int, prompt_len: int, response_len: int, device
):
    """A micro-batch of ``rows_needed`` ((condition, response) pairs, the collator's order: example-major) as the
    collator would give it, random token ids: per example a prompt, two responses and three images (``m_w``,
    ``m_l``, the rejected image ``rej``), of which the rows show those they need; ``none`` rows show none."""
    import torch

    from trainers.logprobs import IGNORE_INDEX, RowBatch

    gen = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size - 1
    image_id = config.image_token_index
    conditions = [c for c in ("w", "l", "rej") if any(cond == c for cond, _ in rows_needed)]
    seqs, labels, image_index = [], [], []
    for ex in range(n_examples):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=gen)
        prompt[prompt == image_id] = 3
        responses = {r: torch.randint(3, vocab, (response_len,), generator=gen) for r in ("w", "l")}
        for resp in responses.values():
            resp[resp == image_id] = 3
        for cond, r in rows_needed:
            resp = responses[r]
            img = torch.full((image_tokens,), image_id) if cond != "none" else prompt[:0]
            ids = torch.cat([prompt[:1], img, prompt[1:], resp])
            lab = torch.full_like(ids, IGNORE_INDEX)
            lab[-response_len:] = resp
            seqs.append(ids)
            labels.append(lab)
            image_index.append(-1 if cond == "none" else len(conditions) * ex + conditions.index(cond))
    width = max(len(x) for x in seqs)
    n = len(seqs)
    input_ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    lab = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, l_) in enumerate(zip(seqs, labels)):
        input_ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
        lab[i, : len(x)] = l_
    size = config.vision_config.image_size
    pixels = torch.randn((len(conditions) * n_examples, 3, size, size), generator=gen) if conditions else None
    batch = RowBatch(
        input_ids=input_ids,
        attention_mask=mask,
        labels=lab,
        image_index=torch.tensor(image_index),
        keys=[(i,) for i in range(n)],
        pixel_values=pixels,
        family="llava",
        template="llava_v1",
    )
    return batch.to(device)


def _jompo_rows(config, image_tokens: int, n_examples: int, prompt_len: int, response_len: int, device):
    """A JoMPO micro-batch as the collator would give it: per example 6 rows ({m_w, m_l, none} x {y_w, y_l}),
    2 unique images; random token ids."""
    order = [(c, r) for c in ("w", "l", "none") for r in ("w", "l")]
    return preference_rows(config, image_tokens, order, n_examples, prompt_len, response_len, device)


def gpu_benchmark(args: argparse.Namespace) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from trainers.logprobs import row_logps
    from trainers.losses import compute_loss, get_method
    from trainers.trainer import lora_target_modules

    device = torch.device("cuda" if torch.cuda.is_available() and args.size == "7b" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, image_tokens = _llava_config(args.size)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    lm_params = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n)
    model = get_peft_model(
        model,
        LoraConfig(
            r=256 if args.size == "7b" else 8,
            lora_alpha=512 if args.size == "7b" else 16,
            lora_dropout=0.0,
            target_modules=lora_target_modules(model, ["language_model"]),
        ),
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    loss_config = get_method("jompo")
    batch = _jompo_rows(config, image_tokens, args.batch, prompt_len=48, response_len=64, device=device)
    rows_needed = [("w", "w"), ("w", "l"), ("l", "w"), ("l", "l"), ("none", "w"), ("none", "l")]
    order = [(c, r) for c in ("w", "l", "none") for r in ("w", "l")]  # the order _jompo_rows builds
    tokens = int(batch.attention_mask.sum())

    def split(values):
        per = values.view(args.batch, 6)
        return {row: per[:, order.index(row)] for row in rows_needed}

    def step() -> None:
        logps = row_logps(model, "llava", batch)
        with torch.no_grad(), model.disable_adapter():
            ref = row_logps(model, "llava", batch)
        loss, _ = compute_loss(loss_config, split(logps), split(ref))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    # model FLOPs (no recomputation counted): policy forward 2NT + backward through the frozen base 2NT (activation
    # gradients; LoRA weight gradients are negligible) + reference forward 2NT, N = language-model parameters, T =
    # tokens; the vision tower's share (0.3B params on 2 images per example) is left out.
    flops = 6 * lm_params * tokens
    print(
        f"JoMPO step, LLaVA-1.5-{args.size}-sized random model ({n_params / 1e9:.2f}B params), {device.type}, "
        f"{str(dtype).replace('torch.', '')}, LoRA on the LM, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}"
    )
    print(
        f"{args.batch} examples = {len(batch)} rows, {tokens} tokens per step; {seconds:.3f} s/step, "
        f"{seconds / args.batch:.3f} s/example, {tokens / seconds:,.0f} tokens/s"
    )
    if device.type == "cuda":
        print(
            f"model FLOPs utilization: {flops / seconds / (args.peak_tflops * 1e12) * 100:.1f}% "
            f"of {args.peak_tflops:.0f} TFLOP/s ({torch.cuda.get_device_name()}); "
            f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier timings on a shared box)")
    parser.add_argument("--goal-jompo", type=float, default=2.0, help="JoMPO/DPO step-time goal (default 2.0)")
    parser.add_argument("--goal-trl", type=float, default=0.92, help="our DPO / trl DPO goal (default 0.92)")
    parser.add_argument("--gpu-7b", action="store_true", help="time a bf16 JoMPO step on a 7B-sized model (CUDA)")
    parser.add_argument("--size", choices=["7b", "small"], default="7b", help="with --gpu-7b: model size")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)
    if args.gpu_7b:
        gpu_benchmark(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
