#!/usr/bin/env bash
# Regenerate requirements-lock.txt (exact versions for Python 3.11 on x86_64 Linux) from requirements-dev.txt.
# Run it after changing requirements.txt or requirements-dev.txt; setup_env.sh installs from the lock.
#
#   PCDET_TORCH_WHEELS  a folder holding the local CPU torch wheel (default: /opt/wheels when it exists)
#
# The CPU wheel carries the local version `+cpu`, which PyPI does not serve; the lock pins the plain `2.13.0`,
# which the local CPU wheel and an already installed CUDA build both satisfy (docs/INSTALL.md).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
if [ -z "${PCDET_TORCH_WHEELS:-}" ] && [ -d /opt/wheels ]; then PCDET_TORCH_WHEELS=/opt/wheels; fi
find_links=()
if [ -n "${PCDET_TORCH_WHEELS:-}" ]; then find_links=(--find-links "$PCDET_TORCH_WHEELS"); fi
UV="${UV:-uv}"
# A fresh resolve into a new file: uv would otherwise prefer the pins of the old lock, and its plain torch pin
# selects PyPI's CUDA build over the local +cpu wheel.
tmp_dir="$(mktemp -d)"
trap 'rm -rf "$tmp_dir"' EXIT
"$UV" pip compile requirements-dev.txt -o "$tmp_dir/lock.txt" --python-version 3.11 --python-platform linux \
  --no-header --quiet "${find_links[@]}" "$@"
{
  echo '# Exact versions for Python 3.11 on x86_64 Linux, installed by tools/scripts/setup_env.sh (and so by CI).'
  echo '# Generated from requirements-dev.txt by tools/scripts/lock_requirements.sh: do not edit by hand.'
  sed -E 's/^torch==([0-9.]+)\+[a-z0-9]+$/torch==\1/' "$tmp_dir/lock.txt"
} > requirements-lock.txt
if grep -Eiq '^(nvidia-|triton==)' requirements-lock.txt; then
  echo '[lock_requirements] the lock pulls CUDA packages: is the CPU torch wheel reachable (PCDET_TORCH_WHEELS)?' >&2
  exit 1
fi
echo "[lock_requirements] wrote requirements-lock.txt ($(grep -c '^[a-zA-Z]' requirements-lock.txt) packages)"
