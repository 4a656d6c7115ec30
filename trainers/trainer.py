"""Preference training (JoMPO, DPO, MPO and the paper's ablations) with ``transformers.Trainer``.

One training step, per micro-batch of preference examples (:class:`trainers.data.PreferenceExample`):

1. :class:`PreferenceCollator` builds the rows the method needs (:func:`trainers.losses.required_rows`): for each
   example and each ``(condition, response)`` pair a :class:`trainers.logprobs.Row` whose image is ``m_w``
   (``"w"``), ``m_l`` (``"l"``), nothing (``"none"``: no placeholder, no pixels) or the rejected image of the
   ``--rejected-image`` strategy (``"rej"``), and tokenizes them into one :class:`~trainers.logprobs.RowBatch`
   with the model family's prompt template (the one evaluation uses).
2. :meth:`PreferenceTrainer.compute_loss` runs ONE policy forward over all rows (:func:`trainers.logprobs.row_logps`:
   every unique image encoded once, LM head only at response positions), gets the reference log-probs (the LoRA
   adapter disabled, a frozen copy, or a precomputed cache), and calls :func:`trainers.losses.compute_loss`.
3. Per logging step it reports the loss and each term, rewards per (condition, response), margins and accuracy of
   each ordering, and tokens/s.

Distributed training
--------------------
``accelerate launch --config_file configs/accelerate/zero2.yaml -m harness train ...`` is the documented way to run on
several GPUs (``zero3.yaml`` and ``fsdp.yaml`` are shipped too). Every rank runs exactly one vision-tower call per
forward: :func:`trainers.logprobs.row_logps` encodes all the micro-batch's unique images in one call, and a rank
whose micro-batch has no image at all (a DPO batch of text-only records, say) still calls the vision tower once on
a blank input whose output is multiplied by zero. Uneven numbers of calls across ranks would hang the collective
parameter gathering of ZeRO-3 and FSDP. The same holds for the reference forward.

The model given to ``transformers.Trainer`` is the plain transformers model (or its peft wrapper): its ``forward``
is extended by :func:`enable_row_forward` so that ``model(rows=batch)`` returns per-row log-probs, which lets
DDP/DeepSpeed/FSDP wrappers run their hooks on the root forward while saving, loading and resuming stay the
Trainer's own.

Checkpoints
-----------
``OUT/checkpoints/checkpoint-N`` are the Trainer's: model weights, optimizer, scheduler, RNG state(s) and
``trainer_state.json``. Each is written under ``OUT/checkpoints/.staging/`` and renamed into place once every rank has
written its part, so a ``checkpoint-N`` folder is always complete; its weights keep the model's own parameter names,
the names the Trainer's resume loads by. ``--resume`` continues from the newest complete checkpoint
(:func:`resume_checkpoint`; incomplete ones are skipped with a warning and moved to ``checkpoints/.incomplete/``)
with its weights, optimizer, scheduler and RNG state: on CPU with the same settings, the resumed run's losses and
final weights are those of an uninterrupted run, bit for bit. A checkpoint whose weights do not all match the model
(missing or unexpected keys, an adapter not loaded) is a :class:`CheckpointKeysError`, never a run that trains on
from the starting weights; checkpoints saved under the original (hub) names, as earlier versions did, load through
transformers' name conversion.

At the end, ``OUT`` holds a model that ``harness run --model OUT`` loads: with full fine-tuning the trained model;
with LoRA the adapter in ``OUT/adapter`` and, with ``--merge-lora`` (the default), the merged model in ``OUT``. The
processor (tokenizer, image processor, chat template) is saved with it, and LLaVA models keep the ``llava-hf`` key
names (``vision_tower.vision_model.*``) that vLLM loads. ``OUT/train_manifest.json`` is written last, with the size
and sha256 of each weight file: its presence marks a complete final model (it is removed when a run starts).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import time
import types
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from harness.errors import ConfigError, DataError, ModelError
from harness.io import atomic_write_json
from harness.manifest import environment
from harness.models import content_hash, resolve_model
from harness.models.base import ModelFamily, family_class
from harness.models.weights import safetensors_header, weight_files
from harness.types import ImageRef
from trainers.config import TrainConfig, save_config, unknown_method_message
from trainers.logprobs import Row, RowBatch, row_logps, tokenize_rows, unwrap_model
from trainers.reference import ModelReference, unwrap_peft

log = logging.getLogger("harness.train")

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


# =====================================================================================================================
# model: loading, trainable parameters, the row forward
# =====================================================================================================================


def model_family(model: nn.Module) -> type[ModelFamily]:
    """The family adapter class of the transformers VLM inside ``model`` (by its config's ``model_type``); a
    :class:`ConfigError` for a model of no supported family."""

    hf = unwrap_model(model)
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    family = family_class(model_type)
    if family is None:
        raise ConfigError(f"{type(hf).__name__} (model_type={model_type!r}) is not a model of a supported family")
    return family


def unused_vision_prefixes(model: nn.Module) -> list[str]:
    """Name fragments of vision-tower modules whose output the model never uses, so that they never receive a
    gradient (the family's :meth:`~harness.models.base.ModelFamily.unused_vision_modules`; for LLaVA the CLIP
    layers after ``vision_feature_layer`` and the ``post_layernorm``). They are left out of LoRA and frozen in full
    fine-tuning (DDP without ``find_unused_parameters`` would fail on parameters that get no gradient)."""
    return model_family(model).unused_vision_modules(unwrap_model(model).config)


def _is_unused(name: str, prefixes: Sequence[str]) -> bool:
    return any(p in name + "." for p in prefixes)


def lora_target_modules(model: nn.Module, groups: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules of ``groups`` (the family's
    :meth:`~harness.models.base.ModelFamily.module_group`: ``language_model``, ``vision_tower``, ``projector``) that
    LoRA adapts (the LM head never: its weight is read directly when log-probs are computed at response positions
    only)."""
    names = []
    family = model_family(model)
    unused = unused_vision_prefixes(model)
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and "lm_head" not in name.split(".")
            and family.module_group(name) in groups
            and not _is_unused(name, unused)
        ):
            names.append(name)
    if not names:
        raise ConfigError(f"no linear layers found in {', '.join(groups)} of {type(model).__name__}")
    return names


def freeze_except(model: nn.Module, groups: Sequence[str]) -> tuple[int, int]:
    """Full fine-tuning: parameters of ``groups`` trainable (except :func:`unused_vision_prefixes`), the others
    frozen. Returns (trainable, total)."""
    trainable = total = 0
    family = model_family(model)
    unused = unused_vision_prefixes(model)
    for name, param in model.named_parameters():
        keep = family.module_group(name) in groups and not _is_unused(name, unused)
        param.requires_grad_(keep)
        total += param.numel()
        trainable += param.numel() if keep else 0
    return trainable, total


def enable_row_forward(model: nn.Module, family: ModelFamily | str) -> nn.Module:
    """Extend ``model.forward`` (a transformers VLM) so that ``model(rows=batch)`` returns the per-row summed
    response log-probs of :func:`trainers.logprobs.row_logps`; any other call is the model's own forward.

    Calling through the model (and so through peft, DDP, DeepSpeed or FSDP wrappers around it) keeps the wrappers'
    hooks on the root forward. Returns ``model``."""
    hf = unwrap_model(model)
    if getattr(hf, "_row_forward_family", None) is not None:
        return model
    original = hf.forward
    hf._row_forward_family = family if isinstance(family, str) else family.name

    def forward(self: nn.Module, *args: Any, rows: RowBatch | None = None, **kwargs: Any) -> Any:
        if rows is None:
            return original(*args, **kwargs)
        return row_logps(self, self._row_forward_family, rows)

    hf.forward = types.MethodType(forward, hf)
    return model


def load_model(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers VLM from ``path``; a checkpoint transformers cannot load is a :class:`ModelError`."""

    try:
        return transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: transformers cannot load the checkpoint: {exc}") from exc


def load_processor(path: str) -> Any:

    try:
        return transformers.AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load the processor: {exc}") from exc


def build_policy(config: TrainConfig) -> tuple[nn.Module, Any, ModelFamily]:
    """(policy model, processor, family adapter) for ``config``: LoRA adapters on ``config.modules`` or full
    fine-tuning of those modules (the rest frozen), with the row forward enabled. Weights stay float32 (the
    master copy); ``--bf16`` is mixed precision."""

    _, family = resolve_model(config.model, config.template)
    processor = load_processor(config.model)
    model = load_model(config.model)
    enable_row_forward(model, family)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_modules(model, config.modules),
            bias="none",
        )
        model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    else:
        trainable, total = freeze_except(model, config.modules)
    log.info(
        "%s: %s trainable parameters of %s (%s on %s)",
        Path(config.model).name,
        f"{trainable:,}",
        f"{total:,}",
        "LoRA" if config.lora else "full fine-tuning",
        ", ".join(config.modules),
    )
    return model, processor, family


# =====================================================================================================================
# training arguments, checkpoints
# =====================================================================================================================


def _report_to(config: TrainConfig) -> list[str]:
    if config.report_to != ["auto"]:
        return [r for r in config.report_to if r != "none"]
    import os

    from transformers.integrations import is_tensorboard_available, is_wandb_available

    out = []
    if is_tensorboard_available():
        out.append("tensorboard")
    if is_wandb_available() and (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
        out.append("wandb")
    return out


def use_bf16(config: TrainConfig) -> bool:
    """bf16 mixed precision as asked, on CUDA; CPU runs (tests, tiny models) stay float32."""
    if config.bf16 and not torch.cuda.is_available():
        log.warning("--bf16 ignored: no CUDA device; training in float32")
        return False
    return config.bf16


def training_arguments(config: TrainConfig) -> transformers.TrainingArguments:
    """``transformers.TrainingArguments`` for ``config`` (checkpoints under ``OUT/checkpoints``)."""
    return transformers.TrainingArguments(
        output_dir=str(Path(config.output) / CHECKPOINTS_DIR),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # < 1: a ratio of the training steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=use_bf16(config),
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=_report_to(config),
        remove_unused_columns=False,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=None,
        ddp_find_unused_parameters=False,
    )


STAGING_DIR = ".staging"  # OUT/checkpoints/.staging/checkpoint-N: a checkpoint being written
INCOMPLETE_DIR = ".incomplete"  # OUT/checkpoints/.incomplete/: incomplete checkpoints moved aside by --resume
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``ckpt_dir``, newest (largest N) first."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its header must parse and its tensors fit in the file)."""

    try:
        safetensors_header(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path.name} is truncated or unreadable ({exc})"
    return None


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` archive (a zip file: its central directory is at the end)."""
    import zipfile

    return None if zipfile.is_zipfile(path) else f"{path.name} is truncated or not a torch archive"


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why the Trainer checkpoint ``folder`` (``checkpoint-N``) cannot be resumed from, or None when it is complete:
    ``trainer_state.json`` at step N, the model weights (whole files; every shard of an index), the optimizer and
    scheduler states and the RNG state. DeepSpeed (``global_stepN/``) and FSDP (``pytorch_model_fsdp_*``,
    ``optimizer_*``) layouts count as weights and optimizer state."""
    folder = Path(folder)
    m = _CHECKPOINT_RE.match(folder.name)
    if not folder.is_dir():
        return "not a folder"
    names = {p.name for p in folder.iterdir()}
    if not names:
        return "empty"
    if "trainer_state.json" not in names:
        return "no trainer_state.json"
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        step = int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable trainer_state.json"
    if m is not None and step != int(m.group(1)):
        return f"trainer_state.json is at step {step}"
    deepspeed = any(n.startswith("global_step") and (folder / n).is_dir() for n in names)
    fsdp = any(n.startswith("pytorch_model_fsdp") for n in names)
    weights = [n for n in _WEIGHT_FILES if n in names]
    for index_name in _WEIGHT_INDEXES:
        if index_name in names:
            try:
                shards = sorted(
                    set(json.loads((folder / index_name).read_text(encoding="utf-8"))["weight_map"].values())
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"unreadable {index_name}"
            missing = [s for s in shards if s not in names]
            if missing:
                return f"{index_name} lists missing shard {missing[0]}"
            weights += shards
    if not weights and not deepspeed and not fsdp:
        return "no model weights"
    for name in weights:
        problem = (_safetensors_problem if name.endswith(".safetensors") else _archive_problem)(folder / name)
        if problem:
            return problem
    optimizer = [n for n in ("optimizer.pt", "optimizer.bin") if n in names]
    if not optimizer and not deepspeed and not any(n.startswith("optimizer") and (folder / n).is_dir() for n in names):
        return "no optimizer state"
    if "scheduler.pt" not in names and not deepspeed:
        return "no scheduler state"
    rng = sorted(n for n in names if re.fullmatch(r"rng_state(_\d+)?\.pth", n))
    if not rng:
        return "no RNG state"
    for name in optimizer + (["scheduler.pt"] if "scheduler.pt" in names else []) + rng:
        problem = _archive_problem(folder / name)
        if problem:
            return problem
    return None


START_MODEL_FILE = "start_model.json"


def start_model_entry(model: str | Path) -> dict[str, str]:
    """The starting model of a run: its absolute path and content hash (:func:`harness.models.content_hash`)."""

    return {"path": str(Path(model).resolve()), "content_hash": content_hash(model)}


def record_start_model(config: TrainConfig) -> None:
    """Write ``OUT/start_model.json`` (the main process) when a run starts, so that a resume can tell that its
    checkpoints were made from the model it is given."""
    from accelerate import PartialState

    if PartialState().is_main_process and config.model and Path(config.model).is_dir():
        Path(config.output).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(config.output) / START_MODEL_FILE, start_model_entry(config.model))


def check_start_model(config: TrainConfig) -> None:
    """``--resume`` continues only checkpoints made from ``--model`` as it is now: a different or changed starting
    model (an upstream stage retrained) is a :class:`ConfigError`, never a silent mix of two runs."""
    marker = Path(config.output) / START_MODEL_FILE
    if not marker.is_file() or not config.model or not Path(config.model).is_dir():
        return
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    now = start_model_entry(config.model)
    if recorded.get("content_hash") != now["content_hash"]:
        raise ConfigError(
            f"--resume: the checkpoints in {marker.parent / CHECKPOINTS_DIR} were made from {recorded.get('path')} "
            f"(content hash {str(recorded.get('content_hash'))[:12]}), but --model {now['path']} is now "
            f"{now['content_hash'][:12]}; remove {marker.parent / CHECKPOINTS_DIR} to train from the start"
        )


def resume_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint ``--resume`` continues from: the newest complete one (:func:`checkpoint_problem`).
    Incomplete ones (a run killed while writing one, a folder emptied by hand) are skipped with a warning naming
    them and moved to ``checkpoints/.incomplete/`` (by the main process), so that they are neither resumed nor
    counted by ``--save-total-limit``; no complete checkpoint at all is a ConfigError. Without ``--resume``,
    refuses an output folder that already holds checkpoints (so a finished or crashed run is never overwritten by
    accident)."""
    ckpt_dir = Path(config.output) / CHECKPOINTS_DIR
    found = list_checkpoints(ckpt_dir)
    if not config.resume:
        if found:
            raise ConfigError(
                f"{config.output} already holds checkpoints ({found[0].name}); pass --resume to continue that run "
                "or choose another --output"
            )
        record_start_model(config)
        return None
    if not found:
        raise ConfigError(f"--resume: no checkpoint-N folder in {ckpt_dir}")
    check_start_model(config)
    problems = {p: checkpoint_problem(p) for p in found}
    complete = [p for p in found if problems[p] is None]
    if not complete:
        listed = ", ".join(f"{p.name}: {problems[p]}" for p in found)
        raise ConfigError(
            f"--resume: no complete checkpoint in {ckpt_dir} ({listed}); remove them to train from the start"
        )
    chosen = complete[0]
    incomplete = [p for p in found if problems[p] is not None]
    for p in incomplete:
        log.warning(
            "skipping incomplete checkpoint %s (%s): resuming from %s; it is moved to %s",
            p,
            problems[p],
            chosen.name,
            ckpt_dir / INCOMPLETE_DIR,
        )
    if incomplete:
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:
            aside = ckpt_dir / INCOMPLETE_DIR
            aside.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for p in incomplete:
                p.rename(aside / f"{p.name}-{stamp}")
        state.wait_for_everyone()
    log.info("resuming from %s", chosen)
    return str(chosen)


def merge_lora(base_path: str, adapter_dir: str | Path, out_dir: str | Path, processor: Any) -> None:
    """Merge the LoRA adapter into a fresh copy of the base model (on CPU, in the base checkpoint's dtype) and save
    the full model with the processor to ``out_dir``."""
    from peft import PeftModel

    base = transformers.AutoModelForImageTextToText.from_pretrained(base_path, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))


MANIFEST_FILE = "train_manifest.json"


def weights_record(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{file: {"size", "sha256"}}`` of the model's top-level weight files: what the manifest records
    so that a sweep can tell a whole saved model from one cut short or replaced."""
    from harness.cache import content_hash

    return {p.name: {"size": p.stat().st_size, "sha256": content_hash(p)} for p in weight_files(Path(folder))}


def write_train_manifest(trainer: transformers.Trainer, config: TrainConfig, family: ModelFamily, path: Path) -> None:
    """What the run was: resolved settings, loss weights, reference, starting model and its content hash, template,
    steps, the saved weight files (size, sha256), package versions, git revision and command line
    (``harness.manifest.environment``). Written last by :func:`save_final_model`: its presence marks a complete
    final model."""

    loss = getattr(trainer, "loss_config", None)
    reference = getattr(trainer, "reference", None)
    atomic_write_json(
        path,
        {
            "config": config.to_dict(),
            "loss": loss.to_dict() if loss is not None else None,
            "reference": reference.describe() if hasattr(reference, "describe") else None,
            "model": {
                "path": str(Path(config.model).resolve()),
                "content_hash": content_hash(config.model),
                "family": family.name,
                "template": family.template,
            },
            "global_step": trainer.state.global_step,
            "weights": weights_record(path.parent),
            **environment(),
        },
    )


def discard_final_manifest(config: TrainConfig) -> None:
    """Remove the final model's manifest before training (main process), so that a run killed before its final
    save ends never leaves a folder that looks complete."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        (Path(config.output) / MANIFEST_FILE).unlink(missing_ok=True)
    state.wait_for_everyone()


def save_final_model(trainer: transformers.Trainer, config: TrainConfig, family: ModelFamily, processor: Any) -> Path:
    """Write the loadable model to ``config.output`` (see the module docstring); every rank calls this. The
    manifest (``train_manifest.json``, with the weight files' hashes) is written last."""
    out = Path(config.output)
    if config.lora:
        trainer.save_model(str(out / ADAPTER_DIR))
        trainer.accelerator.wait_for_everyone()
        if config.merge_lora and trainer.is_world_process_zero():
            merge_lora(config.model, out / ADAPTER_DIR, out, processor)
    else:
        trainer.save_model(str(out))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        family.postprocess_checkpoint(out)
        save_config(config, out / "train_config.json")
        (out / "train_log.jsonl").write_text(
            "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in trainer.state.log_history),
            encoding="utf-8",
        )
        write_train_manifest(trainer, config, family, out / MANIFEST_FILE)
    trainer.accelerator.wait_for_everyone()
    return out


# =====================================================================================================================
# the shared trainer: row batches, metrics, tokens/s
# =====================================================================================================================


class RowsTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` over :class:`~trainers.logprobs.RowBatch` micro-batches (``{"rows": batch}``),
    whose ``compute_loss`` subclasses define; it averages their metrics over each logging interval (across ranks)
    and logs tokens/s."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._tokens: torch.Tensor | int = 0
        self._last_log_time = time.perf_counter()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._metrics.clear()
        self._tokens = 0
        self._last_log_time = time.perf_counter()
        return super().train(*args, **kwargs)

    def _record(self, metrics: dict[str, torch.Tensor], batch: RowBatch) -> None:
        """Keep a micro-batch's metrics and token count (as tensors: no device sync until the next log)."""
        if not self.model.training:
            return
        for key, value in metrics.items():
            self._metrics[key].append(value.detach().float())
        self._tokens = self._tokens + batch.attention_mask.sum().detach()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:  # a training log (not the final train summary)
            keys = sorted(self._metrics)
            local = torch.stack([torch.stack(self._metrics[k]).mean() for k in keys])
            local = local.to(self.accelerator.device)
            means = self.accelerator.reduce(local, reduction="mean") if self.accelerator.num_processes > 1 else local
            logs.update({k: round(float(v), 6) for k, v in zip(keys, means.tolist())})
            now = time.perf_counter()
            tokens = torch.as_tensor(self._tokens, dtype=torch.float32).reshape(1).to(self.accelerator.device)
            if self.accelerator.num_processes > 1:
                tokens = self.accelerator.reduce(tokens, reduction="sum")
            logs["tokens_per_second"] = round(float(tokens.item()) / max(now - self._last_log_time, 1e-9), 2)
            self._metrics.clear()
            self._tokens = 0
            self._last_log_time = now
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # type: ignore[override]
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- checkpoints: atomic saves, strict loads -------------------------------------------------------------------
    #
    # A checkpoint is written by the Trainer's own ``_save_checkpoint`` into ``checkpoints/.staging/checkpoint-N``,
    # then renamed into place once every rank has written its part: a ``checkpoint-N`` folder is always complete.
    # Its weights keep the model's own parameter names (``save_original_format=False``), the names the Trainer's
    # ``_load_from_checkpoint`` loads by; the final model (``save_model`` outside a checkpoint) keeps the
    # checkpoint's original names (llava-hf's for LLaVA, the ones vLLM loads). Loading a checkpoint whose keys do
    # not all match the model is an error.

    _staging_dir: str | None = None
    _loading_from: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING_DIR
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its shards, RNG state...
        if self.args.should_save:
            publish_checkpoint(staging / name, run_dir / name)
            with contextlib.suppress(OSError):
                staging.rmdir()
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self._staging_dir is None:
            return super()._save(output_dir, state_dict)
        target = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        import inspect

        if (
            not isinstance(target, transformers.PreTrainedModel)
            or "save_original_format" not in inspect.signature(target.save_pretrained).parameters
        ):
            return super()._save(output_dir, state_dict)  # a peft model saves its adapter under its own names
        target.save_pretrained = functools.partial(target.save_pretrained, save_original_format=False)
        try:
            return super()._save(output_dir, state_dict)
        finally:
            del target.save_pretrained  # the class's method again

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self._loading_from = resume_from_checkpoint
        try:
            try:
                super()._load_from_checkpoint(resume_from_checkpoint, model)
            except CheckpointKeysError:
                if not self._load_original_names(resume_from_checkpoint, model):
                    raise
        finally:
            self._loading_from = None
        self._check_adapter_loaded(resume_from_checkpoint, model)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Missing or unexpected keys are an error (the Trainer only warns and trains on from what was there)."""
        hf = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        tied = set(getattr(hf, "all_tied_weights_keys", None) or ()) | set(
            getattr(hf, "_keys_to_ignore_on_save", None) or ()
        )
        missing = [k for k in load_result.missing_keys if k not in tied]
        unexpected = list(load_result.unexpected_keys)
        if missing or unexpected:
            raise CheckpointKeysError(self._loading_from or "the checkpoint", missing, unexpected)
        if load_result.missing_keys and hasattr(hf, "tie_weights"):
            hf.tie_weights()

    def _load_original_names(self, checkpoint: str, model: nn.Module | None) -> bool:
        """Load a full-model checkpoint saved under the original (hub) names, as checkpoints of earlier versions
        were, through transformers' own name conversion (``from_pretrained``); False when that does not apply."""
        model = model if model is not None else self.model
        hf = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        if (
            self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or not isinstance(hf, transformers.PreTrainedModel)
            or not (Path(checkpoint) / "config.json").is_file()
        ):
            return False
        dtype = next(hf.parameters()).dtype
        loaded, info = type(hf).from_pretrained(checkpoint, dtype=dtype, output_loading_info=True)
        bad = {
            k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
        }
        if bad:
            raise CheckpointKeysError(
                checkpoint, bad.get("missing_keys", []), bad.get("unexpected_keys", []) + bad.get("mismatched_keys", [])
            )
        result = hf.load_state_dict(loaded.state_dict(), strict=False)
        del loaded
        self._loading_from = checkpoint
        self._issue_warnings_after_load(result)
        log.info("%s: weights loaded under their original names", checkpoint)
        return True

    def _check_adapter_loaded(self, checkpoint: str, model: nn.Module | None) -> None:
        """A LoRA checkpoint is loaded by peft's ``load_adapter``, which does not fail on keys it could not place:
        the adapter weights now in the model must be exactly those of the checkpoint."""
        model = model if model is not None else self.model
        path = Path(checkpoint) / "adapter_model.safetensors"
        try:
            from peft import PeftModel
            from peft.utils import get_peft_model_state_dict
        except ImportError:  # pragma: no cover - peft is a dependency
            return
        if not isinstance(model, PeftModel) or not path.is_file():
            return
        from safetensors.torch import load_file

        saved = load_file(str(path))
        current = get_peft_model_state_dict(model)
        missing = sorted(set(current) - set(saved))
        unexpected = sorted(set(saved) - set(current))
        if missing or unexpected:
            raise CheckpointKeysError(checkpoint, missing, unexpected)
        differ = [k for k in current if not torch.equal(current[k].detach().cpu(), saved[k].to(current[k].dtype))]
        if differ:
            raise CheckpointKeysError(checkpoint, [], [], differ)


class CheckpointKeysError(ConfigError):
    """A checkpoint whose weights do not match the model being trained (names missing, unexpected or not loaded)."""

    def __init__(
        self, checkpoint: str, missing: Sequence[str], unexpected: Sequence[str], not_loaded: Sequence[str] = ()
    ):
        def some(keys: Sequence[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        parts = [
            f"{len(k)} {what} ({some(list(k))})"
            for k, what in ((missing, "missing"), (unexpected, "unexpected"), (not_loaded, "not loaded"))
            if k
        ]
        super().__init__(
            f"{checkpoint}: the checkpoint's weights do not match the model: {'; '.join(parts)} "
            "keys; nothing was resumed"
        )
        self.missing, self.unexpected, self.not_loaded = list(missing), list(unexpected), list(not_loaded)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def publish_checkpoint(staging: Path, final: Path) -> None:
    """Move the fully written checkpoint ``staging`` to ``final`` (one rename, after its files reached the disk),
    replacing an incomplete folder of that name."""
    _fsync_tree(staging)
    old = None
    if final.exists():
        old = staging.parent / f"{final.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# =====================================================================================================================
# preference training
# =====================================================================================================================


class PreferenceDataset(torch.utils.data.Dataset):
    """The preference examples, indexable (the Trainer's sampler shuffles indices)."""

    def __init__(self, examples: Sequence[Any]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Any:
        return self.examples[i]


def check_examples(
    examples: Sequence[Any], rows_needed: Sequence[tuple[str, str]], strategy: str, path: str | None = None
) -> None:
    """Fail before training when the records cannot give the rows a method needs (``m_l`` for JoMPO, an image
    to corrupt for MPO...); the message names the first records at fault."""
    conditions = {c for c, _ in rows_needed}
    needs_l = "l" in conditions or ("rej" in conditions and strategy == "contrast")
    needs_w = "rej" in conditions and strategy != "contrast"
    missing_l = [ex.id for ex in examples if needs_l and ex.image_l is None]
    missing_w = [ex.id for ex in examples if needs_w and ex.image_w is None]
    for ids, what, why in (
        (missing_l, "image_l", "the paired image m_l"),
        (missing_w, "image_w", f"an image for the rejected-image strategy {strategy!r}"),
    ):
        if ids:
            shown = ", ".join(map(repr, ids[:3])) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            raise DataError(f"{len(ids)} record(s) have no {what} ({shown}), but this method needs {why}", path=path)


class PreferenceCollator:
    """Preference examples -> ``{"rows": RowBatch, "n_examples": B}`` with the rows of ``rows_needed`` for each
    example, example-major: row ``i * R + j`` is example ``i`` under ``rows_needed[j]``.

    Row keys are ``(example id, condition, response)`` (the keys of a precomputed reference cache). The rejected
    image (condition ``"rej"``) comes from :func:`trainers.data.rejected_image` with the run's strategy and seed,
    so an example gets the same one every time it is drawn, on every rank. A record without ``image_w`` gives
    ``"w"`` rows without an image (a mixed image/no-image batch is fine)."""

    def __init__(
        self,
        family: ModelFamily,
        processor: Any,
        rows_needed: Sequence[tuple[str, str]],
        *,
        strategy: str = "crop",
        seed: int = 0,
        pool: Sequence[Any] | None = None,
        image_root: str | None = None,
        max_length: int | None = None,
    ):
        self.family = family
        self.processor = processor
        self.rows_needed = tuple(rows_needed)
        self.strategy = strategy
        self.seed = seed
        self.pool = pool
        self.image_root = image_root
        self.max_length = max_length

    def images(self, example: Any) -> dict[str, tuple[Any, str | None]]:
        """``condition -> (PIL image or None, image id)`` for the conditions this collator needs."""
        from trainers.data import rejected_image

        def load(path: str | None) -> tuple[Any, str | None]:
            return (None, None) if path is None else (ImageRef(path=path).load(example.id), path)

        conditions = {c for c, _ in self.rows_needed}
        out: dict[str, tuple[Any, str | None]] = {"none": (None, None)}
        if "w" in conditions:
            out["w"] = load(example.image_w)
        if "l" in conditions:
            if example.image_l is None:
                raise DataError(f"record {example.id!r}: this method needs the paired image m_l (image_l is null)")
            out["l"] = load(example.image_l)
        if "rej" in conditions:
            image = rejected_image(example, self.strategy, seed=self.seed, pool=self.pool, image_root=self.image_root)
            out["rej"] = (image, f"rej:{self.strategy}:{self.seed}:{example.id}")
        return out

    def rows(self, examples: Sequence[Any]) -> list[Row]:
        rows = []
        for ex in examples:
            images = self.images(ex)
            for cond, resp in self.rows_needed:
                image, image_id = images[cond]
                rows.append(
                    Row(
                        question=ex.question,
                        response=ex.y_w if resp == "w" else ex.y_l,
                        image=image,
                        key=(ex.id, cond, resp),
                        image_id=image_id,
                    )
                )
        return rows

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        batch = tokenize_rows(self.family, self.processor, self.rows(examples), max_length=self.max_length)
        return {"rows": batch, "n_examples": len(examples)}


class PreferenceTrainer(RowsTrainer):
    """``transformers.Trainer`` for JoMPO / DPO / MPO and the ablations (see the module docstring).

    ``reference`` is ``"adapter"`` (the policy with its LoRA adapter disabled), a frozen reference model
    (``nn.Module``, row forward enabled; prepared like the policy: DeepSpeed inference engine, FSDP shards or the
    device), or an object with ``logps(batch)`` such as :class:`trainers.reference.ReferenceFromCache`."""

    def __init__(
        self,
        *args: Any,
        loss_config: Any,
        rows_needed: Sequence[tuple[str, str]],
        reference: Any,
        family: ModelFamily,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.rows_needed = tuple(rows_needed)
        self.family = family
        if isinstance(reference, str) and reference == "adapter":
            unwrap_peft(self.model)
            reference = ModelReference(self.model, adapter_off=True)
        elif isinstance(reference, nn.Module):
            reference = ModelReference(self._prepare_reference_model(reference))
        self.reference = reference

    def _prepare_reference_model(self, ref: nn.Module) -> nn.Module:
        ref.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(ref, self.accelerator)
        return self.accelerator.prepare_model(ref, evaluation_mode=True)

    def split_rows(self, values: torch.Tensor, n_examples: int) -> dict[tuple[str, str], torch.Tensor]:
        """``[B * R]`` row values (example-major) -> ``{(condition, response): [B]}``."""
        per = values.view(n_examples, len(self.rows_needed))
        return {row: per[:, j] for j, row in enumerate(self.rows_needed)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        from trainers.losses import compute_loss

        batch: RowBatch = inputs["rows"]
        n = int(inputs["n_examples"])
        policy_logps = model(rows=batch)  # one forward over all rows, through the distributed wrappers
        with torch.no_grad():
            reference_logps = self.reference.logps(batch)
        policy = self.split_rows(policy_logps, n)
        reference = self.split_rows(reference_logps.to(policy_logps.device), n)
        counts = self.split_rows(batch.token_counts.to(policy_logps.device), n)
        loss, metrics = compute_loss(self.loss_config, policy, reference, n_tokens=counts)
        metrics.pop("loss", None)  # the Trainer logs the running loss itself
        self._record(metrics, batch)
        return (loss, {"metrics": metrics, "policy": policy, "reference": reference}) if return_outputs else loss


# =====================================================================================================================
# entry point
# =====================================================================================================================


def loss_config_for(config: TrainConfig) -> Any:
    """The :class:`trainers.losses.LossConfig` of ``config.method`` with ``config.beta``."""
    from trainers.losses import METHODS, get_method

    if config.method not in METHODS:
        raise ConfigError(unknown_method_message(config.method))
    return get_method(config.method, beta=config.beta)


def _uses_generated_image(rows_needed: Sequence[tuple[str, str]]) -> bool:
    return any(c == "rej" for c, _ in rows_needed)


def reference_meta(config: TrainConfig, family: ModelFamily, rows_needed: Sequence[tuple[str, str]]) -> Any:
    """What a precomputed reference cache of this run must have been made under."""
    from trainers.reference import ReferenceMeta

    rej = _uses_generated_image(rows_needed)
    return ReferenceMeta.for_model(
        config.reference_model or config.model,
        family,
        strategy=config.rejected_image if rej else None,
        seed=config.corruption_seed if rej else None,
    )


class ExampleBatches:
    """The rows of ``examples`` as :class:`trainers.reference.RowBatches`: batch ``i`` holds the rows of examples
    ``[i * B, (i + 1) * B)`` in the collator's order; its keys need no image, its rows decode the images then."""

    def __init__(self, collator: PreferenceCollator, examples: Sequence[Any], examples_per_batch: int):
        self.collator = collator
        self.examples = examples
        self.per_batch = max(int(examples_per_batch), 1)

    def __len__(self) -> int:
        return (len(self.examples) + self.per_batch - 1) // self.per_batch

    def _slice(self, index: int) -> Sequence[Any]:
        return self.examples[index * self.per_batch : (index + 1) * self.per_batch]

    def keys(self, index: int) -> list[tuple[Any, ...]]:
        return [(ex.id, cond, resp) for ex in self._slice(index) for cond, resp in self.collator.rows_needed]

    def rows(self, index: int) -> list[Row]:
        return self.collator.rows(self._slice(index))


def precompute_reference_cache(
    config: TrainConfig,
    family: ModelFamily,
    processor: Any,
    collator: PreferenceCollator,
    examples: Sequence[Any],
    path: Path,
) -> None:
    """The offline pass of ``--reference cache:FILE`` when FILE does not exist yet: the reference model scores every
    row of every example once, then is freed. Every process scores a contiguous share of the micro-batches
    (``batch_size`` examples each, as one process would) on its own device, decoding each micro-batch's images
    only when it scores it; the main process merges the shares into FILE, byte-identical to a one-process pass
    (:func:`trainers.reference.precompute_reference_sharded`)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from trainers.reference import precompute_reference_sharded

    # without cpu=True a PartialState on a machine without CUDA does not see the other processes of a launch (gloo)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    shard_dir = path.parent / f".{path.name}.shards"
    if state.is_main_process:  # shards left by a killed earlier pass are not this pass's
        shutil.rmtree(shard_dir, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    device = state.device if state.num_processes > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    ref = load_model(config.reference_model or config.model, dtype=dtype).to(device)
    batches = ExampleBatches(collator, examples, config.batch_size)
    if state.is_main_process:
        log.info(
            "reference cache %s: scoring %d rows once on %d process(es)",
            path,
            len(examples) * len(collator.rows_needed),
            state.num_processes,
        )
    precompute_reference_sharded(
        ref,
        family,
        processor,
        batches,
        path,
        reference_meta(config, family, collator.rows_needed),
        rank=state.process_index,
        world_size=state.num_processes,
        shard_dir=shard_dir,
        max_length=config.max_length,
        progress=state.is_main_process,
    )
    del ref
    state.wait_for_everyone()


def build_reference(
    config: TrainConfig, family: ModelFamily, processor: Any, collator: PreferenceCollator, examples: Sequence[Any]
) -> Any:
    """The reference of ``config.reference`` as :class:`PreferenceTrainer` takes it: ``"adapter"``, a frozen copy (a
    model the trainer prepares), or a precomputed cache (computed first when its file does not exist)."""
    from trainers.reference import ReferenceFromCache

    mode = config.reference_mode
    if mode == "adapter":
        return "adapter"
    if mode == "copy":
        dtype = torch.bfloat16 if use_bf16(config) else torch.float32
        return enable_row_forward(load_model(config.reference_model or config.model, dtype=dtype), family)
    path = Path(config.reference_cache or "")
    if not path.is_file():
        precompute_reference_cache(config, family, processor, collator, examples, path)
    return ReferenceFromCache(path, reference_meta(config, family, collator.rows_needed))


def build_preference_trainer(config: TrainConfig, examples: Sequence[Any] | None = None) -> PreferenceTrainer:
    """The :class:`PreferenceTrainer` of ``config`` (policy, reference, collator, data), ready to ``train()``.
    ``examples`` default to the records of ``config.data``."""
    from trainers.data import read_preferences
    from trainers.losses import required_rows

    config.validate()
    loss_config = loss_config_for(config)
    rows_needed = required_rows(loss_config)
    if examples is None:
        examples = read_preferences(config.data, image_root=config.image_root, fmt=config.data_format)
    if not examples:
        raise DataError("no preference records", path=config.data)
    check_examples(examples, rows_needed, config.rejected_image, path=config.data)
    transformers.set_seed(config.seed)
    model, processor, family = build_policy(config)
    collator = PreferenceCollator(
        family,
        processor,
        rows_needed,
        strategy=config.rejected_image,
        seed=config.corruption_seed,
        pool=examples if config.rejected_image == "random" else None,
        image_root=config.image_root,
        max_length=config.max_length,
    )
    reference = build_reference(config, family, processor, collator, examples)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(config),
        train_dataset=PreferenceDataset(examples),
        data_collator=collator,
        processing_class=processor,
        loss_config=loss_config,
        rows_needed=rows_needed,
        reference=reference,
        family=family,
    )
    log.info(
        "%s: %d examples, %d rows each (%s); reference: %s",
        config.method,
        len(examples),
        len(rows_needed),
        ", ".join(f"m_{c}/y_{r}" for c, r in rows_needed),
        config.reference_mode,
    )
    return trainer


def train_preference(config: TrainConfig) -> Path:
    """Train ``config.method`` on ``config.data``; returns the folder of the final model."""
    config.validate()
    resume_from = resume_checkpoint(config)
    trainer = build_preference_trainer(config)
    discard_final_manifest(config)
    trainer.train(resume_from_checkpoint=resume_from)
    return save_final_model(trainer, config, trainer.family, trainer.processing_class)


__all__ = [
    "CheckpointKeysError",
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceTrainer",
    "RowsTrainer",
    "build_policy",
    "build_preference_trainer",
    "check_examples",
    "checkpoint_problem",
    "enable_row_forward",
    "freeze_except",
    "list_checkpoints",
    "lora_target_modules",
    "loss_config_for",
    "merge_lora",
    "model_family",
    "publish_checkpoint",
    "reference_meta",
    "resume_checkpoint",
    "save_final_model",
    "train_preference",
    "training_arguments",
]
