"""WaymoDataset on infos converted from synthetic tfrecords (no TensorFlow): loading, point transforms, errors,
the GT-database transform check and the evaluation wiring."""
import copy
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pcdet.datasets import build_dataloader
from pcdet.datasets.prep_utils import InfoSchemaError
from pcdet.datasets.synthetic.waymo_writer import SyntheticWaymoConfig, generate_waymo
from pcdet.datasets.waymo import waymo_dataset
from pcdet.datasets.waymo.waymo_dataset import WaymoDataset
from pcdet.datasets.waymo.waymo_utils import WaymoPointFileError

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG_FILE = REPO_ROOT / 'tools/cfgs/dataset_configs/waymo_dataset.yaml'
CLASS_NAMES = ['Vehicle', 'Pedestrian', 'Cyclist']
TAG = 'waymo_processed_data_v0_5_0'
# 3 segments (2 train, 1 val) x 3 frames, small range images: ~1.5 s to write, ~1 s to convert.
SMALL = dict(num_sequences=3, frames_per_sequence=3, top_columns=256, top_pose_sectors=2, side_beams=16,
             side_columns=64, num_objects=16, seed=1, val_fraction=0.34)


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    """DATA_PATH with raw_data/, ImageSets/, the converted sequences, infos and GT database (default config)."""
    root = tmp_path_factory.mktemp('waymo_dataset')
    generate_waymo(SyntheticWaymoConfig(root=str(root), **SMALL), progress=False)
    waymo_dataset.create_waymo_infos(waymo_dataset.load_dataset_cfg(CFG_FILE), root, workers=1, progress=False)
    return root


def make_cfg(data_path, no_gt_sampling=True, **overrides):
    cfg = waymo_dataset.load_dataset_cfg(CFG_FILE)
    cfg.DATA_PATH = str(data_path)
    if no_gt_sampling:
        cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.update(overrides)
    return cfg


def sequences(data_path, split):
    return [name.replace('.tfrecord', '') for name in (data_path / 'ImageSets' / f'{split}.txt').read_text().split()]


@pytest.fixture(scope='module')
def test_set(data_path):
    return WaymoDataset(make_cfg(data_path), CLASS_NAMES, training=False)


def test_infos_follow_image_sets_and_sampled_interval(data_path, test_set):
    val = sequences(data_path, 'val')
    assert [info['frame_id'] for info in test_set.infos] == [f'{val[0]}_{i:03d}' for i in range(3)]
    assert list(test_set.seq_name_to_infos) == val
    train = WaymoDataset(make_cfg(data_path), CLASS_NAMES, training=True)  # SAMPLED_INTERVAL train: 5
    all_train = [f'{name}_{i:03d}' for name in sequences(data_path, 'train') for i in range(3)]
    assert [info['frame_id'] for info in train.infos] == all_train[::5] and len(train) == 2
    cfg = make_cfg(data_path)
    cfg.SAMPLED_INTERVAL = {'train': 2, 'test': 1}
    assert [i['frame_id'] for i in WaymoDataset(cfg, CLASS_NAMES, training=True).infos] == all_train[::2]


def test_sample_has_five_features_after_tanh(data_path, test_set):
    info = test_set.infos[1]
    raw = np.load(data_path / TAG / info['point_cloud']['lidar_sequence'] / '0001.npy')
    points = test_set.get_lidar(info['point_cloud']['lidar_sequence'], 1)
    assert points.shape == (len(raw), 5) and points.dtype == np.float32  # NLZ points kept (default config)
    np.testing.assert_array_equal(points[:, 3], np.tanh(raw[:, 3]))   # default: tanh on intensity only
    np.testing.assert_array_equal(points[:, 4], raw[:, 4])
    both = WaymoDataset(make_cfg(data_path, POINTS_TANH_DIM=[3, 4], DISABLE_NLZ_FLAG_ON_POINTS=False), CLASS_NAMES,
                        training=False)
    points = both.get_lidar(info['point_cloud']['lidar_sequence'], 1)
    kept = raw[raw[:, 5] == -1]
    assert (raw[:, 5] == 1).any() and len(points) == len(kept)
    np.testing.assert_array_equal(points[:, 3:5], np.tanh(kept[:, 3:5]))

    sample = test_set[1]
    assert sample['points'].shape[1] == 5 and sample['frame_id'] == info['frame_id']
    assert sample['metadata'] == info['metadata'] and sample['sample_idx'] == 1
    assert 'num_points_in_gt' not in sample and sample['gt_boxes'].shape[1] == 8  # 7 + class index


def test_training_sample_speed_and_empty_box_filter(data_path, monkeypatch):
    cfg = make_cfg(data_path, TRAIN_WITH_SPEED=True)
    cfg.SAMPLED_INTERVAL = {'train': 1, 'test': 1}
    train = WaymoDataset(cfg, CLASS_NAMES, training=True)
    index = max(range(len(train)), key=lambda i: int((train.infos[i]['annos']['num_points_in_gt'] == 0).sum()))
    annos = train.infos[index]['annos']
    assert (annos['num_points_in_gt'] == 0).any()  # the synthetic frames have empty (occluded) labels
    seen = {}
    monkeypatch.setattr(train, 'prepare_data', lambda data_dict: seen.update(data_dict) or dict(data_dict))
    train[index]
    keep = annos['num_points_in_gt'] > 0
    np.testing.assert_array_equal(seen['gt_boxes'], annos['gt_boxes_lidar'][keep])
    assert seen['gt_boxes'].shape[1] == 9 and list(seen['gt_names']) == list(annos['name'][keep])
    monkeypatch.undo()
    sample = train[index]
    assert sample['gt_boxes'].shape[1] == 10 and sample['points'].shape[1] == 5


def test_dataloader_batch(data_path):
    _, loader, _ = build_dataloader(make_cfg(data_path), CLASS_NAMES, batch_size=2, dist=False, workers=0,
                                    training=False)
    batch = next(iter(loader))
    assert batch['batch_size'] == 2 and batch['points'].shape[1] == 6 and batch['gt_boxes'].shape[0] == 2


def test_wrong_feature_count_names_the_file(data_path, tmp_path, test_set):
    info = test_set.infos[0]
    name, idx = info['point_cloud']['lidar_sequence'], info['point_cloud']['sample_idx']
    broken = copy.copy(test_set)
    broken.data_path = tmp_path
    (tmp_path / name).mkdir()
    np.save(tmp_path / name / f'{idx:04d}.npy', np.zeros((10, 5), dtype=np.float32))
    with pytest.raises(WaymoPointFileError) as err:
        broken.get_lidar(name, idx)
    assert str(tmp_path / name / f'{idx:04d}.npy') in str(err.value) and '(N, 6)' in str(err.value)
    (tmp_path / name / f'{idx:04d}.npy').write_bytes(b'not a npy')
    with pytest.raises(WaymoPointFileError, match='not a readable .npy'):
        broken.get_lidar(name, idx)


def private_root(data_path, tmp_path):
    """A DATA_PATH linking to the converted data, with its own ImageSets."""
    root = tmp_path / 'root'
    root.mkdir()
    (root / TAG).symlink_to(data_path / TAG)
    shutil.copytree(data_path / 'ImageSets', root / 'ImageSets')
    return root


def test_missing_sequences_and_image_sets(data_path, tmp_path):
    root = private_root(data_path, tmp_path)
    (root / 'ImageSets' / 'val.txt').write_text((data_path / 'ImageSets' / 'val.txt').read_text()
                                                + 'segment-12345678901234567890_0000_000_0020_000.tfrecord\n')
    assert len(WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)) == 3  # counted, logged, skipped
    with pytest.raises(FileNotFoundError, match='1 of 2 sequences') as err:
        WaymoDataset(make_cfg(root, STRICT_SEQUENCE_LIST=True), CLASS_NAMES, training=False)
    assert 'create_waymo_infos' in str(err.value)
    (root / 'ImageSets' / 'val.txt').write_text('segment-12345678901234567890_0000_000_0020_000.tfrecord\n')
    with pytest.raises(FileNotFoundError, match='no sequence at all'):
        WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)
    (root / 'ImageSets' / 'val.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'ImageSets/val\.txt'):
        WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)


def test_infos_are_validated_on_load(data_path, tmp_path):
    root = tmp_path / 'root'
    shutil.copytree(data_path / 'ImageSets', root / 'ImageSets')
    name = sequences(data_path, 'val')[0]
    shutil.copytree(data_path / TAG / name, root / TAG / name)
    pkl = root / TAG / name / f'{name}.pkl'
    infos = pickle.loads(pkl.read_bytes())
    pkl.write_bytes(pickle.dumps([dict(info, info_schema='pcdet.waymo.det/0') for info in infos]))
    with pytest.raises(InfoSchemaError, match='info_schema') as err:
        WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)
    assert str(pkl) in str(err.value)
    broken = copy.deepcopy(infos)
    broken[1]['annos']['gt_boxes_lidar'] = broken[1]['annos']['gt_boxes_lidar'][:, :5]
    pkl.write_bytes(pickle.dumps(broken))
    with pytest.raises(InfoSchemaError, match='info 1: annos.gt_boxes_lidar'):
        WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)
    upstream = [{key: value for key, value in info.items() if key != 'info_schema'} for info in infos]
    pkl.write_bytes(pickle.dumps(upstream))  # OpenPCDet infos (no marker) still load
    assert len(WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)) == 3
    pkl.write_bytes(pickle.dumps(infos)[:100])
    with pytest.raises(InfoSchemaError, match='cannot be unpickled'):
        WaymoDataset(make_cfg(root), CLASS_NAMES, training=False)


def test_gt_sampling_checks_the_database_point_transform(data_path, caplog):
    cfg = make_cfg(data_path, no_gt_sampling=False)
    cfg.SAMPLED_INTERVAL = {'train': 1, 'test': 1}
    train = WaymoDataset(cfg, CLASS_NAMES, training=True)  # database built with the same (default) transform
    sample = train[0]
    assert sample['points'].shape[1] == 5
    with pytest.raises(ValueError, match=r'POINTS_TANH_DIM') as err:
        WaymoDataset(make_cfg(data_path, no_gt_sampling=False, POINTS_TANH_DIM=[3, 4]), CLASS_NAMES, training=True)
    assert f'{TAG}_waymo_dbinfos_train_sampled_1.pkl' in str(err.value) and 'create_waymo_gt_database' in str(err.value)


def gt_as_predictions(infos, with_empty_boxes=False):
    det_annos = []
    for info in infos:
        annos = info['annos']
        keep = np.isin(annos['name'], CLASS_NAMES) & ((annos['num_points_in_gt'] > 0) | with_empty_boxes)
        det_annos.append({'name': annos['name'][keep], 'score': np.ones(keep.sum(), dtype=np.float32),
                          'boxes_lidar': annos['gt_boxes_lidar'][keep].astype(np.float32),
                          'frame_id': info['frame_id']})
    return det_annos


def test_evaluation_with_ground_truth_as_predictions(test_set):
    """The evaluated GT (boxes with points) fed back scores 1; boxes without points are not GT for the Waymo
    metric (OpenPCDet's `num_points_in_gt > 0` filter), so predicting them too costs precision."""
    det_annos = gt_as_predictions(test_set.infos)
    assert sum(((info['annos']['name'] == 'Vehicle') & (info['annos']['num_points_in_gt'] > 0)).sum()
               for info in test_set.infos) > 0
    result_str, result_dict = test_set.evaluation(det_annos, CLASS_NAMES, eval_metric='waymo', output_path='unused')
    assert result_dict['OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP'] == pytest.approx(1.0)
    assert result_dict['OBJECT_TYPE_TYPE_VEHICLE_LEVEL_2/APH'] == pytest.approx(1.0)
    assert 'OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP: 1.0000' in result_str and 'OVERALL_LEVEL_2/APH' in result_str
    with_empty = test_set.evaluation(gt_as_predictions(test_set.infos, with_empty_boxes=True), CLASS_NAMES)[1]
    assert 0.5 < with_empty['OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP'] < 1.0
    shuffled = det_annos[::-1]
    with pytest.raises(ValueError, match='frame_id'):
        test_set.evaluation(shuffled, CLASS_NAMES)
    with pytest.raises(NotImplementedError, match='kitti'):
        test_set.evaluation(det_annos, CLASS_NAMES, eval_metric='kitti')


def test_database_without_metadata_is_only_warned_about(caplog):
    from pcdet.datasets.waymo.gt_database import check_database_transform
    with caplog.at_level('WARNING'):
        check_database_transform({'upstream_dbinfos.pkl': None}, {'points_tanh_dim': [3, 4]})
    assert 'upstream_dbinfos.pkl records no point-feature transform' in caplog.text
