"""Pictures of segmentation and occupancy results: predicted beside true, in the nuScenes-lidarseg colours.

Reads and writes no batch_dict keys: it works on numpy arrays (and `tools/visualize_seg_occ.py` feeds it the
evaluation outputs). Class ids are the 16 nuScenes-lidarseg challenge classes, official ids 1..16 (`CLASS_NAMES`).
Point labels: 0 = ignore (or "no prediction"), drawn grey. Occupancy volumes (X, Y, Z) uint8: 0 = free (background),
1..16 classes, 255 = noise (grey).

    seg_bev_image(points, labels, ...)        -> (H, W, 3) uint8 BEV panel, points coloured by class
    render_seg_bev(points, pred, true, ...)   -> PNG bytes: predicted (left) | true (right) | legend
    occ_bev_image(volume, ...)                -> (H, W, 3): per (x, y) column the class of the highest occupied voxel
    occ_side_image(volume, y_index, ...)      -> (H, W, 3): the x-z plane at y = y_index
    render_occ_bev(pred, true, ...)           -> PNG bytes: predicted (left) | true (right) | legend
    render_occ_side(pred, true, y_index, ...) -> PNG bytes: predicted (top) / true (below) | legend
    save_png(path, png_bytes)                 -> path, written atomically

Colours (`CLASS_COLORS`) are those of the devkit: for each challenge class the colour that
`nuscenes.utils.color_map.get_colormap()` gives one representative general class (`COLOR_SOURCE_CLASS`), which is
also the devkit's own challenge colour map (`LidarsegClassMapper.get_coarse2color`). The devkit draws ignore black;
here ignore and noise are grey so that they stand out from the classes and from the white background.

Geometry (pixel-exact: panels are pasted with matplotlib's `figimage`, never resampled; only text is anti-aliased):
* Point BEV (x right, y up, as `visualization.render_bev`): with `xy_range = [x_min, y_min, x_max, y_max]` and
  resolution r, a point lands in column floor((x - x_min) / r) and row H - 1 - floor((y - y_min) / r). Where
  points share a pixel, the highest (largest z) one is drawn. `point_size` p > 1 draws a p x p square whose top-left
  offset is -((p - 1) // 2).
* Occupancy BEV: voxel (x, y) with s pixels per voxel covers rows (Y - 1 - y) * s ..+s, columns x * s ..+s.
* Side slice: voxel (x, z) covers rows (Z - 1 - z) * s ..+s, columns x * s ..+s (z up).
* Picture layout: panels start at row TOP = MARGIN + HEADER_HEIGHT + TITLE_HEIGHT. In a row layout panel i's
  top-left pixel is (TOP, MARGIN + sum of earlier panel widths + i * GAP); in a column layout it is
  (TOP + sum of earlier (panel height + TITLE_HEIGHT + GAP), MARGIN). The legend (16 classes + ignore/noise) is
  GAP to the right of the panels. Each panel has a 1-pixel FRAME_COLOR frame just outside it.
"""
import io

import numpy as np

from .file_utils import atomic_save_bytes

CLASS_NAMES = ('barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
               'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
               'manmade', 'vegetation')
# Challenge class -> the general lidarseg class whose devkit colour it uses.
COLOR_SOURCE_CLASS = {
    'barrier': 'movable_object.barrier', 'bicycle': 'vehicle.bicycle', 'bus': 'vehicle.bus.bendy',
    'car': 'vehicle.car', 'construction_vehicle': 'vehicle.construction', 'motorcycle': 'vehicle.motorcycle',
    'pedestrian': 'human.pedestrian.adult', 'traffic_cone': 'movable_object.trafficcone',
    'trailer': 'vehicle.trailer', 'truck': 'vehicle.truck', 'driveable_surface': 'flat.driveable_surface',
    'other_flat': 'flat.other', 'sidewalk': 'flat.sidewalk', 'terrain': 'flat.terrain',
    'manmade': 'static.manmade', 'vegetation': 'static.vegetation',
}
# (17, 3) RGB; row c = official id c (row 0, ignore, is IGNORE_COLOR).
CLASS_COLORS = np.array([
    (190, 190, 190),  # 0 ignore / noise
    (112, 128, 144),  # 1 barrier              slategrey
    (220, 20, 60),    # 2 bicycle              crimson
    (255, 127, 80),   # 3 bus                  coral
    (255, 158, 0),    # 4 car                  orange
    (233, 150, 70),   # 5 construction_vehicle darksalmon
    (255, 61, 99),    # 6 motorcycle           red
    (0, 0, 230),      # 7 pedestrian           blue
    (47, 79, 79),     # 8 traffic_cone         darkslategrey
    (255, 140, 0),    # 9 trailer              darkorange
    (255, 99, 71),    # 10 truck               tomato
    (0, 207, 191),    # 11 driveable_surface   nuTonomy green
    (175, 0, 75),     # 12 other_flat
    (75, 0, 75),      # 13 sidewalk
    (112, 180, 60),   # 14 terrain
    (222, 184, 135),  # 15 manmade             burlywood
    (0, 175, 0),      # 16 vegetation          green
], dtype=np.uint8)
IGNORE_COLOR = NOISE_COLOR = tuple(int(v) for v in CLASS_COLORS[0])
BACKGROUND_COLOR = (255, 255, 255)
FRAME_COLOR = (80, 80, 80)
NOISE = 255
DEFAULT_XY_RANGE = (-51.2, -51.2, 51.2, 51.2)

MARGIN, HEADER_HEIGHT, TITLE_HEIGHT, GAP = 10, 24, 20, 14
LEGEND_ROW, LEGEND_SWATCH, LEGEND_WIDTH = 18, 12, 150


def _palette(zero_color, top_color=None):
    """(256, 3) lookup table for labels; entries that are not valid labels stay marked as invalid (-1)."""
    table = np.full((256, 3), -1, dtype=np.int16)
    table[0] = zero_color
    table[1:17] = CLASS_COLORS[1:]
    if top_color is not None:
        table[NOISE] = top_color
    return table


POINT_PALETTE = _palette(IGNORE_COLOR)                      # 0 ignore, 1..16
VOLUME_PALETTE = _palette(BACKGROUND_COLOR, NOISE_COLOR)    # 0 free, 1..16, 255 noise


def _colorize(labels, palette, what, allowed):
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f'{what}: labels must be {allowed}, found values in [{labels.min()}, {labels.max()}]')
    colors = palette[labels.astype(np.int64)]
    bad = (colors[..., 0] < 0)
    if bad.any():
        raise ValueError(f'{what}: labels must be {allowed}, found {sorted(set(labels[bad].tolist()))[:10]}')
    return colors.astype(np.uint8)


def seg_bev_image(points, labels, xy_range=DEFAULT_XY_RANGE, resolution=0.2, point_size=1, what='labels'):
    """BEV panel of points coloured by class: (H, W, 3) uint8, H = (y_max - y_min) / resolution.

    Args:
        points: (N, 3+) points (x, y, z first). labels: (N,) official ids 0..16 (0 = ignore, grey).
        xy_range: [x_min, y_min, x_max, y_max] in metres; points outside are not drawn.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f'points must be (N, 3+), got shape {points.shape}')
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(points):
        raise ValueError(f'{what}: {len(labels)} labels for {len(points)} points')
    colors = _colorize(labels, POINT_PALETTE, what, 'official ids 0..16 (0 = ignore)')
    x_min, y_min, x_max, y_max = (float(v) for v in xy_range)
    width, height = int(round((x_max - x_min) / resolution)), int(round((y_max - y_min) / resolution))
    if width <= 0 or height <= 0:
        raise ValueError(f'xy_range {list(xy_range)} with resolution {resolution} gives an empty picture')
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND_COLOR
    col = np.floor((points[:, 0].astype(np.float64) - x_min) / resolution).astype(np.int64)
    row = height - 1 - np.floor((points[:, 1].astype(np.float64) - y_min) / resolution).astype(np.int64)
    keep = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row, z, colors = col[keep], row[keep], points[keep, 2].astype(np.float64), colors[keep]
    first = -((int(point_size) - 1) // 2)
    offsets = [(dr, dc) for dr in range(first, first + int(point_size)) for dc in range(first, first + int(point_size))]
    rows = np.concatenate([row + dr for dr, _ in offsets])
    cols = np.concatenate([col + dc for _, dc in offsets])
    index = np.tile(np.arange(len(row)), len(offsets))
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    flat, index = rows[inside] * width + cols[inside], index[inside]
    order = np.lexsort((z[index], flat))  # per pixel by height; the last one of each pixel is the highest
    flat_sorted = flat[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = flat_sorted[1:] != flat_sorted[:-1]
    image.reshape(-1, 3)[flat_sorted[last]] = colors[index[order[last]]]
    return image


def _check_volume(volume, what):
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f'{what}: expected an (X, Y, Z) volume, got shape {volume.shape}')
    return volume


def _upscale(labels_2d, scale):
    return np.repeat(np.repeat(labels_2d, scale, axis=0), scale, axis=1) if scale > 1 else labels_2d


def occ_bev_image(volume, pixels_per_voxel=1, include_noise=True, what='volume'):
    """Max-projection: per (x, y) column the class of the highest occupied voxel (0 free -> background).

    `include_noise=False` treats noise (255) as free, so the class below it shows."""
    volume = _check_volume(volume, what)
    occupied = volume != 0
    if not include_noise:
        occupied &= volume != NOISE
    top = volume.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    projection = np.take_along_axis(volume, top[..., None], axis=2)[..., 0].copy()
    projection[~occupied.any(axis=2)] = 0
    grid = projection.T[::-1]  # (Y, X), y up
    return _colorize(_upscale(grid, int(pixels_per_voxel)), VOLUME_PALETTE, what, '0 free, 1..16, 255 noise')


def occ_side_image(volume, y_index, pixels_per_voxel=1, what='volume'):
    """The x-z plane at y = y_index: (Z * s, X * s, 3), x to the right, z up."""
    volume = _check_volume(volume, what)
    if not 0 <= int(y_index) < volume.shape[1]:
        raise ValueError(f'{what}: y index {y_index} outside 0..{volume.shape[1] - 1}')
    grid = volume[:, int(y_index), :].T[::-1]  # (Z, X), z up
    return _colorize(_upscale(grid, int(pixels_per_voxel)), VOLUME_PALETTE, what, '0 free, 1..16, 255 noise')


def _volume_scales(pred_volume, true_volume, pixels_per_voxel, auto_width):
    """Pixels per voxel for each volume so both panels have the same size (shapes must divide the finer one)."""
    shapes = [np.asarray(_check_volume(v, name).shape)
              for v, name in ((pred_volume, 'predicted volume'), (true_volume, 'true volume'))]
    finest = np.maximum(shapes[0], shapes[1])
    factors = []
    for shape in shapes:
        ratio = finest // shape
        if (finest % shape).any() or len(set(ratio.tolist())) != 1:
            raise ValueError(f'volumes of shapes {tuple(shapes[0])} and {tuple(shapes[1])}: each must be the other '
                             'scaled by one integer factor on all axes')
        factors.append(int(ratio[0]))
    base = pixels_per_voxel or max(1, auto_width // int(finest[0]))
    return [base * f for f in factors], finest


def _legend_entries(zero_name):
    return [(name, tuple(int(v) for v in CLASS_COLORS[i + 1])) for i, name in enumerate(CLASS_NAMES)] + \
        [(zero_name, IGNORE_COLOR)]


def _compose(panels, legend, header, layout='row', dpi=100):
    """Paste (title, image) panels and a legend onto one canvas; returns PNG bytes (see the module docstring)."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    heights, widths = [p[1].shape[0] for p in panels], [p[1].shape[1] for p in panels]
    top = MARGIN + HEADER_HEIGHT + TITLE_HEIGHT
    if layout == 'row':
        origins = [(top, MARGIN + sum(widths[:i]) + i * GAP) for i in range(len(panels))]
        panels_width, panels_height = sum(widths) + GAP * (len(panels) - 1), TITLE_HEIGHT + max(heights)
    else:
        origins = [(top + sum(heights[:i]) + i * (TITLE_HEIGHT + GAP), MARGIN) for i in range(len(panels))]
        panels_width = max(widths)
        panels_height = sum(heights) + len(panels) * TITLE_HEIGHT + (len(panels) - 1) * GAP
    legend_left = MARGIN + panels_width + GAP
    width = legend_left + LEGEND_WIDTH + MARGIN
    height = MARGIN + HEADER_HEIGHT + max(panels_height, TITLE_HEIGHT + len(legend) * LEGEND_ROW) + MARGIN
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND_COLOR
    for (row, col), (_, image) in zip(origins, panels):
        canvas[row - 1:row + image.shape[0] + 1, col - 1:col + image.shape[1] + 1] = FRAME_COLOR
        canvas[row:row + image.shape[0], col:col + image.shape[1]] = image
    for index, (_, color) in enumerate(legend):
        row = top + index * LEGEND_ROW + (LEGEND_ROW - LEGEND_SWATCH) // 2
        canvas[row:row + LEGEND_SWATCH, legend_left:legend_left + LEGEND_SWATCH] = color

    figure = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    figure.figimage(canvas, xo=0, yo=0, origin='upper')

    def text(row, col, string, fontsize=8):
        figure.text(col / width, 1 - row / height, string, va='center', fontsize=fontsize)

    text(MARGIN + HEADER_HEIGHT / 2, MARGIN, header, fontsize=9)
    for (row, col), (title, _) in zip(origins, panels):
        text(row - TITLE_HEIGHT / 2, col, title)
    for index, (name, _) in enumerate(legend):
        text(top + index * LEGEND_ROW + LEGEND_ROW / 2, legend_left + LEGEND_SWATCH + 5, name, fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def render_seg_bev(points, pred_labels, true_labels, xy_range=DEFAULT_XY_RANGE, resolution=0.2, point_size=1,
                   title=None, dpi=100):
    """Predicted (left) and true (right) point classes in BEV, with a legend; returns PNG bytes.

    Args:
        points: (N, 3+); pred_labels, true_labels: (N,) official ids 0..16 (0 = ignore / no prediction, grey).
    """
    pred = seg_bev_image(points, pred_labels, xy_range, resolution, point_size, what='predicted labels')
    true = seg_bev_image(points, true_labels, xy_range, resolution, point_size, what='true labels')
    pred_labels, true_labels = np.asarray(pred_labels).reshape(-1), np.asarray(true_labels).reshape(-1)
    labelled = true_labels != 0
    agree = f'{100.0 * (pred_labels[labelled] == true_labels[labelled]).mean():.1f}%' if labelled.any() else 'n/a'
    header = (title + ': ' if title else '') + \
        f'{len(true_labels)} points, predicted = true on {agree} of the {int(labelled.sum())} labelled ones'
    return _compose([('predicted', pred), ('true', true)], _legend_entries('ignore'), header, 'row', dpi)


def _occupied_count(volume):
    return int(np.count_nonzero(np.asarray(volume)))


def render_occ_bev(pred_volume, true_volume, pixels_per_voxel=None, include_noise=True, title=None, dpi=100):
    """Max-projections of the predicted (left) and true (right) (X, Y, Z) volumes; returns PNG bytes.

    Volumes of different resolution (e.g. a 128x128x10 prediction and the 512x512x40 truth) are drawn at the same
    size; `pixels_per_voxel` applies to the finer one (default: panels about 512 pixels wide)."""
    (pred_scale, true_scale), finest = _volume_scales(pred_volume, true_volume, pixels_per_voxel, 512)
    panels = [(f'predicted {tuple(np.shape(pred_volume))}, highest occupied voxel per column',
               occ_bev_image(pred_volume, pred_scale, include_noise, 'predicted volume')),
              (f'true {tuple(np.shape(true_volume))}', occ_bev_image(true_volume, true_scale, include_noise,
                                                                     'true volume'))]
    header = (title + ': ' if title else '') + f'BEV, occupied voxels predicted {_occupied_count(pred_volume)}, ' \
        f'true {_occupied_count(true_volume)}'
    return _compose(panels, _legend_entries('noise'), header, 'row', dpi)


def render_occ_side(pred_volume, true_volume, y_index=None, pixels_per_voxel=None, title=None, dpi=100):
    """x-z slices at `y_index` (an index of the finer grid; default its middle) of the predicted (top) and true
    (below) volumes; returns PNG bytes. A coarser volume is cut at y_index * its Y / the finer Y."""
    (pred_scale, true_scale), finest = _volume_scales(pred_volume, true_volume, pixels_per_voxel, 1024)
    y_index = int(finest[1]) // 2 if y_index is None else int(y_index)
    if not 0 <= y_index < finest[1]:
        raise ValueError(f'y index {y_index} outside 0..{int(finest[1]) - 1}')
    panels = []
    for name, volume, scale in (('predicted', pred_volume, pred_scale), ('true', true_volume, true_scale)):
        own_y = y_index * np.shape(volume)[1] // int(finest[1])
        panels.append((f'{name} {tuple(np.shape(volume))}, x-z plane at y index {own_y}',
                       occ_side_image(volume, own_y, scale, f'{name} volume')))
    header = (title + ': ' if title else '') + f'side view (x right, z up) at y index {y_index} of {int(finest[1])}'
    return _compose(panels, _legend_entries('noise'), header, 'column', dpi)


def save_png(path, png_bytes):
    """Write PNG bytes to `path` atomically; returns `path`."""
    atomic_save_bytes(png_bytes, path)
    return path
