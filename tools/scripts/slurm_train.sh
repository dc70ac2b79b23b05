#!/usr/bin/env bash
# SLURM training: one task per GPU via srun; train.py maps SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID to
# RANK/WORLD_SIZE/LOCAL_RANK and takes MASTER_ADDR from `scontrol show hostnames` (env:// rendezvous).
#   bash tools/scripts/slurm_train.sh PARTITION JOB_NAME NGPUS --cfg_file tools/cfgs/<group>/<model>.yaml [flags...]
# Environment: GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (""), PORT (random in 20000-59999).
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 PARTITION JOB_NAME NGPUS --cfg_file CFG [train.py flags...]" >&2; exit 2; fi
PARTITION=$1
JOB_NAME=$2
GPUS=$3
shift 3
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$GPUS" -lt "$GPUS_PER_NODE" ]; then GPUS_PER_NODE=$GPUS; fi
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
# The port must be free on the first node (not necessarily this one): pick a random high port.
PORT=${PORT:-$(( (RANDOM * 32768 + RANDOM) % 40000 + 20000 ))}
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$SCRIPT_DIR/../train.py" --launcher slurm --tcp_port "$PORT" "$@"
