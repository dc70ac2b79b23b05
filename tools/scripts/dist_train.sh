#!/usr/bin/env bash
# Multi-GPU training on one machine with torchrun (env:// rendezvous on a free local port).
#   bash tools/scripts/dist_train.sh NGPUS --cfg_file tools/cfgs/<group>/<model>.yaml [train.py flags...]
# --batch_size is the TOTAL over the NGPUS processes. Multi-node: call torchrun yourself, e.g.
#   torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#       tools/train.py --launcher pytorch --cfg_file ...
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 NGPUS --cfg_file CFG [train.py flags...]" >&2; exit 2; fi
NGPUS=$1
shift
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPUS" \
    "$SCRIPT_DIR/../train.py" --launcher pytorch "$@"
