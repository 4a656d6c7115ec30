"""Reference log-probabilities ``log pi_ref(y | x, m)`` for the preference losses, three ways.

Every way has the same interface, :class:`Reference`: ``logps(batch) -> Tensor [n_rows]`` for a
:class:`trainers.logprobs.RowBatch`, without gradient, on the batch's device, in the dtype of
:func:`trainers.logprobs.row_logps`.

- :class:`ReferenceFromAdapter`: a LoRA policy with its adapter switched off (peft's ``disable_adapter()``);
  no second model in memory.
- :class:`ReferenceFromCopy`: a frozen copy of the model (eval mode, no gradient), optionally on another device.
- :class:`ReferenceFromCache`: values computed once, offline, by :func:`precompute_reference` and stored with the
  data, so training needs no reference model at all. The file's header records what the values depend on
  (:class:`ReferenceMeta`: the reference model's content hash, the model family and prompt template, the
  rejected-image strategy and its seed); a cache made under other settings is refused, never silently used.

Cache file format (JSON Lines, UTF-8)::

    {"count": N, "format": "halluc-harness.reference-logps", "meta": {...ReferenceMeta...}, "version": 1}
    {"key": ["ex-17", "w", "l"], "logp": -41.25, "n_tokens": 12}
    ...

An entry's key is the row's key (e.g. ``(example id, condition, response)``); together with the header's
strategy and seed it identifies the scored sequence. ``n_tokens`` is checked against the tokenization at
training time, so a cache made with another tokenizer or truncation length is refused too.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from harness.errors import DataError, HarnessError
from harness.io import atomic_write_text, dumps_record, iter_jsonl
from harness.models.base import ModelFamily
from trainers.logprobs import LogpsModel, Row, RowBatch, row_logps, tokenize_rows

CACHE_FORMAT = "halluc-harness.reference-logps"
CACHE_VERSION = 1

_Key = tuple[Hashable, ...]


@runtime_checkable
class Reference(Protocol):
    """Reference log-probabilities of a batch of rows."""

    def logps(self, batch: RowBatch) -> torch.Tensor:
        """Summed response log-probabilities under the reference model, ``[n_rows]``, no gradient."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about the reference."""
        ...


def _family_name(family: ModelFamily | str) -> str:
    return family if isinstance(family, str) else family.name


def _find_peft(model: nn.Module) -> nn.Module:
    """The peft model inside ``model`` (through :class:`LogpsModel` and DDP/DeepSpeed ``.module``)."""
    current: Any = model
    for _ in range(8):
        if hasattr(current, "disable_adapter") and hasattr(current, "get_base_model"):
            return current
        if isinstance(current, LogpsModel):
            current = current.model
        elif isinstance(getattr(current, "module", None), nn.Module):
            current = current.module
        else:
            break
    raise HarnessError(
        f"the adapter-disabled reference needs a peft (LoRA) model; got {type(model).__name__}. "
        "Use a frozen copy (ReferenceFromCopy) or a precomputed cache (ReferenceFromCache) for full fine-tuning."
    )


class ReferenceFromAdapter:
    """The LoRA policy with its adapter disabled: the base model the adapter was added to.

    The model is put in eval mode for the call (no dropout) and given back in the mode it was in.
    """

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily | str,
        *,
        one_vision_call: bool = True,
    ):
        self.peft_model = _find_peft(model)
        self.family = _family_name(family)
        self.one_vision_call = one_vision_call

    def logps(self, batch: RowBatch) -> torch.Tensor:
        was_training = self.peft_model.training
        self.peft_model.eval()
        try:
            with torch.no_grad(), self.peft_model.disable_adapter():
                out = row_logps(
                    self.peft_model,
                    self.family,
                    batch,
                    one_vision_call=self.one_vision_call,
                )
        finally:
            self.peft_model.train(was_training)
        return out.to(batch.input_ids.device)

    def describe(self) -> dict[str, Any]:
        return {"reference": "adapter_disabled", "family": self.family}


class ReferenceFromCopy:
    """A frozen model (eval mode, ``requires_grad=False``), optionally on its own device.

    Build it from a checkpoint (:meth:`from_pretrained`), from the policy at the start of training
    (:meth:`from_policy`, a deep copy with any LoRA adapter merged), or from a model you loaded yourself.
    """

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily | str,
        *,
        device: torch.device | str | None = None,
        one_vision_call: bool = True,
    ):
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.family = _family_name(family)
        self.one_vision_call = one_vision_call

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        family: ModelFamily | str,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ReferenceFromCopy:
        """Load the checkpoint at ``path`` as the reference."""
        from transformers import AutoModelForImageTextToText

        try:
            model = AutoModelForImageTextToText.from_pretrained(
                str(path), dtype=dtype or torch.float32
            )
        except (OSError, ValueError) as exc:
            raise HarnessError(
                f"{path}: cannot load the reference model: {exc}"
            ) from exc
        return cls(model, family, device=device)

    @classmethod
    def from_policy(
        cls,
        policy: nn.Module,
        family: ModelFamily | str,
        *,
        device: torch.device | str | None = None,
    ) -> ReferenceFromCopy:
        """A deep copy of ``policy`` as it is now; a peft adapter is merged into the copy's weights."""
        model: Any = policy
        while isinstance(model, LogpsModel) or isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.model if isinstance(model, LogpsModel) else model.module
        frozen = copy.deepcopy(model)
        if hasattr(frozen, "merge_and_unload"):
            frozen = frozen.merge_and_unload()
        return cls(frozen, family, device=device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logps(self, batch: RowBatch) -> torch.Tensor:
        with torch.no_grad():
            out = row_logps(
                self.model,
                self.family,
                batch.to(self.device),
                one_vision_call=self.one_vision_call,
            )
        return out.to(batch.input_ids.device)

    def describe(self) -> dict[str, Any]:
        return {
            "reference": "frozen_copy",
            "family": self.family,
            "device": str(self.device),
        }


# ---------------------------------------------------------------------------------------------------------
# precomputed cache


@dataclass(frozen=True)
class ReferenceMeta:
    """What precomputed reference log-probabilities depend on; a cache is used only under the same values.

    ``model_hash`` is :func:`harness.models.content_hash` of the reference checkpoint; ``template`` the prompt
    template of the family adapter; ``strategy`` and ``seed`` the rejected-image strategy (``crop``,
    ``diffusion``, ``black``, ``random``, ``contrast``; ``None`` when no row uses a generated image) and its seed.
    """

    model_hash: str
    family: str
    template: str
    strategy: str | None = None
    seed: int | None = None

    @classmethod
    def for_model(
        cls,
        model_path: str | Path,
        family: ModelFamily,
        *,
        strategy: str | None = None,
        seed: int | None = None,
    ) -> ReferenceMeta:
        """The meta of the checkpoint at ``model_path`` rendered with ``family``'s template."""
        from harness.models import content_hash

        return cls(
            model_hash=content_hash(model_path),
            family=family.name,
            template=family.template,
            strategy=strategy,
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, path: str | Path | None = None
    ) -> ReferenceMeta:
        names = {f.name for f in fields(cls)}
        missing = sorted(
            n for n in ("model_hash", "family", "template") if n not in data
        )
        if missing:
            raise DataError(
                f"reference cache header lacks {', '.join(missing)}", path=path, line=1
            )
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_key(key: Any) -> _Key:
    if not isinstance(key, tuple) or not key:
        raise HarnessError(
            f"a reference cache key must be a non-empty tuple, got {key!r}"
        )
    for part in key:
        if not isinstance(part, (str, int, float, bool)) and part is not None:
            raise HarnessError(
                f"reference cache key {key!r}: {part!r} is not a string or number"
            )
    return key


def precompute_reference(
    model: nn.Module,
    family: ModelFamily,
    processor: Any,
    rows_by_key: Mapping[_Key, Row] | Sequence[Row],
    out_path: str | Path,
    meta: ReferenceMeta,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> Path:
    """Compute the reference log-probabilities of all rows once and write them to ``out_path``.

    ``rows_by_key`` maps each key (e.g. ``(example id, condition, response)``) to its row, or is a sequence of
    rows keyed by their own :attr:`Row.key`. Rows are scored ``batch_size`` at a time, in the given order (put an
    example's rows together so its images are encoded once). The file is written atomically; see the module
    docstring for its format. ``meta.template`` and ``meta.family`` must be those of ``family``.
    """
    if meta.family != family.name or meta.template != family.template:
        raise HarnessError(
            f"reference meta says {meta.family}/{meta.template} but the rows are rendered with "
            f"{family.name}/{family.template}"
        )
    if isinstance(rows_by_key, Mapping):
        items = [(_check_key(k), row) for k, row in rows_by_key.items()]
    else:
        items = [(_check_key(row.key), row) for row in rows_by_key]
    seen: set[_Key] = set()
    for key, _ in items:
        if key in seen:
            raise HarnessError(f"reference rows: key {key!r} appears twice")
        seen.add(key)

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    lines = [
        dumps_record(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "meta": meta.to_dict(),
                "count": len(items),
            }
        )
    ]
    try:
        with tqdm(
            total=len(items),
            desc="reference log-probs",
            unit="row",
            disable=not progress,
        ) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                batch = tokenize_rows(
                    family, processor, [row for _, row in chunk], max_length=max_length
                )
                with torch.no_grad():
                    values = row_logps(model, family, batch).tolist()
                counts = batch.token_counts.tolist()
                for (key, _), value, count in zip(chunk, values, counts):
                    lines.append(
                        dumps_record(
                            {
                                "key": list(key),
                                "logp": float(value),
                                "n_tokens": int(count),
                            }
                        )
                    )
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def _as_key(value: Any) -> _Key:
    return tuple(_as_key(v) if isinstance(v, list) else v for v in value)


class ReferenceFromCache:
    """Reference log-probabilities read from a file written by :func:`precompute_reference`.

    The file is refused (:class:`HarnessError`) when its header differs from ``expected_meta`` in any field (the
    message names each field and both values); a row missing from the file, or tokenized to another number of
    response tokens than when the cache was made, is an error naming the row's key.
    """

    def __init__(self, path: str | Path, expected_meta: ReferenceMeta):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(
                "reference cache not found; write it with precompute_reference (an offline pass of the "
                "reference model over the training rows)",
                path=self.path,
            )
        entries = iter_jsonl(self.path)
        try:
            _, header = next(entries)
        except StopIteration:
            raise DataError("empty reference cache", path=self.path) from None
        if (
            header.get("format") != CACHE_FORMAT
            or header.get("version") != CACHE_VERSION
        ):
            raise DataError(
                f"not a reference cache of version {CACHE_VERSION} "
                f"(format={header.get('format')!r}, version={header.get('version')!r})",
                path=self.path,
                line=1,
            )
        self.meta = ReferenceMeta.from_dict(header.get("meta") or {}, path=self.path)
        expected = expected_meta.to_dict()
        found = self.meta.to_dict()
        diffs = [
            f"{name}: cache has {found.get(name)!r}, expected {value!r}"
            for name, value in expected.items()
            if found.get(name) != value
        ]
        if diffs:
            raise HarnessError(
                f"{self.path}: the reference cache was made under other settings ({'; '.join(diffs)}); "
                "recompute it with precompute_reference for this model, template and rejected-image strategy"
            )
        self._values: dict[_Key, tuple[float, int]] = {}
        for lineno, entry in entries:
            try:
                key = _as_key(entry["key"])
                self._values[key] = (float(entry["logp"]), int(entry["n_tokens"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"malformed reference entry ({exc!r})", path=self.path, line=lineno
                ) from exc

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def lookup(self, keys: Iterable[_Key]) -> tuple[list[float], list[int]]:
        """(log-probabilities, response token counts) of ``keys``; a missing key is an error that names it."""
        values, counts = [], []
        for key in keys:
            try:
                value, count = self._values[tuple(key)]
            except KeyError:
                raise HarnessError(
                    f"{self.path}: no reference log-probability for row {tuple(key)!r} "
                    f"(strategy={self.meta.strategy!r}, seed={self.meta.seed!r}); "
                    "recompute the cache over the current training rows"
                ) from None
            values.append(value)
            counts.append(count)
        return values, counts

    def logps(
        self, batch: RowBatch, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        values, counts = self.lookup(batch.keys)
        expected = batch.token_counts.tolist()
        for key, cached, now in zip(batch.keys, counts, expected):
            if cached != now:
                raise HarnessError(
                    f"{self.path}: row {key!r} has {now} response tokens now but {cached} when the cache was "
                    "made (another tokenizer or max_length?); recompute the cache"
                )
        return torch.tensor(values, dtype=dtype, device=batch.input_ids.device)

    def describe(self) -> dict[str, Any]:
        return {
            "reference": "precomputed",
            "path": str(self.path),
            **self.meta.to_dict(),
        }


__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "Reference",
    "ReferenceFromAdapter",
    "ReferenceFromCache",
    "ReferenceFromCopy",
    "ReferenceMeta",
    "precompute_reference",
]
