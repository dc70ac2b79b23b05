"""tools/visualize_seg_occ.py on tiny hand-written result, point, label and occupancy files."""
import importlib.util
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pcdet.utils import seg_occ_visualization as vis

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'visualize_seg_occ.py'
TOP = vis.MARGIN + vis.HEADER_HEIGHT + vis.TITLE_HEIGHT
TOKEN = 'sd_token_0'
VERSION = 'v1.0-mini'
CAR_COLOR, PEDESTRIAN_COLOR, VEGETATION_COLOR = (255, 158, 0), (0, 0, 230), (0, 175, 0)  # devkit colours
IGNORE = vis.IGNORE_COLOR
# The 32 general lidarseg classes in REVERSED index order (official: noise 0 ... vehicle.ego 31), so only a
# mapping by name gives the right challenge ids.
GENERAL = ['noise', 'animal', 'human.pedestrian.adult', 'human.pedestrian.child',
           'human.pedestrian.construction_worker', 'human.pedestrian.personal_mobility',
           'human.pedestrian.police_officer', 'human.pedestrian.stroller', 'human.pedestrian.wheelchair',
           'movable_object.barrier', 'movable_object.debris', 'movable_object.pushable_pullable',
           'movable_object.trafficcone', 'static_object.bicycle_rack', 'vehicle.bicycle', 'vehicle.bus.bendy',
           'vehicle.bus.rigid', 'vehicle.car', 'vehicle.construction', 'vehicle.emergency.ambulance',
           'vehicle.emergency.police', 'vehicle.motorcycle', 'vehicle.trailer', 'vehicle.truck',
           'flat.driveable_surface', 'flat.other', 'flat.sidewalk', 'flat.terrain', 'static.manmade', 'static.other',
           'static.vegetation', 'vehicle.ego']
INDEX = {name: 31 - i for i, name in enumerate(GENERAL)}


def load_tool():
    spec = importlib.util.spec_from_file_location('visualize_seg_occ', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode(path):
    from matplotlib import image as mpl_image
    return np.round(mpl_image.imread(io.BytesIO(Path(path).read_bytes()), format='png')[..., :3] * 255).astype(
        np.uint8)


def write_seg_dataset(root, with_tables=True):
    """One key frame: 3 points (car / police officer -> pedestrian / ambulance -> ignore in the GT)."""
    tables = root / VERSION
    tables.mkdir(parents=True)
    (tables / 'category.json').write_text(json.dumps(
        [{'token': f'c{i}', 'name': name, 'description': '', 'index': INDEX[name]} for i, name in enumerate(GENERAL)]))
    lidar_path = 'samples/LIDAR_TOP/frame0.pcd.bin'
    (root / lidar_path).parent.mkdir(parents=True)
    # pixels (row, col): (359, 307), (105, 55), (255, 256) in the default 512 x 512 BEV
    np.array([[10.3, -20.7, 0.0, 1, 0], [-40.1, 30.1, 0.0, 2, 1], [0.1, 0.1, 0.5, 3, 2]],
             dtype=np.float32).tofile(root / lidar_path)
    if with_tables:
        (tables / 'sample_data.json').write_text(json.dumps([
            {'token': TOKEN, 'filename': lidar_path, 'is_key_frame': True},
            {'token': 'cam', 'filename': 'samples/CAM_FRONT/x.jpg', 'is_key_frame': True}]))
        (tables / 'lidarseg.json').write_text(json.dumps(
            [{'token': TOKEN, 'sample_data_token': TOKEN, 'filename': f'lidarseg/{VERSION}/{TOKEN}_lidarseg.bin'}]))
    (root / 'lidarseg' / VERSION).mkdir(parents=True)
    np.array([INDEX['vehicle.car'], INDEX['human.pedestrian.police_officer'], INDEX['vehicle.emergency.ambulance']],
             dtype=np.uint8).tofile(root / 'lidarseg' / VERSION / f'{TOKEN}_lidarseg.bin')
    return lidar_path


def write_prediction(result_dir, labels, eval_set='mini_val'):
    folder = result_dir / 'lidarseg' / eval_set
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(labels, dtype=np.uint8).tofile(folder / f'{TOKEN}_lidarseg.bin')


def test_name_mapping_matches_the_devkit():
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)
    mapper.ignore_class = mapper.get_ignore_class()
    fine2coarse = mapper.get_fine2coarse()
    assert load_tool().GENERAL_TO_CHALLENGE == {
        name: (None if coarse == 'ignore' else coarse) for name, coarse in fine2coarse.items()}


def test_seg_picture_from_the_official_results_layout(tmp_path):
    write_seg_dataset(tmp_path / 'data')
    write_prediction(tmp_path / 'results', [4, 4, 16])  # car, car (wrong: GT pedestrian), vegetation
    written = load_tool().main(['seg', '--dataroot', str(tmp_path / 'data'), '--version', VERSION,
                                '--result_dir', str(tmp_path / 'results'), '--out_dir', str(tmp_path / 'out')])
    assert written == [tmp_path / 'out' / f'seg_{TOKEN}.png']
    pixels = decode(written[0])
    right = vis.MARGIN + 512 + vis.GAP
    assert [tuple(pixels[TOP + r, vis.MARGIN + c]) for r, c in ((359, 307), (105, 55), (255, 256))] == \
        [CAR_COLOR, CAR_COLOR, VEGETATION_COLOR]
    assert [tuple(pixels[TOP + r, right + c]) for r, c in ((359, 307), (105, 55), (255, 256))] == \
        [CAR_COLOR, PEDESTRIAN_COLOR, IGNORE]


def test_seg_points_found_through_the_infos(tmp_path):
    lidar_path = write_seg_dataset(tmp_path / 'data', with_tables=False)
    write_prediction(tmp_path / 'results', [4, 7, 16])
    info_file = tmp_path / 'infos.pkl'
    info_file.write_bytes(pickle.dumps({'infos': [{'lidar_token': TOKEN, 'lidar_path': lidar_path}]}))
    written = load_tool().main(['seg', '--dataroot', str(tmp_path / 'data'), '--version', VERSION,
                                '--result_dir', str(tmp_path / 'results'), '--eval_set', 'mini_val',
                                '--info_file', str(info_file), '--tokens', TOKEN, '--out_dir', str(tmp_path / 'o')])
    pixels = decode(written[0])
    assert tuple(pixels[TOP + 105, vis.MARGIN + 512 + vis.GAP + 55]) == PEDESTRIAN_COLOR


def test_seg_errors_name_the_missing_or_bad_file(tmp_path):
    tool = load_tool()
    root = tmp_path / 'data'
    write_seg_dataset(root)
    args = ['seg', '--dataroot', str(root), '--version', VERSION, '--result_dir', str(tmp_path / 'results'),
            '--out_dir', str(tmp_path / 'out')]
    with pytest.raises(SystemExit, match='no result folders'):
        tool.main(args)
    write_prediction(tmp_path / 'results', [4, 4])  # one label short
    with pytest.raises(SystemExit, match=f'{TOKEN}_lidarseg.bin has 2 labels but .*frame0.pcd.bin has 3 points'):
        tool.main(args)
    write_prediction(tmp_path / 'results', [4, 4, 4])
    with pytest.raises(SystemExit, match=r"No prediction for tokens \['nope'\]"):
        tool.main(args + ['--tokens', 'nope'])
    gt_file = root / 'lidarseg' / VERSION / f'{TOKEN}_lidarseg.bin'
    gt_file.unlink()
    with pytest.raises(SystemExit, match=f'GT label file of lidar token {TOKEN} not found: {gt_file}'):
        tool.main(args)
    (root / VERSION / 'category.json').unlink()
    with pytest.raises(SystemExit, match='category.json not found'):
        tool.main(args)
    write_prediction(tmp_path / 'results', [4, 4, 4], eval_set='val')
    with pytest.raises(SystemExit, match=r"pass --eval_set, found \['mini_val', 'val'\]"):
        tool.main(args)


def test_rows_to_volume_votes():
    tool = load_tool()
    rows = np.array([[0, 1, 2, 4], [0, 1, 2, 4], [0, 1, 2, 11],   # majority car
                     [1, 0, 0, 11], [1, 0, 0, 4],                 # tie -> smaller class (car)
                     [2, 3, 3, 0], [2, 3, 3, 7],                  # tie with noise -> the class
                     [3, 3, 3, 0], [3, 3, 3, 0], [3, 3, 3, 7],    # noise majority -> noise
                     [1, 2, 3, 16]], dtype=np.int16)
    volume = tool.rows_to_volume(rows, (4, 4, 4))
    expected = np.zeros((4, 4, 4), dtype=np.uint8)
    expected[2, 1, 0], expected[0, 0, 1], expected[3, 3, 2], expected[3, 3, 3], expected[3, 2, 1] = 4, 4, 7, 255, 16
    np.testing.assert_array_equal(volume, expected)
    with pytest.raises(ValueError, match='f.npy: 1 rows outside the grid 4x4x4'):
        tool.rows_to_volume(np.array([[4, 0, 0, 1]]), (4, 4, 4), 'f.npy')


def write_occ(root, token, rows_or_volume, scene='scene_s0'):
    path = root / scene / 'occupancy' / f'{token}.npy'
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, rows_or_volume)
    return path


def test_occ_pictures_from_row_files(tmp_path):
    # GT: car at (x=3, y=5, z=2) above road at z=0; the prediction has only the road; grid 16 x 16 x 8.
    gt_rows = np.array([[0, 5, 3, 11], [2, 5, 3, 4], [7, 9, 9, 0]], dtype=np.int32)
    write_occ(tmp_path / 'gt', 'tok', gt_rows)
    write_occ(tmp_path / 'pred', 'tok', np.array([[0, 5, 3, 11]], dtype=np.int64))
    written = load_tool().main(['occ', '--pred_root', str(tmp_path / 'pred'), '--gt_root', str(tmp_path / 'gt'),
                                '--grid', '16', '16', '8', '--slice_y', '5', '--out_dir', str(tmp_path / 'out')])
    assert [p.name for p in written] == ['occ_bev_tok.png', 'occ_side_tok.png']
    bev = decode(written[0])  # 512 // 16 = 32 pixels per voxel; voxel (3, 5) -> rows 320.., columns 96..
    right = vis.MARGIN + 512 + vis.GAP
    assert tuple(bev[TOP + 320 + 16, vis.MARGIN + 96 + 16]) == (0, 207, 191)  # predicted: road
    assert tuple(bev[TOP + 320 + 16, right + 96 + 16]) == CAR_COLOR           # true: the car on top
    assert tuple(bev[TOP + 6 * 32 + 16, right + 9 * 32 + 16]) == vis.NOISE_COLOR  # noise at (9, 9)
    side = decode(written[1])  # 1024 // 16 = 64 pixels per voxel; (x=3, z=2) -> rows (8-1-2)*64, columns 192
    second = TOP + 8 * 64 + vis.TITLE_HEIGHT + vis.GAP
    assert tuple(side[TOP + 5 * 64 + 32, vis.MARGIN + 192 + 32]) == (255, 255, 255)
    assert tuple(side[second + 5 * 64 + 32, vis.MARGIN + 192 + 32]) == CAR_COLOR
    assert tuple(side[second + 7 * 64 + 32, vis.MARGIN + 192 + 32]) == (0, 207, 191)


def test_occ_coarse_dense_prediction_and_errors(tmp_path):
    tool = load_tool()
    write_occ(tmp_path / 'gt', 'tok', np.array([[0, 5, 3, 11]], dtype=np.int16))
    coarse = np.zeros((8, 8, 4), dtype=np.uint8)
    coarse[1, 2, 0] = 4  # covers fine voxels x 2..3, y 4..5
    write_occ(tmp_path / 'pred' / 'elsewhere', 'tok', coarse, scene='')  # found by token under --gt_root
    args = ['occ', '--pred_root', str(tmp_path / 'pred'), '--gt_root', str(tmp_path / 'gt'),
            '--grid', '16', '16', '8', '--out_dir', str(tmp_path / 'out')]
    bev = decode(tool.main(args)[0])
    assert tuple(bev[TOP + 320 + 16, vis.MARGIN + 64 + 16]) == CAR_COLOR
    write_occ(tmp_path / 'pred', 'other', coarse)
    with pytest.raises(SystemExit, match=r'No GT occupancy for .*other.npy: neither .*gt/scene_s0/occupancy/other'):
        tool.main(args + ['--tokens', 'other'])
    bad = write_occ(tmp_path / 'gt', 'tok', np.array([[0, 16, 3, 11]], dtype=np.int16))
    with pytest.raises(SystemExit, match=f'{bad}: 1 rows outside the grid'):
        tool.main(args + ['--tokens', 'tok'])
    with pytest.raises(SystemExit, match='Prediction folder .*missing not found'):
        tool.main(['occ', '--pred_root', str(tmp_path / 'missing'), '--gt_root', str(tmp_path / 'gt')])
