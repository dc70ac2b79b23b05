"""Input validation of the data pipeline: non-finite point rows (NONFINITE_POINTS), files referenced by the infos
that do not exist, empty splits, gt_names / gt_boxes length mismatches, `--epochs 0` and a VOXEL_SIZE that does not
divide POINT_CLOUD_RANGE.

Expected values are written out by hand (row counts of files written here, lengths of edited infos), never taken
from the code under test."""
import logging
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.datasets import DatasetTemplate
from pcdet.datasets.dataset import EmptyDatasetError
from pcdet.datasets.nuscenes import gt_database as nuscenes_gt_database
from pcdet.datasets.nuscenes.nuscenes_dataset import InfoSchemaError, NuScenesDataset
from pcdet.datasets.nuscenes.nuscenes_utils import CLASS_NAMES as NUSCENES_CLASSES
from pcdet.datasets.nuscenes.nuscenes_utils import load_point_parts, load_points_with_sweeps
from pcdet.datasets.prep_utils import MissingDataFilesError, check_files_exist
from pcdet.datasets.processor import DataProcessor
from pcdet.datasets.synthetic.waymo_writer import SyntheticWaymoConfig, generate_waymo
from pcdet.datasets.waymo import waymo_dataset
from pcdet.datasets.waymo.waymo_dataset import WaymoDataset
from pcdet.utils.point_io import NonFinitePointsError, finite_row_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
NUSCENES_CFG = REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml'
WAYMO_CFG = REPO_ROOT / 'tools/cfgs/dataset_configs/waymo_dataset.yaml'
WAYMO_CLASSES = ['Vehicle', 'Pedestrian', 'Cyclist']
WAYMO_TAG = 'waymo_processed_data_v0_5_0'
VAL_INFOS = 'nuscenes_infos_10sweeps_val.pkl'


def nonfinite_warnings(records, path):
    return [w for w in records if issubclass(w.category, RuntimeWarning) and str(path) in str(w.message)]


# ---- non-finite point rows -----------------------------------------------------------------------------------------

def test_finite_row_mask_warns_once_per_file_or_raises(tmp_path, caplog):
    points = np.ones((6, 4), dtype=np.float32)
    points[1, 0], points[4, 3] = np.nan, np.inf          # rows 1 and 4 are bad
    first, second = tmp_path / 'a.bin', tmp_path / 'b.bin'
    with warnings.catch_warnings(record=True) as records, caplog.at_level(logging.WARNING, 'pcdet'):
        warnings.simplefilter('always')
        for _ in range(3):                               # the same file three times: one report
            np.testing.assert_array_equal(finite_row_mask(points, first), [1, 0, 1, 1, 0, 1])
        finite_row_mask(points, second)
        finite_row_mask(np.ones((3, 4)), tmp_path / 'clean.bin')
    assert len(nonfinite_warnings(records, first)) == 1 and len(nonfinite_warnings(records, second)) == 1
    assert '2 of 6 point rows' in str(nonfinite_warnings(records, first)[0].message)
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and str(first) in r.getMessage()]
    assert len(logged) == 1 and '2 of 6' in logged[0].getMessage()
    assert not [w for w in records if 'clean.bin' in str(w.message)]
    with pytest.raises(NonFinitePointsError, match=r'a\.bin: 2 of 6 point rows'):
        finite_row_mask(points, first, 'error')
    with pytest.raises(ConfigError, match='nonfinite'):
        finite_row_mask(points, first, 'drop')


def write_pcd_bin(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(rows, dtype=np.float32).tofile(path)


def nan_frame(root, name='frame'):
    """A key frame of 5 rows (row 2: NaN x) and one sweep of 4 rows (row 0: inf intensity), both away from the ego
    box; returns the info."""
    key = [[5, 0, 0, 1, 0], [6, 0, 0, 1, 0], [np.nan, 0, 0, 1, 0], [7, 0, 0, 1, 0], [8, 0, 0, 1, 0]]
    sweep = [[5, 5, 0, np.inf, 0], [6, 5, 0, 1, 0], [7, 5, 0, 1, 0], [8, 5, 0, 1, 0]]
    write_pcd_bin(root / f'samples/{name}.pcd.bin', key)
    write_pcd_bin(root / f'sweeps/{name}.pcd.bin', sweep)
    return {'lidar_path': f'samples/{name}.pcd.bin',
            'sweeps': [{'lidar_path': f'sweeps/{name}.pcd.bin', 'transform_matrix': None, 'time_lag': 0.05}]}


def test_nuscenes_loader_drops_nonfinite_rows_with_one_warning_per_file(tmp_path):
    info = nan_frame(tmp_path)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter('always')
        points = load_points_with_sweeps(tmp_path, info, [0])
        load_points_with_sweeps(tmp_path, info, [0])     # a second epoch: no new report
    assert points.shape == (4 + 3, 5) and np.isfinite(points).all()
    np.testing.assert_array_equal(points[:4, 0], [5, 6, 7, 8])
    assert len(nonfinite_warnings(records, tmp_path / info['lidar_path'])) == 1
    assert len(nonfinite_warnings(records, tmp_path / info['sweeps'][0]['lidar_path'])) == 1
    parts, raw_rows = load_point_parts(tmp_path, info, [0], return_raw_rows=True)
    assert [r.tolist() for r in raw_rows] == [[0, 1, 3, 4], [1, 2, 3]]  # rows of the kept points in each file
    with pytest.raises(NonFinitePointsError, match=r'samples/frame\.pcd\.bin: 1 of 5'):
        load_points_with_sweeps(tmp_path, info, [0], nonfinite='error')


def test_nuscenes_gt_database_honours_the_error_policy(tmp_path):
    info = nan_frame(tmp_path, 'db')
    info.update(gt_boxes=np.array([[6.5, 2.5, 0, 4, 8, 2, 0, 0, 0]]), gt_names=np.array(['car']))
    with pytest.raises(NonFinitePointsError, match=r'db\.pcd\.bin'):
        nuscenes_gt_database.create_groundtruth_database(tmp_path, [info], max_sweeps=2, nonfinite='error')


# ---- nuScenes dataset: a private copy of the synthetic dataroot with edited infos -----------------------------------

@pytest.fixture
def nuscenes_root(synthetic_nuscenes_data_path, synthetic_nuscenes_version, tmp_path):
    """(DATA_PATH, dataroot): the shared dataroot's entries linked, the val infos copied (editable)."""
    shared = synthetic_nuscenes_data_path / synthetic_nuscenes_version
    dataroot = tmp_path / synthetic_nuscenes_version
    dataroot.mkdir()
    for entry in shared.iterdir():
        if entry.name == VAL_INFOS:
            shutil.copy(entry, dataroot / entry.name)
        else:
            (dataroot / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return tmp_path, dataroot


def edit_infos(path, edit):
    infos = pickle.loads(path.read_bytes())
    edit(infos)
    path.write_bytes(pickle.dumps(infos))
    return infos


def nuscenes_cfg(data_path, version='v1.0-mini', **overrides):
    cfg = cfg_from_yaml_file(NUSCENES_CFG)
    cfg.DATA_PATH, cfg.VERSION = str(data_path), version
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.update(overrides)
    return cfg


def test_nuscenes_dataset_nonfinite_policy(nuscenes_root):
    data_path, dataroot = nuscenes_root
    info = nan_frame(dataroot, 'nan_key')
    edit_infos(dataroot / VAL_INFOS, lambda infos: infos[0].update(lidar_path=info['lidar_path']))
    strict = NuScenesDataset(nuscenes_cfg(data_path, NONFINITE_POINTS='error'), NUSCENES_CLASSES, training=False)
    with pytest.raises(NonFinitePointsError, match=r'nan_key\.pcd\.bin: 1 of 5'):
        strict[0]
    lenient = NuScenesDataset(nuscenes_cfg(data_path), NUSCENES_CLASSES, training=False)  # default: warn
    with pytest.warns(RuntimeWarning, match=r'nan_key\.pcd\.bin: 1 of 5'):
        points = lenient.get_lidar_with_sweeps(0, max_sweeps=1)
    np.testing.assert_array_equal(points[:, 0], [5, 6, 7, 8])
    with pytest.raises(ConfigError, match='NONFINITE_POINTS'):
        NuScenesDataset(nuscenes_cfg(data_path, NONFINITE_POINTS='ignore'), NUSCENES_CLASSES, training=False)


def test_nuscenes_missing_sweep_fails_when_the_dataset_is_built(nuscenes_root):
    data_path, dataroot = nuscenes_root

    def break_sweeps(infos):
        infos[1]['sweeps'][3] = dict(infos[1]['sweeps'][3], lidar_path='sweeps/LIDAR_TOP/gone_1.pcd.bin')
        infos[2]['sweeps'][8] = dict(infos[2]['sweeps'][8], lidar_path='sweeps/LIDAR_TOP/gone_2.pcd.bin')
    edit_infos(dataroot / VAL_INFOS, break_sweeps)
    with pytest.raises(MissingDataFilesError) as error:
        NuScenesDataset(nuscenes_cfg(data_path), NUSCENES_CLASSES, training=False)
    message = str(error.value)
    assert message.startswith(f'{dataroot / VAL_INFOS}: 2 of ') and 'gone_1.pcd.bin' in message \
        and 'gone_2.pcd.bin' in message
    # MAX_SWEEPS 1 never reads a sweep: nothing to complain about
    assert len(NuScenesDataset(nuscenes_cfg(data_path, MAX_SWEEPS=1), NUSCENES_CLASSES, training=False)) > 0


def test_missing_files_check_shows_progress_for_many_files(tmp_path, monkeypatch, capsys):
    from pcdet.datasets import prep_utils
    (tmp_path / 'present').touch()
    monkeypatch.setattr(prep_utils, 'PROGRESS_BAR_MIN_FILES', 2)
    paths = [tmp_path / 'present'] * 2 + [tmp_path / f'absent_{i}' for i in range(7)]
    with pytest.raises(MissingDataFilesError, match=r'infos\.pkl: 7 of 8 LiDAR files') as error:
        check_files_exist(paths, 'infos.pkl', 'LiDAR files')
    assert 'absent_4' in str(error.value) and 'absent_5' not in str(error.value)  # the first 5 only
    assert 'checking LiDAR files of infos.pkl' in capsys.readouterr().err


def test_nuscenes_empty_info_list_names_the_file_and_split(nuscenes_root):
    data_path, dataroot = nuscenes_root
    edit_infos(dataroot / VAL_INFOS, lambda infos: infos.clear())
    with pytest.raises(EmptyDatasetError, match=rf"split 'test' in DATA_CONFIG\.INFO_PATH\.test .*{VAL_INFOS}"):
        NuScenesDataset(nuscenes_cfg(data_path), NUSCENES_CLASSES, training=False)


def test_nuscenes_short_gt_names_names_the_frame_and_both_lengths(nuscenes_root):
    data_path, dataroot = nuscenes_root
    infos = edit_infos(dataroot / VAL_INFOS, lambda infos: infos[1].update(gt_names=infos[1]['gt_names'][:-2]))
    num_boxes = len(infos[1]['gt_boxes'])
    with pytest.raises(InfoSchemaError) as error:
        NuScenesDataset(nuscenes_cfg(data_path), NUSCENES_CLASSES, training=False)
    message = str(error.value)
    assert VAL_INFOS in message and infos[1]['token'] in message
    assert f'gt_names has {num_boxes - 2} entries but gt_boxes has {num_boxes} rows' in message


class _Frames(DatasetTemplate):
    def __init__(self, cfg, frames):
        super().__init__(dataset_cfg=cfg, class_names=['car'], training=False)
        self.frames = frames

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        return self.prepare_data(dict(self.frames[index]))


def test_prepare_data_short_gt_names_names_the_frame_and_both_lengths():
    cfg = EasyDict({'POINT_CLOUD_RANGE': [-10, -10, -2, 10, 10, 2],
                    'POINT_FEATURE_ENCODING': {'encoding_type': 'absolute_coordinates_encoding',
                                               'used_feature_list': ['x', 'y', 'z'],
                                               'src_feature_list': ['x', 'y', 'z']}})
    frame = {'points': np.zeros((4, 3), dtype=np.float32), 'frame_id': 'scene_7',
             'gt_boxes': np.zeros((3, 7)), 'gt_names': np.array(['car', 'car'])}
    with pytest.raises(ValueError, match='frame scene_7: gt_names has 2 entries but gt_boxes has 3 rows'):
        _Frames(cfg, [frame])[0]


# ---- Waymo ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def waymo_source(tmp_path_factory):
    """Converted synthetic Waymo data (no GT database); tests work on a copy."""
    root = tmp_path_factory.mktemp('waymo_validation')
    generate_waymo(SyntheticWaymoConfig(root=str(root), num_sequences=2, frames_per_sequence=2, top_columns=128,
                                        top_pose_sectors=2, side_beams=8, side_columns=32, num_objects=6, seed=3,
                                        val_fraction=0.5), progress=False)
    waymo_dataset.create_waymo_infos(waymo_dataset.load_dataset_cfg(WAYMO_CFG), root, workers=1,
                                     with_gt_database=False, progress=False)
    return root


@pytest.fixture
def waymo_root(waymo_source, tmp_path):
    root = tmp_path / 'waymo'
    shutil.copytree(waymo_source, root, ignore=shutil.ignore_patterns('raw_data'))
    return root


def waymo_cfg(root, **overrides):
    cfg = waymo_dataset.load_dataset_cfg(WAYMO_CFG)
    cfg.DATA_PATH = str(root)
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ['gt_sampling']
    cfg.update(overrides)
    return cfg


def val_point_files(root):
    sequence = (root / 'ImageSets' / 'val.txt').read_text().split()[0].replace('.tfrecord', '')
    return sorted((root / WAYMO_TAG / sequence).glob('*.npy'))


def test_waymo_missing_point_file_fails_when_the_dataset_is_built(waymo_root):
    missing = val_point_files(waymo_root)[1]
    missing.unlink()
    with pytest.raises(MissingDataFilesError) as error:
        WaymoDataset(waymo_cfg(waymo_root), WAYMO_CLASSES, training=False)
    message = str(error.value)
    assert str(waymo_root / 'ImageSets' / 'val.txt') in message and ': 1 of 2 point files' in message
    assert str(missing) in message


def test_waymo_nonfinite_rows(waymo_root):
    path = val_point_files(waymo_root)[0]
    stored = np.load(path)
    stored[[0, 3, 5], 1] = [np.nan, np.inf, -np.inf]
    np.save(path, stored)
    lenient = WaymoDataset(waymo_cfg(waymo_root), WAYMO_CLASSES, training=False)
    info = lenient.infos[0]
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter('always')
        points = lenient.get_lidar(info['point_cloud']['lidar_sequence'], info['point_cloud']['sample_idx'])
        lenient.get_lidar(info['point_cloud']['lidar_sequence'], info['point_cloud']['sample_idx'])
    assert len(points) == len(stored) - 3 and np.isfinite(points).all()
    assert len(nonfinite_warnings(records, path)) == 1
    assert f'3 of {len(stored)} point rows' in str(nonfinite_warnings(records, path)[0].message)
    strict = WaymoDataset(waymo_cfg(waymo_root, NONFINITE_POINTS='error'), WAYMO_CLASSES, training=False)
    with pytest.raises(NonFinitePointsError, match=f'{path.name}: 3 of {len(stored)}'):
        strict[0]


def test_waymo_empty_split_names_the_split(waymo_root):
    for path in val_point_files(waymo_root)[0].parent.glob('*.pkl'):
        path.write_bytes(pickle.dumps([]))
    with pytest.raises(EmptyDatasetError, match=r"split 'val' in .*val\.txt"):
        WaymoDataset(waymo_cfg(waymo_root), WAYMO_CLASSES, training=False)


# ---- training arguments and the voxel grid ---------------------------------------------------------------------------

@pytest.mark.parametrize('value', ['0', '-2'])
def test_epochs_must_be_positive(value, capsys):
    from pcdet.training.run_utils import build_train_parser  # here: the training package imports much more
    parser = build_train_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(['--cfg_file', 'x.yaml', '--epochs', value])
    assert '--epochs must be >= 1' in capsys.readouterr().err
    assert parser.parse_args(['--cfg_file', 'x.yaml', '--epochs', '1']).epochs == 1


def grid_processor(point_cloud_range, voxel_size):
    steps = [EasyDict({'NAME': 'transform_points_to_voxels_placeholder', 'VOXEL_SIZE': voxel_size})]
    return DataProcessor(steps, np.array(point_cloud_range, dtype=np.float32), False, num_point_features=4)


def test_voxel_size_that_does_not_divide_the_range_warns(caplog):
    with pytest.warns(UserWarning) as records, caplog.at_level(logging.WARNING, 'pcdet'):
        grid_processor([0, -10, -2, 10, 10, 2], [0.3, 0.4, 4])            # x: 10 / 0.3 = 33.33 cells
    message = str(records[0].message)
    assert 'DATA_PROCESSOR[transform_points_to_voxels_placeholder].VOXEL_SIZE [0.3, 0.4, 4.0]' in message
    assert 'POINT_CLOUD_RANGE [0.0, -10.0, -2.0, 10.0, 10.0, 2.0]' in message and '33.3333' in message
    assert any('33.3333' in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                    # dividing grids stay silent,
        grid_processor([-51.2, -51.2, -5, 51.2, 51.2, 3], [0.1, 0.1, 0.2])  # float32 ranges included
        grid_processor([-54, -54, -5, 54, 54, 3], [0.075, 0.075, 0.2])
