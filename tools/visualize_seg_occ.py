"""Pictures of segmentation and occupancy results: predicted beside true, one PNG per frame (two for occupancy).

Segmentation (the official nuScenes-lidarseg results layout, as the evaluator writes it):

    python tools/visualize_seg_occ.py seg --dataroot data/nuscenes/v1.0-trainval --version v1.0-trainval \
        --result_dir output/<exp>/eval/epoch_X/val --eval_set val --num_frames 3 --out_dir output/seg_pictures

  reads  <result_dir>/lidarseg/<eval_set>/<lidar_token>_lidarseg.bin  uint8 official id (1..16) per raw point,
         the key-frame point file (5 float32 per point; found through --info_file infos with `lidar_token` and
         `lidar_path`, else <dataroot>/<version>/sample_data.json) and the GT label file (<version>/lidarseg.json,
         else lidarseg/<version>/<token>_lidarseg.bin), whose 32 general indices are mapped to the 16 challenge ids
         BY NAME through <version>/category.json (`index` field) and the devkit's fine -> challenge table;
  writes <out_dir>/seg_<lidar_token>.png.

Occupancy (nuScenes-Occupancy layout; predictions in the same layout as the GT):

    python tools/visualize_seg_occ.py occ --pred_root output/<exp>/occ_pred \
        --gt_root data/nuscenes/v1.0-trainval/nuScenes-Occupancy --slice_y 256 --out_dir output/occ_pictures

  reads  <pred_root>/scene_<scene_token>/occupancy/<lidar_token>.npy and the GT file with the same relative path
         under --gt_root (found by token when the prediction lies elsewhere under pred_root). A file is either
         (N, 4) integer rows [z, y, x, label] of the --grid (label 0 = noise, 1..16; duplicate voxels: label vote,
         ties to the smallest class, a class beats noise) or a dense (X, Y, Z) uint8 volume (0 free, 1..16,
         255 noise; coarse volumes are fine if the grid is an integer multiple of them);
  writes <out_dir>/occ_bev_<lidar_token>.png (max-projection) and occ_side_<lidar_token>.png (x-z slice).
"""
import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from pcdet.utils import seg_occ_visualization as vis  # noqa: E402
from pcdet.utils.point_io import load_points  # noqa: E402

NUM_POINT_FEATURES = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring
# nuscenes-devkit LidarsegClassMapper.get_fine2coarse: general lidarseg class -> challenge class (None = ignore).
GENERAL_TO_CHALLENGE = {
    'noise': None, 'animal': None, 'human.pedestrian.adult': 'pedestrian', 'human.pedestrian.child': 'pedestrian',
    'human.pedestrian.construction_worker': 'pedestrian', 'human.pedestrian.personal_mobility': None,
    'human.pedestrian.police_officer': 'pedestrian', 'human.pedestrian.stroller': None,
    'human.pedestrian.wheelchair': None, 'movable_object.barrier': 'barrier', 'movable_object.debris': None,
    'movable_object.pushable_pullable': None, 'movable_object.trafficcone': 'traffic_cone',
    'static_object.bicycle_rack': None, 'vehicle.bicycle': 'bicycle', 'vehicle.bus.bendy': 'bus',
    'vehicle.bus.rigid': 'bus', 'vehicle.car': 'car', 'vehicle.construction': 'construction_vehicle',
    'vehicle.emergency.ambulance': None, 'vehicle.emergency.police': None, 'vehicle.motorcycle': 'motorcycle',
    'vehicle.trailer': 'trailer', 'vehicle.truck': 'truck', 'flat.driveable_surface': 'driveable_surface',
    'flat.other': 'other_flat', 'flat.sidewalk': 'sidewalk', 'flat.terrain': 'terrain', 'static.manmade': 'manmade',
    'static.other': None, 'static.vegetation': 'vegetation', 'vehicle.ego': None,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest='task', required=True)
    seg = tasks.add_parser('seg', help='lidarseg results vs GT labels (BEV)')
    seg.add_argument('--dataroot', required=True, help='nuScenes dataroot (samples/, lidarseg/, <version>/)')
    seg.add_argument('--version', required=True, help='e.g. v1.0-trainval, v1.0-mini')
    seg.add_argument('--result_dir', required=True, help='folder holding lidarseg/<eval_set>/')
    seg.add_argument('--eval_set', default=None, help='subfolder of <result_dir>/lidarseg (default: the only one)')
    seg.add_argument('--info_file', default=None, help='infos (.pkl) with lidar_token + lidar_path per frame; '
                     'default: look the point files up in <version>/sample_data.json')
    seg.add_argument('--category_json', default=None, help='default <dataroot>/<version>/category.json')
    seg.add_argument('--range', type=float, nargs=4, default=list(vis.DEFAULT_XY_RANGE),
                     metavar=('X_MIN', 'Y_MIN', 'X_MAX', 'Y_MAX'), help='BEV extent in metres')
    seg.add_argument('--resolution', type=float, default=0.2, help='metres per pixel')
    seg.add_argument('--point_size', type=int, default=1, help='pixels per point side')
    occ = tasks.add_parser('occ', help='occupancy predictions vs GT (BEV max-projection and x-z slice)')
    occ.add_argument('--pred_root', required=True, help='folder with the predicted .npy files')
    occ.add_argument('--gt_root', required=True, help='the nuScenes-Occupancy folder (scene_<token>/occupancy/)')
    occ.add_argument('--grid', type=int, nargs=3, default=[512, 512, 40], metavar=('X', 'Y', 'Z'),
                     help='grid of [z, y, x, label] row files')
    occ.add_argument('--slice_y', type=int, default=None, help='y index of the side slice (default: the middle)')
    occ.add_argument('--hide_noise', action='store_true', help='BEV: treat noise as free (shows what is below)')
    for sub in (seg, occ):
        sub.add_argument('--tokens', nargs='*', default=None, help='lidar tokens to draw (default: --num_frames)')
        sub.add_argument('--num_frames', type=int, default=3, help='evenly spaced frames when --tokens is not given')
        sub.add_argument('--out_dir', default='output/seg_occ_pictures', help='folder for the PNG files')
    return parser.parse_args(argv)


def pick(available, tokens, num_frames, where):
    """`tokens` (each must be available) or `num_frames` evenly spaced ones of the sorted `available`."""
    if tokens:
        missing = [t for t in tokens if t not in available]
        if missing:
            raise SystemExit(f'No prediction for tokens {missing} in {where}')
        return list(tokens)
    names = sorted(available)
    if not names:
        raise SystemExit(f'No prediction files in {where}')
    count = max(1, min(num_frames, len(names)))
    return [names[i] for i in sorted(set(np.linspace(0, len(names) - 1, num=count).astype(int).tolist()))]


# ------------------------------------------------------------------------------------------------ segmentation
def general_to_challenge_lut(category_json):
    """(256,) uint8: general lidarseg index (category.json `index`) -> official challenge id 0..16, by name."""
    path = Path(category_json)
    if not path.is_file():
        raise SystemExit(f'{path} not found: the lidarseg category.json maps the label indices to class names')
    challenge_id = {name: i + 1 for i, name in enumerate(vis.CLASS_NAMES)}
    lut = np.zeros(256, dtype=np.uint8)
    for record in json.loads(path.read_text()):
        if 'index' not in record:
            raise SystemExit(f'{path}: category {record.get("name")!r} has no `index` field; use the category.json '
                             'that comes with nuScenes-lidarseg')
        if record['name'] not in GENERAL_TO_CHALLENGE:
            raise SystemExit(f'{path}: unknown lidarseg class {record["name"]!r}')
        target = GENERAL_TO_CHALLENGE[record['name']]
        lut[int(record['index'])] = 0 if target is None else challenge_id[target]
    return lut


def lidar_paths(dataroot, version, info_file=None):
    """{lidar_token: absolute key-frame point file} from the infos or from sample_data.json."""
    dataroot = Path(dataroot)
    if info_file is not None:
        if not Path(info_file).is_file():
            raise SystemExit(f'Info file {info_file} not found')
        with open(info_file, 'rb') as handle:
            infos = pickle.load(handle)
        infos = infos['infos'] if isinstance(infos, dict) else infos
        return {info['lidar_token']: dataroot / info['lidar_path'] for info in infos if 'lidar_token' in info}
    table = dataroot / version / 'sample_data.json'
    if not table.is_file():
        raise SystemExit(f'{table} not found (needed to find the point files); or pass --info_file')
    return {rec['token']: dataroot / rec['filename'] for rec in json.loads(table.read_text())
            if rec.get('is_key_frame') and 'LIDAR_TOP' in rec['filename']}


def gt_label_paths(dataroot, version):
    """{lidar_token: GT label file}: <version>/lidarseg.json when present, else the default layout (lazily)."""
    table = Path(dataroot) / version / 'lidarseg.json'
    if not table.is_file():
        return {}
    return {rec['sample_data_token']: Path(dataroot) / rec['filename'] for rec in json.loads(table.read_text())}


def load_seg_frame(token, pred_file, point_file, gt_file, lut):
    """(points (N, 5), predicted ids (N,), true ids (N,)) of one frame; lengths checked, files named in errors."""
    for what, path in (('prediction', pred_file), ('point', point_file), ('GT label', gt_file)):
        if path is None or not Path(path).is_file():
            raise SystemExit(f'{what} file of lidar token {token} not found: {path}')
    points = load_points(point_file, NUM_POINT_FEATURES)
    pred = np.fromfile(pred_file, dtype=np.uint8)
    gt_general = np.fromfile(gt_file, dtype=np.uint8)
    for what, path, labels in (('prediction', pred_file, pred), ('GT label', gt_file, gt_general)):
        if len(labels) != len(points):
            raise SystemExit(f'{what} file {path} has {len(labels)} labels but {point_file} has {len(points)} points')
    if pred.max(initial=0) > 16:
        raise SystemExit(f'prediction file {pred_file}: labels must be official ids 1..16, found {pred.max()}')
    mapped = lut(gt_general) if callable(lut) else np.asarray(lut)[gt_general]
    return points, pred, np.asarray(mapped, dtype=np.int64)


def draw_seg(args):
    dataroot = Path(args.dataroot)
    lidarseg_dir = Path(args.result_dir) / 'lidarseg'
    if args.eval_set is None:
        sets = sorted(p.name for p in lidarseg_dir.iterdir() if p.is_dir()) if lidarseg_dir.is_dir() else []
        if len(sets) != 1:
            raise SystemExit(f'{lidarseg_dir}: pass --eval_set, found {sets or "no result folders"}')
        args.eval_set = sets[0]
    pred_dir = lidarseg_dir / args.eval_set
    if not pred_dir.is_dir():
        raise SystemExit(f'Result folder {pred_dir} not found (expected <result_dir>/lidarseg/<eval_set>/)')
    available = {p.name[:-len('_lidarseg.bin')]: p for p in pred_dir.glob('*_lidarseg.bin')}
    tokens = pick(available, args.tokens, args.num_frames, pred_dir)
    lut = general_to_challenge_lut(args.category_json or dataroot / args.version / 'category.json')
    points_by_token = lidar_paths(dataroot, args.version, args.info_file)
    labels_by_token = gt_label_paths(dataroot, args.version)
    written = []
    for token in tokens:
        gt_file = labels_by_token.get(token, dataroot / 'lidarseg' / args.version / f'{token}_lidarseg.bin')
        points, pred, true = load_seg_frame(token, available[token], points_by_token.get(token), gt_file, lut)
        png = vis.render_seg_bev(points, pred, true, xy_range=args.range, resolution=args.resolution,
                                 point_size=args.point_size, title=token)
        written.append(vis.save_png(Path(args.out_dir) / f'seg_{token}.png', png))
    return written


# ------------------------------------------------------------------------------------------------ occupancy
def rows_to_volume(rows, grid_size, path='rows'):
    """(N, 4) [z, y, x, label] rows (or (N, 7) with velocities, label last) -> (X, Y, Z) uint8 volume.

    Label 0 (noise) becomes 255. A voxel listed more than once takes the most frequent label; ties go to the
    smallest class, and a class beats noise."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] not in (4, 7) or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f'{path}: expected integer (N, 4) rows [z, y, x, label], got {rows.dtype} {rows.shape}')
    size_x, size_y, size_z = (int(v) for v in grid_size)
    z, y, x, label = (rows[:, i].astype(np.int64) for i in (0, 1, 2, -1))
    outside = (x < 0) | (x >= size_x) | (y < 0) | (y >= size_y) | (z < 0) | (z >= size_z)
    if outside.any():
        raise ValueError(f'{path}: {int(outside.sum())} rows outside the grid {size_x}x{size_y}x{size_z} (x, y, z)')
    if len(label) and (label.min() < 0 or label.max() > 16):
        raise ValueError(f'{path}: labels must be 0 (noise) or 1..16, found [{label.min()}, {label.max()}]')
    label = np.where(label == 0, vis.NOISE, label)
    voxel = (x * size_y + y) * size_z + z
    pairs, counts = np.unique(voxel * 256 + label, return_counts=True)
    voxels, labels = pairs // 256, pairs % 256
    order = np.lexsort((labels, -counts, voxels))  # noise (255) sorts after every class
    first = np.ones(len(order), dtype=bool)
    first[1:] = voxels[order][1:] != voxels[order][:-1]
    volume = np.zeros((size_x, size_y, size_z), dtype=np.uint8)
    volume.reshape(-1)[voxels[order][first]] = labels[order][first]
    return volume


def load_volume(path, grid_size):
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f'Occupancy file not found: {path}')
    array = np.load(path)
    if array.ndim == 3:
        if not np.issubdtype(array.dtype, np.integer):
            raise SystemExit(f'{path}: a dense volume must be integer (0 free, 1..16, 255 noise), got {array.dtype}')
        return array
    try:
        return rows_to_volume(array, grid_size, path)
    except ValueError as error:
        raise SystemExit(str(error)) from error


def draw_occ(args):
    pred_root, gt_root = Path(args.pred_root), Path(args.gt_root)
    if not pred_root.is_dir():
        raise SystemExit(f'Prediction folder {pred_root} not found')
    if not gt_root.is_dir():
        raise SystemExit(f'GT folder {gt_root} not found (the nuScenes-Occupancy folder with scene_<token>/)')
    available = {p.stem: p for p in sorted(pred_root.rglob('*.npy'))}
    tokens = pick(available, args.tokens, args.num_frames, pred_root)
    written = []
    for token in tokens:
        pred_file = available[token]
        gt_file = gt_root / pred_file.relative_to(pred_root)
        if not gt_file.is_file():
            matches = sorted(gt_root.glob(f'scene_*/occupancy/{token}.npy'))
            if not matches:
                raise SystemExit(f'No GT occupancy for {pred_file}: neither {gt_file} nor '
                                 f'{gt_root}/scene_*/occupancy/{token}.npy exists')
            gt_file = matches[0]
        pred, true = load_volume(pred_file, args.grid), load_volume(gt_file, args.grid)
        out_dir = Path(args.out_dir)
        written.append(vis.save_png(out_dir / f'occ_bev_{token}.png', vis.render_occ_bev(
            pred, true, include_noise=not args.hide_noise, title=token)))
        written.append(vis.save_png(out_dir / f'occ_side_{token}.png', vis.render_occ_side(
            pred, true, y_index=args.slice_y, title=token)))
    return written


def main(argv=None):
    args = parse_args(argv)
    try:
        written = draw_seg(args) if args.task == 'seg' else draw_occ(args)
    except ValueError as error:  # bad values inside a file / bad arguments, e.g. a slice index off the grid
        raise SystemExit(f'{args.task}: {error}') from error
    for path in written:
        print(f'wrote {path}')
    return written


if __name__ == '__main__':
    main()
