"""Training configuration: one dataclass, :class:`TrainConfig`, is the single source of defaults.

A run's settings are resolved in three layers, later layers winning:

1. the defaults of :class:`TrainConfig` (the paper's preference-stage recipe, see below);
2. a YAML recipe (``--config configs/jompo_llava15_7b.yaml``): a flat mapping whose keys are field names of
   :class:`TrainConfig`; an unknown key is a :class:`~harness.errors.ConfigError` naming the file, the key and the
   closest field names;
3. command-line flags that were given explicitly (``harness train --lr 1e-6``).

Defaults follow the JoMPO paper's preference stage: lr 5e-7, cosine schedule, warmup ratio 0.03, beta 0.05, 2 epochs,
per-device batch 4, gradient accumulation 8, bf16. The SFT recipe (``configs/sft_llava15.yaml``) overrides them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from harness.errors import ConfigError
from harness.io import read_yaml_mapping

#: The preference methods and the paper's Table 2 ablations, by name (their losses: ``trainers.losses.METHODS``;
#: definitions: docs/methods.md). Defined here, without heavy imports, so names are checked before torch loads.
PREFERENCE_METHODS: tuple[str, ...] = (
    "dpo",
    "mpo",
    "jompo",
    "jompo_no_ranking",
    "jompo_no_symmetry",
    "jompo_no_both",
    "jompo_no_ranking_text",
    "jompo_no_ranking_noimage",
)
#: Every method ``harness train`` runs: supervised fine-tuning and the preference methods.
TRAIN_METHODS: tuple[str, ...] = ("sft", *PREFERENCE_METHODS)


def unknown_method_message(name: str, names: tuple[str, ...] = TRAIN_METHODS) -> str:
    """``unknown method 'x'; did you mean ...? (methods: ...)``."""
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown method {name!r}{hint} (methods: {', '.join(names)})"


def check_method(name: str) -> None:
    """An unknown method is a :class:`ConfigError` naming the closest methods (no heavy import)."""
    if name not in TRAIN_METHODS:
        raise ConfigError(unknown_method_message(name))


#: Parts of a vision-language model that LoRA adapts (or that full fine-tuning unfreezes).
MODULE_GROUPS = ("language_model", "vision_tower", "projector")
#: Reference-model modes; ``cache:FILE`` names a precomputed reference log-prob file.
REFERENCE_MODES = ("auto", "adapter", "copy")
#: Rejected-image strategies (see :mod:`trainers.data`); kept here so flags can be checked before heavy imports.
REJECTED_IMAGE_STRATEGIES = ("crop", "diffusion", "black", "random", "contrast")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


@dataclass
class TrainConfig:
    """Every setting of ``harness train`` (SFT and preference stages), with the paper's defaults.

    Paths (``model``, ``data``, ``output``, ``image_root``, ``reference_model``) given in a YAML recipe are
    relative to the current directory, like flags.
    """

    # what to train, on what, where to write
    method: str = "jompo"  # sft | dpo | mpo | jompo | an ablation of trainers.losses.METHODS
    model: str | None = None  # checkpoint folder (LLaVA-1.5 or Qwen2-VL, transformers layout)
    data: str | None = None  # JSONL/JSON/parquet of records (preference records; SFT: {id, image, question, answer})
    output: str | None = None  # output folder: checkpoints, final model, logs
    image_root: str | None = None  # folder that relative image paths in the data are resolved against
    data_format: str = "auto"  # preference data: auto | canonical | rlaif_v | trl | mdpo (see trainers.data)
    template: str | None = None  # prompt template of the model family (default: the family's own)

    # objective
    beta: float = 0.05
    rejected_image: str = "crop"  # crop | diffusion | black | random | contrast (MPO's m_l, Figure 4)
    corruption_seed: int = 0  # seed of the rejected-image strategies (with the example id)
    reference: str = "auto"  # auto (adapter with LoRA, else copy) | adapter | copy | cache:FILE
    reference_model: str | None = None  # reference checkpoint for `copy` (default: --model)

    # parameters trained
    lora: bool = False  # LoRA adapters (True) or full fine-tuning (False)
    lora_r: int = 256
    lora_alpha: int = 512
    lora_dropout: float = 0.05
    # LoRA: the parts that get adapters; full fine-tuning: the parts left trainable (the others are frozen)
    modules: list[str] = field(default_factory=lambda: ["language_model", "projector"])
    merge_lora: bool = True  # with LoRA: also write the merged full checkpoint at the end

    # optimisation
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 5e-7
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # per device
    grad_accum: int = 8
    max_length: int | None = None  # tokens per row; longer rows are an error (image tokens must not be cut)
    bf16: bool = True  # bf16 mixed precision (ignored on CPU without bf16 support: see trainers.trainer)
    gradient_checkpointing: bool = False
    seed: int = 42

    # bookkeeping
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False  # resume from the last checkpoint-N in output
    report_to: list[str] = field(default_factory=lambda: ["auto"])  # auto: tensorboard / wandb when installed
    dataloader_num_workers: int = 0

    # ------------------------------------------------------------------------------------------------ helpers
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied and checked (:func:`coerce_value`)."""
        checked = {k: coerce_value(k, v, source="argument") for k, v in changes.items()}
        return dataclasses.replace(self, **checked)

    @property
    def reference_mode(self) -> str:
        """``adapter``, ``copy`` or ``cache`` (``auto`` resolved by ``lora``)."""
        if self.reference.startswith("cache:"):
            return "cache"
        if self.reference == "auto":
            return "adapter" if self.lora else "copy"
        return self.reference

    @property
    def reference_cache(self) -> str | None:
        return self.reference[len("cache:") :] if self.reference.startswith("cache:") else None

    def validate(self) -> TrainConfig:
        """Check cross-field constraints; returns self. Raises :class:`ConfigError`."""
        for name in ("model", "data", "output"):
            if not getattr(self, name):
                raise ConfigError(f"no --{name} given (neither on the command line nor in the recipe)")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if self.lr < 0:
            raise ConfigError(f"lr must be >= 0, got {self.lr}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ConfigError("batch_size and grad_accum must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("either epochs > 0 or max_steps > 0 is needed")
        if self.rejected_image not in REJECTED_IMAGE_STRATEGIES:
            raise ConfigError(_unknown("rejected-image strategy", self.rejected_image, REJECTED_IMAGE_STRATEGIES))
        if self.lr_scheduler not in SCHEDULERS:
            raise ConfigError(_unknown("lr scheduler", self.lr_scheduler, SCHEDULERS))
        if not self.reference.startswith("cache:") and self.reference not in REFERENCE_MODES:
            raise ConfigError(f"unknown reference {self.reference!r}; expected adapter, copy or cache:FILE (or auto)")
        if self.reference_cache == "":
            raise ConfigError("--reference cache:FILE needs a file name after 'cache:'")
        if self.reference_mode == "adapter" and not self.lora:
            raise ConfigError("--reference adapter needs --lora (the reference is the model with the adapter off)")
        bad = [m for m in self.modules if m not in MODULE_GROUPS]
        if bad or not self.modules:
            raise ConfigError(f"modules must be a non-empty list of {', '.join(MODULE_GROUPS)}; got {self.modules}")
        if self.lora and (self.lora_r <= 0 or self.lora_alpha <= 0):
            raise ConfigError("lora_r and lora_alpha must be positive")
        if self.max_length is not None and self.max_length <= 0:
            raise ConfigError(f"max_length must be positive, got {self.max_length}")
        return self


def _unknown(what: str, value: str, choices: Any) -> str:
    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {value!r}{hint} (choices: {', '.join(choices)})"


_TYPES = get_type_hints(TrainConfig)


def coerce_value(key: str, value: Any, source: str) -> Any:
    """``value`` checked (and converted where lossless: int -> float, "1e-6" -> 1e-6, str -> [str]) against
    the type of field ``key``; ``source`` names where it came from in error messages."""
    if key not in _TYPES:
        raise ConfigError(f"{source}: unknown key {key!r}{_did_you_mean(key)}")
    hint = _TYPES[key]
    args = get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} cannot be null")
    base = next((a for a in args if a is not type(None)), hint) if args and get_origin(hint) is not list else hint
    origin = get_origin(base)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")
        return list(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-7" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    return value


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, TrainConfig.field_names(), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(TrainConfig.field_names())})"


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The checked key/value pairs of a YAML recipe. Errors name the file (and key)."""
    raw = read_yaml_mapping(path, "recipe")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        out[key] = coerce_value(key, value, source=str(path))
    return out


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML ``recipe``, then ``overrides`` (flags given explicitly; ``None`` values skipped)."""
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(read_recipe(recipe))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = coerce_value(key, value, source=f"--{key.replace('_', '-')}")
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration (JSON) next to the run's outputs."""
    Path(path).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
