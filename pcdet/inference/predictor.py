"""Run a trained detector on raw point arrays, without a dataset: `Predictor(cfg, ckpt).predict(points)`.

The predictor builds the model from the experiment config alone (`pcdet.models.build_network_from_cfg`), loads the
checkpoint strictly, and runs the dataset's test-mode preprocessing on each point array through the same classes
the datasets use (`PointFeatureEncoder`, `DataProcessor`, `collate_batch`), so a frame goes through exactly what
`tools/test.py` would do with it after the dataset reader:

    points (N, C) in DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list order
      -> layout check (C columns, finite)            [rejected with the expected column names]
      -> PointFeatureEncoder (used_feature_list)      [as DatasetTemplate.prepare_data, test mode]
      -> DataProcessor (range mask, voxelization / placeholder; `shuffle_points` is skipped: it only reorders)
      -> collate_batch -> load_data_to_device -> model.eval() under no_grad
      -> {'boxes' (K, 7|9) float32, 'scores' (K,) float32, 'labels' (K,) int64 1-based, 'names' (K,) str}

Points are expected as the dataset *reader* returns them (after its load-time transforms): e.g. nuScenes
`[x, y, z, intensity, timestamp]` with the sweep time lag as timestamp (0 for a single key frame); Waymo
`[x, y, z, intensity, elongation]` with `tanh` applied to intensity (and elongation with `POINTS_TANH_DIM`).
`apply_dataset_load_transforms(points, data_cfg)` applies those value transforms to points read from the raw
files. docs/INFERENCE.md lists the layouts.
"""
import logging
from pathlib import Path

import numpy as np
import torch

from ..config import cfg_from_list, cfg_from_yaml_file
from ..config_registry import validate_config
from ..datasets.collate import collate_batch
from ..datasets.processor import DataProcessor, PointFeatureEncoder
from ..datasets.waymo.waymo_utils import points_tanh_dims
from ..models.build import build_network_from_cfg
from ..utils.batching import load_data_to_device
from ..utils.checkpoint import CheckpointMismatchError, CheckpointReadError, load_params_from_file

# DATA_PROCESSOR steps that do not change what a frame contains, only its order; skipped so predictions are
# reproducible (the model is order-invariant up to float summation order).
_SKIPPED_PROCESSORS = ('shuffle_points',)


class PointLayoutError(ValueError):
    """A point array does not have the layout the model's config expects; the message names the columns."""


def format_layout(names):
    """`[x, y, z, intensity]` for messages."""
    return '[' + ', '.join(str(n) for n in names) + ']'


def expected_feature_names(data_cfg):
    """The columns a point array must have: `DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list`."""
    encoding = data_cfg.get('POINT_FEATURE_ENCODING', None) if hasattr(data_cfg, 'get') else None
    if encoding is None or encoding.get('src_feature_list', None) is None:
        raise KeyError('DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list is required to know the point layout')
    return [str(name) for name in encoding.src_feature_list]


def check_point_layout(points, feature_names):
    """Validate `points` against the expected columns and return it as a float32 `(N, C)` array.

    Raises:
        PointLayoutError: not 2-D, wrong column count ("expected 5 columns [x, y, z, intensity, timestamp], got
            4"), non-numeric, or non-finite values (the message counts the bad rows).
    """
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    points = np.asarray(points)
    expected = len(feature_names)
    layout = format_layout(feature_names)
    if points.dtype.kind not in 'biuf':
        raise PointLayoutError(f'points must be numeric, got dtype {points.dtype}; expected {expected} columns '
                               f'{layout}')
    if points.ndim != 2:
        hint = ''
        if points.ndim == 1 and points.size % expected == 0:
            hint = f' (a flat array, e.g. from np.fromfile, needs .reshape(-1, {expected}))'
        raise PointLayoutError(f'points must be a 2-D array (N, {expected}) with columns {layout}; got shape '
                               f'{points.shape}{hint}')
    if points.shape[1] != expected:
        raise PointLayoutError(
            f'expected {expected} columns {layout}, got {points.shape[1]}. The columns come from '
            f'DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list; load files with an explicit feature count '
            f'(pcdet.utils.point_io.load_points(path, num_features)) and add / reorder columns to match '
            f'(tools/demo.py --pad_missing_features zero-fills missing trailing ones such as a timestamp)')
    points = points.astype(np.float32, copy=False)
    finite = np.isfinite(points)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise PointLayoutError(f'points contain non-finite values (NaN / inf) in {len(bad_rows)} of {len(points)} '
                               f'rows (first: {bad_rows[:5].tolist()}); drop them first, e.g. '
                               f'points[np.isfinite(points).all(axis=1)]')
    return points


def adapt_point_layout(points, feature_names, file_names=None, pad_missing=False):
    """Bring points read from a file into the expected column layout.

    Args:
        points: (N, F) array as read.
        feature_names: the expected columns (`expected_feature_names(cfg.DATA_CONFIG)`).
        file_names: names of the file's F columns when known (PCD fields, or stated by the user). Columns are then
            picked by name; unnamed-by-the-model columns are dropped. Without names, columns are taken by position.
        pad_missing: zero-fill expected columns the file does not have (by name, or the trailing ones when
            F < C without names), e.g. the nuScenes sweep `timestamp` of a single key frame. Without it a missing
            column is an error.
    Returns:
        (points (N, C) float32, notes: list of human-readable strings describing what was changed).
    Raises:
        PointLayoutError naming the expected and the available columns.
    """
    points = np.asarray(points)
    if points.ndim != 2:
        raise PointLayoutError(f'points must be a 2-D array, got shape {points.shape}')
    expected, layout = len(feature_names), format_layout(feature_names)
    notes = []
    if file_names is not None:
        file_names = [str(n) for n in file_names]
        if len(file_names) != points.shape[1]:
            raise PointLayoutError(f'{len(file_names)} column names {format_layout(file_names)} for '
                                   f'{points.shape[1]} columns')
        missing = [name for name in feature_names if name not in file_names]
        if any(axis in missing for axis in ('x', 'y', 'z')):
            raise PointLayoutError(f'the file columns {format_layout(file_names)} must include x, y, z')
        if missing and not pad_missing:
            raise PointLayoutError(f'expected {expected} columns {layout}, the file has '
                                   f'{format_layout(file_names)}: missing {missing} (zero-fill them with '
                                   f'pad_missing / --pad_missing_features if that is what the model saw, e.g. '
                                   f'a 0 time lag for a single sweep)')
        out = np.zeros((len(points), expected), dtype=np.float32)
        for j, name in enumerate(feature_names):
            if name in file_names:
                out[:, j] = points[:, file_names.index(name)]
        dropped = [name for name in file_names if name not in feature_names]
        if missing:
            notes.append(f'zero-filled missing columns {missing}')
        if dropped:
            notes.append(f'dropped file columns {dropped}')
        if not missing and not dropped and file_names != list(feature_names):
            notes.append(f'reordered columns {format_layout(file_names)} -> {layout}')
        return out, notes
    got = points.shape[1]
    if got == expected:
        return points.astype(np.float32, copy=False), notes
    if got < expected and pad_missing:
        if got < 3:
            raise PointLayoutError(f'points need at least x, y, z; got {got} columns')
        padded = np.zeros((len(points), expected), dtype=np.float32)
        padded[:, :got] = points
        notes.append(f'zero-filled missing columns {list(feature_names[got:])}')
        return padded, notes
    hint = (f'; pass pad_missing / --pad_missing_features to zero-fill {list(feature_names[got:])}'
            if got < expected else '; name the file columns (--file_features) so extra ones can be dropped')
    raise PointLayoutError(f'expected {expected} columns {layout}, got {got}{hint}')


def apply_dataset_load_transforms(points, data_cfg):
    """Apply the value transforms a dataset reader applies to raw file columns (returns a new array).

    * `POINTS_TANH_DIM: [i, ...]` (Waymo DSVT configs: [3, 4]): `tanh` on those columns.
    * `DATASET: WaymoDataset` without `POINTS_TANH_DIM`: `tanh` on intensity (column 3), as upstream.
    Other datasets store model-ready values; their points are returned unchanged.
    """
    points = np.array(points, dtype=np.float32, copy=True)
    # The Waymo reader's own rule (one declaration of the key and its default); other datasets declare no such key.
    dims = points_tanh_dims(data_cfg) if data_cfg.get('DATASET', None) == 'WaymoDataset' else []
    for dim in dims:
        if not 0 <= int(dim) < points.shape[1]:
            raise PointLayoutError(f'POINTS_TANH_DIM {list(dims)} names column {dim} but points have '
                                   f'{points.shape[1]} columns')
        points[:, int(dim)] = np.tanh(points[:, int(dim)])
    return points


class Predictor:
    """A detector ready for inference on raw point arrays.

    Args:
        cfg: the experiment config (EasyDict with `MODEL`, `CLASS_NAMES`, `DATA_CONFIG`) or a path to its YAML.
        checkpoint_path: OpenPCDet-layout checkpoint (`{'model_state', ...}`) loaded with `strict=True`; None keeps
            the random initialisation (a warning is logged).
        device: torch device for the model and the batches ('cpu', 'cuda', 'cuda:1', ...).
        logger: optional logger (default `logging.getLogger('pcdet.inference')`).
        cfg_file: where `cfg` came from, for messages (set automatically when `cfg` is a path).
    Attributes:
        model (eval mode), cfg, class_names, feature_names (expected input columns), point_cloud_range,
        device, load_report (`pcdet.utils.checkpoint.LoadReport` or None).
    Raises:
        CheckpointMismatchError when the checkpoint was made for another architecture / config (the message lists
        the per-module load counts and the offending keys); its subclass CheckpointReadError when torch cannot
        read the file at all.
    Warns:
        UpstreamCheckpointWarning (and a logger WARNING) when a checkpoint not written by pcdet (an upstream
        release) goes into a DSVT whose upstream-quirk COMPAT switches are off (docs/DSVT.md "Compat switches").
    """

    def __init__(self, cfg, checkpoint_path=None, device='cpu', logger=None, cfg_file=None):
        self.logger = logger if logger is not None else logging.getLogger('pcdet.inference')
        self.cfg_file = None if cfg_file is None else str(cfg_file)
        if isinstance(cfg, (str, Path)):
            self.cfg_file = str(cfg)
            cfg = cfg_from_yaml_file(cfg)
        for key in ('MODEL', 'CLASS_NAMES', 'DATA_CONFIG'):
            if key not in cfg:
                raise KeyError(f'the config needs {key} to build a predictor (an experiment config, not a dataset '
                               f'config); keys found: {sorted(cfg)}')
        self.cfg = cfg
        self.device = torch.device(device)
        self.class_names = [str(name) for name in cfg.CLASS_NAMES]
        data_cfg = cfg.DATA_CONFIG
        self.feature_names = expected_feature_names(data_cfg)
        self.point_cloud_range = np.asarray(data_cfg.POINT_CLOUD_RANGE, dtype=np.float32)

        # The dataset's test-mode preprocessing, built from the same classes (DatasetTemplate.__init__).
        self.point_feature_encoder = PointFeatureEncoder(data_cfg.POINT_FEATURE_ENCODING, self.point_cloud_range)
        processors = [entry for entry in (data_cfg.get('DATA_PROCESSOR', None) or [])
                      if entry.get('NAME') not in _SKIPPED_PROCESSORS]
        self.data_processor = DataProcessor(processors, self.point_cloud_range, training=False,
                                            num_point_features=self.point_feature_encoder.num_point_features)

        self.model = build_network_from_cfg(cfg)
        self.load_report = None
        if checkpoint_path is not None:
            try:
                self.load_report = load_params_from_file(self.model, checkpoint_path, logger=self.logger,
                                                         to_cpu=True, strict=True)
            except CheckpointReadError:
                raise  # not a checkpoint at all: its message names the file, the model is not the question
            except CheckpointMismatchError as err:
                source = self.cfg_file or f'MODEL.NAME={cfg.MODEL.NAME}'
                raise CheckpointMismatchError(f'the checkpoint does not fit the model built from {source}:\n{err}') \
                    from None
        else:
            self.logger.warning('Predictor without a checkpoint: the model has random weights')
        self.model.to(self.device)
        self.model.eval()

        head_cfg = cfg.MODEL.get('DENSE_HEAD', None) or {}
        head_order = (head_cfg.get('SEPARATE_HEAD_CFG', None) or {}).get('HEAD_ORDER', [])
        self.box_dim = 9 if 'vel' in head_order else 7

    @classmethod
    def from_files(cls, cfg_file, checkpoint_path=None, device='cpu', set_cfgs=None, logger=None):
        """Build from a config file (with `_BASE_CONFIG_` chain) and optional `--set`-style overrides
        `['KEY', 'VALUE', ...]`."""
        cfg = cfg_from_yaml_file(cfg_file)
        if set_cfgs:
            cfg_from_list(list(set_cfgs), cfg)
        validate_config(cfg, source=str(cfg_file))
        return cls(cfg, checkpoint_path, device=device, logger=logger, cfg_file=cfg_file)

    # ---- preprocessing ---------------------------------------------------------------------------------------

    def preprocess(self, points):
        """One frame through the dataset's test-mode preprocessing; returns the per-sample data_dict
        (`points (N', num_point_features)`, `use_lead_xyz`, and the processor outputs)."""
        points = check_point_layout(points, self.feature_names)
        data_dict = {'points': points, 'frame_id': 'predict'}
        data_dict = self.point_feature_encoder.forward(data_dict)
        return self.data_processor.forward(data_dict)

    # ---- inference -------------------------------------------------------------------------------------------

    def predict(self, points):
        """Detect objects in one frame.

        Args:
            points: (N, C) array, C = len(feature_names), columns in `feature_names` order (see the module doc).
        Returns:
            dict `boxes (K, 7|9) float32` [x, y, z, dx, dy, dz, heading, (vx, vy)] in the input frame,
            `scores (K,) float32`, `labels (K,) int64` 1-based into `class_names`, `names (K,) str`,
            sorted by decreasing score.
        """
        return self.predict_batch([points])[0]

    def predict_batch(self, points_list):
        """`predict` for several frames in one forward pass; returns one dict per frame."""
        samples = [self.preprocess(points) for points in points_list]
        results = [None] * len(samples)
        nonempty = [i for i, sample in enumerate(samples) if len(sample['points']) > 0]
        for i, sample in enumerate(samples):
            if len(sample['points']) == 0:
                self.logger.warning(f'frame {i}: no point inside POINT_CLOUD_RANGE {self.point_cloud_range.tolist()}; '
                                    'no detections')
                results[i] = self._empty_result()
        if nonempty:
            batch = load_data_to_device(collate_batch([samples[i] for i in nonempty]), self.device)
            with torch.no_grad():
                pred_dicts, _ = self.model(batch)
            for i, pred in zip(nonempty, pred_dicts):
                results[i] = self._to_result(pred)
        return results

    __call__ = predict

    def _empty_result(self):
        return {'boxes': np.zeros((0, self.box_dim), dtype=np.float32), 'scores': np.zeros(0, dtype=np.float32),
                'labels': np.zeros(0, dtype=np.int64), 'names': np.array([], dtype=str)}

    def _to_result(self, pred):
        boxes = pred['pred_boxes'].detach().cpu().numpy().astype(np.float32)
        scores = pred['pred_scores'].detach().cpu().numpy().astype(np.float32)
        labels = pred['pred_labels'].detach().cpu().numpy().astype(np.int64)
        if len(scores) == 0:
            return self._empty_result()
        order = np.argsort(-scores, kind='stable')
        labels = labels[order]
        return {'boxes': boxes[order], 'scores': scores[order], 'labels': labels,
                'names': np.array(self.class_names)[labels - 1]}
