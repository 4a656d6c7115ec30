"""The run contract: what a run directory records and what an evaluation returns, as typed records.

- :class:`Manifest` is ``RUN/TASK/manifest.json`` (:mod:`harness.store`): the model, the engine's description,
  the task (name, version, data root and data file hashes), the scorer's provenance, the decoding, the
  environment (command line, Python, platform, packages, git revision) and, added by
  :meth:`harness.store.RunStore.open`, the ``fingerprint`` and the ``settings`` it covers. ``harness run`` writes it
  through :meth:`Manifest.to_dict`; the reports read it through :meth:`Manifest.from_dict`.
- :class:`JobInfo` is ``RUN/job.json``, the description of a run a sweep writes beside it (method, data size, beta,
  epochs, seed, model, model size, rejected-image strategy, name). :meth:`JobInfo.from_dict` types each value and
  drops (with a warning) one that is not usable; the same cleaning applies to the other sources of a run's
  description the reports read (a manifest's ``sweep`` object, a checkpoint's ``train_config.json``).
- :class:`RunRecord` is what :func:`harness.evaluate.evaluate` returns: the run directory and, per task, its
  folder, files, headline metrics, counts and timings (:class:`TaskRecord`).

Each record has ``to_dict()`` and ``from_dict()``; ``from_dict`` accepts the files of older harness versions (a
key that is missing reads as None).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.store import FAILURES, MANIFEST, METRICS, PREDICTIONS, RUNS, SCORES


# --------------------------------------------------------------------------------------------------- values
def parse_size(value: Any) -> int | None:
    """A data size: ``5000``, ``"5000"``, ``"5k"``, ``"1.5k"``, ``"2m"`` -> int; anything else -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if math.isfinite(value) and value >= 0 else None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(value))
    if not m:
        return None
    mult = {"": 1, "k": 1000, "m": 1_000_000}[m.group(2).lower()]
    return round(float(m.group(1)) * mult)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _mapping(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


# --------------------------------------------------------------------------------------------------- manifest
#: The environment keys of a manifest (:func:`harness.manifest.environment`).
ENVIRONMENT_KEYS: tuple[str, ...] = ("command", "python", "platform", "packages", "git")


@dataclass
class Manifest:
    """``manifest.json`` of one ``RUN/TASK`` directory.

    ``model``, ``engine``, ``task``, ``sweep`` and ``settings`` are JSON objects (None when the file lacks one, or
    holds something else there); ``extra`` keeps keys this class does not know, so that reading and writing a
    manifest loses nothing. ``fingerprint`` and ``settings`` are added by :meth:`harness.store.RunStore.open` and
    left out of :meth:`to_dict` while None.
    """

    model: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    scorer: Any = None
    decoding: dict[str, Any] | None = None
    max_new_tokens_override: int | None = None
    command: list[str] | None = None
    python: str | None = None
    platform: str | None = None
    packages: dict[str, str] | None = None
    git: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    fingerprint: str | None = None
    settings: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _ALWAYS = ("model", "engine", "task", "scorer", "decoding", "max_new_tokens_override", *ENVIRONMENT_KEYS)
    _IF_SET = ("sweep", "fingerprint", "settings")
    _OBJECTS = ("model", "engine", "task", "sweep", "settings")

    # ------------------------------------------------------------------ reading
    @property
    def model_name(self) -> Any:
        return None if self.model is None else self.model.get("name")

    @property
    def model_path(self) -> Any:
        return None if self.model is None else self.model.get("path")

    @property
    def engine_name(self) -> Any:
        """The engine's ``engine`` entry (``hf``, ``vllm``, ``openai``); None without one."""
        return None if self.engine is None else self.engine.get("engine")

    @property
    def task_name(self) -> Any:
        return None if self.task is None else self.task.get("name")

    @property
    def task_version(self) -> Any:
        return None if self.task is None else self.task.get("version")

    @property
    def data_files(self) -> Any:
        """The task's data file hashes (relative path -> hash); None when the manifest does not say."""
        return None if self.task is None else self.task.get("data_files")

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in self._ALWAYS}
        out.update({key: getattr(self, key) for key in self._IF_SET if getattr(self, key) is not None})
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for key in names:
            value = data.get(key)
            values[key] = _mapping(value) if key in cls._OBJECTS else value
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**values, extra=extra)


# --------------------------------------------------------------------------------------------------- job
@dataclass(frozen=True)
class JobInfo:
    """``RUN/job.json``: what a run of a sweep is. Every field optional (None: the job does not say)."""

    method: str | None = None
    data_size: int | None = None
    beta: float | None = None
    epochs: float | None = None
    seed: int | None = None
    model: str | None = None
    model_size: str | None = None
    rejected_image: str | None = None
    name: str | None = None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys of a job description, in their order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Every key, None where the job does not say (the form a sweep writes)."""
        return dataclasses.asdict(self)

    def given(self) -> dict[str, Any]:
        """The keys the job says something about."""
        return {k: v for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "job.json", warnings: list[str] | None = None) -> JobInfo:
        """The known keys of ``raw``, typed: ``data_size`` may be ``"5k"``, ``beta``/``epochs``/``seed`` may be
        strings of numbers, ``model_size`` ``"7b"`` reads ``"7B"``. A value that is not usable is left out, with a
        warning naming ``where`` appended to ``warnings``; unknown keys are ignored."""
        out: dict[str, Any] = {}
        for key in cls.keys():
            if key not in raw or raw[key] is None:
                continue
            value = raw[key]
            if key == "data_size":
                parsed: Any = parse_size(value)
            elif key in ("beta", "epochs"):
                parsed = _number(value) if not isinstance(value, str) else _number(_float_or_none(value))
            elif key == "seed":
                parsed = (
                    int(value)
                    if (isinstance(value, int) and not isinstance(value, bool))
                    or (isinstance(value, str) and value.strip().isdigit())
                    else None
                )
            elif key == "model_size":
                parsed = str(value).strip()
                if re.fullmatch(r"\d+(?:\.\d+)?[bB]", parsed):
                    parsed = parsed[:-1] + "B"
            else:
                parsed = str(value)
            if parsed is None:
                if warnings is not None:
                    warnings.append(f"{where}: {key} {value!r} is not usable; ignored")
                continue
            out[key] = parsed
        return cls(**out)


# --------------------------------------------------------------------------------------------------- run record
@dataclass(frozen=True)
class TaskRecord:
    """One task of an evaluation: its ``RUN/TASK`` folder, headline metrics, counts and this invocation's timings."""

    task: str
    dir: Path
    headline: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    n_resumed: int = 0
    n_generated: int = 0
    n_failed: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.n_generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def predictions_path(self) -> Path:
        return self.dir / PREDICTIONS

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS

    @property
    def scores_path(self) -> Path:
        return self.dir / SCORES

    @property
    def failures_path(self) -> Path:
        return self.dir / FAILURES

    @property
    def runs_path(self) -> Path:
        return self.dir / RUNS

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "dir": str(self.dir),
            "headline": dict(self.headline),
            "counts": dict(self.counts),
            "n_samples": self.n_samples,
            "n_resumed": self.n_resumed,
            "n_generated": self.n_generated,
            "n_failed": self.n_failed,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRecord:
        return cls(
            task=str(data["task"]),
            dir=Path(data["dir"]),
            headline=dict(data.get("headline") or {}),
            counts=dict(data.get("counts") or {}),
            n_samples=int(data.get("n_samples") or 0),
            n_resumed=int(data.get("n_resumed") or 0),
            n_generated=int(data.get("n_generated") or 0),
            n_failed=int(data.get("n_failed") or 0),
            seconds=float(data.get("seconds") or 0.0),
        )


@dataclass(frozen=True)
class RunRecord:
    """What an evaluation returns: the run's folder (``OUTPUT/RUN``), its name, engine and model, the tasks in the
    order they ran and the seconds the whole evaluation took."""

    run_name: str
    run_dir: Path
    engine: str
    model: str
    tasks: tuple[TaskRecord, ...] = ()
    seconds: float = 0.0

    def task(self, name: str) -> TaskRecord:
        """The record of task ``name`` (KeyError when the run has none)."""
        for record in self.tasks:
            if record.task == name:
                return record
        raise KeyError(name)

    @property
    def headline(self) -> dict[str, dict[str, Any]]:
        """Task name -> its headline metrics."""
        return {t.task: dict(t.headline) for t in self.tasks}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "run_dir": str(self.run_dir),
            "engine": self.engine,
            "model": self.model,
            "tasks": [t.to_dict() for t in self.tasks],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(
            run_name=str(data["run_name"]),
            run_dir=Path(data["run_dir"]),
            engine=str(data.get("engine") or ""),
            model=str(data.get("model") or ""),
            tasks=tuple(TaskRecord.from_dict(t) for t in data.get("tasks") or ()),
            seconds=float(data.get("seconds") or 0.0),
        )
