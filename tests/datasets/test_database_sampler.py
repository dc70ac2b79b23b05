"""GT sampling against a small fabricated database written to tmp_path."""
import pickle

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.datasets.augmentor import DataBaseSampler
from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_bev_iou_cpu
from pcdet.utils import box_utils

NUM_FEATURES = 5
CLASSES = ['car', 'pedestrian']


def random_boxes(rng, num, dims):
    centres = rng.uniform([-20, -20, -0.5], [20, 20, 0.5], size=(num, 3))
    sizes = np.tile(dims, (num, 1)) * rng.uniform(0.8, 1.2, size=(num, 1))
    return np.concatenate([centres, sizes, rng.uniform(-np.pi, np.pi, (num, 1)), rng.normal(size=(num, 2))], axis=1)


def write_database(root, num_per_class=30, seed=0, global_file=False):
    """Writes gt_database/*.bin (or one global .npy) and dbinfos.pkl; returns the infos."""
    rng = np.random.default_rng(seed)
    (root / 'gt_database').mkdir(parents=True, exist_ok=True)
    infos, all_points, offset = {}, [], 0
    for name, dims in (('car', [4.2, 1.9, 1.6]), ('pedestrian', [0.7, 0.7, 1.8]), ('ignore', [1, 1, 1])):
        infos[name] = []
        for index, box in enumerate(random_boxes(rng, num_per_class, dims)):
            num_points = int(rng.integers(1, 40))
            points = np.concatenate([rng.uniform(-0.4, 0.4, (num_points, 3)) * box[3:6],
                                     rng.uniform(size=(num_points, NUM_FEATURES - 3))], axis=1).astype(np.float32)
            path = f'gt_database/{name}_{index}.bin'
            points.tofile(root / path)
            all_points.append(points)
            infos[name].append({'name': name, 'path': path, 'gt_idx': index, 'box3d_lidar': box.astype(np.float32),
                                'num_points_in_gt': num_points, 'difficulty': index % 3 - 1,
                                'global_data_offset': [offset, offset + num_points]})
            offset += num_points
    with open(root / 'dbinfos.pkl', 'wb') as handle:
        pickle.dump(infos, handle)
    if global_file:
        np.save(root / 'global_db.npy', np.concatenate(all_points))
    return infos


def sampler_config(**overrides):
    config = {'NAME': 'gt_sampling', 'DB_INFO_PATH': ['dbinfos.pkl'], 'PREPARE': {},
              'SAMPLE_GROUPS': ['car:6', 'pedestrian:4'], 'NUM_POINT_FEATURES': NUM_FEATURES,
              'REMOVE_EXTRA_WIDTH': [0.2, 0.2, 0.0], 'LIMIT_WHOLE_SCENE': False}
    config.update(overrides)
    return EasyDict(config)


def scene(seed=1, names=('car', 'car', 'car', 'ignore')):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, len(names), [4.2, 1.9, 1.6])
    points = np.concatenate([rng.uniform([-25, -25, -2], [25, 25, 2], (3000, 3)),
                             rng.uniform(size=(3000, NUM_FEATURES - 3))], axis=1).astype(np.float32)
    names = np.array(names)
    return {'points': points, 'gt_boxes': boxes, 'gt_names': names, 'gt_boxes_mask': names != 'ignore'}


def test_sampled_boxes_never_collide_and_points_add_up(tmp_path):
    infos = write_database(tmp_path)
    sampler = DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    np.random.seed(0)
    rejected_somewhere = False
    for call in range(8):
        data = scene(seed=call)
        num_scene_boxes = len(data['gt_boxes'])
        out = sampler(dict(data))
        sampled = out['gt_boxes'][num_scene_boxes:]
        if len(sampled) < 10:
            rejected_somewhere = True
        if len(sampled) == 0:
            continue
        assert boxes_bev_iou_cpu(sampled[:, :7], data['gt_boxes'][:, :7]).max() == 0
        among = boxes_bev_iou_cpu(sampled[:, :7], sampled[:, :7])
        np.fill_diagonal(among, 0)
        assert among.max() == 0
        assert out['gt_boxes_mask'].tolist() == data['gt_boxes_mask'].tolist() + [True] * len(sampled)
        assert len(out['gt_names']) == len(out['gt_boxes'])
        # Point bookkeeping: object points are prepended, scene points inside the enlarged boxes removed.
        by_key = {(n, tuple(np.round(i['box3d_lidar'], 5))): i for n in infos for i in infos[n]}
        used = [by_key[(name, tuple(np.round(box.astype(np.float32), 5)))]
                for name, box in zip(out['gt_names'][num_scene_boxes:], sampled)]
        num_object_points = sum(i['num_points_in_gt'] for i in used)
        kept_scene = box_utils.remove_points_in_boxes3d(
            data['points'], box_utils.enlarge_box3d(sampled[:, :7], extra_width=[0.2, 0.2, 0.0]))
        assert len(out['points']) == num_object_points + len(kept_scene)
        np.testing.assert_array_equal(out['points'][num_object_points:], kept_scene)
        first = np.fromfile(tmp_path / used[0]['path'], dtype=np.float32).reshape(-1, NUM_FEATURES)
        first[:, :3] += used[0]['box3d_lidar'][:3]
        np.testing.assert_allclose(out['points'][:len(first)], first, rtol=1e-6)
    assert rejected_somewhere  # the collision test was exercised


def test_limit_whole_scene_counts_existing_objects(tmp_path):
    write_database(tmp_path)
    requested = []

    def record_requests(sampler):
        original = sampler.sample_with_fixed_number
        sampler.sample_with_fixed_number = lambda name, num: requested.append((name, num)) or original(name, num)
        return sampler

    limited = record_requests(DataBaseSampler(tmp_path, sampler_config(LIMIT_WHOLE_SCENE=True), CLASSES))
    unlimited = record_requests(DataBaseSampler(tmp_path, sampler_config(), CLASSES))
    np.random.seed(0)
    three_cars = scene(names=('car', 'car', 'car', 'pedestrian'))
    out = limited(dict(three_cars))
    assert requested == [('car', 3), ('pedestrian', 3)]
    assert np.sum(out['gt_names'] == 'car') <= 6
    requested.clear()
    limited(scene(names=('car',) * 6 + ('pedestrian',) * 4))
    assert requested == []  # the scene already has enough of both classes
    unlimited(dict(three_cars))
    assert requested == [('car', 6), ('pedestrian', 4)]


def test_prepare_filters(tmp_path):
    infos = write_database(tmp_path)
    config = sampler_config(PREPARE={'filter_by_min_points': ['car:20', 'pedestrian:10'],
                                     'filter_by_difficulty': [-1]})
    sampler = DataBaseSampler(tmp_path, config, CLASSES)
    expected_car = [i for i in infos['car'] if i['num_points_in_gt'] >= 20 and i['difficulty'] != -1]
    assert [i['gt_idx'] for i in sampler.db_infos['car']] == [i['gt_idx'] for i in expected_car]
    assert all(i['num_points_in_gt'] >= 10 for i in sampler.db_infos['pedestrian'])
    assert 'ignore' not in sampler.db_infos
    with pytest.raises(ConfigError, match='filter_by_size'):
        DataBaseSampler(tmp_path, sampler_config(PREPARE={'filter_by_size': 1}), CLASSES)


def test_sampling_is_a_function_of_the_numpy_rng_state_only(tmp_path):
    """A resumed run (fresh sampler) or another DataLoader worker pastes the same objects for the same seed as a
    sampler that already served many scenes: no per-class pointer or shuffle order is kept."""
    write_database(tmp_path, num_per_class=7)
    used = DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    np.random.seed(11)
    for _ in range(5):
        used(scene())
    np.random.seed(3)
    after_use = [i['gt_idx'] for i in used.sample_with_fixed_number('car', 4)]
    fresh = DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    np.random.seed(3)
    assert after_use == [i['gt_idx'] for i in fresh.sample_with_fixed_number('car', 4)]


def test_sampling_draws_distinct_objects_uniformly(tmp_path):
    write_database(tmp_path, num_per_class=7)
    sampler = DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    np.random.seed(3)
    counts = np.zeros(7)
    for _ in range(700):
        drawn = [i['gt_idx'] for i in sampler.sample_with_fixed_number('car', 4)]
        assert len(drawn) == 4 and len(set(drawn)) == 4
        counts[drawn] += 1
    # each object is in a draw of 4 out of 7 with p = 4/7: 400 expected, binomial sd ~13
    assert np.all(np.abs(counts - 400) < 60), counts
    assert sorted(i['gt_idx'] for i in sampler.sample_with_fixed_number('car', 20)) == list(range(7))  # capped
    assert sampler.sample_with_fixed_number('car', 0) == []


@pytest.mark.parametrize('content, found', [([{'name': 'car'}], 'list'), ({'car': {'name': 'car'}}, 'dict'),
                                            ({'car': ['car_0.bin']}, 'list of str')])
def test_database_pickle_of_the_wrong_type_names_the_file(tmp_path, content, found):
    with open(tmp_path / 'dbinfos.pkl', 'wb') as handle:
        pickle.dump(content, handle)
    with pytest.raises(TypeError, match=rf'dbinfos\.pkl.* {found}, expected a dict of class name -> list'):
        DataBaseSampler(tmp_path, sampler_config(), CLASSES)


def test_wrongly_sized_bin_names_the_file(tmp_path):
    infos = write_database(tmp_path, num_per_class=1)
    (tmp_path / infos['car'][0]['path']).write_bytes(b'\0' * 12)
    sampler = DataBaseSampler(tmp_path, sampler_config(SAMPLE_GROUPS=['car:1']), CLASSES)
    with pytest.raises(ValueError, match=r'car_0\.bin.*NUM_POINT_FEATURES=5'):
        sampler(scene(names=()))


def test_missing_info_file_and_missing_key(tmp_path):
    with pytest.raises(FileNotFoundError, match='dbinfos.pkl'):
        DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    config = sampler_config()
    del config['SAMPLE_GROUPS']
    with pytest.raises(ConfigError, match=r'gt_sampling.*SAMPLE_GROUPS'):
        DataBaseSampler(tmp_path, config, CLASSES)


def test_global_memory_mapped_database_matches_files(tmp_path):
    write_database(tmp_path, global_file=True)
    by_files = DataBaseSampler(tmp_path, sampler_config(), CLASSES)
    by_mmap = DataBaseSampler(tmp_path, sampler_config(DB_DATA_PATH=['global_db.npy'], USE_SHARED_MEMORY=True),
                              CLASSES)
    np.random.seed(7)
    out_files = by_files(scene())
    np.random.seed(7)
    out_mmap = by_mmap(scene())
    np.testing.assert_array_equal(out_files['points'], out_mmap['points'])
    assert isinstance(by_mmap._db_data, np.memmap)
    assert pickle.loads(pickle.dumps(by_mmap))._db_data is None  # workers re-open the memmap lazily
