#!/usr/bin/env bash
# Pretrained (tiny GPICTURE) vs scratch for LiDAR segmentation and occupancy (docs/SEGMENTATION_OCCUPANCY.md
# "Pretrained vs scratch"): the quickstart's synthetic v1.0-mini set with lidarseg + occupancy (10 official mini
# scenes x 10 key frames; v1.0-mini because nuscenes-devkit's LidarSegEval only scores complete official splits)
# -> infos -> tools/ablate_gpicture.py: per seed one GPICTURE pretraining on every training frame (no labels), then
# both tasks fine-tuned on every 10th training frame from it and from scratch, scored on mini_val ->
# docs/seg_occ_pretraining_{segmentation,occupancy}.md and docs/images/seg_occ_pretraining_*.png.
#
# About 70 CPU-minutes for 2 rows x 3 seeds; two runs at a time on 2 cores. Resumable (output/ablation_seg_occ).
# Knobs: PCDET_ABLATION_ROWS ("scratch full"; any row of tools/ablate_gpicture.py), PCDET_ABLATION_SEEDS ("0 1 2"),
# PCDET_ABLATION_JOBS (2), PCDET_ABLATION_FINETUNE_EPOCHS (60), PCDET_ABLATION_PRETRAIN_EPOCHS (16).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO_ROOT/tools/scripts/setup_env.sh"
cd "$REPO_ROOT"
VERSION=v1.0-mini
DATA_PATH=data/synthetic_nuscenes_segocc
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ ! -f "$DATA_PATH/$VERSION/nuscenes_infos_10sweeps_train.pkl" ]; then
  python -m pcdet.datasets.synthetic.nuscenes --root "$DATA_PATH/$VERSION" --version "$VERSION" --num_scenes 10 \
    --samples_per_scene 10 --azimuth_steps 512 --seed 0
  python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \
    --cfg_file tools/cfgs/dataset_configs/nuscenes_synthetic.yaml --version "$VERSION" --data_path "$DATA_PATH"
fi
read -r -a ROWS <<< "${PCDET_ABLATION_ROWS:-scratch full}"
read -r -a SEEDS <<< "${PCDET_ABLATION_SEEDS:-0 1 2}"
python tools/ablate_gpicture.py --data_path "$DATA_PATH" --version "$VERSION" --rows "${ROWS[@]}" \
  --seeds "${SEEDS[@]}" --tasks segmentation occupancy --jobs "${PCDET_ABLATION_JOBS:-2}" \
  --pretrain_epochs "${PCDET_ABLATION_PRETRAIN_EPOCHS:-16}" --finetune_epochs "${PCDET_ABLATION_FINETUNE_EPOCHS:-60}" \
  --output_root output/ablation_seg_occ --out_md docs/seg_occ_pretraining.md \
  --out_png docs/images/seg_occ_pretraining.png
