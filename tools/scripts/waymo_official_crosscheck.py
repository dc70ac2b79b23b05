"""Cross-check pcdet's Waymo AP/APH against the official `detection_metrics` op (waymo-open-dataset + TensorFlow).

Run it in a SEPARATE environment that has `waymo-open-dataset-tf-2-12-0` (see docs/WAYMO_EVAL.md for how to
create it): the official package pins TensorFlow and its own numpy, never install it into pcdet's main venv.

    python tools/scripts/waymo_official_crosscheck.py --pred_infos result.pkl --gt_infos <tag>_infos_val.pkl \
        --class_names Vehicle Pedestrian Cyclist [--sampled_interval 5]
    python tools/scripts/waymo_official_crosscheck.py --synthetic_frames 300 --seed 0     # no data needed

Both evaluators get the same frames. The predictions and GT are converted to the official op's inputs exactly as
OpenPCDet's `OpenPCDetWaymoDetectionMetricsEstimator` does (GT of the evaluated classes with > 0 points,
difficulty 0 -> 1 if > 5 points else 2, headings wrapped to [-pi, pi), boxes beyond distance_thresh + 0.5 m
dropped, sigmoid if any score > 1, Hungarian matcher, IoU thresholds 0.7/0.5/0.5/0.5, cutoffs 0.00..1.00), the
official op runs in TF1 graph mode, pcdet's evaluator runs on the same pickles, and a table prints both values
and their difference for every key. Exit status 1 if any |difference| exceeds --tolerance.

Only numpy is imported at module level, so the conversion helpers can be imported (and are tested) without
TensorFlow.
"""
import argparse
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # use this checkout's pcdet without installing it

from pcdet.datasets.waymo import waymo_eval  # noqa: E402  (numpy-only at import)

WAYMO_CLASSES = waymo_eval.WAYMO_CLASSES  # index = official Label.Type


def _annos(gt):
    return gt['annos'] if isinstance(gt.get('annos'), dict) else gt


def official_inputs(pred_annos, gt_annos, class_names, distance_thresh=1000):
    """The official op's feed, built like OpenPCDet's `generate_waymo_type_results` + `mask_by_distance`.

    Returns:
        dict with prediction_{frame_id int64, bbox float32 (K, 7), type uint8, score float32, overlap_nlz bool}
        and ground_truth_{frame_id, bbox, type, difficulty uint8}.
    """
    pd = {'frame_id': [], 'bbox': [], 'type': [], 'score': []}
    gt = {'frame_id': [], 'bbox': [], 'type': [], 'difficulty': []}
    for frame_index, (pred, info) in enumerate(zip(pred_annos, gt_annos)):
        names = np.asarray(pred['name']).reshape(-1)
        boxes = np.asarray(pred['boxes_lidar'], np.float64).reshape(len(names), -1)[:, :7] if len(names) else \
            np.zeros((0, 7))
        known = np.isin(names, WAYMO_CLASSES[1:])  # OpenPCDet would crash on other names; they score nothing
        pd['frame_id'].append(np.full(int(known.sum()), frame_index, np.int64))
        pd['bbox'].append(boxes[known])
        pd['type'].append(np.array([WAYMO_CLASSES.index(n) for n in names[known].tolist()], np.int64))
        pd['score'].append(np.asarray(pred['score'], np.float64).reshape(-1)[known])

        annos = _annos(info)
        names = np.asarray(annos['name']).reshape(-1)
        num_points = np.asarray(annos['num_points_in_gt']).reshape(-1)
        difficulty = np.asarray(annos['difficulty']).reshape(-1).astype(np.int64).copy()
        zero = difficulty == 0
        difficulty[zero & (num_points > 5)] = 1
        difficulty[zero & (num_points <= 5)] = 2
        keep = np.isin(names, class_names) & (num_points > 0)
        boxes = np.asarray(annos['gt_boxes_lidar'], np.float64).reshape(len(names), -1)[:, :7] if len(names) else \
            np.zeros((0, 7))
        gt['frame_id'].append(np.full(int(keep.sum()), frame_index, np.int64))
        gt['bbox'].append(boxes[keep])
        gt['type'].append(np.array([WAYMO_CLASSES.index(n) for n in names[keep].tolist()], np.int64))
        gt['difficulty'].append(difficulty[keep])
    pd = {k: np.concatenate(v) if v else np.zeros((0, 7) if k == 'bbox' else 0) for k, v in pd.items()}
    gt = {k: np.concatenate(v) if v else np.zeros((0, 7) if k == 'bbox' else 0) for k, v in gt.items()}
    for group in (pd, gt):
        bbox = group['bbox'].reshape(-1, 7)
        bbox[:, 6] = bbox[:, 6] - np.floor(bbox[:, 6] / (2 * np.pi) + 0.5) * 2 * np.pi  # limit_period(0.5, 2 pi)
        keep = np.linalg.norm(bbox[:, :2], axis=1) < distance_thresh + 0.5
        for key in group:
            group[key] = (bbox if key == 'bbox' else group[key])[keep]
    if len(pd['score']) and pd['score'].max() > 1:
        print('Warning: scores > 1, applying a sigmoid (as OpenPCDet does)')
        pd['score'] = 1 / (1 + np.exp(-pd['score']))
    feed = {f'prediction_{k}': v for k, v in pd.items()}
    feed.update({f'ground_truth_{k}': v for k, v in gt.items()})
    feed['prediction_overlap_nlz'] = np.zeros(len(pd['score']), bool)
    dtypes = {'frame_id': np.int64, 'bbox': np.float32, 'type': np.uint8, 'score': np.float32,
              'difficulty': np.uint8, 'overlap_nlz': bool}
    return {k: v.astype(dtypes[k.split('_', 1)[1].replace('truth_', '')]) for k, v in feed.items()}


def official_config_text():
    """OpenPCDet's metrics config (protobuf text): OBJECT_TYPE breakdown, LEVEL_1/2, Hungarian, 3D IoU."""
    lines = ['breakdown_generator_ids: OBJECT_TYPE', 'difficulties { levels: 1 levels: 2 }',
             'matcher_type: TYPE_HUNGARIAN']
    thresholds = [0.0] + [waymo_eval.IOU_THRESHOLDS[name] for name in WAYMO_CLASSES[1:]]
    lines += [f'iou_thresholds: {t}' for t in thresholds]
    lines += ['box_type: TYPE_3D']
    lines += [f'score_cutoffs: {i * 0.01!r}' for i in range(100)] + ['score_cutoffs: 1.0']
    return '\n'.join(lines)


def run_official(feed):
    """Run `detection_metrics.get_detection_metric_ops` in TF1 graph mode; returns {key: float}."""
    from pcdet.utils.optional import import_optional
    tf = import_optional('tensorflow', 'the official Waymo metrics cross-check', 'waymo')
    import_optional('waymo_open_dataset', 'the official Waymo metrics cross-check', 'waymo')
    from google.protobuf import text_format
    from waymo_open_dataset.metrics.python import detection_metrics
    from waymo_open_dataset.protos import metrics_pb2

    try:
        tf.config.set_visible_devices([], 'GPU')  # the op is CPU-only; keep TF off the GPUs
    except (RuntimeError, ValueError):
        pass
    tf.compat.v1.disable_eager_execution()
    config = metrics_pb2.Config()
    text_format.Merge(official_config_text(), config)
    dtypes = {'frame_id': tf.int64, 'bbox': tf.float32, 'type': tf.uint8, 'score': tf.float32,
              'difficulty': tf.uint8, 'overlap_nlz': tf.bool}
    graph = tf.Graph()
    with graph.as_default():
        placeholders = {key: tf.compat.v1.placeholder(dtype=dtypes[key.split('_', 1)[1].replace('truth_', '')])
                        for key in feed}
        metrics = detection_metrics.get_detection_metric_ops(config=config, **placeholders)
        update = tf.group([value[1] for value in metrics.values()])
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.initializers.local_variables())
            sess.run(update, feed_dict={placeholders[key]: value for key, value in feed.items()})
            values = sess.run({key: value[0] for key, value in metrics.items()})
    return {key: float(np.asarray(value).reshape(-1)[0]) for key, value in values.items()}


def make_synthetic(num_frames, seed=0):
    """Random Waymo-like (det_annos, infos): jittered / duplicated / flipped / missed detections, close pairs
    of GT, background FPs, difficulties 0/1/2 and point counts 0..50. For checking without real data."""
    rng = np.random.default_rng(seed)
    size = {'Vehicle': (4.5, 2.0, 1.6), 'Pedestrian': (0.9, 0.9, 1.8), 'Cyclist': (1.8, 0.8, 1.7)}
    preds, infos = [], []
    for frame in range(num_frames):
        g_names, g_boxes, p_names, p_boxes = [], [], [], []
        for name in rng.choice(list(size), int(rng.integers(0, 40)), p=[0.6, 0.3, 0.1]):
            dims = np.array(size[name]) * rng.uniform(0.8, 1.2, 3)
            heading = rng.uniform(-math.pi, math.pi)
            first = np.array([*rng.uniform(-70, 70, 2), rng.normal(0, 0.5), *dims, heading])
            group = [first]
            if rng.random() < 0.1:
                shift = rng.uniform(0.1, 0.5) * dims[0]
                group.append(first + [shift * math.cos(heading), shift * math.sin(heading), 0, 0, 0, 0, 0])
            for g in group:
                g_names.append(name)
                g_boxes.append(np.r_[g, rng.normal(0, 3, 2)])  # (N, 9) with velocities like real infos
                for _ in range(int(rng.choice([0, 1, 1, 1, 1, 2]))):
                    jitter = np.r_[rng.normal(0, 0.03 * dims[0], 2), rng.normal(0, 0.05), dims * rng.normal(0, 0.03, 3),
                                   rng.normal(0, 0.1)]
                    p = g + jitter
                    p[6] += math.pi if rng.random() < 0.05 else 0
                    p_names.append(name if rng.random() < 0.95 else str(rng.choice(list(size))))
                    p_boxes.append(p)
        for _ in range(int(rng.integers(0, 15))):
            name = str(rng.choice(list(size)))
            p_names.append(name)
            p_boxes.append(np.array([*rng.uniform(-70, 70, 2), 0, *size[name], rng.uniform(-3, 3)]))
        scores = rng.beta(2, 2, len(p_names))
        scores = np.where(rng.random(len(scores)) < 0.2, np.round(scores, 2), scores)
        n = len(g_names)
        annos = {'name': np.array(g_names, dtype='<U10'), 'gt_boxes_lidar': np.array(g_boxes).reshape(n, 9),
                 'difficulty': rng.choice([0, 1, 2], n, p=[0.2, 0.6, 0.2]).astype(np.int32),
                 'num_points_in_gt': rng.choice([0, 1, 3, 5, 6, 10, 50], n).astype(np.int32)}
        frame_id = f'synthetic_{frame:04d}'
        infos.append({'frame_id': frame_id, 'annos': annos})
        preds.append({'name': np.array(p_names, dtype='<U10'), 'score': scores.astype(np.float32),
                      'boxes_lidar': np.array(p_boxes, np.float32).reshape(len(p_names), 7), 'frame_id': frame_id})
    return preds, infos


def compare(official, ours, tolerance):
    """Print the side-by-side table; returns the largest |official - pcdet| over the shared keys."""
    print(f'{"key":45s} {"official":>10s} {"pcdet":>10s} {"diff":>10s}')
    worst = 0.0
    for key in list(official) + [k for k in ours if k not in official]:
        mine, theirs = ours.get(key), official.get(key)
        if mine is None or theirs is None:
            shown = f'{theirs:10.4f}' if theirs is not None else f'{"-":>10s}'
            print(f'{key:45s} {shown} {"-" if mine is None else f"{mine:10.4f}":>10s} {"(one side only)":>10s}')
            continue
        diff = mine - theirs
        worst = max(worst, abs(diff))
        flag = '  <-- exceeds tolerance' if abs(diff) > tolerance else ''
        print(f'{key:45s} {theirs:10.4f} {mine:10.4f} {diff:+10.2e}{flag}')
    return worst


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--pred_infos', help='result.pkl (det_annos)')
    source.add_argument('--synthetic_frames', type=int, help='evaluate this many random synthetic frames instead')
    parser.add_argument('--gt_infos', help='<tag>_infos_val.pkl (with --pred_infos)')
    parser.add_argument('--class_names', nargs='+', default=['Vehicle', 'Pedestrian', 'Cyclist'])
    parser.add_argument('--sampled_interval', type=int, default=None, help='GT infos[::N]; default: inferred')
    parser.add_argument('--distance_thresh', type=float, default=1000)
    parser.add_argument('--seed', type=int, default=0, help='seed of --synthetic_frames')
    parser.add_argument('--save_synthetic', help='folder to write the synthetic result.pkl / infos.pkl to')
    parser.add_argument('--tolerance', type=float, default=1e-3, help='max |official - pcdet| accepted')
    parser.add_argument('--output_json', help='write {"official": ..., "pcdet": ...} here')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.synthetic_frames is not None:
        preds, gt_infos = make_synthetic(args.synthetic_frames, args.seed)
        if args.save_synthetic:
            out = Path(args.save_synthetic)
            out.mkdir(parents=True, exist_ok=True)
            (out / 'result.pkl').write_bytes(pickle.dumps(preds))
            (out / 'infos.pkl').write_bytes(pickle.dumps(gt_infos))
    else:
        if not args.gt_infos:
            raise SystemExit('--gt_infos is required with --pred_infos')
        preds = pickle.loads(Path(args.pred_infos).read_bytes())
        gt_infos, interval = waymo_eval.select_gt_frames(pickle.loads(Path(args.gt_infos).read_bytes()), preds,
                                                         args.sampled_interval)
        print(f'GT sampled_interval: {interval}')
    gt_annos = [dict(_annos(info), **({'frame_id': info['frame_id']} if 'frame_id' in info else {}))
                for info in gt_infos]
    feed = official_inputs(preds, gt_annos, args.class_names, args.distance_thresh)
    print(f'Number: (pd, {len(feed["prediction_score"])}) VS. (gt, {len(feed["ground_truth_type"])}); '
          f'Level 1: {int((feed["ground_truth_difficulty"] == 1).sum())}, '
          f'Level 2: {int((feed["ground_truth_difficulty"] == 2).sum())}')
    official = run_official(feed)
    ours = waymo_eval.waymo_detection_metrics(preds, gt_annos, args.class_names, args.distance_thresh,
                                              max_boxes_per_frame=None)
    worst = compare(official, ours, args.tolerance)
    print(f'max |official - pcdet| = {worst:.3e} (tolerance {args.tolerance:g})')
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({'official': official, 'pcdet': ours}, indent=1))
    return 0 if worst <= args.tolerance else 1


if __name__ == '__main__':
    sys.exit(main())
