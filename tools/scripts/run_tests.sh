#!/usr/bin/env bash
# README command (b): install what is needed, then run the whole test suite. Extra args go to pytest.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"
# One torch thread per xdist worker: the 2 workers already use both cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$REPO_ROOT/.venv/numba_cache}"
# --no-loadscope-reorder keeps the collection order (tests/conftest.py puts the slow e2e files first): by default
# xdist sorts files by test count, which starts the minutes-long single-test e2e files last.
exec python -m pytest tests -n "${PCDET_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder -q "$@"
