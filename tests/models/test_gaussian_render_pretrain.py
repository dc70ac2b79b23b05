"""GaussianRenderPretrain (docs/GAUSSIAN_SPLATTING.md "Rendering pretext"): Gaussians predicted in the augmented
LiDAR frame land on the pixel where the un-augmented point projects; each loss term falls under Adam on a fixed
batch (measured on the same seeded views before and after); the frozen 2-D teacher is neither saved nor trained;
the config contract; and the encoder transfers fully into the tiny fine-tune configs."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg

from encoder_variants import assert_checkpoint_loads_whole_encoder, assert_model_refuses

CFGS = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs'
PRETRAIN = CFGS / 'gaussian_models' / 'gaussian_tiny_synthetic_pretrain.yaml'
WIDTH, HEIGHT = 48, 32
K = np.array([[30.0, 0.0, 23.5], [0.0, 30.0, 15.5], [0.0, 0.0, 1.0]])


def camera_from_lidar(yaw, height=1.5):
    """A camera at (0, 0, height) of the LiDAR frame looking horizontally along yaw (0: +x): camera x = the
    LiDAR direction to the right of the view, y = down, z = the view direction."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    rotation = np.stack([right, down, forward])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = -rotation @ np.array([0.0, 0.0, height])
    return matrix


def project(xyz, camera):
    cam = xyz @ camera[:3, :3].T + camera[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3], cam[:, 2]


def load_cfg(**weights):
    cfg = cfg_from_yaml_file(str(PRETRAIN))
    for key, value in weights.items():
        cfg.MODEL.LOSS[key] = value
    return cfg


def build(seed=0, **weights):
    torch.manual_seed(seed)
    model = build_network_from_cfg(load_cfg(**weights))
    model.train()
    return model


def make_batch(batch_size=2, seed=0):
    """Per sample: a ground plane of points around the sensor and coloured boxes (walls of points) 6-15 m away; two
    cameras (front, back); images painted per pixel from the nearest projected point's colour (sky colour where none);
    camera_depth the nearest projected point's depth."""
    rng = np.random.default_rng(seed)
    rows, images, depths = [], [], []
    cameras = np.stack([camera_from_lidar(0.0), camera_from_lidar(math.pi)])
    for b in range(batch_size):
        ground = np.stack([rng.uniform(-20, 20, 1500), rng.uniform(-20, 20, 1500), np.full(1500, -1.8)], axis=1)
        colours = [np.tile([[0.45, 0.45, 0.4]], (len(ground), 1))]
        parts = [ground]
        for _ in range(6):
            centre = np.array([rng.choice([-1, 1]) * rng.uniform(6, 15), rng.uniform(-5, 5), -0.8])
            wall = centre + rng.uniform(-1, 1, (300, 3)) * np.array([0.2, 1.0, 1.0])
            parts.append(wall)
            colours.append(np.tile(rng.uniform(0.1, 0.9, (1, 3)), (300, 1)))
        xyz, colour = np.concatenate(parts), np.concatenate(colours)
        rows.append(np.concatenate([np.full((len(xyz), 1), b), xyz, np.zeros((len(xyz), 2))], axis=1))
        sample_images, sample_depths = [], []
        for camera in cameras:
            uv, z = project(xyz, camera)
            image = np.tile(np.array([0.6, 0.75, 0.95])[:, None, None], (1, HEIGHT, WIDTH))
            depth = np.zeros((HEIGHT, WIDTH))
            column, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
            seen = (z > 1.0) & (column >= 0) & (column < WIDTH) & (row >= 0) & (row < HEIGHT)
            for index in np.argsort(-z):      # far to near: the nearest point paints last
                if seen[index]:
                    image[:, row[index], column[index]] = colour[index]
                    depth[row[index], column[index]] = z[index]
            sample_images.append(image)
            sample_depths.append(depth)
        images.append(sample_images)
        depths.append(sample_depths)
    as_tensor = lambda array: torch.tensor(np.asarray(array), dtype=torch.float32)  # noqa: E731
    return {'points': as_tensor(np.concatenate(rows)), 'batch_size': batch_size,
            'lidar_aug_matrix': torch.eye(4).repeat(batch_size, 1, 1),
            'camera_images': as_tensor(images), 'camera_depth': as_tensor(depths),
            'camera_intrinsics': as_tensor(np.tile(K, (batch_size, 2, 1, 1))),
            'camera_from_lidar': as_tensor(np.tile(cameras, (batch_size, 1, 1, 1)))}


def test_gaussians_in_the_augmented_frame_render_where_the_original_point_projects():
    """Points augmented by flip y, a z rotation and a scaling; a small opaque Gaussian at each augmented point must
    peak at the pixel where the original point projects (camera_from_lidar @ inverse(lidar_aug_matrix))."""
    model = build()
    model.render_cfg.VIEWS_PER_SAMPLE = 1
    angle, scale = 0.4, 1.1
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    rotation = np.eye(4)
    rotation[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    augmentation = np.diag([scale, scale, scale, 1.0]) @ rotation @ flip
    camera = camera_from_lidar(0.3)
    originals = np.array([[8.0, 1.0, -0.5], [12.0, 3.0, 0.5], [10.0, -2.0, 1.0]])
    for point in originals:
        augmented = augmentation[:3, :3] @ point
        gaussians = {'means': torch.tensor(augmented[None], dtype=torch.float32),
                     'quats': torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 'scales': torch.full((1, 3), 0.03),
                     'opacities': torch.tensor([0.99]), 'colors': torch.ones(1, 3),
                     'features': torch.zeros(1, model.feature_dim), 'batch_index': torch.zeros(1, dtype=torch.long)}
        batch = {'batch_size': 1, 'lidar_aug_matrix': torch.tensor(augmentation, dtype=torch.float32)[None],
                 'camera_images': torch.zeros(1, 1, 3, HEIGHT, WIDTH),
                 'camera_from_lidar': torch.tensor(camera, dtype=torch.float32)[None, None],
                 'camera_intrinsics': torch.tensor(K, dtype=torch.float32)[None, None]}
        with torch.no_grad():
            _, _, depth, alpha, chosen, _ = model.render_views(gaussians, batch)
        (u, v), z = (value[0] for value in project(point[None], camera))
        assert chosen == [(0, 0)] and 0 <= u < WIDTH and 0 <= v < HEIGHT
        row, column = divmod(int(alpha[0].argmax()), WIDTH)
        assert (row, column) == (round(v), round(u))
        assert float(depth[0, row, column]) == pytest.approx(z, rel=1e-3)


@pytest.mark.parametrize('term, key', [('RGB', 'loss_rgb'), ('DEPTH', 'loss_depth'), ('FEATURE', 'loss_feature')])
def test_each_loss_falls_on_a_fixed_batch(term, key):
    """Only `term` on; 30 Adam steps (lr 1e-2) on a fixed 2-sample batch; the term on the same seeded views (no
    gradient) ends below 0.8 x its start. Measured 2026-12-06 over model seeds 1-4: RGB 0.35-0.66 of the start;
    after 20 steps DEPTH 0.39-0.47 and FEATURE 0.50-0.53."""
    weights = {name: (1.0 if name == term else 0.0) for name in ('RGB', 'DEPTH', 'FEATURE')}
    model = build(seed=1, **weights)
    batch = make_batch()

    def held_out():
        state = torch.get_rng_state()
        torch.manual_seed(11)
        with torch.no_grad():
            value = float(model(copy.copy(batch))[1][key])
        torch.set_rng_state(state)
        return value

    before = held_out()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        loss, tb, _ = model(copy.copy(batch))
        loss['loss'].backward()
        optimizer.step()
    assert set(tb) == {key, 'loss', 'num_gaussians', 'num_views'}
    after = held_out()
    assert after < 0.8 * before, (term, before, after)


def test_the_teacher_is_frozen_and_not_saved():
    model = build()
    model(copy.copy(make_batch(batch_size=1)))
    assert model._teacher is not None
    names = {name for name, _ in model.named_parameters()}
    assert not any('teacher' in name for name in names) and not any('teacher' in k for k in model.state_dict())
    assert {name.split('.')[0] for name in names} == {'vfe', 'backbone_3d', 'dense_head'}


@pytest.mark.parametrize('key, value', [('MODEL.GAUSSIANS.SCALE_RANGE', [0.5, 0.1]),
                                        ('MODEL.RENDER.VIEWS_PER_SAMPLE', 0), ('MODEL.RENDER.NEAR', -1.0),
                                        ('MODEL.RENDER.PRUNE_OPACITY', 1.5), ('MODEL.RENDER.TILE', 0),
                                        ('MODEL.RENDER.CHUNK', 0), ('MODEL.LOSS.SILOG_LAMBDA', 2.0),
                                        ('MODEL.LOSS.SILOG_WEIGHT', -1.0), ('MODEL.LOSS.SSIM_WEIGHT', 1.5),
                                        ('MODEL.TEACHER.MAP_NORMALIZATION', 'batch'),
                                        ('MODEL.TEACHER.BACKBONE.NAME', 'no_such_net')])
def test_a_bad_value_is_refused_naming_its_key(key, value):
    assert_model_refuses(load_cfg(), key, value)


def test_all_zero_loss_weights_and_missing_camera_inputs_are_refused():
    with pytest.raises(ConfigError, match=r'MODEL\.LOSS'):
        build(RGB=0.0, DEPTH=0.0, FEATURE=0.0)
    batch = make_batch(batch_size=1)
    model = build()
    model.render_cfg.VIEWS_PER_SAMPLE = batch['camera_images'].shape[1] + 1
    with pytest.raises(ValueError, match='VIEWS_PER_SAMPLE'):
        model(dict(batch))
    del batch['camera_depth']
    with pytest.raises(KeyError, match='CAMERA_INPUTS'):
        build()(batch)


@pytest.mark.parametrize('finetune_name', ['gpicture_tiny_synthetic_finetune.yaml',
                                           'gpicture_tiny_synthetic_occupancy.yaml',
                                           'gpicture_tiny_synthetic_occupancy_gaussian.yaml'])
def test_checkpoint_loads_the_whole_encoder_into_the_tiny_finetune_models(finetune_name, tmp_path):
    assert_checkpoint_loads_whole_encoder(build(seed=5), CFGS / 'gpicture_models' / finetune_name, tmp_path)
