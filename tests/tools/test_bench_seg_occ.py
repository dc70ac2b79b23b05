"""bench/seg_occ_step.py: one sample and one training step of the tiny seg / occ configs on the shared synthetic set."""
import importlib.util
from pathlib import Path

import pytest

from pcdet.datasets.nuscenes import nuscenes_dataset, occupancy
from pcdet.models.dense_heads import occ_head, seg_head

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location('seg_occ_step', ROOT / 'bench' / 'seg_occ_step.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('task', ['segmentation', 'occupancy'])
def test_rows_add_up_and_patches_are_undone(task, synthetic_nuscenes_data_path, capsys):
    bench = load_bench()
    originals = [occupancy.load_occupancy_rows, occupancy.densify, nuscenes_dataset.append_columns,
                 seg_head.lovasz_softmax, occ_head.downsample_occupancy_labels]
    result = bench.main(['--task', task, '--data_path', str(synthetic_nuscenes_data_path), '--cfg_file',
                         f'tools/cfgs/gpicture_models/gpicture_tiny_synthetic_{task}.yaml', '--samples', '1',
                         '--warmup_samples', '0', '--repeats', '1', '--warmup', '0'])
    data, model = result['data'][0], result['model'][0]
    for name in bench.LOADING_ROWS[task]:
        assert data[name] > 0
    assert data['points + sweeps'] > 0 and data['other'] >= 0
    assert sum(data[name] for name in result['data_names']) == pytest.approx(data['total'])
    for name in bench.HEAD_ROWS:
        assert model[name] > 0
    assert model['encoder backward + optim'] > 0 and model['other'] >= 0
    assert sum(model[name] for name in bench.MODEL_ROWS) == pytest.approx(model['total'])
    assert [occupancy.load_occupancy_rows, occupancy.densify, nuscenes_dataset.append_columns,
            seg_head.lovasz_softmax, occ_head.downsample_occupancy_labels] == originals
    out = capsys.readouterr().out
    assert 'of the sample preparation' in out and 'of the training step' in out
