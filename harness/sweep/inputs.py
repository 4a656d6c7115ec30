"""The inputs of a sweep's plan: method names, data sizes and their nested subsets, the base model's key and
name, and the training recipes (a recipe file with the sweep's overrides, validated; its semantic settings)."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, DataError
from harness.store import fingerprint as _fp
from harness.sweep.settings import DEFAULT_SUBSET_SEED, SweepSettings, project_path
from trainers.config import PREFERENCE_METHODS, TrainConfig, load_config, unknown_method_message

if TYPE_CHECKING:
    from trainers.data import PreferenceExample

# Training settings that do not change the trained model (left out of a training job's fingerprint).
NON_SEMANTIC_TRAIN = (
    "model",
    "data",
    "output",
    "image_root",
    "resume",
    "report_to",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "dataloader_num_workers",
)

# Training settings the sweep sets itself (not allowed in the `train:` / `sft:` sections).
SWEEP_SET_TRAIN = ("method", "model", "data", "output", "resume")


def fingerprint(values: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of ``values``."""

    return _fp(dict(values))


def uses_rejected_image(method: str) -> bool:
    """Whether ``method``'s loss uses a generated rejected image (the ``rej`` condition: MPO's term)."""
    from trainers.losses import METHODS, required_rows

    return any(condition == "rej" for condition, _ in required_rows(METHODS[method]))


def check_methods(methods: Sequence[str]) -> None:
    """An unknown method is a :class:`ConfigError` naming the closest method names."""

    if not methods:
        raise ConfigError("no --methods given (e.g. --methods dpo,mpo,jompo)")
    for name in methods:
        if name not in PREFERENCE_METHODS:
            note = " (sft is a stage: the `sft:` section of the sweep YAML)" if name == "sft" else ""
            raise ConfigError(f"--methods: {unknown_method_message(name, PREFERENCE_METHODS)}{note}")


def parse_data_sizes(tokens: Sequence[str], n_records: int, source: str) -> list[int]:
    """Data sizes (``1k``, ``2000``, ``all``) as record counts, ascending; a size larger than the data set, or not
    a positive count, is a :class:`ConfigError`."""
    from reports.frame import parse_size

    if not tokens:
        raise ConfigError("no --data-sizes given (e.g. --data-sizes 1k,2k,5k, or all)")
    sizes: list[int] = []
    for token in tokens:
        size = n_records if token.strip().lower() == "all" else parse_size(token)
        if size is None or size <= 0:
            raise ConfigError(f"--data-sizes: {token!r} is not a positive record count (e.g. 500, 1k, 2.5k, all)")
        if size > n_records:
            raise ConfigError(
                f"--data-sizes: {token} ({size} records) is larger than the data set: "
                f"{source} holds {n_records} records"
            )
        sizes.append(size)
    return sorted(set(sizes))


def nested_subsets(
    examples: Sequence[PreferenceExample], sizes: Sequence[int], seed: int = DEFAULT_SUBSET_SEED
) -> dict[int, list[PreferenceExample]]:
    """Reproducible nested subsets: the records sorted by id, shuffled once with ``seed``; size ``n`` takes the
    first ``n``. The result does not depend on the file's record order, and a smaller subset is a prefix of a
    larger one."""
    order = sorted(examples, key=lambda e: e.id)
    random.Random(seed).shuffle(order)
    return {n: order[:n] for n in sizes}


def subset_file(size: int) -> str:
    from reports.frame import format_size

    return f"data/preferences-{format_size(size)}.jsonl"


def absolute_model(model: str | None) -> str | None:
    if model is None:
        return None
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def model_key(model: str | None) -> str:
    if model is None:  # the default model: the lab model of the documented settings (its cache folder names them)
        from trainers.lab_model import lab_model_dir

        return f"embedded:{lab_model_dir().name}"
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def base_model_name(model: str | None) -> str:
    """The base model's name in reports: the checkpoint folder's name, or the embedded model's."""
    if model is None:
        from trainers.lab_model import LAB_MODEL_NAME

        return LAB_MODEL_NAME
    text = model.rstrip("/\\")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text).strip("_") or "model"


def recipe_path(template: str | None, method: str) -> Path | None:
    if template is None:
        return None
    path = project_path(template.replace("{method}", method))
    if not path.is_file():
        raise ConfigError(f"train_config {template!r}: recipe file not found: {path}")
    return path


def train_overrides(section: Mapping[str, Any], what: str) -> dict[str, Any]:
    bad = [k for k in section if k in SWEEP_SET_TRAIN]
    if bad:
        raise ConfigError(
            f"{what}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} set by the sweep "
            "(use the sweep's own settings: methods, model, data, output)"
        )
    return dict(section)


def load_train_config(recipe: Path | None, overrides: Mapping[str, Any]) -> TrainConfig:

    return load_config(recipe, {k: v for k, v in overrides.items() if v is not None})


def validated(config: TrainConfig) -> TrainConfig:
    # the embedded model has no path until it is built; validate() only needs a non-empty value
    dataclasses.replace(config, model=config.model or "embedded").validate()
    return config


def semantic_settings(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in NON_SEMANTIC_TRAIN}


def read_source_examples(settings: SweepSettings, recipe_defaults: TrainConfig) -> list[PreferenceExample]:
    from trainers.data import read_preferences

    path = project_path(settings.data or "")
    if not path.is_file():
        raise DataError("preference data file not found (--data)", path=path)
    image_root = settings.image_root or recipe_defaults.image_root
    fmt = settings.data_format or recipe_defaults.data_format or "auto"
    return read_preferences(path, image_root=image_root, fmt=fmt)
