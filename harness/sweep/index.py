"""Job state on disk: the ``done.json`` markers, the verification of a job's outputs (a trained model is whole,
trained with the job's settings from its starting model, and not identical to it), the run index ``index.json``, and
:func:`prepare`, which writes what the jobs read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cache import content_hash
from harness.errors import ConfigError, DataError
from harness.io import atomic_write_json, atomic_write_text
from harness.models import content_hash as model_hash
from harness.models.weights import safetensors_header, same_weights, weight_files  # noqa: F401
from harness.sweep.inputs import NON_SEMANTIC_TRAIN, nested_subsets
from harness.sweep.layout import (
    DONE_FILE,
    INDEX_FILE,
    INDEX_VERSION,
    LOG_FILE,
    MANIFEST_FILE,
    SPEC_FILE,
    TRAIN_KINDS,
    TRAIN_YAML,
    _now,
    _read_json,
    job_dir,
)
from harness.sweep.locks import _locked
from harness.sweep.plan import Job, Plan


def is_done(job: Job, output: Path) -> bool:
    """Finished: ``jobs/ID/done.json`` carries the job's current fingerprint and every expected output exists; for a
    training job, the model's weight files are still those verified when it was marked done (names, sizes and the
    hashes its manifest records)."""
    done = _read_json(job_dir(output, job.id) / DONE_FILE)
    if not (
        isinstance(done, dict)
        and done.get("fingerprint") == job.fingerprint
        and all((output / p).exists() for p in job.expect)
    ):
        return False
    if job.kind not in TRAIN_KINDS:
        return True
    weights = done.get("weights")
    model_dir = output / job.outputs["model"]
    manifest = _read_json(model_dir / MANIFEST_FILE)
    if not isinstance(weights, dict) or not weights or not isinstance(manifest, dict):
        return False
    if isinstance(manifest.get("weights"), dict) and manifest["weights"] != weights:
        return False
    try:
        return sorted(p.name for p in weight_files(model_dir)) == sorted(weights) and all(
            (model_dir / n).stat().st_size == w.get("size") for n, w in weights.items()
        )
    except (OSError, AttributeError):
        return False


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a ``checkpoint-N`` that ``harness train --resume`` continues from (an incomplete
    one is skipped by it, in favour of the last complete one)."""
    if not folder.is_dir():
        return False
    return any(p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name) for p in folder.iterdir())


def verify_trained_model(job: Job, output: Path) -> tuple[str | None, dict[str, Any]]:
    """Check the final model of training job ``job``: ``(problem, weights)``, ``problem`` None when it is complete
    and verified, ``weights`` its weight files ``{name: {"size", "sha256"}}``.

    Complete: ``train_manifest.json`` (written last by ``harness train``) and ``config.json`` parse, every weight
    file is whole (safetensors headers, every shard of an index) and matches the hashes the manifest recorded.
    Verified: trained with the job's settings, from the job's starting model as it is now (its content hash), and
    not identical to that starting model (a run that trained nothing, or resumed from nothing)."""

    model_dir = output / job.outputs["model"]
    manifest = _read_json(model_dir / MANIFEST_FILE)
    if not isinstance(manifest, dict):
        return f"{model_dir}: no {MANIFEST_FILE} (the final save did not finish)", {}
    if not isinstance(_read_json(model_dir / "config.json"), dict):
        return f"{model_dir}: unreadable config.json", {}
    files = weight_files(model_dir)
    if not files:
        return f"{model_dir}: no model weights", {}
    for path in files:
        if path.name.endswith(".index.json"):
            index = _read_json(path)
            shards = set(index.get("weight_map", {}).values()) if isinstance(index, dict) else None
            if not shards or any(not (model_dir / s).is_file() for s in shards):
                return f"{path}: a shard it lists is missing", {}
        elif path.suffix == ".safetensors":
            try:
                safetensors_header(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                return f"{path}: not a whole safetensors file ({exc})", {}
    weights = {p.name: {"size": p.stat().st_size, "sha256": content_hash(p)} for p in files}
    recorded = manifest.get("weights")
    if isinstance(recorded, dict) and recorded != weights:
        return f"{model_dir}: the weight files differ from those {MANIFEST_FILE} records", {}
    if job.train_config is not None and isinstance(manifest.get("config"), dict):
        ignore = set(NON_SEMANTIC_TRAIN)
        changes = _diff(
            {k: v for k, v in manifest["config"].items() if k in job.train_config and k not in ignore},
            {k: v for k, v in job.train_config.items() if k in manifest["config"] and k not in ignore},
        )
        if changes:
            return f"{model_dir}: trained with other settings ({'; '.join(changes)})", {}
    start = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    start_path = Path(str(start.get("path") or ""))
    wanted = (job.train_config or {}).get("model")
    if wanted is not None and start_path.resolve() != Path(wanted).resolve():
        return f"{model_dir}: trained from {start_path}, not {wanted}", {}
    if not start_path.is_dir():
        return f"{model_dir}: its starting model {start_path} is gone; cannot verify it", {}

    if start.get("content_hash") and model_hash(start_path) != start["content_hash"]:
        return f"{model_dir}: its starting model {start_path} changed since it was trained", {}
    try:
        if same_weights(model_dir, start_path):
            return (
                f"{model_dir}: the weights are identical to its starting model {start_path} (nothing was trained)"
            ), {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{model_dir}: cannot compare the weights with {start_path} ({exc})", {}
    return None, weights


def verify_outputs(job: Job, output: Path) -> tuple[str | None, dict[str, Any]]:
    """``(problem, weights)`` of a job that ran: the expected outputs exist; a training job's model is verified
    (:func:`verify_trained_model`); an evaluation's ``metrics.json`` files are JSON objects."""
    missing = [p for p in job.expect if not (output / p).exists()]
    if missing:
        return f"finished without writing {', '.join(missing)}", {}
    if job.kind in TRAIN_KINDS:
        return verify_trained_model(job, output)
    bad = [p for p in job.expect if p.endswith(".json") and not isinstance(_read_json(output / p), dict)]
    if bad:
        return f"unreadable {', '.join(bad)}", {}
    return None, {}


class RunIndex:
    """``OUTPUT/index.json``: every job of the sweep, its state, outputs and timings (format: the docstring of
    :mod:`harness.sweep`).

    Each change is a read-modify-write under an exclusive lock on ``index.lock`` followed by an atomic rewrite,
    so the sweep process and jobs running on other machines (Slurm) can update it side by side.
    """

    def __init__(self, output: Path):
        self.output = output
        self.path = output / INDEX_FILE
        self.lock_path = output / "index.lock"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "jobs": []}
        except (OSError, ValueError) as exc:
            raise DataError(
                f"unreadable run index ({exc}); remove it and rerun to rebuild it", path=self.path
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise DataError("not a sweep run index", path=self.path)
        return data

    def entries(self) -> dict[str, dict[str, Any]]:
        return {e["id"]: e for e in self.read()["jobs"] if isinstance(e, dict) and "id" in e}

    def _write(self, data: dict[str, Any]) -> None:
        data["updated"] = _now()
        atomic_write_json(self.path, data)

    def sync(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """Rewrite the index from the plan and the jobs' state on disk (a finished job is ``done``; a job the index
        says is done but that is not is ``pending``); history fields are kept. Returns the entries by id."""
        with _locked(self.lock_path):
            data = self.read()
            old = {e["id"]: e for e in data["jobs"] if isinstance(e, dict) and "id" in e}
            jobs = []
            for job in plan.jobs:
                entry = dict(old.pop(job.id, {}))
                state = entry.get("state", "pending")
                if is_done(job, plan.output):
                    state = "done"
                elif state == "done":
                    state = "pending"
                elif state == "running" and plan.settings.executor == "local":
                    state = "pending"  # the local sweep that ran it was stopped (this one holds the sweep lock)
                    entry["error"] = "interrupted"
                entry.update(
                    {
                        "id": job.id,
                        "kind": job.kind,
                        "name": job.name,
                        "params": job.params,
                        "deps": list(job.deps),
                        "state": state,
                        "fingerprint": job.fingerprint,
                        "command": job.command(),
                        "outputs": dict(job.outputs),
                        "log": f"jobs/{job.id}/{LOG_FILE}",
                        "in_plan": True,
                    }
                )
                for key in ("attempts",):
                    entry.setdefault(key, 0)
                for key in ("submitted", "started", "finished", "seconds", "error", "slurm_job_id", "host"):
                    entry.setdefault(key, None)
                jobs.append(entry)
            for entry in old.values():  # jobs of an earlier, larger grid: kept, marked
                entry["in_plan"] = False
                jobs.append(entry)
            data = {
                "version": INDEX_VERSION,
                "output": str(plan.output),
                "settings": plan.settings.to_dict(),
                "data": plan.data.to_dict(),
                "created": data.get("created") or _now(),
                "jobs": jobs,
            }
            self._write(data)
            return {e["id"]: e for e in jobs}

    def update(self, job_id: str, increment: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
        """Set ``fields`` of job ``job_id`` and add one to its ``increment`` counters; returns the entry."""
        with _locked(self.lock_path):
            data = self.read()
            for entry in data["jobs"]:
                if entry.get("id") == job_id:
                    entry.update(fields)
                    for key in increment:
                        entry[key] = (entry.get(key) or 0) + 1
                    self._write(data)
                    return entry
        raise KeyError(f"job {job_id} is not in {self.path}")


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _check_reuse(job: Job, output: Path) -> None:
    """A training folder made with other settings is never reused: refuse, naming what changed."""
    spec_path = job_dir(output, job.id) / SPEC_FILE
    model_dir = output / job.outputs["model"]
    if not spec_path.is_file() or not (model_dir.exists() and any(model_dir.iterdir())):
        return
    try:
        old = Job.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return
    if old.fingerprint == job.fingerprint:
        return
    ignore = set(NON_SEMANTIC_TRAIN)
    changes = _diff(
        {k: v for k, v in (old.train_config or {}).items() if k not in ignore},
        {k: v for k, v in (job.train_config or {}).items() if k not in ignore},
    )
    what = "; ".join(changes) or "its data or starting model changed"
    raise ConfigError(
        f"job {job.id}: {model_dir} was trained with other settings ({what}); use another --output, "
        f"or remove {model_dir} and {job_dir(output, job.id)} to train it again"
    )


def prepare(plan: Plan) -> dict[str, dict[str, Any]]:
    """Write what the jobs read: toy data (when asked), the nested subsets, each job's ``spec.json`` (and
    ``train.yaml``), and the run index. Returns the index entries by job id."""
    import yaml

    from trainers.data import write_preferences

    output = plan.output
    for job in plan.jobs:
        if job.kind in ("sft", "train"):
            _check_reuse(job, output)
    try:
        (output / "data").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {output} cannot be created: {exc.strerror}") from exc
    settings = plan.settings
    if settings.sft is not None and settings.sft.get("data") == "toy":
        from tasks.toy import generate_toy_sft

        generate_toy_sft(output / "data" / "toy-sft", settings.toy_captions)
    examples = plan.data.examples
    if examples is None and settings.data == "lab":  # the lab's contrast pairs
        from harness.sweep.plan import lab_pairs_config
        from tasks.lab import generate_lab_preferences
        from trainers.data import read_preferences

        path = generate_lab_preferences(output / "data" / "lab", lab_pairs_config(settings))
        examples = read_preferences(path)
    elif examples is None:  # toy data
        from tasks.toy import generate_toy_preferences
        from trainers.data import read_preferences

        path = generate_toy_preferences(output / "data" / "toy", plan.data.n_records)
        examples = read_preferences(path)
    for size, subset in nested_subsets(examples, list(plan.data.subsets), plan.data.subset_seed).items():
        write_preferences(output / plan.data.subsets[size], subset)
    unfinished: set[str] = set()
    for job in plan.jobs:  # dependency order: a job after an unfinished one has stale results
        if any(d in unfinished for d in job.deps):
            (job_dir(output, job.id) / DONE_FILE).unlink(missing_ok=True)
        if not is_done(job, output):
            unfinished.add(job.id)
    for job in plan.jobs:
        folder = job_dir(output, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        if job.train_config is not None:
            atomic_write_text(
                folder / TRAIN_YAML,
                "# written by `harness sweep`; the job's complete recipe\n"
                + yaml.safe_dump(job.train_config, sort_keys=True),
            )
        atomic_write_json(folder / SPEC_FILE, job.to_dict())
    return RunIndex(output).sync(plan)
