"""Learning is proven for segmentation and occupancy: the tiny GPICTURE-encoder models learn on synthetic data and
beat a trivial floor measured in the same test, both scored by the official metrics.

One synthetic v1.0-mini set (10 scenes x 10 key frames, lidarseg labels + nuScenes-Occupancy ground truth) ->
`create_nuscenes_infos` -> for each task, concurrently (one torch thread each):
  segmentation  tools/train.py gpicture_tiny_synthetic_segmentation.yaml (every training frame) -> tools/test.py:
                nuScenes-lidarseg results folder scored by nuscenes-devkit's LidarSegEval on mini_val;
  occupancy     tools/train.py gpicture_tiny_synthetic_occupancy.yaml -> tools/test.py: OpenOccupancy SC IoU /
                SSC mIoU over the 512x512x40 volumes;
and `python -m pcdet.evaluation.baselines` (the per-height majority floors, pcdet/evaluation/baselines.py) through
the same evaluators. Bars and measured numbers: docs/SEGMENTATION_OCCUPANCY.md. Deselect with `-m "not slow"`.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e_tools import REPO_ROOT, eval_args, make_synthetic_nuscenes, run_tool, tool_env, train_args

CFG_DIR = REPO_ROOT / 'tools' / 'cfgs' / 'gpicture_models'
GENERATOR_ARGS = ['--num_scenes', '10', '--samples_per_scene', '10', '--azimuth_steps', '512', '--seed', '0']
EPOCHS = {'segmentation': 12, 'occupancy': 12}
# Bars (docs/SEGMENTATION_OCCUPANCY.md "Learning proofs"): an absolute floor well under the measured value, and a
# margin over the height-majority floor of the same run that no run of the floor itself could reach.
SEG_MIOU_BAR, SEG_MARGIN = 0.40, 0.2
OCC_SSC_BAR, OCC_SC_BAR, OCC_MARGIN = 0.08, 0.12, 0.05


def task_pipeline(task, data_path, workdir):
    """Train + evaluate the tiny model of `task` and score its baseline. -> (model metrics, baseline metrics, s)."""
    env, timings = tool_env(1), {}
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_file = CFG_DIR / f'gpicture_tiny_synthetic_{task}.yaml'
    output_root = workdir / 'output'
    data_set = ['--set', 'DATA_CONFIG.DATA_PATH', str(data_path)]
    timings['train'] = run_tool(train_args(cfg_file, 'ci', EPOCHS[task], output_root,
                                           [*data_set, 'DATA_CONFIG.SAMPLED_INTERVAL.train', '1']),
                                env, workdir / 'train.log', timeout=2400)
    run_dir = output_root / cfg_file.parent.name / cfg_file.stem / 'ci'
    ckpt = run_dir / 'ckpt' / f'checkpoint_epoch_{EPOCHS[task]}.pth'
    assert ckpt.is_file(), f'training did not write {ckpt}'
    timings['test'] = run_tool(eval_args(cfg_file, 'ci', ckpt, output_root, data_set), env, workdir / 'test.log',
                               timeout=900)
    timings['baseline'] = run_tool(['-m', 'pcdet.evaluation.baselines', '--cfg_file', cfg_file, '--output_dir',
                                    workdir / 'baseline', *data_set], env, workdir / 'baseline.log', timeout=900)
    eval_dirs = sorted((run_dir / 'eval' / f'epoch_{EPOCHS[task]}').glob('*/default'))
    assert len(eval_dirs) == 1, f'expected one evaluation folder of tools/test.py, found {eval_dirs}'
    model_metrics = json.loads((eval_dirs[0] / 'metrics.json').read_text())
    baseline_metrics = json.loads((workdir / 'baseline' / 'metrics.json').read_text())
    return model_metrics, baseline_metrics, timings


@pytest.fixture(scope='module')
def seg_occ_runs(request, tmp_path_factory):
    """{task: Future of (model metrics, baseline metrics, seconds)} for the selected tests, started together."""
    tasks = {name: task for name, task in (('test_tiny_segmentation_learns', 'segmentation'),
                                           ('test_tiny_occupancy_learns', 'occupancy'))}
    selected = [task for name, task in tasks.items() if name in {item.name for item in request.session.items}]
    workdir = tmp_path_factory.mktemp('seg_occ')
    timings = {}
    if selected:
        make_synthetic_nuscenes(workdir / 'data', tool_env(2), workdir, timings, generator_args=GENERATOR_ARGS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {task: pool.submit(task_pipeline, task, workdir / 'data', workdir / task) for task in selected}


def recorded_result(seg_occ_runs, task, record_property):
    """The task's (model metrics, baseline metrics, seconds), with every number recorded in the JUnit report."""
    model, baseline, timings = seg_occ_runs[task].result()
    for prefix, metrics in (('', model), ('baseline_', baseline)):
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                record_property(f'{prefix}{key}', round(float(value), 4))
    return model, baseline, timings


@pytest.mark.slow
def test_tiny_segmentation_learns(seg_occ_runs, record_property):
    model, baseline, timings = recorded_result(seg_occ_runs, 'segmentation', record_property)
    miou, floor = model['lidarseg/mIoU'], baseline['lidarseg/mIoU']
    summary = (f'LidarSegEval mIoU {miou:.3f} (fwIoU {model["lidarseg/fwIoU"]:.3f}); height-majority floor '
               f'{floor:.3f}; seconds: {timings}')
    assert miou >= SEG_MIOU_BAR, summary
    assert miou >= floor + SEG_MARGIN, summary


@pytest.mark.slow
def test_tiny_occupancy_learns(seg_occ_runs, record_property):
    model, baseline, timings = recorded_result(seg_occ_runs, 'occupancy', record_property)
    ssc, sc = model['occupancy/SSC_mIoU_present'], model['occupancy/SC_IoU']
    floor = baseline['occupancy/SSC_mIoU_present']
    summary = (f'SSC mIoU {ssc:.3f} (official {model["occupancy/SSC_mIoU"]}), SC IoU {sc:.3f}; height-majority floor '
               f'SSC {floor:.3f} / SC {baseline["occupancy/SC_IoU"]:.3f}; seconds: {timings}')
    assert ssc >= OCC_SSC_BAR and sc >= OCC_SC_BAR, summary
    assert ssc >= floor + OCC_MARGIN, summary
