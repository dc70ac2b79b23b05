"""The six camera images of a key frame in one picture, with the frame's LiDAR points projected onto them.

    python tools/visualize_cameras.py --data_path data/synthetic_nuscenes --version v1.0-mini \
        --info_file nuscenes_infos_10sweeps_train.pkl --index 0 --out output/cameras_0.png

reads  <data_path>/<version>/<info_file> (infos made with `--with_cam`), info `index`: its `cams` (images,
       intrinsics, sensor2lidar) through `pcdet.datasets.nuscenes.cameras`, and its key-frame LiDAR file;
writes a PNG: the cameras as the rig sees the world (top row CAM_FRONT_LEFT, CAM_FRONT, CAM_FRONT_RIGHT; bottom row
       CAM_BACK_LEFT, CAM_BACK, CAM_BACK_RIGHT), each point a 2x2 dot coloured by its camera depth (near = yellow,
       far = purple, `viridis` reversed). A point drawn off the surface it hit shows a calibration or timing error.
`--no_points` draws the images alone.
"""
import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdet.datasets.nuscenes.cameras import load_camera_views, project_points  # noqa: E402
from pcdet.datasets.nuscenes.nuscenes_utils import load_key_frame_points  # noqa: E402

MOSAIC_LAYOUT = (('CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT'), ('CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT'))
MAX_DEPTH_COLOUR = 60.0  # metres: the far end of the colour scale


def depth_colours(depth):
    """(N,) metres -> (N, 3) uint8, viridis reversed over [0, MAX_DEPTH_COLOUR] (near points bright)."""
    from matplotlib import colormaps
    scaled = 1.0 - np.clip(np.asarray(depth, dtype=np.float64) / MAX_DEPTH_COLOUR, 0.0, 1.0)
    return (colormaps['viridis'](scaled)[:, :3] * 255).round().astype(np.uint8)


def draw_points(image, view, xyz, min_depth=1.0):
    """A copy of `view.image` (H, W, 3) with every point of `xyz` (N, 3, key-frame LiDAR frame) that the camera sees
    drawn as a 2x2 dot at its pixel (the pixel holding the projection and the ones right and below), far points
    first so near ones stay on top."""
    canvas = np.array(image, dtype=np.uint8, copy=True)
    uv, depth, seen = project_points(xyz, view, min_depth)
    order = np.flatnonzero(seen)[np.argsort(-depth[seen], kind='stable')]
    cols, rows = np.rint(uv[order]).astype(np.int64).T
    colours = depth_colours(depth[order])
    height, width = canvas.shape[:2]
    for d_row in (0, 1):
        for d_col in (0, 1):
            r, c = np.minimum(rows + d_row, height - 1), np.minimum(cols + d_col, width - 1)
            canvas[r, c] = colours
    return canvas


def camera_mosaic(views, xyz=None, min_depth=1.0):
    """(2 H, 3 W, 3) uint8 of the views named in MOSAIC_LAYOUT (all of one size; a missing camera stays black),
    with the points `xyz` drawn when given."""
    by_name = {view.name: view for view in views}
    height, width = views[0].image.shape[:2]
    mosaic = np.zeros((2 * height, 3 * width, 3), dtype=np.uint8)
    for row, names in enumerate(MOSAIC_LAYOUT):
        for col, name in enumerate(names):
            if name not in by_name:
                continue
            view = by_name[name]
            if view.image.shape[:2] != (height, width):
                raise ValueError(f'{view.path}: image of {view.image.shape[1]}x{view.image.shape[0]}, the mosaic '
                                 f'needs every camera at {width}x{height}')
            tile = view.image if xyz is None else draw_points(view.image, view, xyz, min_depth)
            mosaic[row * height:(row + 1) * height, col * width:(col + 1) * width] = tile
    return mosaic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data_path', required=True, help='DATA_PATH holding <version>/')
    parser.add_argument('--version', default='v1.0-mini')
    parser.add_argument('--info_file', default='nuscenes_infos_10sweeps_train.pkl',
                        help='infos made with create_nuscenes_infos --with_cam')
    parser.add_argument('--index', type=int, default=0, help='which info (key frame) of the file')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--no_points', action='store_true', help='the images without the LiDAR points')
    return parser.parse_args(argv)


def main(argv=None):
    from pcdet.utils.file_utils import atomic_save_bytes
    args = parse_args(argv)
    root = Path(args.data_path) / args.version
    info_path = root / args.info_file
    if not info_path.is_file():
        raise SystemExit(f'error: {info_path} not found (create the infos with --with_cam)')
    with open(info_path, 'rb') as handle:
        infos = pickle.load(handle)
    if not 0 <= args.index < len(infos):
        raise SystemExit(f'error: --index {args.index} outside the {len(infos)} infos of {info_path}')
    info = infos[args.index]
    try:
        views = load_camera_views(root, info)
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}')
    xyz = None if args.no_points else load_key_frame_points(root, info)[:, :3]
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(camera_mosaic(views, xyz)).save(buffer, format='PNG')
    atomic_save_bytes(buffer.getvalue(), Path(args.out))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
