#!/usr/bin/env bash
# The GPICTURE ablation in miniature (docs/GPICTURE.md "Ablation"): synthetic nuScenes-format trainval set (the CI
# transfer test's 30 scenes x 4 key frames) -> infos -> tools/ablate_gpicture.py over every row and 3 seeds ->
# docs/gpicture_ablation.md (mean ± std table) and docs/images/gpicture_ablation.png. The set has the six cameras
# (400x225 JPEGs, `--with_cam` infos) for the image-teacher and contrastive rows; the LiDAR files are the same bytes
# as without cameras, so the LiDAR-only rows see the same data either way.
#
# Long: about 8 CPU-minutes per (row, seed) with a GPICTURE pretraining (the contrastive row about 20), 11 rows x 3
# seeds; two runs at a time on 2 cores take ~3 hours. Resumable: finished (row, seed) runs are kept under
# output/ablation and skipped on a rerun. The camera comparison alone (docs/GPICTURE.md "Camera pretexts"):
#   PCDET_ABLATION_ROWS="scratch image_teacher contrastive" PCDET_ABLATION_OUT=gpicture_ablation_camera bash $0
# Knobs: PCDET_ABLATION_ROWS (default: all), PCDET_ABLATION_SEEDS ("0 1 2"), PCDET_ABLATION_JOBS (2),
# PCDET_ABLATION_OUT (gpicture_ablation: docs/<OUT>.md and docs/images/<OUT>.png),
# PCDET_ABLATION_FINETUNE_EPOCHS (60), PCDET_ABLATION_PRETRAIN_EPOCHS (16), PCDET_ABLATION_TASKS ("detection"; with
# "segmentation occupancy" the same pretrainings are fine-tuned for those tasks, docs/SEGMENTATION_OCCUPANCY.md).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"
VERSION=v1.0-trainval
DATA_PATH=data/synthetic_nuscenes_ablation
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ ! -f "$DATA_PATH/$VERSION/nuscenes_infos_10sweeps_train.pkl" ] || [ ! -d "$DATA_PATH/$VERSION/samples/CAM_FRONT" ]; then
  python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_PATH/$VERSION" --version "$VERSION" --num_scenes 30 \
    --samples_per_scene 4 --azimuth_steps 512 --seed 0 --val_fraction 0.3 --with_cameras --overwrite
  python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos --with_cam \
    --cfg_file tools/cfgs/dataset_configs/nuscenes_synthetic.yaml --version "$VERSION" --data_path "$DATA_PATH"
fi
ROWS=()
if [ -n "${PCDET_ABLATION_ROWS:-}" ]; then read -r -a ROWS <<< "$PCDET_ABLATION_ROWS"; ROWS=(--rows "${ROWS[@]}"); fi
read -r -a SEEDS <<< "${PCDET_ABLATION_SEEDS:-0 1 2}"
read -r -a TASKS <<< "${PCDET_ABLATION_TASKS:-detection}"
python tools/ablate_gpicture.py --data_path "$DATA_PATH" --version "$VERSION" "${ROWS[@]}" --seeds "${SEEDS[@]}" --tasks "${TASKS[@]}" \
  --jobs "${PCDET_ABLATION_JOBS:-2}" --pretrain_epochs "${PCDET_ABLATION_PRETRAIN_EPOCHS:-16}" \
  --finetune_epochs "${PCDET_ABLATION_FINETUNE_EPOCHS:-60}" --output_root output/ablation \
  --out_md "docs/${PCDET_ABLATION_OUT:-gpicture_ablation}.md" --out_png "docs/images/${PCDET_ABLATION_OUT:-gpicture_ablation}.png"
