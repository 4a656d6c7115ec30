"""Reference log-probabilities ``log pi_ref(y | x, m)`` for the preference losses, three ways.

Every way has the same interface, :class:`Reference`: ``logps(batch) -> Tensor [n_rows]`` for a
:class:`trainers.logprobs.RowBatch`, without gradient, on the batch's device, in the dtype of
:func:`trainers.logprobs.row_logps`.

- :class:`ModelReference` with ``adapter_off=True``: the LoRA policy with its adapter switched off (peft's
  ``disable_adapter()``); no second model in memory.
- :class:`ModelReference` over a frozen reference model (eval mode, no gradient), prepared like the policy.
- :class:`ReferenceFromCache`: values computed once, offline, by :func:`precompute_reference` (one process) or
  :func:`precompute_reference_sharded` (each process of a launch scores a contiguous share of the micro-batches;
  the main process merges the shares into the same file a single process writes) and stored with the
  data, so training needs no reference model at all. Rows come as :class:`RowBatches`, whose images are decoded
  one micro-batch at a time, so the pass's memory does not grow with the number of rows. The file's header
  records what the values depend on (:class:`ReferenceMeta`: the reference model's content hash, the model
  family and prompt template, the rejected-image strategy and its seed); a cache made under other settings is
  refused, never silently used.

Cache file format (JSON Lines, UTF-8)::

    {"count": N, "format": "halluc-harness.reference-logps", "meta": {...ReferenceMeta...}, "version": 1}
    {"key": ["ex-17", "w", "l"], "logp": -41.25, "n_tokens": 12}
    ...

An entry's key is the row's key (e.g. ``(example id, condition, response)``); together with the header's
strategy and seed it identifies the scored sequence. ``n_tokens`` is checked against the tokenization at
training time, so a cache made with another tokenizer or truncation length is refused too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from harness.errors import ConfigError, DataError, HarnessError
from harness.io import dumps_record, iter_jsonl
from harness.models import content_hash
from harness.models.base import ModelFamily
from trainers.logprobs import Row, RowBatch, row_logps, tokenize_rows

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


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The peft model inside ``model`` (through DDP / DeepSpeed ``.module``); ConfigError if there is none."""
    current: Any = model
    for _ in range(8):
        if hasattr(current, "disable_adapter") and hasattr(current, "get_base_model"):
            return current
        if isinstance(getattr(current, "module", None), nn.Module):
            current = current.module
        else:
            break
    raise ConfigError("--reference adapter needs a LoRA policy (--lora); use --reference copy or cache:FILE")


class ModelReference:
    """Reference log-probs from a model called through its root forward (``module(rows=batch)``, no gradient):
    the policy itself with its LoRA adapter disabled (``adapter_off``), or a frozen reference copy prepared like the
    policy. The model's forward takes ``rows=`` once :func:`trainers.trainer.enable_row_forward` has extended it.
    Going through the root module, not its submodules, is what FSDP needs (its root pre-forward gathers the
    parameters that no wrapped layer owns).

    The module is put in eval mode for the call (no dropout) and given back in the mode it was in; the forward runs
    under ``torch.inference_mode`` (no autograd bookkeeping at all) and its result is a plain tensor."""

    def __init__(self, module: nn.Module, *, adapter_off: bool = False, describe: str = ""):
        self.module = module
        self.adapter_off = adapter_off
        self._describe = describe or ("adapter_disabled" if adapter_off else "frozen_copy")

    def logps(self, batch: RowBatch) -> torch.Tensor:
        peft_model = unwrap_peft(self.module) if self.adapter_off else None
        was_training = self.module.training
        if was_training:
            self.module.eval()  # no dropout in the reference
        try:
            with (
                torch.inference_mode(),
                peft_model.disable_adapter() if peft_model is not None else contextlib.nullcontext(),
            ):
                logps = self.module(rows=batch)
        finally:
            if was_training:
                self.module.train(True)
        return logps.clone()  # an inference tensor is not one autograd may save for the loss's backward

    def describe(self) -> dict[str, Any]:
        return {"reference": self._describe}


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
    def from_dict(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> ReferenceMeta:
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in ("model_hash", "family", "template") if n not in data)
        if missing:
            raise DataError(f"reference cache header lacks {', '.join(missing)}", path=path, line=1)
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_key(key: Any) -> _Key:
    if not isinstance(key, tuple) or not key:
        raise HarnessError(f"a reference cache key must be a non-empty tuple, got {key!r}")
    for part in key:
        if not isinstance(part, (str, int, float, bool)) and part is not None:
            raise HarnessError(f"reference cache key {key!r}: {part!r} is not a string or number")
    return key


@runtime_checkable
class RowBatches(Protocol):
    """Rows to score, as micro-batches whose keys are known without loading their images.

    ``keys(i)`` is cheap (no image is decoded); ``rows(i)`` builds batch ``i``'s rows, images decoded now, so
    that a pass over all batches holds one batch's images at a time. ``rows(i)`` must give the rows of
    ``keys(i)``, in that order.
    """

    def __len__(self) -> int: ...

    def keys(self, index: int) -> Sequence[_Key]: ...

    def rows(self, index: int) -> Sequence[Row]: ...


class RowList:
    """:class:`RowBatches` over rows already in memory, ``batch_size`` consecutive rows per batch."""

    def __init__(self, rows_by_key: Mapping[_Key, Row] | Sequence[Row], batch_size: int = 8):
        if batch_size < 1:
            raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(rows_by_key, Mapping):
            items = [(_check_key(k), row) for k, row in rows_by_key.items()]
        else:
            items = [(_check_key(row.key), row) for row in rows_by_key]
        self._keys = [k for k, _ in items]
        # the key given in the mapping is the cache key, whatever the row's own key
        self._rows = [row if row.key == k else replace(row, key=k) for k, row in items]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self._rows) + self.batch_size - 1) // self.batch_size

    def keys(self, index: int) -> Sequence[_Key]:
        return self._keys[index * self.batch_size : (index + 1) * self.batch_size]

    def rows(self, index: int) -> Sequence[Row]:
        return self._rows[index * self.batch_size : (index + 1) * self.batch_size]


def shard_range(n_batches: int, rank: int, world_size: int) -> range:
    """The batches rank ``rank`` of ``world_size`` scores: a contiguous share, sizes differing by at most one."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise HarnessError(f"rank {rank} is not one of {world_size} process(es)")
    return range(rank * n_batches // world_size, (rank + 1) * n_batches // world_size)


def _header(meta: ReferenceMeta, count: int) -> str:
    return dumps_record(
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "meta": meta.to_dict(),
            "count": count,
        }
    )


def _all_keys(batches: RowBatches) -> int:
    """The number of rows of ``batches``; a repeated or malformed key is an error (no image is loaded)."""
    seen: set[_Key] = set()
    for index in range(len(batches)):
        for key in batches.keys(index):
            key = _check_key(tuple(key))
            if key in seen:
                raise HarnessError(f"reference rows: key {key!r} appears twice")
            seen.add(key)
    return len(seen)


def _score_into(
    model: nn.Module,
    family: ModelFamily,
    processor: Any,
    batches: RowBatches,
    indices: Iterable[int],
    fh: Any,
    *,
    max_length: int | None,
    bar: Any,
) -> int:
    """Score batches ``indices`` one at a time (images decoded per batch) and write their entries to ``fh``."""
    written = 0
    for index in indices:
        keys = [tuple(k) for k in batches.keys(index)]
        if not keys:
            continue
        rows = list(batches.rows(index))
        if [tuple(r.key) for r in rows] != keys:
            raise HarnessError(
                f"reference rows: batch {index} holds rows {[r.key for r in rows][:3]}... "
                f"but its keys are {keys[:3]}..."
            )
        batch = tokenize_rows(family, processor, rows, max_length=max_length)
        del rows  # the decoded images: only the batch's pixels are needed now
        with torch.no_grad():
            values = row_logps(model, family, batch).tolist()
        counts = batch.token_counts.tolist()
        for key, value, count in zip(keys, values, counts):
            fh.write(dumps_record({"key": list(key), "logp": float(value), "n_tokens": int(count)}) + "\n")
        written += len(keys)
        bar.update(len(keys))
    return written


@contextlib.contextmanager
def _atomic_open(path: Path) -> Iterator[Any]:
    """A text file written under a temporary name and renamed to ``path`` once complete (fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def shard_path(shard_dir: str | Path, rank: int, world_size: int) -> Path:
    """The file rank ``rank`` writes its entries to (entry lines only, no header)."""
    return Path(shard_dir) / f"rank-{rank:05d}-of-{world_size:05d}.jsonl"


def _failure_path(shard_dir: str | Path, rank: int) -> Path:
    return Path(shard_dir) / f"rank-{rank:05d}.failed"


def _wait_for(
    paths: Sequence[Path],
    shard_dir: Path,
    world_size: int,
    *,
    poll_seconds: float,
    timeout: float | None,
) -> None:
    """Wait (by polling the file system, not in a collective) until every path exists; a rank that wrote a
    failure marker ends the wait with its message."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for rank in range(world_size):
            marker = _failure_path(shard_dir, rank)
            if marker.is_file():
                detail = marker.read_text(encoding="utf-8", errors="replace").strip()
                raise HarnessError(f"reference precompute: rank {rank} failed: {detail}")
        if all(p.is_file() for p in paths):
            return
        if deadline is not None and time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.is_file()]
            raise HarnessError(f"reference precompute: timed out waiting for {', '.join(missing[:3])}")
        time.sleep(poll_seconds)


def precompute_reference_sharded(
    model: nn.Module,
    family: ModelFamily,
    processor: Any,
    batches: RowBatches,
    out_path: str | Path,
    meta: ReferenceMeta,
    *,
    rank: int = 0,
    world_size: int = 1,
    shard_dir: str | Path | None = None,
    max_length: int | None = None,
    progress: bool = True,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
) -> int:
    """Score this rank's share of ``batches`` and, on rank 0, write the cache file ``out_path``.

    Every rank of ``world_size`` calls this with the same ``batches``. Rank ``r`` scores the contiguous batches
    :func:`shard_range` gives it, one batch at a time (each batch's images decoded just before it is scored, so
    memory does not grow with the number of rows), and writes its entries to :func:`shard_path` in ``shard_dir``
    (default: ``.NAME.shards`` beside ``out_path``; it must be empty of other runs' shards and seen by every
    rank). Rank 0 then merges the shards, in rank order, under the header into ``out_path`` (written atomically)
    and removes ``shard_dir``; the other ranks return once ``out_path`` exists. The ranks wait for each other by
    polling files, not in a collective, so a long pass cannot run into the process group's timeout; a rank that
    fails leaves a marker that ends the others' wait with its error.

    The batches are scored exactly as one process scores them, so the file is byte-identical to a one-process
    run on the same device type and dtype. Returns the number of rows this rank scored.
    """
    if meta.family != family.name or meta.template != family.template:
        raise HarnessError(
            f"reference meta says {meta.family}/{meta.template} but the rows are rendered with "
            f"{family.name}/{family.template}"
        )
    count = _all_keys(batches)
    mine = shard_range(len(batches), rank, world_size)
    out = Path(out_path)
    folder = Path(shard_dir) if shard_dir is not None else out.parent / f".{out.name}.shards"

    from tqdm.auto import tqdm

    share = sum(len(batches.keys(i)) for i in mine)
    was_training = model.training
    model.eval()
    try:
        with tqdm(
            total=share,
            desc="reference log-probs" + (f" (rank {rank}/{world_size})" if world_size > 1 else ""),
            unit="row",
            disable=not progress,
        ) as bar:
            if world_size == 1:
                with _atomic_open(out) as fh:
                    fh.write(_header(meta, count) + "\n")
                    return _score_into(
                        model,
                        family,
                        processor,
                        batches,
                        mine,
                        fh,
                        max_length=max_length,
                        bar=bar,
                    )
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with _atomic_open(shard_path(folder, rank, world_size)) as fh:
                    scored = _score_into(
                        model,
                        family,
                        processor,
                        batches,
                        mine,
                        fh,
                        max_length=max_length,
                        bar=bar,
                    )
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    _failure_path(folder, rank).write_text(f"{type(exc).__name__}: {exc}"[:2000], encoding="utf-8")
                raise
    finally:
        model.train(was_training)

    shards = [shard_path(folder, r, world_size) for r in range(world_size)]
    if rank != 0:
        _wait_for([out], folder, world_size, poll_seconds=poll_seconds, timeout=timeout)
        return scored
    _wait_for(shards, folder, world_size, poll_seconds=poll_seconds, timeout=timeout)
    try:
        with _atomic_open(out) as fh:
            fh.write(_header(meta, count) + "\n")
            for shard in shards:
                with shard.open("r", encoding="utf-8") as src:
                    shutil.copyfileobj(src, fh, 1 << 20)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _failure_path(folder, 0).write_text(f"merging: {type(exc).__name__}: {exc}"[:2000])
        raise
    shutil.rmtree(folder, ignore_errors=True)
    return scored


def precompute_reference(
    model: nn.Module,
    family: ModelFamily,
    processor: Any,
    rows_by_key: Mapping[_Key, Row] | Sequence[Row] | RowBatches,
    out_path: str | Path,
    meta: ReferenceMeta,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> Path:
    """Compute the reference log-probabilities of all rows once and write them to ``out_path``.

    ``rows_by_key`` maps each key (e.g. ``(example id, condition, response)``) to its row, or is a sequence of
    rows keyed by their own :attr:`Row.key`, or a :class:`RowBatches` that loads each batch's images when it is
    scored. Rows are scored ``batch_size`` at a time (a :class:`RowBatches` has its own batches), in the given
    order (put an example's rows together so its images are encoded once). The file is written atomically; see
    the module docstring for its format. ``meta.template`` and ``meta.family`` must be those of ``family``.
    Several processes share the work with :func:`precompute_reference_sharded`.
    """
    batches = (
        RowList(rows_by_key, batch_size=batch_size) if isinstance(rows_by_key, (Mapping, Sequence)) else rows_by_key
    )
    precompute_reference_sharded(
        model,
        family,
        processor,
        batches,
        out_path,
        meta,
        max_length=max_length,
        progress=progress,
    )
    return Path(out_path)


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
        if header.get("format") != CACHE_FORMAT or header.get("version") != CACHE_VERSION:
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
                raise DataError(f"malformed reference entry ({exc!r})", path=self.path, line=lineno) from exc

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

    def logps(self, batch: RowBatch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
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
    "ModelReference",
    "Reference",
    "ReferenceFromCache",
    "ReferenceMeta",
    "RowBatches",
    "RowList",
    "precompute_reference",
    "precompute_reference_sharded",
    "shard_path",
    "shard_range",
    "unwrap_peft",
]
