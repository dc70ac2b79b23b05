#!/usr/bin/env bash
# README command (a): the main job on bundled synthetic data, end to end on a CPU machine.
#   1. generate a synthetic dataset in the official nuScenes format (data/synthetic_nuscenes/v1.0-mini)
#   2. create the OpenPCDet infos and the GT database through nuscenes-devkit
#   3. write BEV pictures of a few validation frames with their boxes (output/quickstart/bev/)
# Environment knobs: PCDET_QUICKSTART_SCENES (default 10), PCDET_QUICKSTART_SEED (default 0).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"

DATA_ROOT=data/synthetic_nuscenes/v1.0-mini
DATASET_CFG=tools/cfgs/dataset_configs/nuscenes_synthetic.yaml
OUT_DIR=output/quickstart

echo "== 1/3 synthetic nuScenes-format dataset -> $DATA_ROOT"
python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_ROOT" --version v1.0-mini \
  --num_scenes "${PCDET_QUICKSTART_SCENES:-10}" --seed "${PCDET_QUICKSTART_SEED:-0}"

echo "== 2/3 infos + GT database (nuscenes-devkit)"
python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \
  --cfg_file "$DATASET_CFG" --version v1.0-mini

echo "== 3/3 BEV pictures -> $OUT_DIR/bev"
python tools/visualize_bev.py --cfg_file "$DATASET_CFG" --split test --num_frames 4 --out_dir "$OUT_DIR/bev"
echo "done: pictures in $OUT_DIR/bev, infos in $DATA_ROOT"
