"""Supervised fine-tuning (the JoMPO paper's SFT stage) of an LVLM on (image, question, answer) records.

Data: JSONL (or a JSON array) of ``{"id", "image", "question", "answer"}``; ``image`` is a path relative to
``--image-root`` (default: the data file's folder), or ``null`` for a text-only record.

Each record is rendered with the model family's adapter, ``render_prompt(question, num_images, response=answer)``:
the same template as evaluation and preference training. The loss is the mean negative log-likelihood of the
answer tokens only (the answer and the template's end-of-turn marker; never the prompt or the image tokens),
computed by :func:`trainers.logprobs.row_logps` (one vision-tower call per forward, the LM head only at answer
positions): ``loss = -sum(log p(answer tokens)) / n_answer_tokens`` over the micro-batch.

LoRA (the paper: rank 256, alpha 512 on the language model, the vision tower and the projector; see
``configs/sft_llava15.yaml``) or full fine-tuning of ``modules``; checkpoints, resuming and the final model layout
are those of :mod:`trainers.trainer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers

from harness.errors import DataError
from harness.io import iter_jsonl, read_json
from harness.types import ImageRef
from trainers.config import TrainConfig
from trainers.logprobs import Row, RowBatch, tokenize_rows
from trainers.trainer import (
    RowsTrainer,
    build_policy,
    discard_final_manifest,
    resume_checkpoint,
    save_final_model,
    training_arguments,
)

if TYPE_CHECKING:
    from harness.models.base import ModelFamily

log = logging.getLogger("harness.train")


@dataclass(frozen=True)
class SFTRecord:
    """One supervised example; ``image`` is an absolute path or None."""

    id: str
    question: str
    answer: str
    image: str | None = None


def _records(path: Path) -> list[tuple[int | None, str, Any]]:
    """(line or None, label, object) of each record of a JSONL file or a JSON array."""

    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"expected a JSON array of records, got {type(data).__name__}", path=path)
        return [(None, f"record {i}", obj) for i, obj in enumerate(data)]
    return [(line, f"line {line}", obj) for line, obj in iter_jsonl(path)]


def read_sft_records(path: str | Path, image_root: str | Path | None = None) -> list[SFTRecord]:
    """Read and check SFT records. A malformed record, a duplicate id or a missing image file raises
    :class:`DataError` naming the file, the line (or record number) and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError("SFT data file not found", path=path)
    base = Path(image_root) if image_root is not None else path.parent
    out: list[SFTRecord] = []
    seen: dict[str, str] = {}
    for line, label, obj in _records(path):

        def fail(message: str, line: int | None = line, label: str = label) -> DataError:
            return DataError(message if line is not None else f"{label}: {message}", path=path, line=line)

        if not isinstance(obj, dict):
            raise fail(f"expected a JSON object, got {type(obj).__name__}")
        rid = obj.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
            raise fail("field 'id': expected a non-empty string or an integer")
        rid = str(rid)
        for key in ("question", "answer"):
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                raise fail(f"record {rid!r}: field {key!r}: expected a non-empty string, got {value!r}")
        image = obj.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise fail(f"record {rid!r}: field 'image': expected a path or null, got {image!r}")
            full = Path(image).expanduser()
            full = full if full.is_absolute() else base / full
            if not full.is_file():
                raise fail(f"record {rid!r}: field 'image': file not found: {full}")
            image = str(full.resolve())
        if rid in seen:
            raise fail(f"duplicate id {rid!r} (first seen at {seen[rid]})")
        seen[rid] = label
        out.append(SFTRecord(id=rid, question=obj["question"], answer=obj["answer"], image=image))
    if not out:
        raise DataError("no SFT records", path=path)
    return out


class SFTDataset(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[SFTRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> SFTRecord:
        return self.records[i]


class SFTCollator:
    """Records -> ``{"rows": RowBatch}``: one row per record, its answer as the scored response."""

    def __init__(self, family: ModelFamily, processor: Any, max_length: int | None = None):
        self.family = family
        self.processor = processor
        self.max_length = max_length

    def rows(self, records: Sequence[SFTRecord]) -> list[Row]:

        return [
            Row(
                question=r.question,
                response=r.answer,
                image=None if r.image is None else ImageRef(path=r.image).load(r.id),
                key=(r.id,),
                image_id=r.image,
            )
            for r in records
        ]

    def __call__(self, records: Sequence[SFTRecord]) -> dict[str, Any]:
        return {"rows": tokenize_rows(self.family, self.processor, self.rows(records), max_length=self.max_length)}


class SFTTrainer(RowsTrainer):
    """``transformers.Trainer`` whose loss is the mean NLL of the answer tokens of the micro-batch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        batch: RowBatch = inputs["rows"]
        logps = model(rows=batch)
        n_tokens = batch.token_counts.to(logps.device).sum().clamp_min(1)
        loss = -logps.sum() / n_tokens
        self._record({"nll_per_token": loss.detach()}, batch)
        return (loss, {"logps": logps}) if return_outputs else loss


def build_sft_trainer(config: TrainConfig, records: Sequence[SFTRecord] | None = None) -> SFTTrainer:
    """The :class:`SFTTrainer` of ``config``, ready to ``train()``; ``records`` default to those of ``config.data``."""
    config.validate()
    if records is None:
        records = read_sft_records(config.data, config.image_root)
    transformers.set_seed(config.seed)
    model, processor, family = build_policy(config)
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(config),
        train_dataset=SFTDataset(records),
        data_collator=SFTCollator(family, processor, config.max_length),
        processing_class=processor,
    )
    trainer.family = family
    log.info("sft: %d records, %s", len(records), "LoRA" if config.lora else "full fine-tuning")
    return trainer


def train_sft(config: TrainConfig) -> Path:
    """Run the SFT stage of ``config``; returns the folder of the final model."""
    config.validate()
    records = read_sft_records(config.data, config.image_root)  # bad data fails before a model loads
    resume_from = resume_checkpoint(config)
    trainer = build_sft_trainer(config, records)
    discard_final_manifest(config)
    trainer.train(resume_from_checkpoint=resume_from)
    return save_final_model(trainer, config, trainer.family, trainer.processing_class)


__all__ = ["SFTCollator", "SFTDataset", "SFTRecord", "SFTTrainer", "build_sft_trainer", "read_sft_records", "train_sft"]
