"""The ``slurm:`` section of the sweep YAML: per-kind Slurm resources as submitit parameters."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from harness.errors import ConfigError
from harness.sweep.layout import KINDS

_RESOURCE_KEYS = ("gpus", "cpus", "mem", "time", "partition", "account", "qos", "constraint", "nodes", "setup", "extra")


def _minutes(value: Any, where: str) -> int:
    """A Slurm time limit in minutes: ``90`` (minutes), ``"MM:SS"``, ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``,
    ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
    if m is None or isinstance(value, bool):
        raise ConfigError(f"{where}: time {value!r}: expected minutes or [D-]HH:MM:SS")
    parts = [int(x) for x in m.group(2).split(":")]
    if m.group(1) is not None:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        seconds = int(m.group(1)) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 1:  # MM
        seconds = parts[0] * 60
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:  # HH:MM:SS
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds <= 0:
        raise ConfigError(f"{where}: time {value!r} must be positive")
    return -(-seconds // 60)


def _gigabytes(value: Any, where: str) -> float:
    """``64`` (GB), ``"64G"``, ``"64GB"``, ``"512M"``, ``"1T"`` -> GB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([MGT]?)B?\s*", str(value), re.IGNORECASE)
    if m is None or isinstance(value, bool):
        raise ConfigError(f"{where}: mem {value!r}: expected gigabytes, e.g. 64 or 64G")
    factor = {"": 1.0, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[m.group(2).upper()]
    return float(m.group(1)) * factor


def slurm_parameters(section: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for a job of ``kind`` from the ``slurm:`` section of the sweep YAML.

    The section holds defaults for every job and, under ``sft``, ``train`` and ``eval``, per-kind values::

        slurm:
          partition: gpu
          account: myproject
          setup: ["source .venv/bin/activate"]   # shell lines run before the job
          train: {gpus: 8, cpus: 64, mem: 480G, time: "24:00:00"}
          eval: {gpus: 1, cpus: 8, mem: 64G, time: "2:00:00"}
          extra: {qos: high}                     # any other sbatch option

    Keys: gpus (per node), cpus (per task), mem, time, partition, account, qos, constraint, nodes, setup, extra.
    """
    where = "slurm"
    merged: dict[str, Any] = {}
    for key, value in section.items():
        if key in KINDS:
            continue
        merged[key] = value
    per_kind = section.get(kind) or {}
    if not isinstance(per_kind, Mapping):
        raise ConfigError(f"slurm: {kind} must be a mapping of resources, got {per_kind!r}")
    merged.update(per_kind)
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        at = f"{where}.{kind}" if key in per_kind else where
        if key not in _RESOURCE_KEYS:
            close = difflib.get_close_matches(str(key), _RESOURCE_KEYS, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{at}: unknown resource {key!r}{hint} (resources: {', '.join(_RESOURCE_KEYS)}, "
                f"and per-kind sections {', '.join(KINDS)})"
            )
        if value is None:
            continue
        if key in ("gpus", "cpus", "nodes"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{at}: {key} must be a non-negative integer, got {value!r}")
            out[{"gpus": "gpus_per_node", "cpus": "cpus_per_task", "nodes": "nodes"}[key]] = value
        elif key == "mem":
            out["mem_gb"] = _gigabytes(value, at)
        elif key == "time":
            out["timeout_min"] = _minutes(value, at)
        elif key == "setup":
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, list) or not all(isinstance(v, str) for v in lines):
                raise ConfigError(f"{at}: setup must be a list of shell lines, got {value!r}")
            out["slurm_setup"] = list(lines)
        elif key == "extra":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{at}: extra must be a mapping of sbatch options, got {value!r}")
            extra.update({str(k): v for k, v in value.items()})
        else:
            out[f"slurm_{key}"] = str(value)
    out["slurm_additional_parameters"] = extra
    return out
