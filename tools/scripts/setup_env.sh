#!/usr/bin/env bash
# Create (or reuse) the project virtual environment and install pcdet into it. Sourced by the other scripts.
#
#   PCDET_VENV          where the environment lives (default: <repo>/.venv)
#   PCDET_TORCH_WHEELS  a folder holding a local torch wheel (default: /opt/wheels when it exists)
#   PCDET_PYTHON        the python that creates the venv (default: python3)
#
# Installs the exact versions of requirements-lock.txt (generated from requirements-dev.txt by
# tools/scripts/lock_requirements.sh; requirements.txt keeps the ranges for users), then pcdet without deps.
# CPU installs pin torch==2.13.0. GPU users: install the CUDA build of torch 2.13.0 first (see docs/INSTALL.md);
# the pin is then already satisfied and nothing else pulls CUDA packages.
# The install is skipped when the requirements, the lock and setup.py are unchanged since the last successful run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PCDET_VENV="${PCDET_VENV:-$REPO_ROOT/.venv}"
PCDET_PYTHON="${PCDET_PYTHON:-python3}"
if [ -z "${PCDET_TORCH_WHEELS:-}" ] && [ -d /opt/wheels ]; then PCDET_TORCH_WHEELS=/opt/wheels; fi

if [ ! -x "$PCDET_VENV/bin/python" ]; then
  echo "[setup_env] creating virtual environment in $PCDET_VENV"
  "$PCDET_PYTHON" -m venv "$PCDET_VENV"
fi
PY="$PCDET_VENV/bin/python"

stamp_file="$PCDET_VENV/.pcdet-install-stamp"
stamp="$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements-dev.txt" "$REPO_ROOT/requirements-lock.txt" \
  "$REPO_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo "[setup_env] installing requirements-lock.txt (torch pinned to the CPU build unless a CUDA build is present)"
  find_links=()
  if [ -n "${PCDET_TORCH_WHEELS:-}" ]; then find_links=(--find-links "$PCDET_TORCH_WHEELS"); fi
  # uv is ~3x faster than pip here; it does not read pip's configuration, hence the explicit --find-links.
  if "$PY" -m pip install -q uv >/dev/null 2>&1 && [ -x "$PCDET_VENV/bin/uv" ]; then
    uv_lock_install=("$PCDET_VENV/bin/uv" pip install --python "$PY" --compile-bytecode "${find_links[@]}"
                     -r "$REPO_ROOT/requirements-lock.txt")
    # A pin newer than uv's cached package index (kept for up to 10 minutes) fails once: retry with a fresh index.
    "${uv_lock_install[@]}" || "${uv_lock_install[@]}" --refresh
    "$PCDET_VENV/bin/uv" pip install --python "$PY" --no-deps -e "$REPO_ROOT"
  else
    "$PY" -m pip install -q "${find_links[@]}" -r "$REPO_ROOT/requirements-lock.txt"
    "$PY" -m pip install -q --no-deps -e "$REPO_ROOT"
  fi
  echo "$stamp" > "$stamp_file"
fi
export PATH="$PCDET_VENV/bin:$PATH"
"$PY" -c "import torch, pcdet; print(f'[setup_env] pcdet {pcdet.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
