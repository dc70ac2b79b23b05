"""tools/demo.py end to end on small random point files with a tiny DSVT config and a checkpoint made here, and the
point-file loaders it uses (pcdet.utils.point_io: .bin / .npy / .pcd with explicit feature counts)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict

from pcdet.models.build import build_network_from_cfg
from pcdet.utils import point_io
from pcdet.utils.point_io import PointFileError, list_point_files, load_points, load_points_with_names, save_points

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny DSVT-Pillar + CenterHead with the Waymo point layout (5 columns: x, y, z, intensity, elongation).
TINY_WAYMO_CFG = """
CLASS_NAMES: ['Vehicle', 'Pedestrian', 'Cyclist']
DATA_CONFIG:
    DATASET: WaymoDataset
    POINT_CLOUD_RANGE: [-9.6, -9.6, -2.0, 9.6, 9.6, 4.0]
    POINTS_TANH_DIM: [3, 4]
    POINT_FEATURE_ENCODING: {encoding_type: absolute_coordinates_encoding,
                             used_feature_list: ['x', 'y', 'z', 'intensity', 'elongation'],
                             src_feature_list: ['x', 'y', 'z', 'intensity', 'elongation']}
    DATA_PROCESSOR:
        - {NAME: mask_points_and_boxes_outside_range, REMOVE_OUTSIDE_BOXES: True}
        - {NAME: shuffle_points, SHUFFLE_ENABLED: {'train': True, 'test': True}}
        - {NAME: transform_points_to_voxels_placeholder, VOXEL_SIZE: [0.4, 0.4, 6.0]}
MODEL:
    NAME: CenterPoint
    VFE: {NAME: DynamicVoxelVFE, WITH_DISTANCE: False, USE_ABSLOTE_XYZ: True, USE_NORM: True, NUM_FILTERS: [16, 16]}
    BACKBONE_3D:
        NAME: DSVT
        INPUT_LAYER: {sparse_shape: [48, 48, 1], downsample_stride: [], window_shape: [[8, 8, 1]],
                      hybrid_factor: [2, 2, 1], shifts_list: [[[0, 0, 0], [4, 4, 0]]], normalize_pos: False}
        block_name: ['DSVTBlock']
        set_info: [[12, 1]]
        d_model: [16]
        nhead: [2]
        dim_feedforward: [32]
        output_shape: [48, 48]
    MAP_TO_BEV: {NAME: PointPillarScatter3d, INPUT_SHAPE: [48, 48, 1], NUM_BEV_FEATURES: 16}
    BACKBONE_2D: {NAME: BaseBEVResBackbone, LAYER_NUMS: [1], LAYER_STRIDES: [1], NUM_FILTERS: [16],
                  UPSAMPLE_STRIDES: [1], NUM_UPSAMPLE_FILTERS: [16]}
    DENSE_HEAD:
        NAME: CenterHead
        CLASS_AGNOSTIC: False
        CLASS_NAMES_EACH_HEAD: [['Vehicle', 'Pedestrian', 'Cyclist']]
        SHARED_CONV_CHANNEL: 16
        USE_BIAS_BEFORE_NORM: False
        NUM_HM_CONV: 2
        SEPARATE_HEAD_CFG:
            HEAD_ORDER: ['center', 'center_z', 'dim', 'rot']
            HEAD_DICT: {'center': {'out_channels': 2, 'num_conv': 2}, 'center_z': {'out_channels': 1, 'num_conv': 2},
                        'dim': {'out_channels': 3, 'num_conv': 2}, 'rot': {'out_channels': 2, 'num_conv': 2},
                        'iou': {'out_channels': 1, 'num_conv': 2}}
        TARGET_ASSIGNER_CONFIG: {FEATURE_MAP_STRIDE: 1, NUM_MAX_OBJS: 100, GAUSSIAN_OVERLAP: 0.1, MIN_RADIUS: 2}
        LOSS_CONFIG: {LOSS_WEIGHTS: {'cls_weight': 1.0, 'loc_weight': 2.0, 'code_weights': [1, 1, 1, 1, 1, 1, 1, 1]}}
        POST_PROCESSING:
            SCORE_THRESH: 0.05
            POST_CENTER_LIMIT_RANGE: [-12, -12, -10, 12, 12, 10]
            MAX_OBJ_PER_SAMPLE: 50
            USE_IOU_TO_RECTIFY_SCORE: True
            IOU_RECTIFIER: [0.68, 0.71, 0.65]
            NMS_CONFIG: {NMS_TYPE: class_specific_nms, NMS_THRESH: [0.75, 0.6, 0.55], NMS_PRE_MAXSIZE: [100, 100, 100],
                         NMS_POST_MAXSIZE: [30, 30, 30]}
    POST_PROCESSING: {RECALL_THRESH_LIST: [0.3, 0.5, 0.7], EVAL_METRIC: waymo}
"""


def load_demo():
    spec = importlib.util.spec_from_file_location('pcdet_demo_tool', REPO_ROOT / 'tools' / 'demo.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def setup_files(tmp_path_factory):
    """(cfg_file, checkpoint) of the tiny Waymo-layout model with random weights in OpenPCDet's layout."""
    root = tmp_path_factory.mktemp('demo')
    cfg_file = root / 'tiny_waymo_dsvt.yaml'
    cfg_file.write_text(TINY_WAYMO_CFG)
    torch.manual_seed(0)
    model = build_network_from_cfg(EasyDict(yaml.safe_load(TINY_WAYMO_CFG)))
    ckpt = root / 'checkpoint_epoch_1.pth'
    torch.save({'model_state': model.state_dict(),
                'optimizer_state': torch.optim.AdamW(model.parameters()).state_dict(), 'epoch': 1, 'it': 10}, ckpt)
    return cfg_file, ckpt


def random_points(num_points=2000, num_features=5, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-9, -9, -1.5], [9, 9, 3], (num_points, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (num_points, num_features - 3))], 1).astype(np.float32)


def demo_args(setup_files, data_path, out_dir, *extra):
    cfg_file, ckpt = setup_files
    return ['--cfg_file', str(cfg_file), '--ckpt', str(ckpt), '--data_path', str(data_path), '--out_dir',
            str(out_dir), '--score_thresh', '0.1', *extra]


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000


# ---- the demo ----------------------------------------------------------------------------------------------------

def test_demo_end_to_end_on_a_bin_file_with_ground_truth(setup_files, tmp_path, capsys):
    points_file = save_points(tmp_path / 'frame_000.bin', random_points())
    gt = np.array([[2.0, 3.0, 0.5, 4.5, 2.0, 1.6, 0.3], [-4.0, -1.0, 0.6, 0.8, 0.8, 1.8, 0.0]], dtype=np.float32)
    np.save(tmp_path / 'gt.npy', gt)
    written = load_demo().main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '5',
                                         '--gt_file', str(tmp_path / 'gt.npy')))
    assert written == [tmp_path / 'out' / 'frame_000.png']
    assert_png(written[0])
    pred = np.load(tmp_path / 'out' / 'frame_000_pred.npz')
    assert sorted(pred.files) == ['boxes', 'labels', 'names', 'scores']
    assert pred['boxes'].shape[1] == 7 and len(pred['boxes']) == len(pred['scores']) > 0
    assert set(pred['names'].tolist()) <= {'Vehicle', 'Pedestrian', 'Cyclist'}
    out = capsys.readouterr().out
    assert f'== {points_file}' in out
    shown = int((pred['scores'] >= 0.1).sum())
    assert f'{shown} detections with score >= 0.1 (of {len(pred["scores"])})' in out


def test_demo_command_line_on_a_folder_of_npy_files(setup_files, tmp_path):
    folder = tmp_path / 'frames'
    for index in range(2):
        save_points(folder / f'{index:03d}.npy', random_points(seed=index))
    (folder / 'notes.txt').write_text('not a point file')
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'tools' / 'demo.py'),
                             *demo_args(setup_files, folder, tmp_path / 'out', '--ext', '.npy', '--num_features', '5',
                                        '--dataset_transforms')],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.png')) == ['000.png', '001.png']
    assert 'model input columns [x, y, z, intensity, elongation]' in result.stderr


def test_a_file_size_that_does_not_fit_the_feature_count_names_the_file(setup_files, tmp_path):
    points_file = save_points(tmp_path / 'kitti_like.bin', random_points(num_points=1001, num_features=4))
    with pytest.raises(SystemExit, match=r'kitti_like\.bin: 4004 float32 values .* not a multiple of '
                                         r'num_features=5; feature counts that would fit: \[4, 7\]'):
        load_demo().main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '5'))


def test_fewer_columns_than_the_model_needs_is_an_error_unless_padded(setup_files, tmp_path):
    points_file = save_points(tmp_path / 'four.bin', random_points(num_points=1000, num_features=4))
    demo = load_demo()
    with pytest.raises(SystemExit, match=r'four\.bin: expected 5 columns \[x, y, z, intensity, elongation\], got 4; '
                                         r"pass pad_missing / --pad_missing_features to zero-fill \['elongation'\]"):
        demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '4'))
    written = demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '4',
                                  '--pad_missing_features'))
    assert_png(written[0])


def test_named_columns_are_matched_by_name(setup_files, tmp_path):
    """A raw 6-column Waymo frame [x, y, z, intensity, elongation, NLZ_flag]: the flag column is dropped by name."""
    points = np.concatenate([random_points(), -np.ones((2000, 1), np.float32)], axis=1)
    points_file = save_points(tmp_path / 'raw_waymo.npy', points)
    demo = load_demo()
    with pytest.raises(SystemExit, match=r'expected 5 columns .*got 6; name the file columns \(--file_features\)'):
        demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '6'))
    written = demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '6',
                                  '--file_features', 'x', 'y', 'z', 'intensity', 'elongation', 'NLZ_flag'))
    assert_png(written[0])
    # a PCD names its columns itself; here 'elongation' is missing and must be padded explicitly
    pcd = save_points(tmp_path / 'cloud.pcd', random_points(num_features=4), names=['x', 'y', 'z', 'intensity'])
    with pytest.raises(SystemExit, match=r"file has \[x, y, z, intensity\]: missing \['elongation'\]"):
        demo.main(demo_args(setup_files, pcd, tmp_path / 'out', '--num_features', '4'))
    assert_png(demo.main(demo_args(setup_files, pcd, tmp_path / 'out', '--num_features', '4',
                                   '--pad_missing_features'))[0])


def test_a_checkpoint_of_another_model_is_a_clear_error(setup_files, tmp_path):
    cfg = EasyDict(yaml.safe_load(TINY_WAYMO_CFG))
    cfg.MODEL.VFE.NUM_FILTERS = [8, 16]
    other = tmp_path / 'other.pth'
    torch.save({'model_state': build_network_from_cfg(cfg).state_dict(), 'optimizer_state': None, 'epoch': 1,
                'it': 1}, other)
    cfg_file, _ = setup_files
    points_file = save_points(tmp_path / 'f.bin', random_points())
    args = demo_args((cfg_file, other), points_file, tmp_path / 'out', '--num_features', '5')
    with pytest.raises(SystemExit, match=f'does not fit the model built from {cfg_file}(.|\n)*vfe.pfn_layers.0.linear'):
        load_demo().main(args)
    with pytest.raises(SystemExit, match='Checkpoint not found'):
        load_demo().main(demo_args((cfg_file, tmp_path / 'missing.pth'), points_file, tmp_path / 'out',
                                   '--num_features', '5'))


def test_non_finite_points_are_rejected_or_dropped_on_request(setup_files, tmp_path):
    points = random_points()
    points[5, 0] = np.nan
    points_file = save_points(tmp_path / 'nan.npy', points)
    demo = load_demo()
    with pytest.raises(SystemExit, match=r'non-finite values \(NaN / inf\) in 1 of 2000 rows'):
        demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '5'))
    assert_png(demo.main(demo_args(setup_files, points_file, tmp_path / 'out', '--num_features', '5',
                                   '--drop_nonfinite'))[0])


# ---- point_io ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('ext', ['.bin', '.npy', '.pcd'])
def test_point_files_round_trip(tmp_path, ext):
    points = random_points(num_points=57, num_features=5)
    path = save_points(tmp_path / f'p{ext}', points)
    loaded = load_points(path, 5)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, points)
    _, names = load_points_with_names(path, 5)
    assert names == (['x', 'y', 'z', 'f3', 'f4'] if ext == '.pcd' else None)


def test_bin_needs_an_explicit_feature_count_that_fits(tmp_path):
    path = save_points(tmp_path / 'nus.bin', random_points(num_points=10, num_features=5))
    assert load_points(path, 5).shape == (10, 5)
    with pytest.raises(PointFileError, match=r'nus\.bin: a \.bin file has no shape'):
        load_points(path)
    with pytest.raises(PointFileError, match=r'nus\.bin: 50 float32 values \(200 bytes\) are not a multiple of '
                                             r'num_features=4; feature counts that would fit: \[5, 10\]'):
        load_points(path, 4)
    (tmp_path / 'odd.bin').write_bytes(b'\x00' * 10)
    with pytest.raises(PointFileError, match=r'odd\.bin: 10 bytes is not a whole number of float32 values'):
        load_points(tmp_path / 'odd.bin', 4)
    with pytest.raises(PointFileError, match='num_features must be an integer >= 3'):
        load_points(path, 2)
    with pytest.raises(PointFileError, match='not found'):
        load_points(tmp_path / 'missing.bin', 4)
    with pytest.raises(PointFileError, match=r"unsupported point file extension '\.ply'"):
        (tmp_path / 'x.ply').write_text('ply')
        load_points(tmp_path / 'x.ply', 4)


def test_npy_shapes(tmp_path):
    np.save(tmp_path / 'a.npy', np.ones((4, 6)))
    assert load_points(tmp_path / 'a.npy').shape == (4, 6)
    with pytest.raises(PointFileError, match=r'a\.npy: the array has 6 columns \(shape \(4, 6\)\) but num_features=5'):
        load_points(tmp_path / 'a.npy', 5)
    np.save(tmp_path / 'flat.npy', np.arange(20, dtype=np.float32))
    assert load_points(tmp_path / 'flat.npy', 4).shape == (5, 4)
    with pytest.raises(PointFileError, match=r'1-D array of 20 values is not a multiple of num_features=3'):
        load_points(tmp_path / 'flat.npy', 3)
    np.save(tmp_path / 's.npy', np.zeros(3, dtype=[('x', 'f4'), ('y', 'f4')]))
    with pytest.raises(PointFileError, match='numeric'):
        load_points(tmp_path / 's.npy')


def _pcd_header(fields, sizes, types, counts, n, data):
    return (f'# .PCD v0.7\nVERSION 0.7\nFIELDS {" ".join(fields)}\nSIZE {" ".join(map(str, sizes))}\n'
            f'TYPE {" ".join(types)}\nCOUNT {" ".join(map(str, counts))}\nWIDTH {n}\nHEIGHT 1\n'
            f'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n').encode()


def _lzf_literals(data):
    """A valid LZF stream made of literal runs only (<= 32 bytes each)."""
    out = bytearray()
    for start in range(0, len(data), 32):
        chunk = data[start:start + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def test_pcd_ascii_binary_and_compressed(tmp_path):
    rng = np.random.default_rng(0)
    n = 7
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    intensity = rng.integers(0, 255, n).astype(np.uint8)
    ring = rng.integers(0, 32, n).astype(np.uint16)
    expected = np.concatenate([xyz, intensity[:, None], ring[:, None]], 1).astype(np.float32)
    fields, sizes, types, counts = ['x', 'y', 'z', '_', 'intensity', 'ring'], [4, 4, 4, 1, 1, 2], \
        ['F', 'F', 'F', 'U', 'U', 'U'], [1, 1, 1, 1, 1, 1]

    rows = '\n'.join(' '.join(f'{v:.9g}' for v in (*xyz[i], 0, intensity[i], ring[i])) for i in range(n))
    (tmp_path / 'a.pcd').write_bytes(_pcd_header(fields, sizes, types, counts, n, 'ascii') + rows.encode() + b'\n')
    record = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('pad', 'u1'), ('i', 'u1'), ('r', '<u2')])
    records = np.zeros(n, dtype=record)
    records['x'], records['y'], records['z'], records['i'], records['r'] = xyz[:, 0], xyz[:, 1], xyz[:, 2], \
        intensity, ring
    (tmp_path / 'b.pcd').write_bytes(_pcd_header(fields, sizes, types, counts, n, 'binary') + records.tobytes())
    field_major = b''.join([xyz[:, 0].tobytes(), xyz[:, 1].tobytes(), xyz[:, 2].tobytes(),
                            np.zeros(n, np.uint8).tobytes(), intensity.tobytes(), ring.astype('<u2').tobytes()])
    compressed = _lzf_literals(field_major)
    (tmp_path / 'c.pcd').write_bytes(_pcd_header(fields, sizes, types, counts, n, 'binary_compressed')
                                     + np.array([len(compressed), len(field_major)], '<u4').tobytes() + compressed)
    for name in ('a.pcd', 'b.pcd', 'c.pcd'):
        points, names = load_points_with_names(tmp_path / name, 5)
        assert names == ['x', 'y', 'z', 'intensity', 'ring'], name
        assert np.allclose(points, expected), name
    with pytest.raises(PointFileError, match=r"b\.pcd: the PCD has 5 columns \['x', 'y', 'z', 'intensity', 'ring'\] "
                                             r'but num_features=4'):
        load_points(tmp_path / 'b.pcd', 4)
    (tmp_path / 'bad.pcd').write_bytes(b'VERSION 0.7\nFIELDS x y z\n')
    with pytest.raises(PointFileError, match='no DATA line'):
        load_points(tmp_path / 'bad.pcd', 3)


def test_pcd_count_fields_expand_into_columns(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    header = _pcd_header(['x', 'y', 'z', 'normal'], [4, 4, 4, 4], ['F'] * 4, [1, 1, 1, 3], 2, 'binary')
    (tmp_path / 'n.pcd').write_bytes(header + values.tobytes())
    points, names = load_points_with_names(tmp_path / 'n.pcd', 6)
    assert names == ['x', 'y', 'z', 'normal_0', 'normal_1', 'normal_2'] and np.array_equal(points, values)


def test_lzf_back_references():
    # 'abc' as a literal run, then a 6-byte back reference to offset 3 that overlaps its own output
    assert point_io.lzf_decompress(bytes([2]) + b'abc' + bytes([(4 << 5) | 0, 2]), 9) == b'abcabcabc'
    # long match (length field 7 + extra byte)
    assert point_io.lzf_decompress(bytes([0]) + b'z' + bytes([(7 << 5), 3, 0]), 13) == b'z' * 13
    with pytest.raises(PointFileError, match='corrupt LZF'):
        point_io.lzf_decompress(bytes([2]) + b'abc', 5)


def test_list_point_files(tmp_path):
    for name in ('b.bin', 'a.bin', 'c.npy'):
        save_points(tmp_path / name, random_points(num_points=5))
    assert [p.name for p in list_point_files(tmp_path)] == ['a.bin', 'b.bin']
    assert [p.name for p in list_point_files(tmp_path, '.npy')] == ['c.npy']
    assert list_point_files(tmp_path / 'c.npy') == [tmp_path / 'c.npy']
    with pytest.raises(PointFileError, match=r'No \.pcd files in'):
        list_point_files(tmp_path, 'pcd')
    with pytest.raises(PointFileError, match='not found'):
        list_point_files(tmp_path / 'nothing')
