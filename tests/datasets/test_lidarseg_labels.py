"""nuScenes-lidarseg class map and label reader (pcdet/datasets/nuscenes/lidarseg.py).

References are written independently: the spec table (seg_occ_transfusion.md §A.2, raw index -> official id) and
nuscenes-devkit's own `LidarsegClassMapper` tables (fine -> coarse names, coarse names -> ids)."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from pcdet.datasets.nuscenes.lidarseg import (
    CHALLENGE_CLASSES,
    COARSE_TO_ID,
    FINE_TO_COARSE,
    LidarsegError,
    raw_index_to_name,
    raw_to_challenge_map,
    read_point_labels,
)

# spec §A.2: raw index -> (general class, official challenge id); 0 = ignore
SPEC_TABLE = [
    ('noise', 0), ('animal', 0), ('human.pedestrian.adult', 7), ('human.pedestrian.child', 7),
    ('human.pedestrian.construction_worker', 7), ('human.pedestrian.personal_mobility', 0),
    ('human.pedestrian.police_officer', 7), ('human.pedestrian.stroller', 0), ('human.pedestrian.wheelchair', 0),
    ('movable_object.barrier', 1), ('movable_object.debris', 0), ('movable_object.pushable_pullable', 0),
    ('movable_object.trafficcone', 8), ('static_object.bicycle_rack', 0), ('vehicle.bicycle', 2),
    ('vehicle.bus.bendy', 3), ('vehicle.bus.rigid', 3), ('vehicle.car', 4), ('vehicle.construction', 5),
    ('vehicle.emergency.ambulance', 0), ('vehicle.emergency.police', 0), ('vehicle.motorcycle', 6),
    ('vehicle.trailer', 9), ('vehicle.truck', 10), ('flat.driveable_surface', 11), ('flat.other', 12),
    ('flat.sidewalk', 13), ('flat.terrain', 14), ('static.manmade', 15), ('static.other', 0),
    ('static.vegetation', 16), ('vehicle.ego', 0),
]
CONTRACT_CLASS_NAMES = ['barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                        'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
                        'manmade', 'vegetation']


def write_category_json(path, index_of_name):
    path.write_text(json.dumps([{'token': f't{i}', 'name': name, 'description': '', 'index': index}
                                for i, (name, index) in enumerate(index_of_name.items())]))
    return path


def test_class_table_equals_spec_and_devkit():
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    assert list(CHALLENGE_CLASSES) == CONTRACT_CLASS_NAMES
    ours = {name: COARSE_TO_ID[FINE_TO_COARSE[name]] for name in FINE_TO_COARSE}
    assert ours == dict(SPEC_TABLE)
    fake = SimpleNamespace(ignore_class=LidarsegClassMapper.get_ignore_class())
    devkit_fine2coarse = LidarsegClassMapper.get_fine2coarse(fake)
    devkit_coarse2idx = LidarsegClassMapper.get_coarse2idx(fake)
    assert FINE_TO_COARSE == devkit_fine2coarse
    assert COARSE_TO_ID == devkit_coarse2idx


def test_map_is_built_by_name_from_category_index(tmp_path):
    rng = np.random.default_rng(0)
    permuted = rng.permutation(32)  # the names carry other indices than the official ones
    index_of_name = {name: int(permuted[i]) for i, (name, _) in enumerate(SPEC_TABLE)}
    path = write_category_json(tmp_path / 'category.json', index_of_name)
    lut = raw_to_challenge_map(raw_index_to_name(path))
    expected = np.zeros(32, dtype=np.int64)
    for name, official in SPEC_TABLE:
        expected[index_of_name[name]] = official
    np.testing.assert_array_equal(lut, expected)
    # the official order gives the spec table column
    official = raw_to_challenge_map({i: name for i, (name, _) in enumerate(SPEC_TABLE)})
    np.testing.assert_array_equal(official, [oid for _, oid in SPEC_TABLE])


def test_category_table_errors_name_the_file(tmp_path):
    no_index = tmp_path / 'no_index.json'
    no_index.write_text(json.dumps([{'token': 'a', 'name': 'vehicle.car'}]))
    with pytest.raises(LidarsegError, match=re.escape(str(no_index)) + '.*index.*nuScenes-lidarseg'):
        raw_index_to_name(no_index)
    twice = write_category_json(tmp_path / 'twice.json', {'vehicle.car': 3, 'vehicle.truck': 33})
    with pytest.raises(LidarsegError, match=re.escape(str(twice)) + '.*index 33'):
        raw_index_to_name(twice)
    with pytest.raises(LidarsegError, match="'vehicle.hover'"):
        raw_to_challenge_map({0: 'vehicle.hover'}, 'x.json')
    with pytest.raises(FileNotFoundError, match='absent.json'):
        raw_index_to_name(tmp_path / 'absent.json')


def test_read_point_labels_checks_count_and_values(tmp_path):
    lut = raw_to_challenge_map({i: name for i, (name, _) in enumerate(SPEC_TABLE)})
    raw = np.arange(64, dtype=np.uint8) % 32
    good = tmp_path / 'good_lidarseg.bin'
    raw.tofile(good)
    labels = read_point_labels(good, 64, lut, 'scan.pcd.bin')
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [SPEC_TABLE[v][1] for v in raw])
    with pytest.raises(LidarsegError, match=re.escape(str(good)) + '.*64 labels.*scan.pcd.bin has 65 points'):
        read_point_labels(good, 65, lut, 'scan.pcd.bin')
    bad = tmp_path / 'bad_lidarseg.bin'
    np.array([1, 2, 40, 255], dtype=np.uint8).tofile(bad)
    with pytest.raises(LidarsegError, match=re.escape(str(bad)) + r'.*\[40, 255\].*0\.\.31'):
        read_point_labels(bad, 4, lut)
    partial = np.full(32, -1, dtype=np.int64)
    partial[:5] = 0  # category.json without index 7
    small = tmp_path / 'small_lidarseg.bin'
    np.array([0, 7], dtype=np.uint8).tofile(small)
    with pytest.raises(LidarsegError, match=re.escape(str(small)) + r'.*\[7\]'):
        read_point_labels(small, 2, partial)
    with pytest.raises(FileNotFoundError, match='missing_lidarseg.bin'):
        read_point_labels(tmp_path / 'missing_lidarseg.bin', 1, lut)
