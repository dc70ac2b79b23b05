"""Named per-point columns carried through `DatasetTemplate.prepare_data` as trailing columns of `points`.

A dataset declares its carried columns (`DatasetTemplate.carried_columns`, a list of `CarriedColumn` in order); its
loader appends them behind the `src_feature_list` columns before `prepare_data`:

    points (N, C_src + K)   K = sum of the columns' widths, float32 (integer columns stored exactly: |v| < 2**24)

Augmentation changes only x, y, z (columns 0:3), the point feature encoder passes the K trailing columns through
(`num_carried_columns=K`), and range masking, sweep filtering and shuffling index rows, so every carried value stays
on the row of its point by construction. After the data processor `split_columns` removes them again:

    points (N', num_point_features) and one key per column, row-aligned with `points`:
        point_teacher_features (N', F) float32   teacher features (TEACHER_FEATURES, teachers/feature_store.py)
        point_superpixel_ids   (N',)   int64     superpixel id of the point (-1 none; unique within a frame), when the
                                                 teacher stores `superpixel_ids` (image_projection with SUPERPIXELS)
        point_seg_labels       (N',)   int64     challenge class ids 0..16 (segmentation mode, 0 = ignore)
        point_raw_index        (N',)   int64     row of the point in the key-frame file, -1 for sweep points

`collate.py` concatenates each key in batch order, so row r of a collated column belongs to row r of the collated
`points`. Hard voxelization (`transform_points_to_voxels`) and gt_sampling cannot keep the alignment (the dataset
refuses them with a ConfigError).
"""
from typing import NamedTuple, Optional

import numpy as np

TEACHER_FEATURES_KEY = 'point_teacher_features'
POINT_SEG_LABELS_KEY = 'point_seg_labels'
POINT_RAW_INDEX_KEY = 'point_raw_index'
POINT_SUPERPIXEL_IDS_KEY = 'point_superpixel_ids'
FLOAT32_EXACT_INTEGER = 2 ** 24  # every integer of smaller magnitude is exact in float32


class CarriedColumn(NamedTuple):
    key: str
    width: Optional[int]    # None: one column, split off as a (N,) array; an int w: (N, w)
    dtype: type

    @property
    def num_columns(self):
        return 1 if self.width is None else int(self.width)


SEG_COLUMNS = (CarriedColumn(POINT_SEG_LABELS_KEY, None, np.int64), CarriedColumn(POINT_RAW_INDEX_KEY, None, np.int64))


# extra per-point arrays of a teacher's feature files (teachers/feature_store.py) -> the column the dataset carries
EXTRA_ARRAY_COLUMNS = {'superpixel_ids': CarriedColumn(POINT_SUPERPIXEL_IDS_KEY, None, np.int64)}


def teacher_column(num_features):
    return CarriedColumn(TEACHER_FEATURES_KEY, int(num_features), np.float32)


def teacher_columns(num_features, extra_arrays=()):
    """[teacher feature column] + one column per extra array name of the teacher (EXTRA_ARRAY_COLUMNS)."""
    return [teacher_column(num_features)] + [EXTRA_ARRAY_COLUMNS[name] for name in extra_arrays]


def total_columns(columns):
    return sum(column.num_columns for column in columns)


def append_columns(points, columns, values, source=''):
    """`points` (N, C) with `values[column.key]` ((N,) or (N, w)) of `columns` appended in order -> float32
    (N, C + sum w). Integer values must be exactly representable in float32 (ValueError naming `source`)."""
    parts = [np.asarray(points, dtype=np.float32)]
    for column in columns:
        value = np.asarray(values[column.key])
        value = value.reshape(len(value), -1)
        if value.shape != (len(points), column.num_columns):
            raise ValueError(f'{source}: carried column {column.key} has shape {value.shape}, expected '
                             f'({len(points)}, {column.num_columns}) (one row per point)')
        if np.issubdtype(np.dtype(column.dtype), np.integer) and value.size and \
                np.abs(value).max() >= FLOAT32_EXACT_INTEGER:
            raise ValueError(f'{source}: carried column {column.key} holds values >= 2**24, which float32 rows '
                             'cannot carry exactly')
        parts.append(value.astype(np.float32, copy=False))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def split_columns(points, columns):
    """Inverse of `append_columns` after the pipeline: (points without the trailing columns, {key: array})."""
    num_carried = total_columns(columns)
    if num_carried == 0:
        return points, {}
    carried = points[:, points.shape[1] - num_carried:]
    values, start = {}, 0
    for column in columns:
        block = carried[:, start:start + column.num_columns]
        start += column.num_columns
        if np.issubdtype(np.dtype(column.dtype), np.integer):
            block = np.rint(block)
        block = np.ascontiguousarray(block, dtype=column.dtype)
        values[column.key] = block[:, 0].copy() if column.width is None else block
    return np.ascontiguousarray(points[:, :points.shape[1] - num_carried]), values
