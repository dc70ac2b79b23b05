"""The image-projection teacher end to end: the real prepare path on the session's synthetic nuScenes data with two
hand-made cameras per key frame (JPEGs + info['cams'] as `--with_cam` infos hold them), a store with superpixel ids,
and the real NuScenesDataset carrying point_teacher_features + point_superpixel_ids through augmentation."""
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.cameras import load_camera_views
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.datasets.teachers import build_teacher, feature_store
from pcdet.datasets.teachers.prepare import prepare_teacher_features

from camera_fixtures import LOOK_FORWARD, cam_entry, intrinsics, rotation_z, write_jpeg
from teacher_test_configs import augmented_nuscenes_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 64, 48
NUM_FRAMES = 3
SUPERPIXELS = {'ENABLED': True, 'N_SEGMENTS': 20, 'COMPACTNESS': 10.0}
TEACHER = dict(NAME='image_projection', NUM_FEATURES=8, BACKBONE={'NAME': 'resnet_tiny', 'SEED': 0},
               SUPERPIXELS=SUPERPIXELS)


def nuscenes_cfg(data_path, version, max_sweeps, **teacher):
    """The nuScenes dataset config with training augmentation (flip, rotation, scaling, translation), range mask and
    shuffling, and the TEACHER_FEATURES block `teacher`."""
    return augmented_nuscenes_cfg(data_path, version, max_sweeps, teacher)


def smooth_image(rng):
    """(H, W, 3) uint8 colour blobs: a few regions, so SLIC has edges to follow."""
    rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing='ij')
    phases = rng.uniform(0, 2 * np.pi, (3, 2))
    channels = [127 + 120 * np.sin(rows / 9.0 + a) * np.cos(cols / 13.0 + b) for a, b in phases]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)


def add_cameras(dataroot, info, rng):
    """Front and back cameras (1.5 m up, 1 m forward / back) with JPEGs under camera_images/<CHANNEL>/ (a private
    folder: samples/ links to the shared read-only dataset)."""
    info['cams'] = {}
    for channel, yaw, x in (('CAM_FRONT', 0.0, 1.0), ('CAM_BACK', np.pi, -1.0)):
        relpath = f'camera_images/{channel}/{Path(info["lidar_path"]).stem}__{channel}.jpg'
        write_jpeg(dataroot / relpath, smooth_image(rng))
        info['cams'][channel] = cam_entry(relpath, rotation_z(yaw) @ LOOK_FORWARD, [x, 0.0, 1.5],
                                          intrinsics(WIDTH, HEIGHT, 40.0), (HEIGHT, WIDTH), channel)


@pytest.fixture(scope='module')
def data_path(synthetic_nuscenes_data_path, synthetic_nuscenes_version, tmp_path_factory):
    """A private DATA_PATH: links to the session dataset, infos copied with cameras added, image features of the
    first NUM_FRAMES train frames made by the real prepare path (teacher built from the config)."""
    data_path = tmp_path_factory.mktemp('image_teacher_data_path')
    dataroot = data_path / synthetic_nuscenes_version
    dataroot.mkdir()
    rng = np.random.default_rng(0)
    for entry in (synthetic_nuscenes_data_path / synthetic_nuscenes_version).iterdir():
        if entry.suffix != '.pkl':
            (dataroot / entry.name).symlink_to(entry.resolve())
            continue
        with open(entry, 'rb') as handle:
            infos = pickle.load(handle)
        for info in infos:
            add_cameras(dataroot, info, rng)
        with open(dataroot / entry.name, 'wb') as handle:
            pickle.dump(infos, handle)
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, max_sweeps=3, **TEACHER)
    report = prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=NUM_FRAMES, progress=False)
    assert len(report['written']) == NUM_FRAMES and report['manifest']['extra_arrays'] == ['superpixel_ids']
    again = prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=NUM_FRAMES, progress=False)
    assert again['skipped'] == report['frames']  # resumable: complete files (with their superpixel ids) are kept
    return data_path


def dataset(data_path, version, training=True, **overrides):
    return NuScenesDataset(nuscenes_cfg(data_path, version, max_sweeps=3, **dict(TEACHER, **overrides)), [],
                           training=training)


def test_store_holds_features_and_superpixel_ids(data_path, synthetic_nuscenes_version):
    train = dataset(data_path, synthetic_nuscenes_version)
    path = feature_store.feature_path(train.teacher_feature_root, '', Path(train.infos[0]['lidar_path']).stem)
    features, part_sizes, extras = feature_store.load_frame_features(path, 8, ('superpixel_ids',))
    ids = extras['superpixel_ids']
    assert len(part_sizes) == 3 and ids.shape == (len(features),) and ids.dtype == np.int32
    seen = ids >= 0
    assert 0.05 < seen.mean() < 0.95  # the two cameras see part of the cloud
    np.testing.assert_array_equal(seen, features.any(axis=1))  # all-zero rows = the points no camera sees
    np.testing.assert_allclose(np.linalg.norm(features[seen].astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert set(np.unique(ids[seen] // 80)) == {0, 1}  # ID_STRIDE = 4 * N_SEGMENTS; both cameras
    old_style = feature_store.load_frame_features(path, 8)  # readers without extra arrays are unchanged
    assert len(old_style) == 2 and np.array_equal(old_style[0], features)


def expected_columns(train, index, xyz):
    """(features (N, 8), ids (N,)) of the teacher recomputed at raw LiDAR points xyz of frame `index`."""
    teacher = build_teacher(train.teacher_cfg)
    encoded = teacher.encode_cameras(load_camera_views(train.root_path, train.infos[index]))
    return teacher.project(xyz, encoded)


def test_superpixel_ids_ride_through_augmentation(data_path, synthetic_nuscenes_version):
    train = dataset(data_path, synthetic_nuscenes_version)
    for seed, index in ((0, 0), (1, 1), (2, 2)):
        np.random.seed(seed)
        sample = train[index]
        points, features, ids = sample['points'], sample['point_teacher_features'], sample['point_superpixel_ids']
        assert points.shape[1] == 5 and features.shape == (len(points), 8) and ids.shape == (len(points),)
        assert ids.dtype == np.int64 and (ids >= 0).any() and (ids < 0).any()
        np.testing.assert_array_equal(ids >= 0, features.any(axis=1))
        matrix = sample['lidar_aug_matrix'].astype(np.float64)
        raw_xyz = (points[:, :3].astype(np.float64) - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T
        expected_features, expected_ids = expected_columns(train, index, raw_xyz)
        same = expected_ids == ids
        assert same.mean() > 0.999  # round-off of the inverse augmentation may move a point across an image edge
        np.testing.assert_allclose(features[same], expected_features[same], atol=3e-3)


def test_collate_concatenates_superpixel_ids(data_path, synthetic_nuscenes_version):
    train = dataset(data_path, synthetic_nuscenes_version)
    np.random.seed(3)
    samples = [train[0], train[1]]
    batch = train.collate_batch(samples)
    assert batch['point_superpixel_ids'].shape == (len(batch['points']),)
    for index, sample in enumerate(samples):
        rows = batch['points'][:, 0] == index
        np.testing.assert_array_equal(batch['point_superpixel_ids'][rows], sample['point_superpixel_ids'])


def test_without_superpixels_no_column_and_missing_ids_name_the_file(data_path, synthetic_nuscenes_version):
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, max_sweeps=3,
                       **dict(TEACHER, SUPERPIXELS={'ENABLED': False}, FEATURE_DIR='teacher_features/plain'))
    prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=1, progress=False)
    plain = NuScenesDataset(cfg, [], training=True)
    sample = plain[0]
    assert 'point_superpixel_ids' not in sample and sample['point_teacher_features'].shape[1] == 8
    path = feature_store.feature_path(plain.teacher_feature_root, '', Path(plain.infos[0]['lidar_path']).stem)
    message = re.escape(f"{path.name}: extra array 'superpixel_ids' is missing")
    with pytest.raises(feature_store.FeatureStoreError, match=message):
        feature_store.load_frame_features(path, 8, ('superpixel_ids',))


def test_missing_camera_image_names_the_file(data_path, synthetic_nuscenes_version, tmp_path):
    cfg = nuscenes_cfg(data_path, synthetic_nuscenes_version, max_sweeps=3,
                       **dict(TEACHER, FEATURE_DIR=str(tmp_path / 'features')))
    train = dataset(data_path, synthetic_nuscenes_version)
    image = train.root_path / train.infos[0]['cams']['CAM_BACK']['data_path']
    moved = image.with_suffix('.moved')
    image.rename(moved)
    try:
        with pytest.raises(FileNotFoundError, match=re.escape(image.name)):
            prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=1, progress=False)
    finally:
        moved.rename(image)


def test_infos_without_cameras_are_refused_before_anything_is_written(synthetic_nuscenes_data_path,
                                                                       synthetic_nuscenes_version, tmp_path):
    """The session's LiDAR-only infos (made without --with_cam): prepare names the first frame and the flag, and
    leaves no feature folder behind."""
    features = tmp_path / 'features'
    cfg = nuscenes_cfg(synthetic_nuscenes_data_path, synthetic_nuscenes_version, max_sweeps=3,
                       **dict(TEACHER, FEATURE_DIR=str(features)))
    with pytest.raises(KeyError, match=r'\.pcd\.bin.*--with_cam'):
        prepare_teacher_features(cfg, 'train', num_sweeps=2, limit=2, progress=False)
    assert not features.exists()


def test_gpicture_pretrains_from_the_image_features(data_path, synthetic_nuscenes_version):
    """The shipped image-teacher pretraining config: its dataset reads these features (prepared with its own teacher
    block) and one GPICTURE training step runs on a collated batch (superpixel ids reach the model as int64)."""
    import torch

    from pcdet.models.build import build_network_from_cfg
    from pcdet.utils.batching import load_data_to_device
    cfg = cfg_from_yaml_file(REPO_ROOT / 'tools/cfgs/gpicture_models/gpicture_tiny_synthetic_pretrain_image.yaml')
    data_cfg = cfg.DATA_CONFIG
    data_cfg.DATA_PATH, data_cfg.VERSION = str(data_path), synthetic_nuscenes_version
    data_cfg.INFO_PATH = {'train': ['nuscenes_infos_10sweeps_train.pkl'], 'test': ['nuscenes_infos_10sweeps_val.pkl']}
    data_cfg.TEACHER_FEATURES.FEATURE_DIR = 'teacher_features/gpicture_image'
    data_cfg.TEACHER_FEATURES.SUPERPIXELS.N_SEGMENTS = 20  # small images
    prepare_teacher_features(data_cfg, 'train', limit=2, progress=False)
    train = NuScenesDataset(data_cfg, cfg.CLASS_NAMES, training=True)
    np.random.seed(0)
    batch = load_data_to_device(train.collate_batch([train[0], train[1]]), 'cpu')
    assert batch['point_teacher_features'].shape == (len(batch['points']), 64)
    assert batch['point_superpixel_ids'].dtype == torch.long
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg)
    model.train()
    model.dense_head.set_beta(1.0)
    loss, tb_dict, _ = model(batch)
    loss['loss'].backward()
    assert torch.isfinite(loss['loss'])
