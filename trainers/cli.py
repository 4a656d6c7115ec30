"""``harness train``: flags, the resolved :class:`~trainers.config.TrainConfig`, and dispatch to SFT or preference
training.

Settings come from :class:`~trainers.config.TrainConfig`'s defaults, then the ``--config`` YAML recipe, then the flags
given on the command line (every flag defaults to "not given", so a recipe value is only overridden on purpose).
This module imports nothing heavy until the command runs, so ``harness --help`` stays fast.

Examples::

    harness train --method sft --config configs/sft_llava15.yaml --model llava-1.5-7b-hf --data sft.jsonl --output out/sft
    harness train --config configs/jompo_llava15_7b.yaml --model out/sft --data vtc.jsonl --output out/jompo
    harness train --method mpo --lora --rejected-image diffusion --reference cache:out/ref.jsonl ...
    accelerate launch --config_file configs/accelerate/zero2.yaml -m harness train --config ... # several GPUs
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from harness.errors import ConfigError
from trainers.config import check_method, load_config

log = logging.getLogger("harness.train")

# flag dest -> TrainConfig field (the same name unless listed)
_FIELDS = {
    "method": "method",
    "model": "model",
    "data": "data",
    "output": "output",
    "image_root": "image_root",
    "data_format": "data_format",
    "template": "template",
    "rejected_image": "rejected_image",
    "corruption_seed": "corruption_seed",
    "reference": "reference",
    "reference_model": "reference_model",
    "lora": "lora",
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "modules": "modules",
    "merge_lora": "merge_lora",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "lr": "lr",
    "lr_scheduler": "lr_scheduler",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "beta": "beta",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_length": "max_length",
    "bf16": "bf16",
    "gradient_checkpointing": "gradient_checkpointing",
    "seed": "seed",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "resume": "resume",
    "report_to": "report_to",
    "dataloader_num_workers": "dataloader_num_workers",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``harness train`` (all default to None: "not given")."""
    p = parser
    p.add_argument(
        "--method",
        help="sft, dpo, mpo, jompo or an ablation (jompo_no_ranking, jompo_no_symmetry, "
        "jompo_no_both, jompo_no_ranking_text, jompo_no_ranking_noimage)",
    )
    p.add_argument("--config", metavar="YAML", help="recipe from configs/ (flags given here override it)")
    p.add_argument("--model", help="starting checkpoint (LLaVA-1.5 or Qwen2-VL, transformers layout)")
    p.add_argument(
        "--data", help="training records: preference JSONL/JSON/parquet, or SFT JSONL {id, image, question, answer}"
    )
    p.add_argument(
        "--output",
        "--output-path",
        "--output_path",
        "-o",
        dest="output",
        help="output folder: checkpoints/, the final model (loadable by `harness run`)",
    )
    p.add_argument("--image-root", help="folder that relative image paths of the data are resolved against")
    p.add_argument("--data-format", choices=["auto", "canonical", "rlaif_v", "trl", "mdpo"])
    p.add_argument("--template", help="prompt template of the model family (default: the family's own)")

    obj = p.add_argument_group("objective")
    obj.add_argument("--beta", type=float)
    obj.add_argument(
        "--rejected-image",
        metavar="STRATEGY",
        help="rejected image of MPO's image-conditional term: crop (default), diffusion, black, random, contrast",
    )
    obj.add_argument("--corruption-seed", type=int, help="seed of the rejected-image strategies")
    obj.add_argument(
        "--reference",
        metavar="MODE",
        help="adapter (LoRA disabled; default with --lora), copy (frozen copy; default otherwise) "
        "or cache:FILE (precomputed reference log-probs; computed first if FILE is missing)",
    )
    obj.add_argument("--reference-model", help="reference checkpoint for copy / cache (default: --model)")

    params = p.add_argument_group("parameters trained")
    mode = params.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_const", const=True, help="LoRA adapters")
    mode.add_argument("--full", dest="lora", action="store_const", const=False, help="full fine-tuning")
    params.add_argument("--lora-r", type=int)
    params.add_argument("--lora-alpha", type=int)
    params.add_argument("--lora-dropout", type=float)
    params.add_argument(
        "--modules",
        help="comma-separated: language_model, vision_tower, projector (LoRA targets, "
        "or the parts full fine-tuning trains)",
    )
    params.add_argument(
        "--merge-lora",
        action=argparse.BooleanOptionalAction,
        help="with LoRA, also write the merged model to --output (default: on)",
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=float)
    opt.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    opt.add_argument("--lr", type=float, help="learning rate")
    opt.add_argument("--lr-scheduler", choices=["cosine", "linear", "constant", "constant_with_warmup"])
    opt.add_argument("--warmup-ratio", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--batch-size", type=int, help="examples per device per micro-batch")
    opt.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    opt.add_argument("--max-length", type=int, help="tokens per row (responses are cut, never prompts)")
    opt.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 mixed precision (CUDA)")
    opt.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    opt.add_argument("--seed", type=int)

    run = p.add_argument_group("run")
    run.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from the last complete checkpoint in OUTPUT/checkpoints (weights, optimizer, "
        "scheduler, RNG state); incomplete ones are skipped with a warning",
    )
    run.add_argument("--logging-steps", type=int)
    run.add_argument("--save-steps", type=int)
    run.add_argument("--save-total-limit", type=int)
    run.add_argument("--report-to", help="comma-separated: tensorboard, wandb, none, auto (installed ones)")
    run.add_argument("--dataloader-num-workers", type=int)


def config_from_args(args: argparse.Namespace) -> Any:
    """The resolved :class:`~trainers.config.TrainConfig`: defaults < ``--config`` recipe < given flags."""

    overrides = {field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest, None) is not None}
    return load_config(getattr(args, "config", None), overrides)


def run_train(args: argparse.Namespace) -> int:
    """``harness train``: resolve the configuration, check it, train; prints the final model's folder.

    The method, the data and the output folder are checked before torch or a model is loaded."""
    config = config_from_args(args)
    check_method(config.method)
    for name in ("data", "output"):
        if not getattr(config, name):
            raise ConfigError(f"no --{name} given (neither on the command line nor in the recipe)")
    if not config.model:  # as `harness run`: the lab model (trained and cached on first use)
        from trainers.lab_model import default_model

        config.model = str(default_model())
    config.validate()
    if config.method == "sft":
        from trainers.sft import train_sft

        out = train_sft(config)
    else:
        from trainers.trainer import train_preference

        out = train_preference(config)
    print(out)
    return 0


__all__ = ["add_train_arguments", "check_method", "config_from_args", "run_train"]
