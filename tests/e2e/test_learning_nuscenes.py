"""Learning is proven: the tiny DSVT-Pillar + CenterHead config learns to detect cars on synthetic nuScenes data.

The whole user path runs through the real tools, each in its own process:
  1. `python -m pcdet.datasets.synthetic.nuscenes`               synthetic v1.0-mini dataset (10 scenes)
  2. `python -m pcdet.datasets.nuscenes.nuscenes_dataset`        infos + GT database (nuscenes-devkit)
  3. `tools/train.py --fix_random_seed --workers 0`             tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml
  4. `tools/test.py --ckpt <last epoch>`                         official devkit `DetectionEval` on mini_val
and the test asserts the devkit's car AP (mean over the 0.5/1/2/4 m matching thresholds) from
`metrics_summary.json`. Nothing is mocked and no number is hard-coded except the bar.

Budget: <= 8 minutes wall on 2 CPU cores (CI). The training/eval subprocesses use 2 torch threads: under
`run_tests.sh` the other xdist worker finishes the rest of the suite within the first minute. The dataset size and
the schedule below are what fits; docs/RESULTS.md records the measured numbers. Deselect with `-m "not slow"`.
"""
import pytest

from e2e_tools import REPO_ROOT, devkit_metrics, make_synthetic_nuscenes, run_tool, tool_env

CFG_FILE = REPO_ROOT / 'tools' / 'cfgs' / 'nuscenes_models' / 'dsvt_tiny_synthetic.yaml'
# Dataset: e2e_tools.SYNTHETIC_GENERATOR_ARGS (the session fixture's 3 frames per scene are too few to learn from).
EPOCHS = 16
TRAIN_THREADS = 2
CAR_AP_BAR = 0.5


@pytest.mark.slow
def test_tiny_dsvt_learns_cars_on_synthetic_nuscenes(tmp_path, record_property):
    data_path = tmp_path / 'data'
    output_root = tmp_path / 'output'
    # PASSIVE OpenMP waits cost ~20 % on an idle machine but keep a 2-thread run from slowing down up to ~8x when
    # another process competes for the cores (measured, see docs/RESULTS.md).
    env = tool_env(TRAIN_THREADS)
    data_set = ['--set', 'DATA_CONFIG.DATA_PATH', str(data_path)]
    timings = {}

    make_synthetic_nuscenes(data_path, env, tmp_path, timings)
    timings['train'] = run_tool(
        [REPO_ROOT / 'tools' / 'train.py', '--cfg_file', CFG_FILE, '--extra_tag', 'ci', '--epochs', EPOCHS,
         '--workers', '0', '--fix_random_seed', '--skip_eval', '--use_tqdm_to_record', '--output_root', output_root,
         *data_set], env, tmp_path / 'train.log', timeout=900)

    run_dir = output_root / 'nuscenes_models' / 'dsvt_tiny_synthetic' / 'ci'
    ckpt = run_dir / 'ckpt' / f'checkpoint_epoch_{EPOCHS}.pth'
    assert ckpt.is_file(), f'training did not write {ckpt}'
    timings['test'] = run_tool(
        [REPO_ROOT / 'tools' / 'test.py', '--cfg_file', CFG_FILE, '--extra_tag', 'ci', '--ckpt', ckpt,
         '--workers', '0', '--output_root', output_root, *data_set], env, tmp_path / 'test.log', timeout=300)

    metrics = devkit_metrics(run_dir, EPOCHS)
    car_ap, mean_ap, nds = metrics['mean_dist_aps']['car'], metrics['mean_ap'], metrics['nd_score']
    car_aps = metrics['label_aps']['car']
    report = (f'car AP {car_ap:.4f} (@0.5/1/2/4 m: {", ".join(f"{v:.3f}" for v in car_aps.values())}), '
              f'mAP {mean_ap:.4f}, NDS {nds:.4f}; seconds: '
              + ', '.join(f'{k} {v:.0f}' for k, v in timings.items()) + f', total {sum(timings.values()):.0f}')
    print(report)
    for key, value in [('car_AP', car_ap), ('mAP', mean_ap), ('NDS', nds)] + [(f'seconds_{k}', v)
                                                                                for k, v in timings.items()]:
        record_property(key, round(float(value), 4))
    assert car_ap >= CAR_AP_BAR, f'the tiny DSVT did not learn cars well enough: {report}'
