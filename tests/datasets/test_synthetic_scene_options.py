"""Scene-simulator options `SceneConfig.kind_weights` (class mix) and `SceneConfig.vehicle_profile` ('stepped'
vehicles: a low full-length body plus a full-height rear part), their validation, the per-object union of rays
in `cast_scan`, and how the synthetic Waymo writer / CLI expose them (`class_mix`, `vehicle_profile`).

Protects: labels stay tight around multi-part vehicles, the vehicle heading is observable in a scan, the
'box' profile is unchanged, and bad option values fail early with a message naming the option."""
import numpy as np
import pytest

from pcdet.datasets.synthetic import catalog
from pcdet.datasets.synthetic import waymo as waymo_cli
from pcdet.datasets.synthetic.lidar import LidarConfig, cast_scan
from pcdet.datasets.synthetic.scene import (
    VEHICLE_NOSE_HEIGHT,
    VEHICLE_NOSE_LENGTH,
    VEHICLE_PROFILES,
    SceneConfig,
    simulate_scene,
)
from pcdet.datasets.synthetic.waymo_writer import CLASS_MIXES, SyntheticWaymoConfig, plan_sequences, simulate_sequence

SEED, T = 1, 0.5
SCENE = dict(t_start=0.0, t_end=1.0, num_objects=20)
LIDAR = LidarConfig(azimuth_steps=1024)
ONLY_CARS = tuple((name, float(name == 'car')) for name in catalog.DETECTION_KINDS)
NO_CLUTTER = dict(num_ignore_objects=0, num_walls=0, num_poles=0, num_trees=0)


@pytest.fixture(scope='module')
def scenes():
    return {profile: simulate_scene(SceneConfig(**SCENE, vehicle_profile=profile), np.random.default_rng(SEED))
            for profile in VEHICLE_PROFILES}


@pytest.fixture(scope='module')
def scans(scenes):
    """Noise-free scans from 1.8 m above the ego origin: profile -> (LidarScan, (N, 3) global points)."""
    result = {}
    for profile, scene in scenes.items():
        pose = scene.ego_pose_at(T)
        pose[2, 3] = 1.8
        scan = cast_scan(scene, T, pose, LIDAR)
        result[profile] = scan, scan.points[:, :3].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    return result


def box_frame(xyz, box):
    """(N, 3) global points -> box frame (origin at the centre, x along the heading)."""
    offset = xyz - box[:3]
    cos, sin = np.cos(box[6]), np.sin(box[6])
    return np.stack([offset[:, 0] * cos + offset[:, 1] * sin, -offset[:, 0] * sin + offset[:, 1] * cos,
                     offset[:, 2]], axis=1)


def extents(shape, box):
    """(2, 3) [min, max] of an upright box primitive [x, y, z, dx, dy, dz, yaw] in `box`'s frame (same yaw)."""
    centre = box_frame(shape[None, :3], box)[0]
    return np.stack([centre - shape[3:6] / 2, centre + shape[3:6] / 2])


def placed_kinds(**overrides):
    config = SceneConfig(t_start=0.0, t_end=1.0, num_objects=12, **{**NO_CLUTTER, **overrides})
    return simulate_scene(config, np.random.default_rng(SEED)).class_names


@pytest.mark.parametrize('overrides, problem', [
    (dict(vehicle_profile='boxy'), 'vehicle_profile'),
    (dict(kind_weights=(('spaceship', 1.0),)), 'kind_weights'),
    (dict(kind_weights=(('animal', 1.0),)), 'kind_weights'),  # not a detection kind
    (dict(kind_weights=(('car', 1.0), ('bus', -0.5))), 'kind_weights'),
    (dict(kind_weights=tuple((name, 0.0) for name in catalog.DETECTION_KINDS)), 'kind_weights'),
    (dict(kind_weights=(('car', float('nan')),)), 'kind_weights'),
    (dict(kind_weights=(('car', 1.0), ('car', 2.0))), 'kind_weights'),  # ambiguous: given twice
])
def test_scene_config_rejects_bad_options(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        SceneConfig(**overrides)


def test_kind_weights_may_zero_some_kinds():
    # The other kinds keep their catalog weights, so the merged weights are valid.
    assert 'car' not in placed_kinds(kind_weights=(('car', 0.0),), ensure_every_class=False)


@pytest.mark.parametrize('field', ['class_mix', 'vehicle_profile'])
def test_waymo_config_rejects_bad_options(field):
    SyntheticWaymoConfig(root='x').validate()
    with pytest.raises(ValueError, match=field):
        SyntheticWaymoConfig(root='x', **{field: 'bogus'}).validate()


def test_kind_weights_set_the_class_mix():
    only_cars = placed_kinds(kind_weights=ONLY_CARS, ensure_every_class=False)
    assert len(only_cars) >= 10 and set(only_cars) == {'car'}
    assert len(set(placed_kinds(ensure_every_class=False))) > 1  # catalog weights: a mix
    # The one-per-class instances are placed regardless of the weights.
    assert set(placed_kinds(kind_weights=ONLY_CARS, ensure_every_class=True)) == set(catalog.DETECTION_KINDS)


def test_profiles_share_objects_and_box_keeps_one_primitive_per_object(scenes):
    box, stepped = scenes['box'], scenes['stepped']
    assert box.objects.kinds == stepped.objects.kinds
    for field in ('sizes', 'centers_t0', 'headings', 'velocities'):
        assert np.array_equal(getattr(box.objects, field), getattr(stepped.objects, field)), field
    assert np.array_equal(box.clutter.shapes, stepped.clutter.shapes)
    num_objects, num_clutter, vehicles = box.num_objects, len(box.clutter.semantic), box.vehicle_rows()
    assert len(vehicles) > 3
    primitives = box.primitives_at(T)
    assert np.array_equal(primitives.object_id, np.r_[np.arange(num_objects), -np.ones(num_clutter, int)])
    assert np.array_equal(primitives.shapes[:num_objects], box.object_shapes_at(T))
    stepped_ids = stepped.primitives_at(T).object_id
    assert np.array_equal(stepped_ids, np.r_[np.arange(num_objects), vehicles, -np.ones(num_clutter, int)])


def test_stepped_vehicle_parts_span_the_shrunk_box(scenes):
    scene = scenes['stepped']
    primitives, shrunk = scene.primitives_at(T), scene.object_shapes_at(T)
    vehicles = set(scene.vehicle_rows().tolist())
    assert {'pedestrian', 'barrier'} <= {scene.class_names[m] for m in range(scene.num_objects)} - \
        {scene.class_names[v] for v in vehicles}
    for m, box in enumerate(shrunk):
        rows = np.nonzero(primitives.object_id == m)[0]
        assert np.all(primitives.semantic[rows] == catalog.semantic_index(scene.class_names[m]))
        assert np.all(primitives.reflectivity[rows] == scene.objects.reflectivity[m])
        if m not in vehicles:
            assert len(rows) == 1 and np.array_equal(primitives.shapes[rows[0]], box)
            continue
        assert len(rows) == 2 and rows[0] == m and np.all(primitives.shapes[rows, 6] == box[6])
        body, rear = (extents(primitives.shapes[row], box) for row in rows)
        half, (length, height) = box[3:6] / 2, box[[3, 5]]
        np.testing.assert_allclose(np.minimum(body[0], rear[0]), -half, atol=1e-9)
        np.testing.assert_allclose(np.maximum(body[1], rear[1]), half, atol=1e-9)
        np.testing.assert_allclose(body[:, 0], [-half[0], half[0]], atol=1e-9)  # full length
        np.testing.assert_allclose(body[:, 2], [-half[2], -half[2] + VEHICLE_NOSE_HEIGHT * height], atol=1e-9)
        np.testing.assert_allclose(rear[:, 0], [-half[0], half[0] - VEHICLE_NOSE_LENGTH * length], atol=1e-9)
        np.testing.assert_allclose(rear[:, 2], [-half[2], half[2]], atol=1e-9)  # full height


def vehicle_point_heights(scene, scan, xyz):
    """Heights (share of the box height above its bottom) of the vehicle points in the front
    VEHICLE_NOSE_LENGTH of their box and behind it; asserts every object point lies inside its box."""
    boxes, vehicles = scene.object_boxes_at(T), set(scene.vehicle_rows().tolist())
    front, rear = [], []
    for m in np.unique(scan.hit_object_id[scan.hit_object_id >= 0]):
        box = boxes[m]
        local = box_frame(xyz[scan.hit_object_id == m], box)
        assert np.all(np.abs(local) <= box[3:6] / 2 + 1e-4), f'object {m} has points outside its box'
        if m in vehicles:
            in_front = local[:, 0] > box[3] / 2 - VEHICLE_NOSE_LENGTH * box[3]
            share = (local[:, 2] + box[5] / 2) / box[5]
            front.append(share[in_front])
            rear.append(share[~in_front])
    return np.concatenate(front), np.concatenate(rear)


def test_stepped_scan_keeps_labels_tight_and_shows_the_lowered_front(scenes, scans):
    front, rear = vehicle_point_heights(scenes['stepped'], *scans['stepped'])
    assert len(front) > 50 and front.max() <= VEHICLE_NOSE_HEIGHT + 1e-4
    assert rear.max() > VEHICLE_NOSE_HEIGHT + 0.2  # front and back differ: the heading is observable
    box_front, _ = vehicle_point_heights(scenes['box'], *scans['box'])
    assert box_front.max() > VEHICLE_NOSE_HEIGHT + 0.2  # the 'box' profile has no lowered front


def test_rays_intersecting_count_each_ray_once_per_object(scenes, scans):
    (box_scan, _), (stepped_scan, _) = scans['box'], scans['stepped']
    vehicles = scenes['stepped'].vehicle_rows()
    others = np.setdiff1d(np.arange(scenes['stepped'].num_objects), vehicles)
    for scan in (box_scan, stepped_scan):
        assert np.all(scan.object_rays_intersecting >= scan.object_rays_first_hit)
        fraction = scan.object_visible_fraction()
        seen = np.isfinite(fraction)
        assert seen.sum() > 10 and np.all((fraction[seen] >= 0) & (fraction[seen] <= 1))
    # The stepped shape lies inside the box shape: a union can only lose rays (a sum over parts would gain).
    stepped, box = stepped_scan.object_rays_intersecting, box_scan.object_rays_intersecting
    assert np.all(stepped[vehicles] <= box[vehicles]) and np.any(stepped[vehicles] < box[vehicles])
    assert np.array_equal(stepped[others], box[others])


def test_cli_exposes_the_options_and_the_writer_passes_them_on(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        waymo_cli.parse_args(['--help'])
    help_text = capsys.readouterr().out
    assert '--class_mix' in help_text and '--vehicle_profile' in help_text
    args = waymo_cli.parse_args(['--root', 'r'])
    assert (args.class_mix, args.vehicle_profile) == ('wod', 'stepped')
    for mix in CLASS_MIXES:
        for profile in VEHICLE_PROFILES:
            args = waymo_cli.parse_args(['--root', 'r', '--class_mix', mix, '--vehicle_profile', profile])
            assert (args.class_mix, args.vehicle_profile) == (mix, profile)
    with pytest.raises(SystemExit):
        waymo_cli.parse_args(['--root', 'r', '--class_mix', 'bogus'])

    seen = []
    monkeypatch.setattr(waymo_cli, 'generate_waymo',
                        lambda config, **_: seen.append(config) or {'skipped': True, 'root': config.root})
    assert waymo_cli.main(['--root', str(tmp_path), '--class_mix', 'nuscenes', '--vehicle_profile', 'box']) == 0
    assert (seen[0].class_mix, seen[0].vehicle_profile) == ('nuscenes', 'box')
    config = SyntheticWaymoConfig(root=str(tmp_path), num_objects=12)  # defaults: 'wod', 'stepped'
    scene_config = simulate_sequence(plan_sequences(config)[0], config).scene.config
    assert scene_config.kind_weights == CLASS_MIXES['wod'] and scene_config.vehicle_profile == 'stepped'
