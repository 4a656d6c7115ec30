"""The lab model: a tiny LLaVA trained on the lab's biased training world, built at first use.

:mod:`tasks.lab` plants language priors in a world of coloured shapes (stars are yellow, circles come in pairs, a
triangle comes with a star...). This module trains a tiny LLaVA-1.5 (:mod:`harness.models.tiny`'s architecture,
sized for the lab) on that world's SFT records, the captions and yes/no answers of :func:`tasks.lab.sft_records`,
so that it describes scenes and answers questions well above chance and, like large models, hallucinates where the
image contradicts a prior it learned from the text. Preference methods start from it
(``harness train --model <lab model> ...``).

The checkpoint (``LlavaForConditionalGeneration``, llava-hf key names, word-level tokenizer over
:func:`tasks.lab.corpus`, the llava_v1 chat template) is built deterministically: the same
:class:`LabModelSettings` and :class:`tasks.lab.LabConfig` give the same weights on CPU (the thread count is part of
the settings). :func:`ensure_lab_model` builds it once, with a progress bar, into
``<cache>/models/lab-llava-v1-<hash>`` (a temporary folder renamed into place) and reuses it afterwards.

Architecture (:data:`LabModelSettings` defaults): CLIP vision tower on 96x96 images with 32-pixel patches, so that
each of the 9 image tokens is one cell of the lab's 3x3 grid; the features of its last layer
(``vision_feature_layer=-1``) go through LLaVA's 2-layer MLP projector to a Llama decoder. SFT recipe: full
fine-tuning of every parameter with AdamW, linear warmup then cosine decay, the mean negative log-likelihood of the
answer tokens (the answer and ``</s>``), batches drawn without replacement from the records (reshuffled each epoch),
all rendered with the llava_v1 template that evaluation uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness.models as models_package
from harness.models import cache_dir
from harness.models.llava import LlavaFamily, rewrite_llava_keys
from harness.models.tiny import (
    LLAVA_SPECIALS,
    LLAVA_TEMPLATE_TEXT,
    LLAVA_V1_CHAT_TEMPLATE,
    init_weights,
    never_generate,
    no_progress_bars,
    word_level_tokenizer,
)
from harness.models.weights import rename_tensor_prefixes

LAB_MODEL_NAME = "lab-llava-v1"
TRAIN_LOG = "lab_train_log.jsonl"
SETTINGS_FILE = "lab_model.json"
#: The lab model of the default settings, shipped with the package (1.5 MB; rebuilt byte for byte by
#: ``python -m trainers.lab_model --rebuild-shipped``): :func:`ensure_lab_model` copies it instead of training.
SHIPPED_DIR = Path(models_package.__file__).resolve().parent / "lab_checkpoint"  # beside the LLaVA adapter
SHIPPED_FILES = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    SETTINGS_FILE,
    TRAIN_LOG,
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class LabModelSettings:
    """Architecture and SFT recipe of the lab model (defaults: the documented lab model, docs/lab.md)."""

    # vision tower (CLIP): image_size / patch_size patches per side
    image_size: int = 96
    patch_size: int = 32
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_layers: int = 2
    vision_heads: int = 2
    # language model (Llama)
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 2
    # initialisation: matrices and token embeddings N(0, init_std), the vision position embeddings N(0, position_std)
    init_std: float = 0.02
    embed_std: float = 0.02
    vision_init_std: float = 0.02
    position_std: float = 1.0
    # SFT
    questions_per_scene: int = 3
    steps: int = 9000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    record_mean: bool = True
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _lab_config(config: Any = None) -> Any:
    from tasks.lab import LabConfig

    return config if config is not None else LabConfig()


def _cache_key(settings: LabModelSettings | None = None, config: Any = None) -> dict[str, Any]:
    from tasks.lab import FORMAT_VERSION

    return {
        "settings": (settings or LabModelSettings()).to_dict(),
        "lab": _lab_config(config).to_dict(),
        "format": FORMAT_VERSION,
    }


def lab_model_dir(settings: LabModelSettings | None = None, config: Any = None) -> Path:
    """Where :func:`ensure_lab_model` keeps the model of these settings: ``<cache>/models/lab-llava-v1-<hash>``."""
    key = _cache_key(settings, config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{LAB_MODEL_NAME}-{digest}"


def shipped_matches(settings: LabModelSettings | None = None, config: Any = None) -> bool:
    """Whether the shipped checkpoint (:data:`SHIPPED_DIR`) is the lab model of these settings: its
    ``lab_model.json`` records the same settings, lab settings and data format, and every file is present."""
    try:
        recorded = json.loads((SHIPPED_DIR / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    key = _cache_key(settings, config)
    same = all(recorded.get(k) == v for k, v in key.items())
    return same and all((SHIPPED_DIR / name).is_file() for name in SHIPPED_FILES)


# --------------------------------------------------------------------------------------------------- the base model
def build_lab_base(out_dir: str | Path, settings: LabModelSettings | None = None) -> Path:
    """Write the untrained lab LLaVA (seeded weights, the lab tokenizer, processor and chat template) to
    ``out_dir``; :func:`train_lab_model` trains it."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tasks.lab import corpus

    s = settings or LabModelSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = word_level_tokenizer(
        [*corpus(), LLAVA_TEMPLATE_TEXT],
        LLAVA_SPECIALS,
        bos="<s>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    vision = CLIPVisionConfig(
        image_size=s.image_size,
        patch_size=s.patch_size,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        projection_dim=s.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_heads,
        max_position_embeddings=512,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        image_seq_length=(s.image_size // s.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        model = LlavaForConditionalGeneration(config).eval()
    # small initial weights: training starts from a near-uniform next-token distribution
    init_weights(model, s.seed, std=s.init_std, embed_std=s.embed_std)
    if s.vision_init_std != s.init_std:
        gen = torch.Generator().manual_seed(s.seed + 1)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
                if ("vision_tower" in name or "multi_modal_projector" in name) and param.ndim >= 2:
                    param.copy_(torch.randn(param.shape, generator=gen) * s.vision_init_std)
    with torch.no_grad():  # a cell's position as strong in its features as its content (relations need it)
        pos = model.model.vision_tower.embeddings.position_embedding.weight
        gen = torch.Generator().manual_seed(s.seed + 2)
        pos.copy_(torch.randn(pos.shape, generator=gen) * s.position_std)
    never_generate(model, [i for t, i in ids.items() if t != "</s>"])
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]
    )
    with no_progress_bars():
        model.save_pretrained(out)
    rename_tensor_prefixes(out / "model.safetensors", {"vision_tower.": "vision_tower.vision_model."})
    # the white background normalises to 0: an empty cell is a zero patch, and the features of a cell are those of
    # its shape (with CLIP's mean and std, the background dominates every patch and the shapes barely register)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": s.image_size},
        crop_size={"height": s.image_size, "width": s.image_size},
        do_center_crop=True,
        image_mean=[1.0, 1.0, 1.0],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=s.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_V1_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.chat_template = LLAVA_V1_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------------- SFT
@dataclass
class _Encoded:
    """The SFT records as tensors: token ids and answer labels per record, pixels per unique image."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    image_index: list[int]
    pixel_values: Any  # [n_images, 3, H, W]: uint8 images (normalised by ``pixels``) or float pixels
    mean: Any = None
    std: Any = None
    scale: float = 1.0

    def pixels(self, index: Sequence[int]) -> Any:
        """Normalised pixels of the images ``index`` (what the image processor gives for them)."""
        import torch

        x = self.pixel_values[torch.as_tensor(list(index), dtype=torch.long)]
        if self.mean is None:
            return x
        return (x.to(torch.float32) * self.scale - self.mean) / self.std


def encode_records(
    model_dir: str | Path, records: Sequence[Any], scenes_pixels: Callable[[Sequence[Any]], Any] | None = None
) -> _Encoded:
    """Tokenize SFT records exactly as :func:`trainers.logprobs.tokenize_rows` does (the llava_v1 template of the
    family adapter, the image placeholder expanded to the image's tokens, labels on the answer and ``</s>``), in
    one pass: each record's text once, each unique image once."""
    import torch
    import transformers

    from tasks.lab import render

    family = LlavaFamily(model_dir)
    processor = transformers.AutoProcessor.from_pretrained(str(model_dir))
    tokenizer = processor.tokenizer
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    n_image_tokens = int(processor.num_image_tokens) if hasattr(processor, "num_image_tokens") else None
    if n_image_tokens is None:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        n_image_tokens = int(cfg["image_seq_length"])
    images: dict[str, int] = {}
    scenes = []
    for r in records:
        if r.scene.image not in images:
            images[r.scene.image] = len(images)
            scenes.append(r.scene)
    full_texts = [family.render_prompt(r.question, 1, response=r.answer) for r in records]
    prompt_texts = [family.render_prompt(r.question, 1) for r in records]
    full = tokenizer(full_texts, add_special_tokens=True)["input_ids"]
    prompt_cache: dict[str, list[int]] = {}
    input_ids, labels = [], []

    def expand(ids: list[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            out.extend([t] * n_image_tokens if t == image_token else [t])
        return out

    for text, ids in zip(prompt_texts, full):
        if text not in prompt_cache:
            prompt_cache[text] = expand(tokenizer(text, add_special_tokens=True)["input_ids"])
        p = prompt_cache[text]
        f = expand(ids)
        n = 0
        while n < min(len(p), len(f)) and p[n] == f[n]:
            n += 1
        input_ids.append(f)
        labels.append([-100] * n + f[n:])
    if scenes_pixels is None:
        import numpy as np

        ip = processor.image_processor
        size = (ip.crop_size["height"], ip.crop_size["width"])
        if any(render(sc).size != size[::-1] for sc in scenes[:1]):
            raise ValueError(f"lab images are not {size}: the processor would resize them")
        # the images as uint8 (a quarter of the memory of float pixels), normalised per batch as the processor does
        pixel_values = torch.from_numpy(np.stack([np.asarray(render(sc), dtype=np.uint8) for sc in scenes]))
        pixel_values = pixel_values.permute(0, 3, 1, 2).contiguous()
        mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        scale = float(ip.rescale_factor)
    else:
        pixel_values, mean, std, scale = scenes_pixels(scenes), None, None, 1.0
    return _Encoded(input_ids, labels, [images[r.scene.image] for r in records], pixel_values, mean, std, scale)


def _batch(enc: _Encoded, idx: Sequence[int], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(enc.input_ids[i])
        ids[row, :n] = torch.tensor(enc.input_ids[i])
        labels[row, :n] = torch.tensor(enc.labels[i])
        mask[row, :n] = 1
    pixels = enc.pixels([enc.image_index[i] for i in idx])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def shared_prefix(enc: _Encoded, image_token: int) -> int:
    """How many leading tokens every record shares before its image (BOS, the system prompt, ``USER:``)."""
    first = enc.input_ids[0]
    n = first.index(image_token) if image_token in first else len(first)
    for ids in enc.input_ids[1:]:
        k = 0
        while k < min(n, len(ids)) and ids[k] == first[k]:
            k += 1
        n = k
    return n


def answer_loss(model: Any, batch: dict[str, Any], prefix: int, *, record_mean: bool = False) -> Any:
    """The mean negative log-likelihood of the answer tokens of ``batch``, with the shared ``prefix`` (the template
    before the image, identical in every row) run once and its keys and values repeated for the batch: the same
    value as a plain forward over the whole rows, for about half the work. ``record_mean``: the mean over records
    of each record's mean token NLL (else the mean over all answer tokens)."""
    import torch

    ids, labels = batch["input_ids"], batch["labels"]
    rows = ids.shape[0]
    if prefix > 0:
        lm = model.model.language_model
        cache = lm(input_ids=ids[:1, :prefix], use_cache=True).past_key_values
        cache.batch_repeat_interleave(rows)
        out = model(
            input_ids=ids[:, prefix:],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, :-1].float()
        target = labels[:, prefix + 1 :]
    else:
        logits = (
            model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
            .logits[:, :-1]
            .float()
        )
        target = labels[:, 1:]
    mask = target != -100
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp_min(0), reduction="none") * mask
    if record_mean:
        return (nll.sum(1) / mask.sum(1).clamp_min(1)).mean()
    return nll.sum() / mask.sum().clamp_min(1)


def _epoch_batches(records: Sequence[Any], batch_size: int, gen: Any) -> list[list[int]]:
    """One epoch of batches: records shuffled, then batched by kind (descriptions apart from yes/no questions, so
    that short rows are not padded to a description's length), the batches shuffled."""
    import torch

    perm = torch.randperm(len(records), generator=gen).tolist()
    kinds: dict[bool, list[int]] = {True: [], False: []}
    for i in perm:
        kinds[records[i].answer in ("Yes", "No")].append(i)
    batches = [ids[k : k + batch_size] for ids in kinds.values() for k in range(0, len(ids), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _lr_at(step: int, s: LabModelSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_lab_model(
    out_dir: str | Path, settings: LabModelSettings | None = None, config: Any = None, *, progress: bool = True
) -> Path:
    """Build the base model in ``out_dir`` and fine-tune it there on the lab's SFT records (see the module
    docstring); writes the trained checkpoint, ``lab_model.json`` (settings) and ``lab_train_log.jsonl``."""
    import torch
    import transformers

    from tasks.lab import sft_records

    s = settings or LabModelSettings()
    config = _lab_config(config)
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        build_lab_base(out, s)
        records = sft_records(config, s.questions_per_scene)
        enc = encode_records(out, records)
        model = transformers.AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        other = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=s.lr,
            betas=(0.9, 0.98),
        )
        gen = torch.Generator().manual_seed(s.seed)
        prefix = shared_prefix(enc, model.config.image_token_index)
        order: list[list[int]] = []
        log = []
        bar = _progress(s.steps, progress)
        start = time.perf_counter()
        running = None
        for step in range(s.steps):
            if not order:
                order = _epoch_batches(records, s.batch_size, gen)
            idx = order.pop(0)
            batch = _batch(enc, idx, tokenizer.pad_token_id)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, s)
            loss = answer_loss(model, batch, prefix, record_mean=s.record_mean)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            opt.step()
            value = float(loss.detach())
            running = value if running is None else 0.95 * running + 0.05 * value
            if step % 20 == 0 or step == s.steps - 1:
                log.append(
                    {
                        "step": step,
                        "loss": round(value, 5),
                        "lr": _lr_at(step, s),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
            bar.set_postfix(loss=f"{running:.3f}")
            bar.update(1)
        bar.close()
        model.eval()
        with no_progress_bars():
            model.save_pretrained(out)
        rewrite_llava_keys(out)
        (out / TRAIN_LOG).write_text("".join(json.dumps(e) + "\n" for e in log), encoding="utf-8")
        (out / SETTINGS_FILE).write_text(
            json.dumps(
                {
                    **_cache_key(s, config),
                    "records": len(records),
                    "images": int(enc.pixel_values.shape[0]),
                    "seconds": round(time.perf_counter() - start, 1),
                },
                indent=2,
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
    finally:
        torch.set_num_threads(threads)
    return out


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training the lab model (once)", unit="step", disable=not enabled, leave=False)


def ensure_lab_model(settings: LabModelSettings | None = None, config: Any = None, *, progress: bool = True) -> Path:
    """The lab model of these settings, cached: a copy of the shipped checkpoint for the default settings, else
    trained on first use (about six minutes on one CPU thread at the default recipe).

    Built in a temporary folder beside its final place and renamed into place, so interrupted builds never leave a
    partial checkpoint; concurrent callers wait on a lock file for the first build instead of training twice."""
    import fcntl

    target = lab_model_dir(settings, config)
    if (target / SETTINGS_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / SETTINGS_FILE).is_file():  # built by another process while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            if shipped_matches(settings, config):
                for name in SHIPPED_FILES:
                    shutil.copyfile(SHIPPED_DIR / name, tmp / name)
            else:
                train_lab_model(tmp, settings, config, progress=progress)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / SETTINGS_FILE).is_file():  # lost a race to a build that holds no lock
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model(*, progress: bool = True) -> Path:
    """The default model of ``harness run`` and ``harness train``: the lab model at the documented settings."""
    return ensure_lab_model(progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainers.lab_model [OUT] [--set key=value ...] [--rebuild-shipped]``: train the lab model (into
    OUT, or the cache: a copy of the shipped checkpoint at the default settings) and print its folder;
    ``--rebuild-shipped`` trains the default model afresh into the package's shipped checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainers.lab_model")
    parser.add_argument("output", nargs="?")
    parser.add_argument(
        "--rebuild-shipped",
        action="store_true",
        help=f"train the default lab model into {SHIPPED_DIR} (what the package ships)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LabModelSettings field")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    fields = {f.name: f.type for f in dataclasses.fields(LabModelSettings)}
    for item in args.set:
        key, _, raw = item.partition("=")
        if key not in fields:
            parser.error(f"unknown setting {key!r}; settings: {', '.join(fields)}")
        kind = str(fields[key])
        values[key] = (
            float(raw) if kind == "float" else (raw.lower() in ("1", "true", "yes")) if kind == "bool" else int(raw)
        )
    settings = LabModelSettings(**values)
    if args.rebuild_shipped:
        if values or args.output:
            parser.error("--rebuild-shipped trains the default settings into the package; no OUT or --set")
        tmp = Path(tempfile.mkdtemp(prefix=".lab_checkpoint-", dir=SHIPPED_DIR.parent))
        try:
            train_lab_model(tmp, settings)
            SHIPPED_DIR.mkdir(exist_ok=True)
            for name in SHIPPED_FILES:
                os.replace(tmp / name, SHIPPED_DIR / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(SHIPPED_DIR)
    elif args.output:
        print(train_lab_model(args.output, settings))
    else:
        print(ensure_lab_model(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
