"""The flags a sweep passes to ``harness run`` (the ``eval:`` section) and ``harness report`` (the ``report:``
section): the sections' keys checked against the commands' long options, and spelt as flags."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from harness.errors import ConfigError

# `harness run` flags the sweep sets itself (not allowed in the `eval:` section).
_SWEEP_SET_EVAL = ("model", "tasks", "output_path", "run_name", "limit", "engine")


def _flags(section: Mapping[str, Any]) -> list[str]:
    """``{"batch_size": 8, "log_samples": True, "data_root": ["a", "b"]}`` -> ``--batch-size 8 --log-samples
    --data-root a --data-root b`` (False and None leave the flag out)."""
    out: list[str] = []
    for key, value in section.items():
        flag = "--" + str(key).replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is True:
                out.append(flag)
            elif v is False or v is None:
                continue
            else:
                out += [flag, str(v)]
    return out


#: The long options of ``harness run`` (:func:`harness.cli.build_parser`: the ``run`` parser with its common, task,
#: judge, vLLM and OpenAI options), aliases and ``--help`` included: the keys the ``eval:`` section may hold.
RUN_FLAGS: tuple[str, ...] = (
    "--amber-answer",
    "--amber-similarity",
    "--api-key-env",
    "--base-url",
    "--batch-size",
    "--concurrency",
    "--data-parallel-size",
    "--data-root",
    "--device",
    "--dtype",
    "--enforce-eager",
    "--engine",
    "--gpu-memory-utilization",
    "--help",
    "--image-root",
    "--judge-api-key-env",
    "--judge-base-url",
    "--judge-concurrency",
    "--judge-max-retries",
    "--judge-model",
    "--judge-timeout",
    "--limit",
    "--log-level",
    "--log-samples",
    "--log_samples",
    "--max-model-len",
    "--max-new-tokens",
    "--max-retries",
    "--model",
    "--no-judge-cache",
    "--no-progress",
    "--objhal-method",
    "--on-image-error",
    "--option",
    "--output",
    "--output-path",
    "--output_path",
    "--overwrite",
    "--run-name",
    "--seed",
    "--served-model",
    "--tasks",
    "--template",
    "--tensor-parallel-size",
    "--timeout",
)
#: The long options of ``harness report`` (:func:`reports.cli.add_report_parser`): the keys the ``report:`` section
#: may hold.
REPORT_FLAGS: tuple[str, ...] = (
    "--baselines",
    "--compare",
    "--examples",
    "--format",
    "--help",
    "--log-level",
    "--no-ci",
    "--output",
    "--output-path",
    "--output_path",
    "--resamples",
    "--seed",
    "--title",
)
_COMMAND_FLAGS: dict[str, tuple[str, ...]] = {"run": RUN_FLAGS, "report": REPORT_FLAGS}


def _check_flags(command: str, section: Mapping[str, Any], reserved: Sequence[str]) -> None:
    """Every key of ``section`` is a flag of ``harness COMMAND`` (``run`` or ``report``) that the sweep does not set
    itself."""
    known = set(_COMMAND_FLAGS[command])
    section_name = "eval" if command == "run" else command
    for key in section:
        if key in reserved:
            raise ConfigError(f"{section_name}: {key} is set by the sweep (use the sweep setting of that name)")
        flag = "--" + str(key).replace("_", "-")
        if flag not in known and not flag.startswith("--no-"):
            close = difflib.get_close_matches(flag, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(c[2:].replace('-', '_') for c in close)}?" if close else ""
            raise ConfigError(f"{section_name}: {key!r} is not an option of `harness {command}`{hint}")
