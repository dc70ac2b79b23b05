"""Per-frame teacher feature files and the manifest: round trip, part selection, stale / truncated / missing files,
teacher-config mismatches (every error names the file)."""
import re

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.teachers import feature_store as fs


def make_parts(sizes, width=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, width)).astype(np.float32) for size in sizes]


def test_round_trip_float16(tmp_path):
    parts = make_parts([5, 0, 3, 4])
    path = fs.feature_path(tmp_path, 'teacher_features/x', 'frame.pcd')
    assert path == tmp_path / 'teacher_features/x' / 'frame.pcd.npz'
    size = fs.save_frame_features(path, parts)
    assert size == path.stat().st_size > 0
    features, part_sizes = fs.load_frame_features(path)
    assert features.dtype == np.float16 and part_sizes.dtype == np.int64
    assert part_sizes.tolist() == [5, 0, 3, 4]
    np.testing.assert_array_equal(features, np.concatenate(parts).astype(np.float16))
    assert fs.feature_file_problem(path) is None
    assert not list(path.parent.glob('.*.tmp'))  # atomic write left no temporary


def test_select_and_join_parts(tmp_path):
    parts = make_parts([5, 2, 3, 4])
    path = tmp_path / 'f.npz'
    fs.save_frame_features(path, parts)
    features, part_sizes = fs.load_frame_features(path)
    chosen = [0, 3, 1]
    expected = np.concatenate([parts[i] for i in chosen]).astype(np.float16)
    np.testing.assert_array_equal(fs.select_parts(features, part_sizes, chosen), expected)
    joined = fs.join_part_features(path, features, part_sizes, chosen, [5, 4, 2], ['key', 's2', 's0'])
    assert joined.dtype == np.float32
    np.testing.assert_array_equal(joined, expected.astype(np.float32))
    with pytest.raises(fs.FeatureStoreError, match=re.escape(f'{path} is stale: part 3 (s2) has 4 stored rows but 5')):
        fs.join_part_features(path, features, part_sizes, chosen, [5, 5, 2], ['key', 's2', 's0'])
    with pytest.raises(fs.FeatureStoreError, match='part 7'):
        fs.join_part_features(path, features, part_sizes, [7], [1], ['s6'])


def test_missing_truncated_and_inconsistent_files(tmp_path):
    missing = tmp_path / 'missing.npz'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        fs.load_frame_features(missing)
    assert fs.feature_file_problem(missing) == 'missing'

    good = tmp_path / 'good.npz'
    fs.save_frame_features(good, make_parts([300, 200], width=16))
    truncated = tmp_path / 'truncated.npz'
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    assert 'unreadable' in fs.feature_file_problem(truncated)
    with pytest.raises(fs.FeatureStoreError, match=re.escape(str(truncated))):
        fs.load_frame_features(truncated)

    inconsistent = tmp_path / 'inconsistent.npz'
    np.savez(inconsistent, features=np.zeros((4, 3), np.float16), part_sizes=np.array([2, 1]))
    assert 'part_sizes' in fs.feature_file_problem(inconsistent)
    with pytest.raises(fs.FeatureStoreError, match=re.escape(str(inconsistent))):
        fs.load_frame_features(inconsistent)
    wrong_dtype = tmp_path / 'float32.npz'
    np.savez(wrong_dtype, features=np.zeros((3, 3), np.float32), part_sizes=np.array([3]))
    assert fs.feature_file_problem(wrong_dtype) is not None


def test_nan_rows_fail_naming_the_file(tmp_path):
    """A stored NaN / inf row is an error naming the file (it would otherwise reach the voxel targets); writing one,
    e.g. a value beyond float16's range, is refused."""
    features = np.ones((5, 3), np.float16)
    features[3, 1] = np.nan
    features[4, 0] = np.inf
    path = tmp_path / 'nan.npz'
    np.savez(path, features=features, part_sizes=np.array([5]))
    with pytest.raises(fs.FeatureStoreError, match=re.escape(f'{path} has 2 rows with NaN / inf values (rows [3, 4])')):
        fs.load_frame_features(path)
    too_large = np.ones((2, 3), np.float32)
    too_large[1, 2] = 1e6
    with pytest.raises(ValueError, match=r'1 feature rows are NaN / inf in float16 \(rows \[1\]'):
        fs.save_frame_features(tmp_path / 'big.npz', [too_large])
    assert not (tmp_path / 'big.npz').exists()


def teacher_cfg(**overrides):
    cfg = EasyDict({'NAME': 'synthetic_semantic', 'NUM_FEATURES': 8, 'SEED': 0, 'ENABLED': True,
                    'FEATURE_DIR': 'teacher_features/a'})
    cfg.update(overrides)
    return cfg


def test_manifest_checks(tmp_path):
    folder = tmp_path / 'features'
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / 'manifest.json'))):
        fs.check_manifest(folder, teacher_cfg(), 'NuScenesDataset')
    fs.write_manifest(folder, fs.build_manifest(teacher_cfg(), 9, 'NuScenesDataset'))
    manifest = fs.check_manifest(folder, teacher_cfg(FEATURE_DIR='elsewhere', ENABLED=True), 'NuScenesDataset', 9)
    assert manifest['num_sweeps'] == 9 and manifest['teacher'] == 'synthetic_semantic'
    assert manifest['teacher_config'] == {'NAME': 'synthetic_semantic', 'NUM_FEATURES': 8, 'SEED': 0}
    manifest = re.escape(str(folder / 'manifest.json'))
    with pytest.raises(fs.FeatureStoreError, match=manifest + '.*another teacher config.*SEED'):
        fs.check_manifest(folder, teacher_cfg(SEED=1), 'NuScenesDataset')
    with pytest.raises(fs.FeatureStoreError, match="teacher: stored 'synthetic_semantic', config 'seal_minkunet'"):
        fs.check_manifest(folder, teacher_cfg(NAME='seal_minkunet'), 'NuScenesDataset')
    with pytest.raises(fs.FeatureStoreError, match='dataset'):
        fs.check_manifest(folder, teacher_cfg(), 'WaymoDataset')
    with pytest.raises(fs.FeatureStoreError, match=r'only 9 sweeps.*--num_sweeps 10'):
        fs.check_manifest(folder, teacher_cfg(), 'NuScenesDataset', min_sweeps=10)
    (folder / 'manifest.json').write_text('{not json')
    with pytest.raises(fs.FeatureStoreError, match=re.escape(str(folder / 'manifest.json'))):
        fs.read_manifest(folder)


def test_teacher_features_cfg():
    assert fs.teacher_features_cfg(EasyDict({})) is None
    assert fs.teacher_features_cfg(EasyDict({'TEACHER_FEATURES': teacher_cfg(ENABLED=False)})) is None
    cfg = fs.teacher_features_cfg(EasyDict({'TEACHER_FEATURES': teacher_cfg()}))
    assert cfg.NAME == 'synthetic_semantic'
    assert fs.feature_root('/data', cfg) == fs.Path('/data/teacher_features/a')
    assert fs.feature_dir_of({'NAME': 'x'}) == 'teacher_features/x'
    with pytest.raises(ConfigError, match='NUM_FEATURES'):
        fs.teacher_features_cfg(EasyDict({'TEACHER_FEATURES': {'NAME': 'synthetic_semantic'}}))
