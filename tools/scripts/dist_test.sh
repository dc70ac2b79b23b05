#!/usr/bin/env bash
# Multi-GPU evaluation on one machine with torchrun.
#   bash tools/scripts/dist_test.sh NGPUS --cfg_file tools/cfgs/<group>/<model>.yaml --ckpt PATH [test.py flags...]
#   bash tools/scripts/dist_test.sh NGPUS --cfg_file ... --eval_all
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 NGPUS --cfg_file CFG [test.py flags...]" >&2; exit 2; fi
NGPUS=$1
shift
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPUS" \
    "$SCRIPT_DIR/../test.py" --launcher pytorch "$@"
