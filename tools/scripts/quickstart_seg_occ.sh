#!/usr/bin/env bash
# LiDAR segmentation and occupancy on the bundled synthetic data, end to end on a CPU machine (~25 min on 2 cores):
#   1. synthetic nuScenes-format dataset with nuScenes-lidarseg labels and nuScenes-Occupancy ground truth:
#      10 official v1.0-mini scenes x 10 key frames (80 mini_train / 20 mini_val frames) -> data/synthetic_nuscenes_segocc
#      (reused when already generated; ~4 MB of occupancy per key frame)
#   2. infos (nuscenes-devkit)
#   3. the height-majority floors of both tasks (pcdet/evaluation/baselines.py), scored by the task evaluators
#   4. tiny segmentation model (gpicture_tiny_synthetic_segmentation.yaml, every training frame) -> tools/test.py:
#      official results folder + nuscenes-devkit LidarSegEval on mini_val
#   5. tiny occupancy model (gpicture_tiny_synthetic_occupancy.yaml) -> tools/test.py --save_to_file: OpenOccupancy
#      SC IoU / SSC mIoU and the predicted volumes in the nuScenes-Occupancy layout
#   6. pictures (predicted vs true) of 3 val frames per task -> output/quickstart_seg_occ/
# and print the metrics beside the floors. Knobs: PCDET_SEG_EPOCHS (12), PCDET_OCC_EPOCHS (12). Both models train
# from scratch; `--pretrained_model <GPICTURE ckpt>` on the train.py lines fine-tunes a pretrained encoder instead
# (docs/SEGMENTATION_OCCUPANCY.md). Reruns start over in the same run folders (--overwrite); the data is reused.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"

VERSION=v1.0-mini
DATA_PATH=data/synthetic_nuscenes_segocc
SET=(--set DATA_CONFIG.DATA_PATH "$DATA_PATH")
CFG_DIR=tools/cfgs/gpicture_models
TAG=quickstart
OUT_DIR=output/quickstart_seg_occ
declare -A EPOCHS=([segmentation]="${PCDET_SEG_EPOCHS:-12}" [occupancy]="${PCDET_OCC_EPOCHS:-12}")
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
START=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - START )) s since start)"; }

echo "== 1/6 synthetic nuScenes-format dataset with lidarseg + occupancy -> $DATA_PATH/$VERSION"
python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_PATH/$VERSION" --version "$VERSION" --num_scenes 10 \
  --samples_per_scene 10 --azimuth_steps 512 --seed 0
stamp
echo "== 2/6 infos"
python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \
  --cfg_file tools/cfgs/dataset_configs/nuscenes_synthetic.yaml --version "$VERSION" --data_path "$DATA_PATH"
stamp
for TASK in segmentation occupancy; do
  CFG=$CFG_DIR/gpicture_tiny_synthetic_$TASK.yaml
  echo "== 3/6 $TASK: height-majority floor"
  python -m pcdet.evaluation.baselines --cfg_file "$CFG" --output_dir "$OUT_DIR/baseline_$TASK" "${SET[@]}"
  echo "== $([ "$TASK" = segmentation ] && echo 4 || echo 5)/6 $TASK: train ${EPOCHS[$TASK]} epochs, evaluate"
  python tools/train.py --cfg_file "$CFG" --extra_tag "$TAG" --epochs "${EPOCHS[$TASK]}" --workers 0 \
    --fix_random_seed --overwrite --skip_eval --use_tqdm_to_record "${SET[@]}" DATA_CONFIG.SAMPLED_INTERVAL.train 1
  RUN_DIR=output/gpicture_models/gpicture_tiny_synthetic_$TASK/$TAG
  python tools/test.py --cfg_file "$CFG" --extra_tag "$TAG" --ckpt "$RUN_DIR/ckpt/checkpoint_epoch_${EPOCHS[$TASK]}.pth" \
    --workers 0 --save_to_file "${SET[@]}"
  stamp
done
echo "== 6/6 pictures -> $OUT_DIR"
SEG_EVAL=$(ls -d output/gpicture_models/gpicture_tiny_synthetic_segmentation/$TAG/eval/epoch_${EPOCHS[segmentation]}/*/default)
OCC_EVAL=$(ls -d output/gpicture_models/gpicture_tiny_synthetic_occupancy/$TAG/eval/epoch_${EPOCHS[occupancy]}/*/default)
python tools/visualize_seg_occ.py seg --dataroot "$DATA_PATH/$VERSION" --version "$VERSION" --result_dir "$SEG_EVAL" \
  --eval_set mini_val --num_frames 3 --out_dir "$OUT_DIR"
python tools/visualize_seg_occ.py occ --pred_root "$OCC_EVAL/final_result/data/occupancy" \
  --gt_root "$DATA_PATH/$VERSION/nuScenes-Occupancy" --num_frames 3 --out_dir "$OUT_DIR"

python - "$SEG_EVAL/metrics.json" "$OUT_DIR/baseline_segmentation/metrics.json" "$OCC_EVAL/metrics.json" \
  "$OUT_DIR/baseline_occupancy/metrics.json" <<'PYEOF'
import json, sys
seg, seg_floor, occ, occ_floor = (json.load(open(path)) for path in sys.argv[1:])
print('\n== segmentation / occupancy quickstart (synthetic mini_val)')
print(f"segmentation  LidarSegEval mIoU {seg['lidarseg/mIoU']:.4f}  fwIoU {seg['lidarseg/fwIoU']:.4f}"
      f"   (height-majority floor: mIoU {seg_floor['lidarseg/mIoU']:.4f})")
print(f"occupancy     SSC mIoU {occ['occupancy/SSC_mIoU_present']:.4f}  SC IoU {occ['occupancy/SC_IoU']:.4f}"
      f"   (floor: SSC mIoU {occ_floor['occupancy/SSC_mIoU_present']:.4f}  SC IoU {occ_floor['occupancy/SC_IoU']:.4f})")
PYEOF
echo "($(( $(date +%s) - START )) s in total)"
