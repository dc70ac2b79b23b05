"""GPICTURE pretraining transfers: fine-tuning on 10% of the labels from the pretrained encoder beats (or ties)
training the same detector from scratch, by the official nuScenes metrics.

The whole user path runs through the real tools, each in its own process (nothing mocked):
  1. `python -m pcdet.datasets.synthetic.nuscenes`          synthetic v1.0-trainval set: 30 official scenes x 4 key
                                                             frames, 21 train / 9 val scenes (val_fraction 0.3)
  2. `python -m pcdet.datasets.nuscenes.nuscenes_dataset`   infos (nuscenes-devkit)
  3. `tools/prepare_seal_features.py`                       per-point `synthetic_semantic` teacher features
  4. `tools/train.py` gpicture_tiny_synthetic_pretrain.yaml  GPICTURE pretraining on all 84 train frames, no labels;
                                                             both reconstruction losses must decrease (TensorBoard)
  5. `tools/train.py` gpicture_tiny_synthetic_finetune.yaml  twice, same seed and schedule, on every 10th train frame
     (9 frames): (b) from scratch, at the same time as step 4; (a) `--pretrained_model` = the pretraining checkpoint
  6. `tools/test.py` for both                                 official devkit `DetectionEval` on the 36 val frames
and asserts mAP(a) >= mAP(b) and car AP(a) >= car AP(b); NDS of both is printed and recorded (docs/RESULTS.md and
docs/GPICTURE.md have the measured numbers: the pretrained encoder mostly makes the fine-tune converge faster). 9 val
scenes instead of mini's 2 keep the per-class APs from hinging on a handful of objects.

Budget: about 15 minutes wall on 2 shared CPU cores (CI; 45 fine-tune epochs, see docs/RESULTS.md), one torch
thread per tool so the scratch fine-tune can run beside the pretraining. Deselect with `-m "not slow"`.
"""
import re
import subprocess
import sys
import time

import pytest

from e2e_tools import (REPO_ROOT, devkit_metrics, eval_args, make_synthetic_nuscenes, run_tool, tool_env,
                       train_args)

CFG_DIR = REPO_ROOT / 'tools' / 'cfgs' / 'gpicture_models'
PRETRAIN_CFG = CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'
FINETUNE_CFG = CFG_DIR / 'gpicture_tiny_synthetic_finetune.yaml'
VERSION = 'v1.0-trainval'
GENERATOR_ARGS = ['--num_scenes', '30', '--samples_per_scene', '4', '--azimuth_steps', '512', '--seed', '0',
                  '--val_fraction', '0.3']
PRETRAIN_EPOCHS = 16
FINETUNE_EPOCHS = 45
THREADS = 1


def assert_pretraining_losses_decrease(tensorboard_dir, window=20):
    """Both reconstruction losses end lower than they start: loss_points over the whole run, loss_seal from the
    first epoch with beta > 0 (before it, the teacher head is not trained)."""
    from pcdet.utils.tb_events import read_scalars
    series = read_scalars(tensorboard_dir)
    points = [v for _, v in series['train/loss_points']]
    assert sum(points[-window:]) / window < 0.5 * sum(points[:window]) / window, 'loss_points did not decrease'
    beta = dict(series['dgpl/beta'])
    first_on = min(epoch for epoch, value in beta.items() if value > 0)
    iters_per_epoch = len(points) // len(beta)
    seal = [v for _, v in series['train/loss_seal']][first_on * iters_per_epoch:]
    assert sum(seal[-window:]) / window < 0.5 * sum(seal[:window]) / window, 'loss_seal did not decrease'


def run_in_parallel(jobs, env, timeout):
    """Start every (args, log_path) job at once, wait for all; fail naming the first job that failed. -> seconds."""
    start = time.monotonic()
    procs = []
    for args, log_path in jobs:
        log = open(log_path, 'w')
        procs.append((subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log, log_path))
    for proc, log, log_path in procs:
        try:
            code = proc.wait(timeout=max(timeout - (time.monotonic() - start), 1))
        finally:
            log.close()
        if code != 0:
            for other, _, _ in procs:
                other.kill()
            tail = log_path.read_text(errors='replace')[-6000:]
            pytest.fail(f'{log_path.name}: exited with {code}; log tail:\n{tail}')
    return time.monotonic() - start


@pytest.mark.slow
def test_gpicture_pretraining_helps_with_ten_percent_of_the_labels(tmp_path, record_property):
    data_path = tmp_path / 'data'
    output_root = tmp_path / 'output'
    env = tool_env(THREADS)
    data_set = ['--set', 'DATA_CONFIG.DATA_PATH', str(data_path), 'DATA_CONFIG.VERSION', VERSION]
    timings = {}

    make_synthetic_nuscenes(data_path, env, tmp_path, timings, VERSION, GENERATOR_ARGS)
    timings['teacher'] = run_tool(
        [REPO_ROOT / 'tools' / 'prepare_seal_features.py', '--cfg_file', PRETRAIN_CFG, '--split', 'train',
         '--quiet', *data_set], env, tmp_path / 'teacher.log', timeout=300)
    # The scratch arm does not need the pretrained encoder: it trains while the pretraining runs (one thread each),
    # which takes its whole run off the test's critical path; every run is seeded, so the numbers do not change.
    timings['pretrain+scratch'] = run_in_parallel(
        [(train_args(PRETRAIN_CFG, 'ci', PRETRAIN_EPOCHS, output_root, data_set), tmp_path / 'pretrain.log'),
         (train_args(FINETUNE_CFG, 'scratch', FINETUNE_EPOCHS, output_root, data_set), tmp_path / 'ft_scratch.log')],
        env, timeout=1500)
    pretrained = (output_root / 'gpicture_models' / PRETRAIN_CFG.stem / 'ci' / 'ckpt'
                  / f'checkpoint_epoch_{PRETRAIN_EPOCHS}.pth')
    assert pretrained.is_file(), f'pretraining did not write {pretrained}'
    pretrain_log = (tmp_path / 'pretrain.log').read_text(errors='replace')
    assert 'DGPL epoch 2: beta' in pretrain_log  # the gate ran on encoder snapshots
    assert_pretraining_losses_decrease(output_root / 'gpicture_models' / PRETRAIN_CFG.stem / 'ci' / 'tensorboard')

    timings['finetune_pretrained'] = run_tool(
        train_args(FINETUNE_CFG, 'pretrained', FINETUNE_EPOCHS, output_root, data_set,
                   ['--pretrained_model', pretrained]), env,
        tmp_path / 'ft_pretrained.log', timeout=1200)
    finetune_log = (tmp_path / 'ft_pretrained.log').read_text(errors='replace')
    assert re.search(r'Pretrained encoder coverage: (\d+)/\1 tensors', finetune_log), 'the encoder did not fully load'

    metrics = {}
    for arm in ('pretrained', 'scratch'):
        run_dir = output_root / 'gpicture_models' / FINETUNE_CFG.stem / arm
        ckpt = run_dir / 'ckpt' / f'checkpoint_epoch_{FINETUNE_EPOCHS}.pth'
        timings[f'test_{arm}'] = run_tool(eval_args(FINETUNE_CFG, arm, ckpt, output_root, data_set), env,
                                          tmp_path / f'test_{arm}.log', timeout=300)
        metrics[arm] = devkit_metrics(run_dir, FINETUNE_EPOCHS)

    report = '; '.join(f'{arm}: mAP {m["mean_ap"]:.4f}, NDS {m["nd_score"]:.4f}, car AP '
                       f'{m["mean_dist_aps"]["car"]:.4f}' for arm, m in metrics.items())
    report += '; seconds: ' + ', '.join(f'{k} {v:.0f}' for k, v in timings.items())
    print(report)
    for arm, m in metrics.items():
        record_property(f'{arm}_mAP', round(float(m['mean_ap']), 4))
        record_property(f'{arm}_NDS', round(float(m['nd_score']), 4))
    pre, scratch = metrics['pretrained'], metrics['scratch']
    assert pre['mean_ap'] >= scratch['mean_ap'] and pre['mean_dist_aps']['car'] >= scratch['mean_dist_aps']['car'], \
        f'the pretrained encoder did not help: {report}'
