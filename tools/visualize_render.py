"""What a rendering-pretext checkpoint renders: for one frame, each camera's image beside the render of the predicted
Gaussians, the rendered depth and the LiDAR depth target (docs/GAUSSIAN_SPLATTING.md "Rendering pretext").

    python tools/visualize_render.py --cfg_file tools/cfgs/gaussian_models/gaussian_tiny_synthetic_pretrain.yaml \
        --ckpt output/.../checkpoint_epoch_8.pth --index 0 --out output/render_0.png \
        --set DATA_CONFIG.DATA_PATH data/synthetic_nuscenes_cameras DATA_CONFIG.VERSION v1.0-mini

reads  the config's data set (test split, no augmentation; camera inputs as the config sets them) and the checkpoint
       (`model_state`, loaded strictly);
writes a PNG: one row per camera, columns image | render (RGB) | rendered depth | LiDAR depth (depth in metres,
       0-60 m, `viridis` reversed; black where the Gaussians cover less than 50% or no LiDAR point falls).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdet.config import cfg_from_list, cfg_from_yaml_file  # noqa: E402
from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.datasets.nuscenes.cameras import CAMERA_CHANNELS  # noqa: E402
from pcdet.models.build import build_network_from_cfg  # noqa: E402
from pcdet.utils.batching import load_data_to_device  # noqa: E402

MAX_DEPTH_COLOUR = 60.0  # metres: the far end of the colour scale


def depth_image(depth, valid):
    """(H, W) metres -> (H, W, 3) float in [0, 1], viridis reversed, black where not `valid`."""
    from matplotlib import colormaps
    scaled = 1.0 - np.clip(depth / MAX_DEPTH_COLOUR, 0.0, 1.0)
    return np.where(valid[..., None], colormaps['viridis'](scaled)[..., :3], 0.0)


def render_frame(model, batch):
    """[(channel index, image, render, rendered depth, alpha, lidar depth)] of every camera of sample 0."""
    num_views = batch['camera_images'].shape[1]
    model.render_cfg.VIEWS_PER_SAMPLE = num_views
    with torch.no_grad():
        encoded = model.encode(dict(batch))
        gaussians = model.predict_gaussians(encoded)
        rgb, _, depth, alpha, chosen, _ = model.render_views(gaussians, encoded)
    rows = []
    for index, (b, v) in sorted(enumerate(chosen), key=lambda item: item[1]):
        if b == 0:
            rows.append((v, batch['camera_images'][0, v].permute(1, 2, 0).numpy(),
                         rgb[index].permute(1, 2, 0).clamp(0, 1).numpy(), depth[index].numpy(),
                         alpha[index].numpy(), batch['camera_depth'][0, v].numpy()))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg_file', required=True)
    parser.add_argument('--ckpt', required=True)
    parser.add_argument('--index', type=int, default=0, help='frame of the test split')
    parser.add_argument('--out', required=True)
    parser.add_argument('--set', dest='set_cfgs', nargs=argparse.REMAINDER, default=None)
    args = parser.parse_args(argv)
    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    if cfg.MODEL.NAME != 'GaussianRenderPretrain':
        raise SystemExit(f'{args.cfg_file}: MODEL.NAME is {cfg.MODEL.NAME!r}; this tool draws GaussianRenderPretrain')
    dataset, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0,
                                     training=False)
    batch = dataset.collate_batch([dataset[args.index]])
    load_data_to_device(batch, torch.device('cpu'))
    model = build_network_from_cfg(cfg)
    state = torch.load(args.ckpt, map_location='cpu', weights_only=False)['model_state']
    model.load_state_dict(state, strict=True)
    model.eval()
    rows = render_frame(model, batch)
    channels = cfg.DATA_CONFIG.CAMERA_INPUTS.get('CHANNELS') or CAMERA_CHANNELS  # camera_inputs.py's order

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    titles = ('image', 'render', 'rendered depth', 'LiDAR depth')
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 1.9 * len(rows)), squeeze=False)
    for axis_row, (v, image, render, depth, alpha, lidar) in zip(axes, rows):
        panels = (image, render, depth_image(depth, alpha > 0.5), depth_image(lidar, lidar > 0))
        for col, (ax, panel) in enumerate(zip(axis_row, panels)):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if v == rows[0][0]:
                ax.set_title(titles[col], fontsize=9)
        axis_row[0].set_ylabel(channels[v], fontsize=8)
    fig.suptitle(f'{Path(args.ckpt).name}, test frame {args.index}: rendering pretext', fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
