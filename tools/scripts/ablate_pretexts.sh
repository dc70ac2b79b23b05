#!/usr/bin/env bash
# The pretexts side by side (docs/GAUSSIAN_SPLATTING.md "Pretexts compared"): scratch, GPICTURE (`full`), contrastive
# and Gaussian rendering, each fine-tuned for detection and occupancy (the dense head and the Gaussian read-out) on
# 10% of the labels, 3 seeds. Data: the seg/occ quickstart's set (10 v1.0-mini scenes x 10 key frames, occupancy
# ground truth) with the six cameras at 200x112 and `--with_cam` infos, in its own folder
# (data/synthetic_nuscenes_cameras).
#
# Long (2026-12-06, 2 cores, two runs at a time): a pretraining takes 10-20 minutes, each fine-tune 3-18 minutes; the
# contrastive row with its three tasks took about 47 minutes, the rendering row about 57. Resumable: finished runs
# are kept under output/ablation_pretexts and skipped on a rerun, so a rerun with every row only rewrites the tables
# and pictures. Knobs: PCDET_ABLATION_ROWS ("scratch full contrastive render"), PCDET_ABLATION_SEEDS ("0 1 2"),
# PCDET_ABLATION_JOBS (2), PCDET_ABLATION_TASKS ("detection occupancy occupancy_gaussian"),
# PCDET_ABLATION_PRETRAIN_EPOCHS (16), PCDET_ABLATION_FINETUNE_EPOCHS (60).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"
VERSION=v1.0-mini
DATA_PATH=data/synthetic_nuscenes_cameras
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ ! -f "$DATA_PATH/$VERSION/nuscenes_infos_10sweeps_train.pkl" ]; then
  python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_PATH/$VERSION" --version "$VERSION" --num_scenes 10 \
    --samples_per_scene 10 --azimuth_steps 512 --seed 0 --with_cameras --camera_width 200 --camera_height 112
  python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos --with_cam \
    --cfg_file tools/cfgs/dataset_configs/nuscenes_synthetic.yaml --version "$VERSION" --data_path "$DATA_PATH"
fi
read -r -a ROWS <<< "${PCDET_ABLATION_ROWS:-scratch full contrastive render}"
read -r -a SEEDS <<< "${PCDET_ABLATION_SEEDS:-0 1 2}"
read -r -a TASKS <<< "${PCDET_ABLATION_TASKS:-detection occupancy occupancy_gaussian}"
python tools/ablate_gpicture.py --data_path "$DATA_PATH" --version "$VERSION" --rows "${ROWS[@]}" \
  --seeds "${SEEDS[@]}" --tasks "${TASKS[@]}" --jobs "${PCDET_ABLATION_JOBS:-2}" \
  --pretrain_epochs "${PCDET_ABLATION_PRETRAIN_EPOCHS:-16}" --finetune_epochs "${PCDET_ABLATION_FINETUNE_EPOCHS:-60}" \
  --output_root output/ablation_pretexts --out_md docs/pretexts_compared.md \
  --out_png docs/images/pretexts_compared.png --title 'Pretexts compared'
