#!/usr/bin/env bash
# GPICTURE on the bundled synthetic data, end to end on a CPU machine (~20 min on 2 cores):
#   1. synthetic nuScenes-format dataset: 30 official v1.0-trainval scenes x 4 key frames, 21 train / 9 val scenes
#      (data/synthetic_nuscenes/v1.0-trainval; reused when already generated). The same set as
#      tests/e2e/test_gpicture_transfer.py: 9 val scenes keep per-class APs from hinging on a handful of objects.
#   2. infos + GT database (nuscenes-devkit)
#   3. per-point teacher features (synthetic_semantic teacher) -> <dataset>/teacher_features/
#   4. GPICTURE pretraining of the tiny DSVT encoder on all train frames, no labels
#   5. fine-tune the tiny DSVT CenterPoint on 10% of the labelled train frames, from the pretrained encoder and
#      from scratch (same seed and schedule), official nuScenes DetectionEval of both on the 36 val frames
#   6. a picture of the pretraining curves (loss_points, loss_seal, DGPL beta, mask ratio) -> output/quickstart_gpicture/
# and print mAP / NDS of both fine-tunes. Knobs: PCDET_GPICTURE_PRETRAIN_EPOCHS (16), PCDET_GPICTURE_FINETUNE_EPOCHS
# (60). Reruns start over in the same run folders (--overwrite); the dataset and teacher features are reused.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"

VERSION=v1.0-trainval
DATA_ROOT=data/synthetic_nuscenes/$VERSION
SET=(--set DATA_CONFIG.VERSION "$VERSION")
DATASET_CFG=tools/cfgs/dataset_configs/nuscenes_synthetic.yaml
PRETRAIN_CFG=tools/cfgs/gpicture_models/gpicture_tiny_synthetic_pretrain.yaml
FINETUNE_CFG=tools/cfgs/gpicture_models/gpicture_tiny_synthetic_finetune.yaml
PRE_EPOCHS="${PCDET_GPICTURE_PRETRAIN_EPOCHS:-16}"
FT_EPOCHS="${PCDET_GPICTURE_FINETUNE_EPOCHS:-60}"
TAG=quickstart
OUT_DIR=output/quickstart_gpicture
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
START=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - START )) s since start)"; }

echo "== 1/6 synthetic nuScenes-format dataset -> $DATA_ROOT"
python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_ROOT" --version "$VERSION" --num_scenes 30 \
  --samples_per_scene 4 --azimuth_steps 512 --seed 0 --val_fraction 0.3 --no_occupancy
stamp
echo "== 2/6 infos + GT database"
python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos --cfg_file "$DATASET_CFG" \
  --version "$VERSION"
stamp
echo "== 3/6 teacher features (resumable)"
python tools/prepare_seal_features.py --cfg_file "$PRETRAIN_CFG" --split train "${SET[@]}"
stamp
echo "== 4/6 GPICTURE pretraining, $PRE_EPOCHS epochs"
python tools/train.py --cfg_file "$PRETRAIN_CFG" --extra_tag "$TAG" --epochs "$PRE_EPOCHS" --workers 0 \
  --fix_random_seed --overwrite --use_tqdm_to_record "${SET[@]}"
PRE_RUN=output/gpicture_models/gpicture_tiny_synthetic_pretrain/$TAG
stamp
for ARM in pretrained scratch; do
  echo "== 5/6 fine-tune on 10% of the labels ($ARM), $FT_EPOCHS epochs, then DetectionEval"
  EXTRA=()
  if [ "$ARM" = pretrained ]; then EXTRA=(--pretrained_model "$PRE_RUN/ckpt/checkpoint_epoch_${PRE_EPOCHS}.pth"); fi
  python tools/train.py --cfg_file "$FINETUNE_CFG" --extra_tag "${TAG}_$ARM" --epochs "$FT_EPOCHS" --workers 0 \
    --fix_random_seed --overwrite --skip_eval --use_tqdm_to_record "${EXTRA[@]}" "${SET[@]}"
  RUN_DIR=output/gpicture_models/gpicture_tiny_synthetic_finetune/${TAG}_$ARM
  python tools/test.py --cfg_file "$FINETUNE_CFG" --extra_tag "${TAG}_$ARM" \
    --ckpt "$RUN_DIR/ckpt/checkpoint_epoch_${FT_EPOCHS}.pth" --workers 0 "${SET[@]}"
  stamp
done
echo "== 6/6 pretraining curves -> $OUT_DIR/pretrain_curves.png"
python tools/plot_curves.py --logdir "$PRE_RUN/tensorboard" --out "$OUT_DIR/pretrain_curves.png" \
  --tags train/loss_points train/loss_seal train/mask_ratio dgpl/beta dgpl/c_r --skip_missing

python - output/gpicture_models/gpicture_tiny_synthetic_finetune "$TAG" "$FT_EPOCHS" <<'PYEOF'
import json, sys
from pathlib import Path
root, tag, epochs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print('\n== GPICTURE quickstart: fine-tune on 10% of the labels (official nuScenes DetectionEval, synthetic val)')
for arm in ('pretrained', 'scratch'):
    summary = next((root / f'{tag}_{arm}' / 'eval' / f'epoch_{epochs}').glob('*/default/final_result/data/metrics_summary.json'))
    m = json.loads(summary.read_text())
    print(f"{arm:>10}: mAP {m['mean_ap']:.4f}   NDS {m['nd_score']:.4f}   car AP {m['mean_dist_aps']['car']:.4f}")
PYEOF
echo "($(( $(date +%s) - START )) s in total)"
