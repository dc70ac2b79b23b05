"""tools/visualize_bev.py on the synthetic nuScenes dataset: one PNG per requested frame, config saved."""
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_tool():
    spec = importlib.util.spec_from_file_location('visualize_bev', REPO_ROOT / 'tools' / 'visualize_bev.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_path(synthetic_nuscenes_data_path):
    return synthetic_nuscenes_data_path


def test_writes_one_png_per_frame_and_the_config(data_path, tmp_path, synthetic_nuscenes_version):
    out_dir = tmp_path / 'bev'
    load_tool().main(['--cfg_file', str(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_synthetic.yaml'),
                      '--split', 'train', '--indices', '0', '2', '--out_dir', str(out_dir),
                      '--set', 'DATA_PATH', str(data_path), 'VERSION', synthetic_nuscenes_version])
    pictures = sorted(out_dir.glob('bev_*.png'))
    assert [p.name[:9] for p in pictures] == ['bev_00000', 'bev_00002']
    assert all(p.read_bytes()[:4] == b'\x89PNG' and p.stat().st_size > 10_000 for p in pictures)
    saved = yaml.safe_load((out_dir / 'config.yaml').read_text())
    assert saved['DATA_PATH'] == str(data_path)


def test_out_of_range_index_is_a_clear_error(data_path, tmp_path, synthetic_nuscenes_version):
    with pytest.raises(SystemExit, match='outside the test split'):
        load_tool().main(['--cfg_file', str(REPO_ROOT / 'tools/cfgs/dataset_configs/nuscenes_synthetic.yaml'),
                          '--indices', '999', '--out_dir', str(tmp_path / 'bev'),
                          '--set', 'DATA_PATH', str(data_path), 'VERSION', synthetic_nuscenes_version])
