"""NuScenesDataset on infos built from the synthetic nuScenes dataset (no GT database needed: gt_sampling is
disabled here; it is covered by the augmentor tests)."""
import pickle
from pathlib import Path

import numpy as np
import pytest

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.nuscenes_dataset import InfoSchemaError, NuScenesDataset, balanced_infos_resampling
from pcdet.datasets.nuscenes.nuscenes_utils import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def data_path(synthetic_nuscenes_data_path):
    return synthetic_nuscenes_data_path


def make_cfg(data_path, version, **overrides):
    cfg = cfg_from_yaml_file(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    cfg.DATA_PATH, cfg.VERSION = str(data_path), version
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope='module')
def test_set(data_path, synthetic_nuscenes_version):
    return NuScenesDataset(make_cfg(data_path, synthetic_nuscenes_version), CLASS_NAMES, training=False)


def test_root_path_and_infos(test_set, data_path, synthetic_nuscenes_version):
    assert test_set.root_path == data_path / synthetic_nuscenes_version
    assert len(test_set) == len(test_set.infos) > 0


def test_points_with_ten_sweeps(test_set):
    index = next(i for i, info in enumerate(test_set.infos)
                 if len({s['sample_data_token'] for s in info['sweeps']}) == 9
                 and info['sweeps'][0]['transform_matrix'] is not None)
    points = test_set.get_lidar_with_sweeps(index, max_sweeps=10)
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 5
    assert len(np.unique(points[:, 4])) == 10
    np.testing.assert_array_equal(points, test_set.get_lidar_with_sweeps(index, max_sweeps=10))  # deterministic
    sample = test_set[index]
    assert sample['points'].shape[1] == 5 and sample['metadata']['token'] == test_set.infos[index]['token']
    assert sample['frame_id'] == Path(test_set.infos[index]['lidar_path']).stem


def test_test_sample_boxes_follow_filters(test_set):
    index = max(range(len(test_set.infos)), key=lambda i: len(test_set.infos[i]['gt_names']))
    info = test_set.infos[index]
    original_boxes = info['gt_boxes']
    info['gt_boxes'] = original_boxes.copy()
    info['gt_boxes'][::2, 7:] = np.nan  # velocity unknown to the devkit
    try:
        sample = test_set[index]
    finally:
        info['gt_boxes'] = original_boxes
    expected = sum(1 for name, n in zip(info['gt_names'], info['num_lidar_pts']) if name in CLASS_NAMES and n >= 1)
    assert expected > 0 and sample['gt_boxes'].shape == (expected, 10)  # 9 box values + class index
    assert not np.isnan(sample['gt_boxes']).any()


def test_no_velocity_and_self_supervised_modes(data_path, synthetic_nuscenes_version):
    cfg = make_cfg(data_path, synthetic_nuscenes_version, PRED_VELOCITY=False)
    assert NuScenesDataset(cfg, CLASS_NAMES, training=False)[0]['gt_boxes'].shape[1] == 8
    unlabeled = NuScenesDataset(make_cfg(data_path, synthetic_nuscenes_version), [], training=True)
    sample = unlabeled[0]
    assert 'gt_boxes' not in sample and 'gt_names' not in sample and sample['points'].shape[1] == 5


def test_training_cbgs_is_seeded_and_balanced(data_path, synthetic_nuscenes_version):
    cfg = make_cfg(data_path, synthetic_nuscenes_version)
    np.random.seed(0)
    first = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    np.random.seed(0)
    second = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    assert [i['token'] for i in first.infos] == [i['token'] for i in second.infos]
    cfg.BALANCED_RESAMPLING = False
    plain = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    assert len(first.infos) != len(plain.infos)
    assert 'gt_boxes' in first[0]
    assert balanced_infos_resampling(plain.infos, []) is plain.infos


def test_merge_all_iters_to_one_epoch(test_set):
    test_set.merge_all_iters_to_one_epoch(merge=True, epochs=3)
    try:
        assert len(test_set) == 3 * len(test_set.infos)
        assert test_set[len(test_set.infos)]['frame_id'] == test_set[0]['frame_id']
    finally:
        test_set.merge_all_iters_to_one_epoch(merge=False)
    assert len(test_set) == len(test_set.infos)


def test_truncated_lidar_file_names_file_and_size(test_set, tmp_path):
    bad = test_set.root_path / 'truncated.pcd.bin'
    bad.write_bytes(b'\0' * 27)
    original = test_set.infos[0]['lidar_path']
    test_set.infos[0]['lidar_path'] = 'truncated.pcd.bin'
    try:
        with pytest.raises(ValueError, match='27 bytes') as err:
            test_set.get_lidar_with_sweeps(0, max_sweeps=1)
        assert str(bad) in str(err.value)
    finally:
        test_set.infos[0]['lidar_path'] = original
        bad.unlink()


def test_missing_info_file_and_root_name_the_fix(data_path, synthetic_nuscenes_version, tmp_path):
    cfg = make_cfg(data_path, synthetic_nuscenes_version)
    cfg.INFO_PATH = {'train': ['absent.pkl'], 'test': ['absent.pkl']}
    with pytest.raises(FileNotFoundError, match='create_nuscenes_infos') as err:
        NuScenesDataset(cfg, CLASS_NAMES, training=False)
    assert 'absent.pkl' in str(err.value)
    with pytest.raises(FileNotFoundError, match='pcdet.datasets.synthetic.nuscenes'):
        NuScenesDataset(make_cfg(tmp_path / 'nowhere', synthetic_nuscenes_version), CLASS_NAMES, training=False)


def test_bad_info_schema_is_a_clear_error(data_path, synthetic_nuscenes_version):
    root = data_path / synthetic_nuscenes_version
    infos = pickle.loads((root / 'nuscenes_infos_10sweeps_val.pkl').read_bytes())
    for info in infos:
        info.pop('sweeps')
    (root / 'old_infos.pkl').write_bytes(pickle.dumps(infos))
    cfg = make_cfg(data_path, synthetic_nuscenes_version)
    cfg.INFO_PATH = {'train': ['old_infos.pkl'], 'test': ['old_infos.pkl']}
    with pytest.raises(InfoSchemaError, match="regenerate with create_nuscenes_infos") as err:
        NuScenesDataset(cfg, CLASS_NAMES, training=False)
    assert 'old_infos.pkl' in str(err.value) and "'sweeps'" in str(err.value)


def test_sampled_interval_keeps_every_kth_frame(data_path, synthetic_nuscenes_version):
    cfg = make_cfg(data_path, synthetic_nuscenes_version, BALANCED_RESAMPLING=False)
    full = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    cfg.SAMPLED_INTERVAL = {'train': 3, 'test': 1}
    subset = NuScenesDataset(cfg, CLASS_NAMES, training=True)
    assert [i['token'] for i in subset.infos] == [i['token'] for i in full.infos[::3]]
    assert len(NuScenesDataset(cfg, CLASS_NAMES, training=False).infos) == len(
        NuScenesDataset(make_cfg(data_path, synthetic_nuscenes_version), CLASS_NAMES, training=False).infos)
    cfg.SAMPLED_INTERVAL = {'train': 0, 'test': 1}
    with pytest.raises(ValueError, match='SAMPLED_INTERVAL.train'):
        NuScenesDataset(cfg, CLASS_NAMES, training=True)
