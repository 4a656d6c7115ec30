#!/usr/bin/env bash
# Refresh requirements/lock.txt: a clean CPU install with every extra the CI uses (--vllm, test tools), versions
# resolved afresh from the registry, frozen with `pip freeze --all` (pip, setuptools and wheel included; the project
# itself and local version labels such as +cpu left out). Review the diff before committing it.
#
#   bash scripts/lock.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash "$root/scripts/install.sh" --vllm --no-lock --venv "$tmp/venv"
mkdir -p "$root/requirements"
{
  echo "# Versions of a clean CPU install of halluc-harness with --vllm and the test tools (Python 3.11, x86_64)."
  echo "# Applied by scripts/install.sh as pip constraints; refresh with: bash scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
    | grep -v -i '^halluc-harness' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$root/requirements/lock.txt"
echo "wrote $root/requirements/lock.txt ($(grep -c '==' "$root/requirements/lock.txt") packages)"
