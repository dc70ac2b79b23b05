"""Waymo conversion (create_waymo_infos) and GT database on synthetic tfrecords, without TensorFlow.

References are independent of the conversion code: labels come straight from the frame reader, velocities are
rotated here with the pose, box membership is recomputed in numpy, frame strides are recomputed from the infos.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pcdet.datasets.synthetic.waymo_writer import SyntheticWaymoConfig, generate_waymo
from pcdet.datasets.waymo import waymo_dataset, waymo_utils
from pcdet.datasets.waymo.frame_reader import read_frames
from pcdet.datasets.waymo.gt_database import DB_METADATA_KEY, FRAME_STRIDE

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG_FILE = str(REPO_ROOT / 'tools/cfgs/dataset_configs/waymo_dataset.yaml')
TAG = 'waymo_processed_data_v0_5_0'
# 4 segments (3 train, 1 val) x 4 frames, small range images: ~2 s to write, ~2 s to convert.
SMALL = dict(num_sequences=4, frames_per_sequence=4, top_columns=256, top_pose_sectors=4, side_beams=16,
             side_columns=64, num_objects=16, seed=0)


def link_raw(src_root, dst_root, names=None):
    """A DATA_PATH holding links to `src_root/raw_data/*` (or to the listed names) and a copy of ImageSets."""
    (dst_root / 'raw_data').mkdir(parents=True)
    for path in sorted((src_root / 'raw_data').glob('*.tfrecord')):
        if names is None or path.name in names:
            (dst_root / 'raw_data' / path.name).symlink_to(path)
    shutil.copytree(src_root / 'ImageSets', dst_root / 'ImageSets')
    return dst_root


def convert(data_path, *extra):
    return waymo_dataset.main(['--func', 'create_waymo_infos', '--cfg_file', CFG_FILE, '--data_path', str(data_path),
                               '--quiet', *extra])


@pytest.fixture(scope='module')
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('waymo_synthetic')
    generate_waymo(SyntheticWaymoConfig(root=str(root), **SMALL), progress=False)
    return root


@pytest.fixture(scope='module')
def converted(synthetic_root, tmp_path_factory):
    """(data_path, report) after one create_waymo_infos run through the CLI entry point with 2 workers."""
    data_path = link_raw(synthetic_root, tmp_path_factory.mktemp('waymo_data'))
    report = convert(data_path, '--workers', '2')
    return data_path, report


def split_names(data_path, split):
    return [waymo_utils.sequence_stem(n) for n in (data_path / 'ImageSets' / f'{split}.txt').read_text().split()]


def load(path):
    return pickle.loads(Path(path).read_bytes())


def test_outputs_layout_and_report(converted):
    data_path, report = converted
    train, val = split_names(data_path, 'train'), split_names(data_path, 'val')
    assert len(train) == 3 and len(val) == 1
    assert sorted(report['splits']['train']['converted']) == sorted(train)
    assert report['splits']['val']['converted'] == val
    for name in train + val:
        folder = data_path / TAG / name
        assert sorted(p.name for p in folder.iterdir()) == [f'{i:04d}.npy' for i in range(4)] + [f'{name}.pkl']
    infos_train = load(data_path / f'{TAG}_infos_train.pkl')
    assert [info['frame_id'] for info in infos_train] == [f'{n}_{i:03d}' for n in train for i in range(4)]
    assert len(load(data_path / f'{TAG}_infos_val.pkl')) == 4
    assert report['gt_database'] == data_path / f'{TAG}_waymo_dbinfos_train_sampled_1.pkl'
    assert not list(data_path.glob('.*')) and not list((data_path / TAG).rglob('.*'))  # no temporaries left
    assert not {'tensorflow', 'waymo_open_dataset'} & set(sys.modules)


def test_infos_match_the_reader(converted, synthetic_root):
    data_path, _ = converted
    for name in split_names(data_path, 'train') + split_names(data_path, 'val'):
        infos = load(data_path / TAG / name / f'{name}.pkl')
        frames = list(read_frames(synthetic_root / 'raw_data' / f'{name}.tfrecord', with_points=False))
        assert len(infos) == len(frames)
        for info, frame in zip(infos, frames):
            assert info['info_schema'] == waymo_utils.INFO_SCHEMA
            assert info['point_cloud'] == {'num_features': 5, 'lidar_sequence': name,
                                           'sample_idx': frame['frame_index']}
            assert info['frame_id'] == f'{name}_{frame["frame_index"]:03d}'
            assert info['metadata'] == {'context_name': frame['context_name'],
                                        'timestamp_micros': frame['timestamp_micros']}
            assert info['pose'].dtype == np.float32 and np.allclose(info['pose'], frame['pose'], atol=1e-5)
            assert list(info['image'].values()) == list(frame['image_shapes'].values()) and len(info['image']) == 5
            labels, annos = frame['labels'], info['annos']
            keep = labels['name'] != 'unknown'
            assert keep.any()
            np.testing.assert_array_equal(annos['name'], labels['name'][keep])
            np.testing.assert_array_equal(annos['gt_boxes_lidar'][:, :7], labels['box'][keep])
            np.testing.assert_array_equal(annos['num_points_in_gt'], labels['num_lidar_points_in_box'][keep])
            np.testing.assert_array_equal(annos['difficulty'], labels['difficulty'][keep])
            np.testing.assert_array_equal(annos['obj_ids'], labels['id'][keep])
            np.testing.assert_array_equal(annos['speed_global'], labels['speed'][keep, :2])
            # velocity in the vehicle frame: v_vehicle = R^T v_global (z speed ignored, as upstream)
            speed = np.concatenate([labels['speed'][keep, :2], np.zeros((keep.sum(), 1))], axis=1)
            expected = (frame['pose'][:3, :3].T @ speed.T).T[:, :2]
            np.testing.assert_allclose(annos['gt_boxes_lidar'][:, 7:9], expected, atol=1e-9)
            assert annos['gt_boxes_lidar'].shape == (keep.sum(), 9)
            assert set(annos) == set(waymo_utils.ANNO_KEYS)


def test_point_files_equal_the_reader_points(converted, synthetic_root):
    data_path, _ = converted
    name = split_names(data_path, 'val')[0]
    infos = load(data_path / TAG / name / f'{name}.pkl')
    for info, frame in zip(infos, read_frames(synthetic_root / 'raw_data' / f'{name}.tfrecord')):
        points = np.load(data_path / TAG / name / f'{info["point_cloud"]["sample_idx"]:04d}.npy')
        assert points.dtype == np.float32 and points.shape[1] == 6
        np.testing.assert_array_equal(points, frame['points'])
        assert info['num_points_of_each_lidar'] == frame['num_points_of_each_lidar']
        assert sum(info['num_points_of_each_lidar']) == len(points) and len(info['num_points_of_each_lidar']) == 5


def test_rerun_converts_only_missing_or_partial_sequences(converted, tmp_path):
    src, _ = converted
    data_path = tmp_path / 'data'
    shutil.copytree(src, data_path, symlinks=True)  # copy2 keeps the mtimes
    train = split_names(data_path, 'train')
    deleted, partial, kept = train[0], train[1], train[2]
    shutil.rmtree(data_path / TAG / deleted)
    (data_path / TAG / partial / f'{partial}.pkl').unlink()  # killed before its pkl was written ...
    (data_path / TAG / partial / '0002.npy').unlink()
    (data_path / TAG / partial / '.0003.npy.abcd.tmp').write_bytes(b'partial')  # ... with a temporary left behind
    before = {p: p.stat().st_mtime_ns for p in (data_path / TAG / kept).iterdir()}

    report = waymo_dataset.create_waymo_infos(waymo_dataset.load_dataset_cfg(CFG_FILE), data_path, workers=1,
                                              progress=False)
    assert sorted(report['splits']['train']['converted']) == sorted([deleted, partial])
    assert report['splits']['train']['skipped'] == [kept]
    assert report['splits']['val']['skipped'] == split_names(data_path, 'val')
    assert {p: p.stat().st_mtime_ns for p in (data_path / TAG / kept).iterdir()} == before
    assert sorted(p.name for p in (data_path / TAG / partial).iterdir()) == \
        [f'{i:04d}.npy' for i in range(4)] + [f'{partial}.pkl']
    for name in (deleted, partial):
        np.testing.assert_array_equal(np.load(data_path / TAG / name / '0002.npy'),
                                      np.load(src / TAG / name / '0002.npy'))
        assert [i['frame_id'] for i in load(data_path / TAG / name / f'{name}.pkl')] == \
            [i['frame_id'] for i in load(src / TAG / name / f'{name}.pkl')]
    assert len(load(data_path / f'{TAG}_infos_train.pkl')) == 12

    # a point file lost after completion, or a pkl of another schema, also make the sequence convert again
    (data_path / TAG / kept / '0001.npy').unlink()
    infos = load(data_path / TAG / deleted / f'{deleted}.pkl')
    for info in infos:
        info['info_schema'] = 'pcdet.waymo.det/0'
    (data_path / TAG / deleted / f'{deleted}.pkl').write_bytes(pickle.dumps(infos))
    result = waymo_dataset.convert_split(data_path / TAG,
                                         sorted((data_path / 'raw_data').glob('*.tfrecord')), progress=False)
    assert sorted(result['converted']) == sorted([kept, deleted]) and len(result['skipped']) == 2


def test_gt_database_objects_lie_in_their_boxes_and_follow_the_frame_strides(converted):
    data_path, _ = converted
    infos = load(data_path / f'{TAG}_infos_train.pkl')
    db = load(data_path / f'{TAG}_waymo_dbinfos_train_sampled_1.pkl')
    metadata = db.pop(DB_METADATA_KEY)
    assert metadata['points_tanh_dim'] == [3] and metadata['nlz_points_kept'] is True
    assert metadata['num_point_features'] == 5 and metadata['frame_stride'] == {'Vehicle': 4, 'Pedestrian': 2}
    global_data = np.load(data_path / f'{TAG}_gt_database_train_sampled_1_global.npy', mmap_mode='r')
    assert global_data.dtype == np.float32 and global_data.shape[1] == 5
    index_of = {(i['point_cloud']['lidar_sequence'], i['point_cloud']['sample_idx']): k for k, i in enumerate(infos)}

    expected = {}  # (k, name) -> number of objects the strides allow in frame k
    for k, info in enumerate(infos):
        for name in info['annos']['name']:
            if name in ('Vehicle', 'Pedestrian', 'Cyclist') and k % FRAME_STRIDE.get(name, 1) == 0:
                expected[(k, name)] = expected.get((k, name), 0) + 1
    got, offset = {}, 0
    for name, entries in db.items():
        for entry in entries:
            k = index_of[(entry['sequence_name'], entry['sample_idx'])]
            got[(k, name)] = got.get((k, name), 0) + 1
            points = np.fromfile(data_path / entry['path'], dtype=np.float32).reshape(-1, 5)
            assert points.shape[0] == entry['num_points_in_gt']
            start, end = entry['global_data_offset']
            np.testing.assert_array_equal(global_data[start:end], points)
            offset = max(offset, end)
            box = entry['box3d_lidar']
            assert box.shape == (9,) and entry['name'] == name
            assert entry['path'].startswith(f'{TAG}_gt_database_train_sampled_1/{entry["sequence_name"]}_'
                                            f'{entry["sample_idx"]:04d}_{name}_')
            cos, sin = np.cos(box[6]), np.sin(box[6])
            local = np.stack([points[:, 0] * cos + points[:, 1] * sin, -points[:, 0] * sin + points[:, 1] * cos,
                              points[:, 2]], axis=1)
            assert np.all(np.abs(local) <= box[3:6] / 2 + 1e-3), entry['path']
            # every scene point in the box went to the object (no overlapping boxes in the synthetic scenes)
            scene = waymo_utils.load_points(data_path / TAG / entry['sequence_name'] / f'{entry["sample_idx"]:04d}.npy')
            rel = scene[:, :3].astype(np.float64) - box[:3]
            inside = ((np.abs(rel[:, 0] * cos + rel[:, 1] * sin) < box[3] / 2)
                      & (np.abs(-rel[:, 0] * sin + rel[:, 1] * cos) < box[4] / 2) & (np.abs(rel[:, 2]) <= box[5] / 2))
            assert abs(int(inside.sum()) - entry['num_points_in_gt']) <= 1
            # features come from the scene as loaded (tanh on intensity per the default config)
            assert np.isin(points[:, 3], scene[inside, 3]).all() and np.isin(points[:, 4], scene[inside, 4]).all()
            if name == 'Vehicle':
                assert k % 4 == 0
            if name == 'Pedestrian':
                assert k % 2 == 0
    assert got == expected and offset == global_data.shape[0]
    assert {name for name, entries in db.items() if entries} == {'Vehicle', 'Pedestrian', 'Cyclist'}
    assert sum(e['num_points_in_gt'] for entries in db.values() for e in entries) > 0


def test_gt_database_build_is_atomic(converted, tmp_path, monkeypatch):
    src, _ = converted
    data_path = tmp_path / 'data'
    shutil.copytree(src, data_path, symlinks=True)
    pkl = data_path / f'{TAG}_waymo_dbinfos_train_sampled_1.pkl'
    before = pkl.read_bytes()
    calls = {'n': 0}
    real = waymo_dataset.load_points

    def failing(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(waymo_dataset, 'load_points', failing)
    cfg = waymo_dataset.load_dataset_cfg(CFG_FILE)
    with pytest.raises(KeyboardInterrupt):
        waymo_dataset.create_waymo_gt_database(cfg, data_path, progress=False)
    assert pkl.read_bytes() == before and not list(data_path.glob('.*'))
    assert (data_path / f'{TAG}_gt_database_train_sampled_1_global.npy').stat().st_size > 128


def test_missing_and_misnamed_tfrecords_are_listed(synthetic_root, tmp_path):
    names = (synthetic_root / 'ImageSets' / 'train.txt').read_text().split()
    val_names = (synthetic_root / 'ImageSets' / 'val.txt').read_text().split()
    data_path = link_raw(synthetic_root, tmp_path / 'data', names=names[1:] + val_names)
    renamed = names[1].replace('_with_camera_labels', '_lidar_only')  # misnamed copy of a listed file
    (data_path / 'raw_data' / names[1]).rename(data_path / 'raw_data' / renamed)
    with pytest.raises(waymo_utils.MissingSequenceError) as err:
        convert(data_path)
    message = str(err.value)
    assert names[0] in message and names[1] in message and 'ImageSets/train.txt' in message
    assert f'misnamed? found {renamed}' in message and '2 of 3' in message and '--skip_missing' in message
    assert not (data_path / TAG).exists()  # nothing converted before the check

    report = convert(data_path, '--skip_missing')  # converts what is there
    assert report['splits']['train']['converted'] == [waymo_utils.sequence_stem(names[2])]
    assert report['num_frames'] == {'train': 4, 'val': 4}

    (data_path / 'ImageSets' / 'val.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'ImageSets/val\.txt'):
        convert(data_path, '--skip_missing')


def test_upstream_name_fallbacks(synthetic_root, tmp_path):
    names = (synthetic_root / 'ImageSets' / 'val.txt').read_text().split()
    data_path = tmp_path / 'data'
    (data_path / 'raw_data').mkdir(parents=True)
    (data_path / 'ImageSets').mkdir()
    stem = waymo_utils.sequence_stem(names[0])
    (data_path / 'raw_data' / f'validation_{names[0]}').symlink_to(synthetic_root / 'raw_data' / names[0])
    (data_path / 'ImageSets' / 'val.txt').write_text(names[0] + '\n')
    found = waymo_utils.resolve_sequence_files(data_path / 'raw_data', [names[0]], 'val.txt')
    assert found == [(names[0], data_path / 'raw_data' / f'validation_{names[0]}')]
    (data_path / 'raw_data' / f'validation_{names[0]}').rename(
        data_path / 'raw_data' / names[0].replace('_with_camera_labels', ''))
    assert waymo_utils.find_sequence_file(data_path / 'raw_data', names[0]).name == \
        names[0].replace('_with_camera_labels', '')
    assert waymo_utils.candidate_sequence_names(names[0])[:2] == [stem, f'training_{stem}']


RSS_SCRIPT = textwrap.dedent('''
    import json, resource, sys
    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key + ':'):
                return int(line.split()[1])
    from pcdet.datasets.waymo import waymo_dataset
    base = status('VmRSS')
    report = waymo_dataset.main(['--cfg_file', sys.argv[2], '--data_path', sys.argv[1], '--workers', '1', '--quiet'])
    print(json.dumps({'base_kb': base, 'peak_kb': status('VmHWM'),
                      'ru_maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      'frames': report['num_frames']}))
''')


def test_peak_memory_stays_flat_as_sequences_grow(tmp_path):
    """Peak RSS of the whole conversion (points, infos, GT database) for N and 3N sequences, in a subprocess.

    The sequences are links to one WOD-like segment (~87k points/frame, 6 frames): holding all points of 3N
    sequences would add ~50 MB over N; streaming keeps the growth to the (small) infos."""
    src = tmp_path / 'synthetic'
    generate_waymo(SyntheticWaymoConfig(root=str(src), num_sequences=2, frames_per_sequence=6, num_objects=16),
                   progress=False)
    segment = sorted((src / 'raw_data').glob('*.tfrecord'))[0]
    results = {}
    for num in (2, 6):
        data_path = tmp_path / f'data_{num}'
        (data_path / 'raw_data').mkdir(parents=True)
        (data_path / 'ImageSets').mkdir()
        names = [f'segment-{i:020d}_0000_000_0020_000_with_camera_labels.tfrecord' for i in range(num + 1)]
        for name in names:
            (data_path / 'raw_data' / name).symlink_to(segment)
        (data_path / 'ImageSets' / 'train.txt').write_text('\n'.join(names[:num]) + '\n')
        (data_path / 'ImageSets' / 'val.txt').write_text(names[num] + '\n')
        out = subprocess.run([sys.executable, '-c', RSS_SCRIPT, str(data_path), CFG_FILE], capture_output=True,
                             text=True, cwd=REPO_ROOT, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)}, check=True)
        results[num] = json.loads(out.stdout.strip().splitlines()[-1])
        assert results[num]['frames'] == {'train': 6 * num, 'val': 6}
    small, large = results[2], results[6]
    delta_small = (small['peak_kb'] - small['base_kb']) / 1024
    delta_large = (large['peak_kb'] - large['base_kb']) / 1024
    print(f'\nconversion peak RSS: N=2 sequences: {small["peak_kb"] / 1024:.0f} MB (+{delta_small:.0f} MB over the '
          f'{small["base_kb"] / 1024:.0f} MB after imports); N=6: {large["peak_kb"] / 1024:.0f} MB '
          f'(+{delta_large:.0f} MB over {large["base_kb"] / 1024:.0f} MB)')
    assert delta_large <= 1.2 * delta_small + 8, results
    # stricter: measured growth ~1 MB; a converter that kept every frame's points grows by ~50 MB here
    assert delta_large - delta_small < 16, results
    assert large['peak_kb'] <= 1.2 * small['peak_kb'] + 8 * 1024, results


def test_frames_without_labels_keep_array_shapes():
    from pcdet.datasets.waymo.frame_reader import parse_labels
    annos = waymo_utils.generate_labels(parse_labels([]), np.eye(4))
    assert annos['gt_boxes_lidar'].shape == (0, 9) and annos['dimensions'].shape == (0, 3)
    assert annos['speed_global'].shape == (0, 2) and annos['name'].shape == (0,)
    from pcdet.datasets.waymo.gt_database import frame_objects
    names, _, boxes = frame_objects({'name': np.array([]), 'difficulty': np.array([]),
                                     'gt_boxes_lidar': np.array([])}, 0)  # upstream's empty annos
    assert len(names) == 0 and boxes.shape == (0, 9)


def test_update_info_only_and_failing_sequences(converted, tmp_path):
    src, _ = converted
    data_path = tmp_path / 'data'
    shutil.copytree(src, data_path, symlinks=True)
    name = split_names(data_path, 'val')[0]
    record = data_path / 'raw_data' / f'{name}.tfrecord'
    points_before = {p.name: p.stat().st_mtime_ns for p in (data_path / TAG / name).glob('*.npy')}
    result = waymo_dataset.convert_split(data_path / TAG, [record], update_info_only=True,
                                         progress=False)
    assert result['updated'] == [name]
    assert {p.name: p.stat().st_mtime_ns for p in (data_path / TAG / name).glob('*.npy')} == points_before
    old, new = load(src / TAG / name / f'{name}.pkl'), load(data_path / TAG / name / f'{name}.pkl')
    assert [i['num_points_of_each_lidar'] for i in new] == [i['num_points_of_each_lidar'] for i in old]
    np.testing.assert_array_equal(new[2]['annos']['gt_boxes_lidar'], old[2]['annos']['gt_boxes_lidar'])

    # a truncated segment fails alone: the other one is converted, then the run raises naming the bad one
    bad = data_path / 'raw_data' / 'segment-11111111111111111111_0000_000_0020_000_with_camera_labels.tfrecord'
    bad.write_bytes(record.read_bytes()[:5000])
    shutil.rmtree(data_path / TAG / name)
    with pytest.raises(RuntimeError, match='1 sequence') as err:
        waymo_dataset.convert_split(data_path / TAG, [bad, record], workers=2,
                                    progress=False)
    assert waymo_utils.sequence_stem(bad.name) in str(err.value)
    assert waymo_utils.sequence_status(data_path / TAG, name)[0] == 'complete'
    assert not (data_path / TAG / waymo_utils.sequence_stem(bad.name) / f'{waymo_utils.sequence_stem(bad.name)}.pkl'
                ).exists()
