"""The layout of a sweep folder: job kinds and states, the files of each job, and small helpers to read them."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

INDEX_FILE = "index.json"
INDEX_VERSION = 1
KINDS: tuple[str, ...] = ("sft", "train", "eval")
STATES: tuple[str, ...] = ("pending", "running", "done", "failed")
DONE_FILE = "done.json"
SPEC_FILE = "spec.json"
LOG_FILE = "log.txt"
TRAIN_YAML = "train.yaml"
JOB_JSON = "job.json"
JOB_LOCK = "lock"
SWEEP_LOCK = "sweep.lock"
MANIFEST_FILE = "train_manifest.json"  # written last by `harness train` (trainers.trainer.save_final_model)
TRAIN_KINDS: tuple[str, ...] = ("sft", "train")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def job_dir(output: Path, job_id: str) -> Path:
    return output / "jobs" / job_id


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
