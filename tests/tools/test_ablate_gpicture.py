"""tools/ablate_gpicture.py: every row's pretraining config is a valid config that differs from the base exactly by
the row's overrides, and the table's mean / std are the sample statistics over seeds."""
import importlib.util
import math

import pytest
import yaml

from pcdet.config import ROOT_DIR, cfg_from_yaml_file
from pcdet.config_registry import validate_config


@pytest.fixture(scope='module')
def ablate():
    spec = importlib.util.spec_from_file_location('ablate_gpicture', ROOT_DIR / 'tools' / 'ablate_gpicture.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flatten(block, prefix=''):
    if isinstance(block, dict):
        items = {}
        for key, value in block.items():
            items.update(_flatten(value, f'{prefix}{key}.'))
        return items
    return {prefix[:-1]: block}


@pytest.mark.parametrize('row', ['full', 'points_only', 'teacher_only', 'random_mask', 'fixed_beta', 'label_free',
                                 'noisy_20', 'noisy_50'])
def test_every_row_config_validates_and_differs_only_by_its_overrides(ablate, row, tmp_path):
    path = ablate.variant_config(row, tmp_path)
    assert path.read_text().startswith('#') and '_BASE_CONFIG_' not in path.read_text()
    written = cfg_from_yaml_file(path)
    validate_config(written, source=str(path))  # unknown keys (e.g. a teacher key of another NAME) would fail here
    base = _flatten(ablate.strip_base_keys(cfg_from_yaml_file(ablate.ROWS[row].base_cfg)))
    variant = _flatten(ablate.strip_base_keys(written))
    changed = {key for key in base.keys() | variant.keys() if base.get(key) != variant.get(key)}
    override_keys = set(ablate.ROWS[row].overrides)
    # every changed key lies under an override, and every override took effect
    assert all(any(key == o or key.startswith(o + '.') for o in override_keys) for key in changed), changed
    for dotted, value in ablate.ROWS[row].overrides.items():
        block = written
        for key in dotted.split('.'):
            block = block[key]
        assert (dict(block) if isinstance(value, dict) else block) == value, dotted
    assert bool(changed) == bool(override_keys), f'{row}: changed {changed}'


def test_label_free_row_replaces_the_whole_teacher_block(ablate, tmp_path):
    teacher = yaml.safe_load(ablate.variant_config('label_free', tmp_path).read_text())['DATA_CONFIG'][
        'TEACHER_FEATURES']
    assert teacher['NAME'] == 'geometric' and 'NOISE_STD' not in teacher  # synthetic_semantic's key is gone


def test_summary_is_mean_and_sample_std_over_seeds(ablate):
    results = [{'row': 'full', 'seed': s, 'mAP': m, 'NDS': n, 'car AP': c}
               for s, (m, n, c) in enumerate([(0.1, 0.2, 0.3), (0.2, 0.2, 0.5), (0.6, 0.2, 0.4)])]
    results.append({'row': 'scratch', 'seed': 0, 'mAP': 0.05, 'NDS': 0.1, 'car AP': 0.0})
    table = ablate.summarise(results, ['scratch', 'full', 'teacher_only'])
    assert list(table) == ['scratch', 'full']  # rows without runs are left out
    mean, std, count = table['full']['mAP']
    assert count == 3 and math.isclose(mean, 0.3)
    assert math.isclose(std, math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 2))
    assert table['full']['NDS'][:2] == (pytest.approx(0.2), 0.0)
    assert table['scratch']['car AP'] == (0.0, 0.0, 1)


def test_summary_of_one_task_ignores_the_other_tasks_results(ablate):
    results = [{'task': 'segmentation', 'row': 'full', 'seed': s, 'mIoU': m, 'fwIoU': 0.5}
               for s, m in enumerate([0.2, 0.4])]
    results.append({'task': 'occupancy', 'row': 'full', 'seed': 0, 'SSC mIoU': 0.9, 'SC IoU': 0.9})
    table = ablate.summarise(results, ['full'], 'segmentation')
    assert set(table['full']) == {'mIoU', 'fwIoU'}
    assert table['full']['mIoU'][0] == pytest.approx(0.3) and table['full']['mIoU'][2] == 2
    assert ablate.summarise(results, ['full'], 'detection') == {}


def test_output_names_get_the_task_only_when_several_tasks_run(ablate):
    class Opts:
        tasks = ['detection', 'occupancy']
    assert ablate.output_path('docs/a.md', 'occupancy', Opts).name == 'a_occupancy.md'
    Opts.tasks = ['occupancy']
    assert str(ablate.output_path('docs/a.md', 'occupancy', Opts)) == 'docs/a.md'
    assert ablate.output_path(None, 'occupancy', Opts) is None
