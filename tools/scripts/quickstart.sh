#!/usr/bin/env bash
# README command (a): the main job on bundled synthetic data, end to end on a CPU machine (< 20 min on 2 cores).
#   1. generate a synthetic dataset in the official nuScenes format (data/synthetic_nuscenes/v1.0-mini)
#   2. create the OpenPCDet infos and the GT database through nuscenes-devkit
#   3. train the tiny DSVT-Pillar + CenterHead (tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml)
#   4. evaluate the last checkpoint with the official nuScenes DetectionEval on mini_val (tools/test.py)
#   5. write BEV pictures of validation frames with GT boxes and predictions (output/quickstart/bev/)
# and print car AP, mAP and NDS at the end.
#
# Environment knobs: PCDET_QUICKSTART_SCENES (default 10), PCDET_QUICKSTART_SEED (default 0),
# PCDET_QUICKSTART_EPOCHS (default: NUM_EPOCHS of the config).
#
# Reruns: the run folder is fixed (output/nuscenes_models/dsvt_tiny_synthetic/quickstart/), so a rerun passes
# --overwrite and trains from scratch in it: with --fix_random_seed and --workers 0 it reproduces the same
# weights and numbers, and a changed dataset or config can never be mixed with an earlier run's checkpoints (which
# --resume auto would do). To continue an interrupted training instead, run the train command printed in step 3
# with --resume auto in place of --overwrite.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"

DATA_ROOT=data/synthetic_nuscenes/v1.0-mini
DATASET_CFG=tools/cfgs/dataset_configs/nuscenes_synthetic.yaml
MODEL_CFG=tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml
TAG=quickstart
RUN_DIR=output/nuscenes_models/dsvt_tiny_synthetic/$TAG
OUT_DIR=output/quickstart
EPOCHS="${PCDET_QUICKSTART_EPOCHS:-$(python -c "import yaml; print(yaml.safe_load(open('$MODEL_CFG'))['OPTIMIZATION']['NUM_EPOCHS'])")}"
# Idle OpenMP threads sleep instead of spinning: ~20 % slower on an idle machine, but a run that shares the cores
# with another process no longer slows down several-fold (docs/RESULTS.md). Set OMP_WAIT_POLICY=ACTIVE to opt out.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
START=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - START )) s since start)"; }

echo "== 1/5 synthetic nuScenes-format dataset -> $DATA_ROOT"
python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_ROOT" --version v1.0-mini \
  --num_scenes "${PCDET_QUICKSTART_SCENES:-10}" --samples_per_scene 20 --azimuth_steps 512 \
  --seed "${PCDET_QUICKSTART_SEED:-0}" --no_occupancy
stamp

echo "== 2/5 infos + GT database (nuscenes-devkit)"
python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \
  --cfg_file "$DATASET_CFG" --version v1.0-mini
stamp

echo "== 3/5 train $MODEL_CFG for $EPOCHS epochs -> $RUN_DIR"
echo "   python tools/train.py --cfg_file $MODEL_CFG --extra_tag $TAG --epochs $EPOCHS --workers 0 --fix_random_seed --skip_eval --overwrite"
python tools/train.py --cfg_file "$MODEL_CFG" --extra_tag "$TAG" --epochs "$EPOCHS" --workers 0 \
  --fix_random_seed --skip_eval --overwrite --use_tqdm_to_record
stamp

CKPT="$RUN_DIR/ckpt/checkpoint_epoch_${EPOCHS}.pth"
echo "== 4/5 official nuScenes evaluation of $CKPT on mini_val"
python tools/test.py --cfg_file "$MODEL_CFG" --extra_tag "$TAG" --ckpt "$CKPT" --workers 0
EVAL_DIR="$RUN_DIR/eval/epoch_${EPOCHS}/val/default"
stamp

echo "== 5/5 BEV pictures with predictions -> $OUT_DIR/bev"
python tools/visualize_bev.py --cfg_file "$MODEL_CFG" --split test --num_frames 4 --out_dir "$OUT_DIR/bev" \
  --pred_file "$EVAL_DIR/result.pkl" --score_thresh 0.3
stamp

python - "$EVAL_DIR/final_result/data/metrics_summary.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print('\n== quickstart result (official nuScenes DetectionEval, synthetic mini_val)')
print(f"car AP {m['mean_dist_aps']['car']:.4f}   mAP {m['mean_ap']:.4f}   NDS {m['nd_score']:.4f}")
print('per-class AP: ' + ', '.join(f'{k} {v:.3f}' for k, v in m['mean_dist_aps'].items()))
print(f'metrics: {sys.argv[1]}')
EOF
echo "pictures: $OUT_DIR/bev, checkpoints: $RUN_DIR/ckpt, infos: $DATA_ROOT ($(( $(date +%s) - START )) s in total)"
