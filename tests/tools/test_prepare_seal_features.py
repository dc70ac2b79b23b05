"""tools/prepare_seal_features.py (-> pcdet.datasets.teachers.prepare) on the session's synthetic nuScenes data with
the synthetic_semantic teacher: stored features equal an independent recomputation from the raw files and lidarseg
labels, resumability (only a deleted / truncated frame is rewritten), forked workers, and errors naming the file."""
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pcdet.datasets.nuscenes.nuscenes_utils import load_nusc, read_lidar_file
from pcdet.datasets.teachers import feature_store
from pcdet.datasets.teachers.synthetic_semantic import SyntheticSemanticTeacher

REPO_ROOT = Path(__file__).resolve().parents[2]
TEACHER = {'NAME': 'synthetic_semantic', 'NUM_FEATURES': 16, 'SEED': 0, 'NOISE_STD': 0.05, 'NUM_LABELS': 32}
OLD_MTIME = 1_000_000_000


def load_tool():
    spec = importlib.util.spec_from_file_location('prepare_seal_features', REPO_ROOT / 'tools/prepare_seal_features.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def private_data_path(root, source_data_path, version, skip=()):
    """DATA_PATH whose VERSION folder links to the session dataset + infos, minus the entries named in `skip`."""
    dataroot = root / version
    dataroot.mkdir(parents=True)
    for entry in (source_data_path / version).iterdir():
        if entry.name not in skip:
            (dataroot / entry.name).symlink_to(entry.resolve())
    return root


def write_cfg(path, data_path, version, **teacher_overrides):
    """A pretraining-style yaml: DATA_CONFIG with a _BASE_CONFIG_ and the TEACHER_FEATURES block."""
    data_config = {'_BASE_CONFIG_': str(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml'),
                   'DATA_PATH': str(data_path), 'VERSION': version,
                   'TEACHER_FEATURES': dict(TEACHER, **teacher_overrides)}
    path.write_text(yaml.safe_dump({'CLASS_NAMES': [], 'DATA_CONFIG': data_config}))
    return path


def add_ego_returns(dataroot, sweep_path, num_points=10):
    """Replace one sweep file of a private dataroot by a copy whose first rows lie on the ego vehicle (|x|, |y| < 1;
    the simulator produces none), so the loader's ego filter and the matching label filter are exercised."""
    folder = dataroot / 'sweeps'
    if folder.is_symlink():  # first call: a folder of per-file links, so single files can be replaced
        source = folder.resolve()
        folder.unlink()
        for file in source.rglob('*'):
            if file.is_file():
                (folder / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                (folder / file.relative_to(source)).symlink_to(file)
    target = dataroot / sweep_path
    points = read_lidar_file(target).copy()
    points[:num_points, 0:2] = np.linspace(-0.9, 0.9, num_points)[:, None]
    target.unlink()
    points.tofile(target)


@pytest.fixture(scope='module')
def setup(synthetic_nuscenes_data_path, synthetic_nuscenes_version, tmp_path_factory):
    from pcdet.datasets.nuscenes.nuscenes_dataset import load_infos
    root = tmp_path_factory.mktemp('prepare_seal')
    data_path = private_data_path(root / 'data', synthetic_nuscenes_data_path, synthetic_nuscenes_version)
    train_infos = load_infos(data_path / synthetic_nuscenes_version / 'nuscenes_infos_10sweeps_train.pkl')
    for info in train_infos[:3]:
        add_ego_returns(data_path / synthetic_nuscenes_version, info['sweeps'][1]['lidar_path'])
    cfg_file = write_cfg(root / 'pretrain.yaml', data_path, synthetic_nuscenes_version)
    tool = load_tool()
    report = tool.main(['--cfg_file', str(cfg_file), '--split', 'train', '--limit', '3', '--num_sweeps', '2',
                        '--quiet'])
    return {'root': root, 'data_path': data_path, 'cfg_file': cfg_file, 'tool': tool, 'report': report,
            'dataroot': data_path / synthetic_nuscenes_version, 'version': synthetic_nuscenes_version}


def independent_frame_features(dataroot, version, info, num_sweeps, teacher):
    """Teacher features of a frame recomputed from the raw .pcd.bin files and lidarseg labels (devkit tokens)."""
    nusc = load_nusc(dataroot, version, verbose=False)
    key_token = nusc.get('sample', info['token'])['data']['LIDAR_TOP']
    key = read_lidar_file(dataroot / info['lidar_path'])
    key_points = np.concatenate([key[:, :4], np.zeros((len(key), 1), np.float32)], axis=1)
    key_labels = np.fromfile(dataroot / f'lidarseg/{version}/{key_token}_lidarseg.bin', dtype=np.uint8)
    parts, num_ego_points = [teacher(key_points, key_labels)], 0
    for sweep in info['sweeps'][:num_sweeps]:
        raw = read_lidar_file(dataroot / sweep['lidar_path'])[:, :4]
        labels = np.fromfile(dataroot / f'lidarseg_sweeps/{version}/{sweep["sample_data_token"]}_lidarseg.bin',
                             dtype=np.uint8)
        keep = ~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))
        points = raw[keep]
        transform = np.asarray(sweep['transform_matrix'], dtype=np.float64)
        points[:, :3] = points[:, :3].astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
        points = np.concatenate([points, np.full((len(points), 1), sweep['time_lag'], np.float32)], axis=1)
        parts.append(teacher(points, labels[keep]))
        num_ego_points += int((~keep).sum())
    assert num_ego_points > 0  # the ego filter (and the label filter with it) really removed points
    return parts


def test_features_match_independent_recomputation(setup):
    report, dataroot = setup['report'], setup['dataroot']
    folder = dataroot / 'teacher_features/synthetic_semantic'
    assert report['feature_root'] == folder and len(report['written']) == 3 and report['skipped'] == []
    assert report['total_bytes'] == sum(f.stat().st_size for f in folder.glob('*.npz')) > 0
    assert report['mb_per_frame'] == pytest.approx(report['total_bytes'] / 1e6 / 3)
    manifest = feature_store.read_manifest(folder)
    assert (manifest['teacher'], manifest['num_sweeps'], manifest['num_features']) == ('synthetic_semantic', 2, 16)
    assert manifest['teacher_config'] == TEACHER and manifest['dataset'] == 'NuScenesDataset'

    from pcdet.datasets.nuscenes.nuscenes_dataset import load_infos
    infos = load_infos(dataroot / 'nuscenes_infos_10sweeps_train.pkl')
    assert report['frames'] == [Path(info['lidar_path']).stem for info in infos[:3]]
    info = next(i for i in infos[:3] if i['sweeps'][0]['transform_matrix'] is not None)
    features, part_sizes = feature_store.load_frame_features(folder / f'{Path(info["lidar_path"]).stem}.npz')
    expected = independent_frame_features(dataroot, setup['version'], info, 2, SyntheticSemanticTeacher(TEACHER))
    assert part_sizes.tolist() == [len(part) for part in expected]
    np.testing.assert_array_equal(features, np.concatenate(expected).astype(np.float16))


def test_resume_rewrites_only_missing_or_broken_frames(setup):
    tool, cfg_file, report = setup['tool'], setup['cfg_file'], setup['report']
    folder = report['feature_root']
    paths = [folder / f'{frame_id}.npz' for frame_id in report['frames']]
    args = ['--cfg_file', str(cfg_file), '--limit', '3', '--num_sweeps', '2', '--quiet']
    for path in paths:
        os.utime(path, (OLD_MTIME, OLD_MTIME))
    rerun = tool.main(args)
    assert rerun['written'] == [] and rerun['skipped'] == report['frames']
    assert all(path.stat().st_mtime == OLD_MTIME for path in paths)

    reference = paths[1].read_bytes()
    paths[1].unlink()
    paths[2].write_bytes(paths[2].read_bytes()[:100])  # an interrupted copy / power loss: unreadable
    rerun = tool.main(args)
    assert rerun['written'] == report['frames'][1:] and rerun['skipped'] == report['frames'][:1]
    assert paths[0].stat().st_mtime == OLD_MTIME
    assert paths[1].read_bytes() == reference  # deterministic recomputation
    assert feature_store.feature_file_problem(paths[2]) is None


def test_forked_workers_write_identical_files(setup):
    cfg_file = write_cfg(setup['root'] / 'workers.yaml', setup['data_path'], setup['version'],
                         FEATURE_DIR='teacher_features/workers')
    report = setup['tool'].main(['--cfg_file', str(cfg_file), '--limit', '3', '--num_sweeps', '2', '--workers', '2',
                                 '--quiet'])
    assert sorted(report['written']) == sorted(setup['report']['frames'])
    for frame_id in report['frames']:
        ours = feature_store.load_frame_features(report['feature_root'] / f'{frame_id}.npz')
        reference = feature_store.load_frame_features(setup['report']['feature_root'] / f'{frame_id}.npz')
        np.testing.assert_array_equal(ours[0], reference[0])
        np.testing.assert_array_equal(ours[1], reference[1])


def test_rerun_with_other_teacher_config_or_sweeps_names_the_manifest(setup):
    manifest = re.escape(str(setup['report']['feature_root'] / 'manifest.json'))
    other_seed = write_cfg(setup['root'] / 'seed1.yaml', setup['data_path'], setup['version'], SEED=1)
    with pytest.raises(feature_store.FeatureStoreError, match=manifest + '.*SEED'):
        setup['tool'].main(['--cfg_file', str(other_seed), '--limit', '1', '--num_sweeps', '2', '--quiet'])
    with pytest.raises(feature_store.FeatureStoreError, match=manifest + '.*num_sweeps: stored 2, requested 3'):
        setup['tool'].main(['--cfg_file', str(setup['cfg_file']), '--limit', '1', '--num_sweeps', '3', '--quiet'])


def test_missing_label_file_is_named(synthetic_nuscenes_data_path, synthetic_nuscenes_version, tmp_path):
    data_path = private_data_path(tmp_path / 'data', synthetic_nuscenes_data_path, synthetic_nuscenes_version,
                                  skip=('lidarseg_sweeps',))
    cfg_file = write_cfg(tmp_path / 'cfg.yaml', data_path, synthetic_nuscenes_version)
    with pytest.raises(FileNotFoundError, match=r'label file .*lidarseg_sweeps/v1\.0-mini/\w+_lidarseg\.bin of '
                                                r'sweeps/LIDAR_TOP/'):
        load_tool().main(['--cfg_file', str(cfg_file), '--split', 'val', '--limit', '1', '--num_sweeps', '1',
                          '--quiet'])
