"""Helpers shared by the end-to-end tests: run a real tool in a subprocess, read the devkit's metrics."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tool_env(threads):
    """Subprocess environment: `threads` torch threads, PASSIVE OpenMP waits (idle threads sleep instead of spinning,
    which keeps a multi-thread run from slowing down several-fold when another process competes for the cores)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY='PASSIVE',
                PYTHONHASHSEED='0')


def run_tool(args, env, log_path, timeout):
    """Run one tool in a subprocess; its output goes to `log_path` (shown in the failure message). -> seconds."""
    start = time.monotonic()
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable, *map(str, args)], check=False, cwd=REPO_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = Path(log_path).read_text(errors='replace')[-6000:]
        pytest.fail(f'{" ".join(map(str, args[:3]))} ... exited with {proc.returncode} after {seconds:.0f} s; '
                    f'log {log_path}:\n{tail}')
    return seconds


def train_args(cfg_file, tag, epochs, output_root, data_set, extra=()):
    """`tools/train.py` arguments of a seeded, single-process CI run (no eval: the test runs tools/test.py)."""
    return [REPO_ROOT / 'tools' / 'train.py', '--cfg_file', cfg_file, '--extra_tag', tag, '--epochs', epochs,
            '--workers', '0', '--fix_random_seed', '--skip_eval', '--use_tqdm_to_record', '--output_root',
            output_root, *extra, *data_set]


def eval_args(cfg_file, tag, ckpt, output_root, data_set):
    """`tools/test.py` arguments evaluating `ckpt` of the run `tag`."""
    return [REPO_ROOT / 'tools' / 'test.py', '--cfg_file', cfg_file, '--extra_tag', tag, '--ckpt', ckpt,
            '--workers', '0', '--output_root', output_root, *data_set]


SYNTHETIC_VERSION = 'v1.0-mini'
SYNTHETIC_DATASET_CFG = REPO_ROOT / 'tools' / 'cfgs' / 'dataset_configs' / 'nuscenes_synthetic.yaml'
# 10 official mini scenes x 10 key frames (80 train / 20 mini_val), 512 azimuth steps: ~15 s to generate. Detection
# does not read the occupancy ground truth (~4 MB per key frame): not written.
SYNTHETIC_GENERATOR_ARGS = ['--num_scenes', '10', '--samples_per_scene', '10', '--azimuth_steps', '512', '--seed', '0',
                            '--no_occupancy']


def make_synthetic_nuscenes(data_path, env, log_dir, timings, version=SYNTHETIC_VERSION,
                            generator_args=SYNTHETIC_GENERATOR_ARGS):
    """Generate a synthetic nuScenes-format set (default: v1.0-mini, SYNTHETIC_GENERATOR_ARGS) under `data_path` and
    build its infos + GT database with the real tools; their seconds go into `timings` ('generate', 'infos')."""
    timings['generate'] = run_tool(
        ['-m', 'pcdet.datasets.synthetic.nuscenes', '--root', Path(data_path) / version, '--version', version,
         *generator_args, '--quiet'], env, Path(log_dir) / 'generate.log', timeout=300)
    timings['infos'] = run_tool(
        ['-m', 'pcdet.datasets.nuscenes.nuscenes_dataset', '--func', 'create_nuscenes_infos',
         '--cfg_file', SYNTHETIC_DATASET_CFG, '--version', version, '--data_path', data_path],
        env, Path(log_dir) / 'infos.log', timeout=300)


def devkit_metrics(run_dir, epoch):
    """`metrics_summary.json` that tools/test.py wrote for checkpoint `epoch` under `run_dir`
    (layout eval/epoch_<N>/<DATA_SPLIT.test>/<eval_tag>/final_result/data/)."""
    eval_dirs = sorted((Path(run_dir) / 'eval' / f'epoch_{epoch}').glob('*/default'))
    assert len(eval_dirs) == 1, f'expected one evaluation folder of tools/test.py, found {eval_dirs}'
    summary_file = eval_dirs[0] / 'final_result' / 'data' / 'metrics_summary.json'
    assert summary_file.is_file(), f'tools/test.py wrote no devkit metrics ({summary_file})'
    assert (eval_dirs[0] / 'result.pkl').is_file()
    return json.loads(summary_file.read_text())


def assert_pretraining_losses_decrease(tensorboard_dir, window=20, factor=0.5):
    """Both reconstruction losses end lower than they start: loss_points over the whole run, loss_seal from the
    first epoch with beta > 0 (before it, the teacher head is not trained)."""
    from pcdet.utils.tb_events import read_scalars
    series = read_scalars(tensorboard_dir)
    points = [v for _, v in series['train/loss_points']]
    assert sum(points[-window:]) / window < factor * sum(points[:window]) / window, 'loss_points did not decrease'
    beta = dict(series['dgpl/beta'])
    first_on = min(epoch for epoch, value in beta.items() if value > 0)
    iters_per_epoch = len(points) // len(beta)
    seal = [v for _, v in series['train/loss_seal']][first_on * iters_per_epoch:]
    assert sum(seal[-window:]) / window < factor * sum(seal[:window]) / window, 'loss_seal did not decrease'


def assert_loss_falls(tensorboard_dir, tag, factor=0.5, window=20):
    """The mean of `tag` over the last `window` iterations is below `factor` x its mean over the first `window`."""
    from pcdet.utils.tb_events import read_scalars
    values = [v for _, v in read_scalars(tensorboard_dir)[tag]]
    first, last = sum(values[:window]) / window, sum(values[-window:]) / window
    assert last < factor * first, f'{tag} did not fall enough: first {window} mean {first:.4f}, last {last:.4f}'
    return first, last


def assert_encoder_moved_from_init(checkpoint_file, tolerance=1e-3):
    """Every normalisation scale of the encoder (1-D `.weight` tensors under `vfe.` / `backbone_3d.`: LayerNorm and
    BatchNorm, all initialised to exactly 1 whatever the seed) left 1: gradients of the pretraining reached every
    encoder layer. A frozen encoder, or one the pretext never back-propagates into, keeps them at 1."""
    import torch
    state = torch.load(checkpoint_file, map_location='cpu', weights_only=False)['model_state']
    scales = {key: value for key, value in state.items()
              if key.startswith(('vfe.', 'backbone_3d.')) and key.endswith('.weight') and value.dim() == 1}
    assert len(scales) >= 4, f'expected the encoder normalisation scales in {checkpoint_file}, found {sorted(scales)}'
    unmoved = [key for key, value in scales.items() if (value.float() - 1).abs().max() <= tolerance]
    assert not unmoved, f'pretraining left these encoder scales at their initial value 1: {unmoved}'
