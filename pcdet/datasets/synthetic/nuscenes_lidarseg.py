"""Per-point semantic labels in the nuScenes-lidarseg layout.

Key frames: `lidarseg/<version>/<sample_data_token>_lidarseg.bin`, listed in `<version>/lidarseg.json` (the
official layout; the devkit loads them). Sweeps (an extension: nuScenes-lidarseg labels key frames only):
`lidarseg_sweeps/<version>/<sample_data_token>_lidarseg.bin`. They cannot live in `lidarseg/<version>/`
because the devkit asserts that folder holds exactly one file per lidarseg.json record.
Each file is one uint8 lidarseg index per point, in the order of the matching `.pcd.bin`.
"""
from pathlib import Path

import numpy as np

KEY_FRAME_LABEL_DIR = 'lidarseg'
SWEEP_LABEL_DIR = 'lidarseg_sweeps'


def label_relpath(version, sample_data_token, is_key_frame):
    """Dataroot-relative path of the label file of one LiDAR sample_data."""
    folder = KEY_FRAME_LABEL_DIR if is_key_frame else SWEEP_LABEL_DIR
    return f'{folder}/{version}/{sample_data_token}_lidarseg.bin'


def load_point_labels(dataroot, sample_data_token, version=None):
    """Semantic labels of one LiDAR scan (key frame or sweep).

    Args:
        dataroot: the nuScenes dataroot (folder holding samples/, sweeps/, lidarseg/, <version>/).
        sample_data_token: token of the LIDAR_TOP sample_data.
        version: e.g. 'v1.0-mini'; None searches every version folder.
    Returns:
        (N,) uint8 nuScenes-lidarseg indices (see `nuscenes_schema.LIDARSEG_CATEGORIES`).
    Raises:
        FileNotFoundError when no label file exists for the token.
    """
    dataroot = Path(dataroot)
    versions = [version] if version is not None else ['*']
    for folder in (KEY_FRAME_LABEL_DIR, SWEEP_LABEL_DIR):
        for version_pattern in versions:
            matches = sorted(dataroot.glob(f'{folder}/{version_pattern}/{sample_data_token}_lidarseg.bin'))
            if matches:
                return np.fromfile(matches[0], dtype=np.uint8)
    raise FileNotFoundError(f'no lidarseg label file for sample_data {sample_data_token} under {dataroot}')
