"""Shape derivations of `pcdet.models.backbones_3d.dsvt.shapes`: pure functions, errors that name the values."""
import pytest
from easydict import EasyDict

from pcdet.config import ConfigError
from pcdet.models.backbones_3d.dsvt.shapes import (
    ShapeConfigError,
    check_scatter_input_shape,
    check_stated_shape,
    downsample_shape,
    grid_size_from_range,
    resolve_dsvt_shapes,
    resolve_grid_size,
    stage_shifts,
    stage_sparse_shapes,
    stage_window_shapes,
)

WAYMO_RANGE = [-74.88, -74.88, -2, 74.88, 74.88, 4.0]


def test_grid_size_from_range_matches_spec_configs():
    assert grid_size_from_range(WAYMO_RANGE, [0.32, 0.32, 6]) == (468, 468, 1)
    assert grid_size_from_range(WAYMO_RANGE, [0.32, 0.32, 0.1875]) == (468, 468, 32)
    assert grid_size_from_range([-54, -54, -5, 54, 54, 3], [0.3, 0.3, 8.0]) == (360, 360, 1)
    with pytest.raises(ShapeConfigError, match='non-positive'):
        grid_size_from_range([0, 0, 0, -1, 1, 1], [0.1, 0.1, 0.1])


def test_resolve_grid_size_checks_both_sources():
    assert resolve_grid_size([468, 468, 1], WAYMO_RANGE, [0.32, 0.32, 6]) == (468, 468, 1)
    assert resolve_grid_size(None, WAYMO_RANGE, [0.32, 0.32, 6]) == (468, 468, 1)
    assert resolve_grid_size((360, 360, 1)) == (360, 360, 1)
    with pytest.raises(ShapeConfigError, match=r'grid_size \[360, 360, 1\] disagrees .* which give \[468, 468, 1\]'):
        resolve_grid_size([360, 360, 1], WAYMO_RANGE, [0.32, 0.32, 6])


def test_stage_shapes_use_ceil():
    assert downsample_shape((468, 468, 32), (1, 1, 4)) == (468, 468, 8)
    assert downsample_shape((15, 13, 5), (2, 3, 2)) == (8, 5, 3)
    assert stage_sparse_shapes((468, 468, 32), [[1, 1, 4], [1, 1, 4], [1, 1, 2]]) == \
        [(468, 468, 32), (468, 468, 8), (468, 468, 2), (468, 468, 1)]
    assert stage_sparse_shapes((468, 468, 1), []) == [(468, 468, 1)]


def test_check_stated_shape_message_names_values():
    assert check_stated_shape(None, (468, 468, 1), 'X', 'src') == (468, 468, 1)
    assert check_stated_shape([468, 468], (468, 468, 1), 'X', 'src') == (468, 468, 1)
    with pytest.raises(ShapeConfigError) as err:
        check_stated_shape([468, 468, 1], (360, 360, 1), 'INPUT_SHAPE',
                           'grid_size (360, 360, 1) from POINT_CLOUD_RANGE/VOXEL_SIZE')
    assert str(err.value).startswith('INPUT_SHAPE [468, 468, 1] disagrees with grid_size (360, 360, 1) from '
                                     'POINT_CLOUD_RANGE/VOXEL_SIZE; it should be [360, 360, 1]')
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)


def test_window_shapes_hybrid_and_z_consistency():
    assert stage_window_shapes([12, 12, 1], [2, 2, 1], (468, 468, 1)) == [(12, 12, 1), (24, 24, 1)]
    assert stage_window_shapes([12, 12, 32], [2, 2, 1], (468, 468, 32)) == [(12, 12, 32), (24, 24, 32)]
    assert stage_window_shapes([30, 30], [1, 1, 1], (360, 360, 1)) == [(30, 30, 1), (30, 30, 1)]
    with pytest.raises(ShapeConfigError, match='disagree on z'):
        stage_window_shapes([12, 12, 1], [2, 2, 1], (468, 468, 8))
    with pytest.raises(ShapeConfigError, match='disagree on z'):
        stage_window_shapes([12, 12, 2], [2, 2, 1], (468, 468, 1))
    with pytest.raises(ShapeConfigError, match='no z entry'):
        stage_window_shapes([12, 12], [2, 2, 1], (468, 468, 8))
    with pytest.raises(ShapeConfigError, match='integers'):
        stage_window_shapes([12.5, 12, 1], [2, 2, 1], (468, 468, 1))


def test_shifts_defaults_bounds_and_z_rule():
    windows = [(12, 12, 8), (24, 24, 8)]
    assert stage_shifts([[0, 0, 0], [6, 6, 4]], windows, (468, 468, 8)) == [(0, 0, 0), (6, 6, 0)]  # z == sparse z
    assert stage_shifts([[0, 0, 0], [6, 6, 4]], windows, (468, 468, 32)) == [(0, 0, 0), (6, 6, 4)]
    assert stage_shifts(None, windows, (468, 468, 32)) == [(12, 12, 8), (12, 12, 4)]            # upstream defaults
    with pytest.raises(ShapeConfigError, match=r'shifts_list\[0\]\[1\] \[25, 6, 0\] exceeds its window'):
        stage_shifts([[0, 0, 0], [25, 6, 0]], windows, (468, 468, 8))
    with pytest.raises(ShapeConfigError, match='must hold 2 shifts'):
        stage_shifts([[0, 0, 0]], windows, (468, 468, 8))


def voxel_input_layer(**extra):
    cfg = EasyDict(sparse_shape=[468, 468, 32], downsample_stride=[[1, 1, 4], [1, 1, 4], [1, 1, 2]],
                   d_model=[192] * 4, window_shape=[[12, 12, 32], [12, 12, 8], [12, 12, 2], [12, 12, 1]],
                   hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [6, 6, 0]]] * 4)
    cfg.update(extra)
    return cfg


def test_resolve_dsvt_shapes_voxel_config():
    shapes = resolve_dsvt_shapes(voxel_input_layer(), point_cloud_range=WAYMO_RANGE,
                                 voxel_size=[0.32, 0.32, 0.1875], stated_output_shape=[468, 468])
    assert shapes.sparse_shape == (468, 468, 32)
    assert [s[2] for s in shapes.stage_shapes] == [32, 8, 2, 1]
    assert shapes.output_shape == (468, 468, 1)
    assert shapes.window_shapes[2] == [(12, 12, 2), (24, 24, 2)]
    assert shapes.shifts[0] == [(0, 0, 0), (6, 6, 0)]


def test_resolve_dsvt_shapes_errors():
    with pytest.raises(ShapeConfigError, match=r'sparse_shape \[468, 468, 32\] disagrees with grid_size '
                                               r'\(468, 468, 1\) from POINT_CLOUD_RANGE/VOXEL_SIZE'):
        resolve_dsvt_shapes(voxel_input_layer(), grid_size=[468, 468, 1])
    with pytest.raises(ShapeConfigError, match=r'output_shape \[234, 234\] disagrees with the last DSVT stage grid '
                                               r'\(468, 468, 1\).*should be \[468, 468\]'):
        resolve_dsvt_shapes(voxel_input_layer(), grid_size=[468, 468, 32], stated_output_shape=[234, 234])
    with pytest.raises(ShapeConfigError, match='needs grid_size'):
        resolve_dsvt_shapes(voxel_input_layer(sparse_shape=None))
    with pytest.raises(ShapeConfigError, match='window_shape has 3 entries for 4 stages'):
        resolve_dsvt_shapes(voxel_input_layer(window_shape=[[12, 12, 32]] * 3), grid_size=[468, 468, 32])
    # Downsampling z by 2 instead of 4 leaves stage 3 with z = 4 > 1 while its window z is 1.
    with pytest.raises(ShapeConfigError, match='stage 3 shift 0'):
        resolve_dsvt_shapes(voxel_input_layer(downsample_stride=[[1, 1, 4], [1, 1, 2], [1, 1, 2]]),
                            grid_size=[468, 468, 32])


def test_scatter_input_shape():
    assert check_scatter_input_shape(None, (468, 468, 32)) == (468, 468, 1)
    assert check_scatter_input_shape([468, 468, 1], (468, 468, 32)) == (468, 468, 1)
    assert check_scatter_input_shape([234, 234, 1], (468, 468, 1)) == (234, 234, 1)   # reachable by stride 2
    assert check_scatter_input_shape(None, None, backbone_shape=(468, 468, 1)) == (468, 468, 1)
    with pytest.raises(ShapeConfigError, match=r'INPUT_SHAPE \[468, 468, 1\] disagrees with grid_size '
                                               r'\(360, 360, 1\) from POINT_CLOUD_RANGE/VOXEL_SIZE'):
        check_scatter_input_shape([468, 468, 1], (360, 360, 1))
    with pytest.raises(ShapeConfigError, match=r'INPUT_SHAPE \[300, 300, 1\] disagrees'):
        check_scatter_input_shape([300, 300, 1], (360, 360, 1))
    with pytest.raises(ShapeConfigError, match=r'disagrees with the 3-D backbone output grid \(468, 468, 1\); '
                                               r'it should be \[468, 468, 1\]'):
        check_scatter_input_shape([468, 468, 2], (468, 468, 32), backbone_shape=(468, 468, 1))
