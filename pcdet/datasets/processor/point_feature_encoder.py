"""Select and order the per-point feature columns the model sees (spec §1.6).

Config `DATA_CONFIG.POINT_FEATURE_ENCODING`: `encoding_type` (only `absolute_coordinates_encoding`),
`src_feature_list` (the columns of the loaded points, must start with x, y, z), `used_feature_list` (the features to
keep), optional `filter_sweeps` + `max_sweeps` (keep points whose rounded `timestamp` is among the first
`max_sweeps` distinct values).

Carried columns (`num_carried_columns` K: per-point teacher features, segmentation labels and raw indices, see
datasets/carried_columns.py; DatasetTemplate passes the total width): the loaded points then have K trailing
columns after the src_feature_list ones; they are not features of the model input here, just passed through
unchanged behind the encoded columns (row filters such as filter_sweeps apply to them too). DatasetTemplate splits
them off after the data processor.

data_dict keys
    reads:  points (N, len(src_feature_list) + K)
    writes: points (N, num_point_features + K) = [x, y, z, used non-xyz features in used_feature_list order,
            K carried columns], use_lead_xyz (bool, always True)
"""
import numpy as np

from ...config import ConfigError
from ...config_schema import REQUIRED, Schema, check_block

SECTION = 'DATA_CONFIG.POINT_FEATURE_ENCODING'
XYZ = ('x', 'y', 'z')


class PointFeatureEncoder:
    ENCODING_TYPES = ('absolute_coordinates_encoding',)
    CONFIG_SCHEMA = Schema(SECTION, {
        'encoding_type': REQUIRED, 'src_feature_list': REQUIRED, 'used_feature_list': REQUIRED,
        'filter_sweeps': False,
        'max_sweeps': None,     # with filter_sweeps: keep the points of the newest max_sweeps time lags
    }, required=True)

    def __init__(self, config, point_cloud_range=None, num_carried_columns=0):
        check_block(config, self.CONFIG_SCHEMA, SECTION)
        encoding_type = self.CONFIG_SCHEMA.get(config, 'encoding_type')
        if encoding_type not in self.ENCODING_TYPES:
            raise ConfigError(f'{SECTION}.encoding_type: unknown {encoding_type!r}, '
                              f'known: {list(self.ENCODING_TYPES)}')
        self.point_encoding_config = config
        self.src_feature_list = list(self.CONFIG_SCHEMA.get(config, 'src_feature_list'))
        self.used_feature_list = list(self.CONFIG_SCHEMA.get(config, 'used_feature_list'))
        self.point_cloud_range = point_cloud_range
        self.num_carried_columns = int(num_carried_columns)
        if self.num_carried_columns < 0:
            raise ValueError(f'num_carried_columns must be >= 0, got {num_carried_columns}')
        if tuple(self.src_feature_list[0:3]) != XYZ:
            raise ConfigError(f'{SECTION}.src_feature_list must start with x, y, z; got {self.src_feature_list}')
        unknown = [name for name in self.used_feature_list if name not in self.src_feature_list]
        if unknown:
            raise ConfigError(f'{SECTION}.used_feature_list names {unknown}, which are not in '
                              f'src_feature_list {self.src_feature_list}')
        extra_features = [name for name in self.used_feature_list if name not in XYZ]
        self._used_columns = [0, 1, 2] + [self.src_feature_list.index(name) for name in extra_features]

    @property
    def num_point_features(self):
        """Columns of the encoded points: x, y, z + the used non-xyz features (= len(used_feature_list) upstream);
        carried columns are not counted."""
        return len(self._used_columns)

    def forward(self, data_dict):
        points = data_dict['points']
        expected = len(self.src_feature_list) + self.num_carried_columns
        if points.ndim != 2 or points.shape[-1] != expected:
            carried = f' + {self.num_carried_columns} carried columns (teacher features / per-point labels)' \
                if self.num_carried_columns else ''
            raise ValueError(
                f'points have {points.shape[-1] if points.ndim == 2 else points.shape} columns but '
                f'{SECTION}.src_feature_list expects {len(self.src_feature_list)}: {self.src_feature_list}{carried}')
        if self.CONFIG_SCHEMA.get(self.point_encoding_config, 'filter_sweeps') and 'timestamp' in self.src_feature_list:
            points = self._filter_sweeps(points)
        columns = self._used_columns + list(range(len(self.src_feature_list), expected))
        # every column kept in order (e.g. all features used + teacher columns): skip a copy of the whole cloud
        data_dict['points'] = points if columns == list(range(expected)) else points[:, columns]
        data_dict['use_lead_xyz'] = True
        return data_dict

    def absolute_coordinates_encoding(self, points=None):
        """OpenPCDet-compatible entry point: feature count for `points=None`, else `(encoded, use_lead_xyz)`."""
        if points is None:
            return self.num_point_features
        encoded = self.forward({'points': points})
        return encoded['points'], encoded['use_lead_xyz']

    def _filter_sweeps(self, points):
        max_sweeps = self.CONFIG_SCHEMA.get(self.point_encoding_config, 'max_sweeps')
        if max_sweeps is None:
            raise ConfigError(f'{SECTION}.filter_sweeps needs {SECTION}.max_sweeps (the number of sweeps to keep)')
        max_sweeps = int(max_sweeps)
        time_lag = np.round(points[:, self.src_feature_list.index('timestamp')], 2)
        distinct = np.unique(time_lag)
        if len(distinct) == 0:
            return points
        newest_kept = distinct[min(len(distinct), max_sweeps) - 1]
        return points[time_lag <= newest_kept]
