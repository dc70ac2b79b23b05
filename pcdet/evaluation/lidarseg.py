"""nuScenes-lidarseg evaluation (spec §A.3) behind the evaluator interface: write the official results folder, check
it, run nuscenes-devkit's `LidarSegEval`.

Reads per batch:
    batch_dict['points']            (ΣN, 1 + C) column 0 = sample index b
    batch_dict['point_raw_index']   (ΣN,) row of the point in its key-frame `.pcd.bin`, -1 for sweep points
                                    (int64 from the dataset; a float tensor after load_data_to_device is accepted)
    batch_dict['metadata'][b]       'lidar_token' (key-frame LIDAR_TOP sample_data token), 'lidar_path' (absolute
                                    path of the key-frame file), optional 'num_raw_points'
    pred_dicts[b]['point_seg_preds'] (N_b,) official ids 1..16, 0 = no prediction; row-aligned with sample b's rows
                                    of `points`
Writes (every rank, its own frames; `result_dir` must be shared by the ranks):
    <result_dir>/lidarseg/<eval_set>/<lidar_token>_lidarseg.bin   uint8 1..16, one value per point of the raw key
        frame, scattered by point_raw_index. Raw points without a prediction (0, or not in the batch: range-filtered
        points) take the class of the nearest predicted point of the same frame (raw xyz from `lidar_path`, 5 float32
        per point); the count is logged.
and on rank 0 `<result_dir>/<eval_set>/submission.json` (`{"meta": {use_camera, use_lidar, use_radar, use_map,
use_external}}`, LiDAR only), `result.pkl` (metrics, devkit result, fill counts) and `result.txt`.

`evaluate` first checks that this run wrote a file for every key frame of the eval set and that every file is
complete (`check_lidarseg_results`: present, one value per point, values 1..16), raising LidarSegResultError naming
the file and what was expected; a frame is never skipped. Then `LidarSegEval(nusc, result_dir, eval_set)` (the
devkit knows only its built-in split names: mini_val, val, ...). Metrics: `lidarseg/mIoU`, `lidarseg/fwIoU`,
`lidarseg/IoU_<class>`. The `test` split (no labels) stops after writing the folder.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..datasets.nuscenes.nuscenes_eval import RESULT_META
from ..utils.file_utils import atomic_pickle_dump, atomic_save_bytes, atomic_save_text
from .evaluator import DatasetEvaluator, format_table, format_value

RAW_POINT_DIMS = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring index as float32
NUM_CLASSES = 17    # 0 ignore + 16 challenge classes
PRED_KEY, RAW_INDEX_KEY = 'point_seg_preds', 'point_raw_index'


class LidarSegResultError(ValueError):
    """A lidarseg prediction file is missing or malformed; the message names the file and the expectation."""


def _to_numpy(value):
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def prediction_path(results_folder, eval_set, lidar_token):
    """`<results_folder>/lidarseg/<eval_set>/<lidar_token>_lidarseg.bin`."""
    return Path(results_folder) / 'lidarseg' / eval_set / f'{lidar_token}_lidarseg.bin'


def load_raw_xyz(lidar_path, num_points=None):
    """(N, 3) float32 xyz of a nuScenes key-frame file (5 float32 per point); a size that is not a whole number of
    points, or a count other than `num_points`, raises LidarSegResultError naming the file."""
    raw = np.fromfile(lidar_path, dtype=np.float32)
    if raw.size % RAW_POINT_DIMS:
        raise LidarSegResultError(f'{lidar_path}: {raw.size} float32 values are not {RAW_POINT_DIMS} per point')
    raw = raw.reshape(-1, RAW_POINT_DIMS)
    if num_points is not None and len(raw) != num_points:
        raise LidarSegResultError(f'{lidar_path}: {len(raw)} points, but the sample says num_raw_points = '
                                  f'{num_points}')
    return raw[:, :3]


def scatter_frame_predictions(raw_index, preds, num_points, source):
    """(num_points,) int64 labels: preds[i] at raw_index[i], 0 where no row maps (module docs)."""
    labels = np.zeros(num_points, dtype=np.int64)
    if raw_index.size and (raw_index.min() < 0 or raw_index.max() >= num_points):
        raise LidarSegResultError(f'{source}: point_raw_index outside 0..{num_points - 1} (the key frame has '
                                  f'{num_points} points)')
    labels[raw_index] = preds
    return labels


def fill_nearest(labels, xyz):
    """`labels` with every 0 replaced by the label of the nearest (Euclidean, in `xyz`) point whose label is not 0;
    returns (labels, number filled). Non-finite coordinates are treated as the origin."""
    from scipy.spatial import cKDTree
    missing = labels == 0
    count = int(missing.sum())
    if count == 0:
        return labels, 0
    if count == len(labels):
        raise LidarSegResultError('no point of the frame has a prediction to fill from')
    xyz = np.nan_to_num(np.asarray(xyz, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    known = np.flatnonzero(~missing)
    _, nearest = cKDTree(xyz[known]).query(xyz[missing], k=1)
    labels = labels.copy()
    labels[missing] = labels[known[nearest]]
    return labels, count


def write_submission_json(results_folder, eval_set, meta=None):
    """`<results_folder>/<eval_set>/submission.json` with exactly the five bool meta keys (LiDAR only)."""
    meta = dict(RESULT_META if meta is None else meta)
    if set(meta) != set(RESULT_META) or not all(isinstance(v, bool) for v in meta.values()):
        raise ValueError(f'submission meta must have exactly the bool keys {sorted(RESULT_META)}, got {meta}')
    path = Path(results_folder) / eval_set / 'submission.json'
    atomic_save_text(json.dumps({'meta': meta}, indent=2), path)
    return path


def eval_set_samples(nusc, eval_set):
    """Key-frame LIDAR_TOP sample_data tokens of the devkit split `eval_set`, scene by scene (the devkit's order).
    LidarSegResultError for a split the devkit does not know or whose scenes are missing from the tables."""
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set
    from nuscenes.utils.splits import create_splits_scenes
    splits = create_splits_scenes(verbose=False)
    if eval_set not in splits:
        raise LidarSegResultError(f'nuScenes-lidarseg eval set {eval_set!r} (DATA_CONFIG.EVAL_SET or the version '
                                  f'default) is not a devkit split; LidarSegEval knows only {sorted(splits)}')
    known = {scene['name'] for scene in nusc.scene}
    missing = [name for name in splits[eval_set] if name not in known]
    if missing:
        raise LidarSegResultError(f'eval set {eval_set!r}: {len(missing)} of its scenes are not in {nusc.dataroot} '
                                  f'{nusc.version} (e.g. {missing[:3]})')
    return [nusc.get('sample', token)['data']['LIDAR_TOP'] for token in get_samples_in_eval_set(nusc, eval_set)]


def expected_point_count(nusc, sd_token):
    """Points of a key frame: the length of its lidarseg label file if it has one, else of its .pcd.bin."""
    if getattr(nusc, 'lidarseg', None):
        try:
            record = nusc.get('lidarseg', sd_token)
        except KeyError:
            record = None
        if record is not None:
            return os.path.getsize(os.path.join(nusc.dataroot, record['filename']))
    return os.path.getsize(nusc.get_sample_data_path(sd_token)) // (4 * RAW_POINT_DIMS)


def check_lidarseg_results(nusc, results_folder, eval_set, sd_tokens=None):
    """Every key frame of the eval set has `<results_folder>/lidarseg/<eval_set>/<token>_lidarseg.bin` with one uint8
    per point, all in 1..16; LidarSegResultError naming the first bad file otherwise."""
    sd_tokens = eval_set_samples(nusc, eval_set) if sd_tokens is None else sd_tokens
    for token in sd_tokens:
        path = prediction_path(results_folder, eval_set, token)
        if not path.is_file():
            raise LidarSegResultError(f'{path}: missing; expected the predictions of key frame {token} of eval set '
                                      f'{eval_set!r} (one uint8 in 1..16 per point)')
        values = np.fromfile(path, dtype=np.uint8)
        expected = expected_point_count(nusc, token)
        if len(values) != expected:
            raise LidarSegResultError(f'{path}: {len(values)} predictions, expected {expected} (one uint8 per point '
                                      'of the key frame)')
        bad = values[(values < 1) | (values >= NUM_CLASSES)]
        if bad.size:
            raise LidarSegResultError(f'{path}: value {int(bad[0])} outside 1..{NUM_CLASSES - 1} ({bad.size} such '
                                      'values; the devkit accepts only the 16 challenge classes)')


class LidarSegEvaluator(DatasetEvaluator):
    """Official nuScenes-lidarseg results folder + devkit metric (module docs)."""

    def __init__(self, dataset, result_dir, dataroot, version, eval_set, logger=None, dataloader=None,
                 dist_test=False):
        super().__init__(dataset, result_dir, logger=logger, dataloader=dataloader, dist_test=dist_test)
        self.dataroot, self.version, self.eval_set = dataroot, version, eval_set
        self.result_dir.mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self):
        self.frames = []

    def process(self, batch_dict, pred_dicts, ret_dict=None):
        for key in (RAW_INDEX_KEY, 'metadata', 'points'):
            if key not in batch_dict:
                raise KeyError(f'lidarseg evaluation needs batch_dict[{key!r}]: build the dataset with '
                               'DATA_CONFIG.TASK: segmentation')
        batch_index = _to_numpy(batch_dict['points'])[:, 0].astype(np.int64)
        raw_index = _to_numpy(batch_dict[RAW_INDEX_KEY]).reshape(-1).astype(np.int64)
        if len(raw_index) != len(batch_index):
            raise ValueError(f'lidarseg evaluation: {RAW_INDEX_KEY} has {len(raw_index)} rows, points '
                             f'{len(batch_index)}')
        for b, pred_dict in enumerate(pred_dicts):
            self.frames.append(self._process_frame(batch_dict['metadata'][b], batch_index == b, raw_index,
                                                   pred_dict, b))
        return None

    def _process_frame(self, metadata, rows, raw_index, pred_dict, b):
        missing = [key for key in ('lidar_token', 'lidar_path') if key not in metadata]
        if missing:
            raise KeyError(f'lidarseg evaluation: batch_dict["metadata"][{b}] lacks {missing}')
        if PRED_KEY not in pred_dict:
            raise KeyError(f'lidarseg evaluation: the model output of sample {b} has no {PRED_KEY!r} '
                           f'(keys: {sorted(pred_dict)})')
        lidar_path, token = metadata['lidar_path'], metadata['lidar_token']
        preds = _to_numpy(pred_dict[PRED_KEY]).reshape(-1).astype(np.int64)
        if len(preds) != int(rows.sum()):
            raise ValueError(f'lidarseg evaluation: {PRED_KEY} of sample {b} ({lidar_path}) has {len(preds)} '
                             f'values for {int(rows.sum())} points')
        if preds.size and (preds.min() < 0 or preds.max() >= NUM_CLASSES):
            raise ValueError(f'lidarseg evaluation: {PRED_KEY} of {lidar_path} holds {preds.min()}..{preds.max()}; '
                             f'expected 1..{NUM_CLASSES - 1} or 0 (no prediction)')
        frame_raw = raw_index[rows]
        key_rows = frame_raw >= 0
        num_points = metadata.get('num_raw_points')
        xyz = None
        if num_points is None:
            xyz = load_raw_xyz(lidar_path)
            num_points = len(xyz)
        labels = scatter_frame_predictions(frame_raw[key_rows], preds[key_rows], int(num_points), lidar_path)
        filled = 0
        if (labels == 0).any():
            xyz = load_raw_xyz(lidar_path, int(num_points)) if xyz is None else xyz
            try:
                labels, filled = fill_nearest(labels, xyz)
            except LidarSegResultError as error:
                raise LidarSegResultError(f'{lidar_path} (sample {b}): {error}') from None
        atomic_save_bytes(labels.astype(np.uint8).tobytes(),
                          prediction_path(self.result_dir, self.eval_set, token), durable=False)
        return {'lidar_token': token, 'num_points': int(num_points), 'num_filled': filled}

    def evaluate(self):
        frames = self.gather_frames(self.frames)
        if not self.is_main:
            return '', {}
        num_points = sum(f['num_points'] for f in frames)
        num_filled = sum(f['num_filled'] for f in frames)
        share = num_filled / max(num_points, 1)
        self.logger.info(f'lidarseg: {num_filled} of {num_points} key-frame points ({share:.2%}; '
                         f'{sum(f["num_filled"] > 0 for f in frames)} of {len(frames)} frames) had no prediction '
                         'and took the class of the nearest predicted point')
        write_submission_json(self.result_dir, self.eval_set)
        folder = self.result_dir / 'lidarseg' / self.eval_set
        summary = {'eval_set': self.eval_set, 'num_frames': len(frames), 'num_points': num_points,
                   'num_filled': num_filled}
        if self.eval_set == 'test':
            return f'test split: lidarseg predictions written to {folder} (submit them to the server)\n', {}
        from ..datasets.nuscenes.nuscenes_utils import load_nusc
        nusc = load_nusc(self.dataroot, self.version, verbose=False)
        sd_tokens = eval_set_samples(nusc, self.eval_set)
        written = {f['lidar_token'] for f in frames}
        not_run = [t for t in sd_tokens if t not in written]
        if not_run:
            raise LidarSegResultError(
                f'{prediction_path(self.result_dir, self.eval_set, not_run[0])}: not written by this evaluation; '
                f'{len(not_run)} of the {len(sd_tokens)} key frames of eval set {self.eval_set!r} were not in the '
                'evaluated dataset (check the info file, SAMPLED_INTERVAL and EVAL_SET)')
        check_lidarseg_results(nusc, self.result_dir, self.eval_set, sd_tokens)
        from nuscenes.eval.lidarseg.evaluate import LidarSegEval
        devkit = LidarSegEval(nusc, str(self.result_dir), self.eval_set, verbose=False).evaluate()
        metrics = {'lidarseg/mIoU': float(devkit['miou']), 'lidarseg/fwIoU': float(devkit['freq_weighted_iou'])}
        class_ious = {name: float(iou) for name, iou in devkit['iou_per_class'].items() if name != 'ignore'}
        metrics.update({f'lidarseg/IoU_{name}': iou for name, iou in class_ious.items()})
        result_str = self._format(metrics, class_ious, summary)
        atomic_pickle_dump({'metrics': metrics, 'devkit': devkit, **summary}, self.result_dir / 'result.pkl')
        atomic_save_text(result_str, self.result_dir / 'result.txt')
        return result_str, metrics

    def _format(self, metrics, class_ious, summary):
        rows = [[name, format_value(iou)] for name, iou in class_ious.items()]
        return '\n'.join([
            f'nuScenes-lidarseg {summary["eval_set"]} (nuscenes-devkit LidarSegEval): {summary["num_frames"]} frames, '
            f'{summary["num_points"]} points, {summary["num_filled"]} filled from the nearest predicted point',
            format_table(['class', 'IoU'], rows), '',
            f'mIoU:  {format_value(metrics["lidarseg/mIoU"])}',
            f'fwIoU: {format_value(metrics["lidarseg/fwIoU"])}']) + '\n'
