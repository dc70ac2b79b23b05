"""The nuScenes dataset config the teacher-feature tests load frames with (shared by tests/datasets and
tests/teachers): training augmentation (flip, rotation, scaling, translation), range mask and shuffling, so carried
teacher columns are checked against every transform."""
from pathlib import Path

from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def augmented_nuscenes_cfg(data_path, version, max_sweeps, teacher):
    """nuscenes_dataset.yaml at `data_path` / `version` with MAX_SWEEPS `max_sweeps`, gt_sampling off, a random
    translation added to the augmentations, 0.2 m voxels, and the TEACHER_FEATURES block `teacher` (a dict)."""
    cfg = cfg_from_yaml_file(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    cfg.DATA_PATH, cfg.VERSION, cfg.MAX_SWEEPS = str(data_path), version, max_sweeps
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST.append(EasyDict({'NAME': 'random_world_translation',
                                                        'NOISE_TRANSLATE_STD': [0.5, 0.5, 0.2]}))
    cfg.DATA_PROCESSOR = [EasyDict(step) for step in (
        {'NAME': 'mask_points_and_boxes_outside_range', 'REMOVE_OUTSIDE_BOXES': True, 'MASK_Z': True},
        {'NAME': 'shuffle_points', 'SHUFFLE_ENABLED': {'train': True, 'test': True}},
        {'NAME': 'transform_points_to_voxels_placeholder', 'VOXEL_SIZE': [0.2, 0.2, 0.2]},
    )]
    cfg.TEACHER_FEATURES = EasyDict(teacher)
    return cfg
