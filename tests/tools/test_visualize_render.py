"""tools/visualize_render.py: every camera of the frame gets a row (image, render, rendered depth, LiDAR depth) in
the camera-input order, depth colours are black where there is nothing to show, and the CLI draws a generated
frame from a rendering-pretext checkpoint (and refuses another model's config)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.nuscenes_utils import create_nuscenes_info
from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes
from pcdet.models.build import build_network_from_cfg
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG = REPO_ROOT / 'tools' / 'cfgs' / 'gaussian_models' / 'gaussian_tiny_synthetic_pretrain.yaml'


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('visualize_render', REPO_ROOT / 'tools' / 'visualize_render.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_depth_colours_are_black_where_invalid_and_ordered(tool):
    depth = np.array([[5.0, 30.0, 55.0, 20.0]])
    colours = tool.depth_image(depth, np.array([[True, True, True, False]]))
    assert colours.shape == (1, 4, 3) and (colours[0, 3] == 0).all() and (colours[0, :3] > 0).any(axis=1).all()
    assert colours[0, 0].sum() > colours[0, 1].sum() > colours[0, 2].sum()   # near points bright (viridis reversed)


def test_cli_draws_every_camera_of_a_generated_frame(tool, tmp_path):
    config = SyntheticNuScenesConfig(root=str(tmp_path / 'v1.0-mini'), num_scenes=2, samples_per_scene=2,
                                     num_objects=5, azimuth_steps=64, with_occupancy=False, with_cameras=True,
                                     camera_width=64, camera_height=36)
    generate_nuscenes(config, progress=False)
    create_nuscenes_info('v1.0-mini', config.root, max_sweeps=10, with_cam=True)
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg_from_yaml_file(str(CFG)))
    ckpt = save_checkpoint(checkpoint_state(model, epoch=1, it=1), tmp_path / 'render')
    data_set = ['--set', 'DATA_CONFIG.DATA_PATH', str(tmp_path), 'DATA_CONFIG.VERSION', 'v1.0-mini']
    out = tmp_path / 'render.png'
    tool.main(['--cfg_file', str(CFG), '--ckpt', str(ckpt), '--out', str(out), *data_set])
    picture = np.asarray(Image.open(out))
    assert picture.ndim == 3 and picture.shape[0] > picture.shape[1] / 2       # six rows of four panels
    other = REPO_ROOT / 'tools' / 'cfgs' / 'contrastive_models' / 'contrastive_tiny_synthetic_pretrain.yaml'
    with pytest.raises(SystemExit, match='GaussianRenderPretrain'):
        tool.main(['--cfg_file', str(other), '--ckpt', str(ckpt), '--out', str(out), *data_set])


def test_render_frame_rows_follow_the_camera_order(tool):
    """Two cameras (front, back) over random points: a row per camera in input order, the image and LiDAR-depth
    panels are the batch's own arrays, the render is an image of the same size in [0, 1]."""
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg_from_yaml_file(str(CFG)))
    model.eval()
    points = torch.cat([torch.zeros(500, 1), (torch.rand(500, 3) - 0.5) * torch.tensor([40.0, 40.0, 3.0]),
                        torch.zeros(500, 2)], dim=1)
    front = torch.tensor([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    back = front @ torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))      # looking along -x
    intrinsics = torch.tensor([[30.0, 0.0, 23.5], [0.0, 30.0, 15.5], [0.0, 0.0, 1.0]])
    batch = {'points': points, 'batch_size': 1, 'lidar_aug_matrix': torch.eye(4)[None],
             'camera_images': torch.rand(1, 2, 3, 32, 48), 'camera_depth': torch.rand(1, 2, 32, 48) * 20,
             'camera_intrinsics': intrinsics.expand(1, 2, 3, 3), 'camera_from_lidar': torch.stack([front, back])[None]}
    rows = tool.render_frame(model, batch)
    assert [row[0] for row in rows] == [0, 1]
    for v, image, render, depth, alpha, lidar in rows:
        np.testing.assert_array_equal(image, batch['camera_images'][0, v].permute(1, 2, 0).numpy())
        np.testing.assert_array_equal(lidar, batch['camera_depth'][0, v].numpy())
        assert render.shape == image.shape and depth.shape == alpha.shape == lidar.shape
        assert 0 <= render.min() and render.max() <= 1
