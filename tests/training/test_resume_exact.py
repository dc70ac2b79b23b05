"""`--resume auto` after a kill -9 mid-epoch is bit-identical to an uninterrupted run, with the real tiny DSVT config.

tools/train.py runs in subprocesses on the shared synthetic nuScenes set (tests/conftest.py), 8 train frames with
infos and a GT database built by the real code: nuscenes_models/dsvt_tiny_synthetic.yaml with all its augmentations
(gt_sampling, flips, rotation, scaling, random sweeps, point shuffling; gt_sampling switched off in the last epoch
by its HOOK), batch 2, 4 iterations per epoch, 3 epochs, and the flags docs/TRAINING.md names for an exact resume:
`--fix_random_seed` and a `latest_model.pth` per iteration (`--ckpt_save_time_interval 0`).
  (a) uninterrupted, `--workers 0`;
  (b) the same run SIGKILLed inside the save of iteration 6 (epoch 2 of 3, second iteration; see
      kill_during_save.py), `--workers 2`, then continued with `--resume auto --workers 2`.
Every entry of the two `checkpoint_epoch_3.pth` files must be identical: every tensor (model weights and buffers,
optimizer moments and steps, scaler) and every other value (RNG states, scheduler state, epoch, it, data seed).
"""
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG = REPO_ROOT / 'tools' / 'cfgs' / 'nuscenes_models' / 'dsvt_tiny_synthetic.yaml'
KILL_SCRIPT = Path(__file__).with_name('kill_during_save.py')
TRAIN_FRAMES, EPOCHS, KILL_AT_IT = 8, 3, 6  # batch 2: 4 iterations per epoch; it 6 = epoch 2, its 2nd iteration
EXACT_RESUME_FLAGS = ['--fix_random_seed', '--ckpt_save_time_interval', '0']


@pytest.fixture(scope='module')
def data_path(synthetic_nuscenes_root, synthetic_nuscenes_version, tmp_path_factory):
    """DATA_PATH with links to the shared synthetic set, train infos cut to TRAIN_FRAMES and their GT database."""
    from pcdet.datasets.nuscenes.gt_database import create_groundtruth_database
    from pcdet.datasets.nuscenes.nuscenes_utils import create_nuscenes_info
    from pcdet.utils.file_utils import atomic_pickle_dump
    data_path = tmp_path_factory.mktemp('resume_data')
    dataroot = data_path / synthetic_nuscenes_version
    dataroot.mkdir()
    for entry in Path(synthetic_nuscenes_root).iterdir():
        if not entry.name.startswith(('nuscenes_', 'gt_database', '.')):
            (dataroot / entry.name).symlink_to(entry.resolve())
    info_paths = create_nuscenes_info(synthetic_nuscenes_version, dataroot, max_sweeps=10)
    with open(info_paths['train'], 'rb') as handle:
        train_infos = pickle.load(handle)[:TRAIN_FRAMES]
    atomic_pickle_dump(train_infos, info_paths['train'])
    create_groundtruth_database(dataroot, train_infos, max_sweeps=10)
    return data_path


def run_train(tag, output_root, data_path, extra, log_path, wrapper=()):
    """tools/train.py (or `wrapper`, a script that runs it) -> (return code, log text)."""
    script = [str(a) for a in wrapper] or [str(REPO_ROOT / 'tools' / 'train.py')]
    args = [sys.executable, *script, '--cfg_file', str(CFG), '--extra_tag', tag, '--epochs', str(EPOCHS), '--skip_eval',
            '--use_tqdm_to_record', '--logger_iter_interval', '1', '--output_root', str(output_root),
            *EXACT_RESUME_FLAGS, *extra, '--set', 'DATA_CONFIG.DATA_PATH', str(data_path)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE', PYTHONHASHSEED='0')
    with open(log_path, 'w') as log:
        # own session: kill_during_save.py SIGKILLs its whole process group (the run and its DataLoader workers)
        proc = subprocess.run(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900,
                              check=False, start_new_session=True)
    return proc.returncode, Path(log_path).read_text(errors='replace')


def differences(a, b, where='checkpoint'):
    """Every place where two checkpoint structures differ (tensors bit for bit, other values by ==)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        same = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
        if same:
            return []
        detail = ''
        if torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.is_floating_point():
            detail = f' (max abs diff {(a.double() - b.double()).abs().max().item():.3g})'
        return [where + detail]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f'{where}: keys {sorted(map(str, set(a) ^ set(b)))}']
        return [d for key in a for d in differences(a[key], b[key], f'{where}[{key!r}]')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{where}: length {len(a)} vs {len(b)}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f'{where}[{i}]')]
    return [] if a == b else [f'{where}: {a!r} vs {b!r}']


def count_tensors(value):
    if torch.is_tensor(value):
        return 1
    if isinstance(value, dict):
        value = list(value.values())
    return sum(count_tensors(v) for v in value) if isinstance(value, (list, tuple)) else 0


def test_resume_auto_after_kill_mid_epoch_is_bit_identical(data_path, tmp_path):
    output_root = tmp_path / 'output'
    run_dir = output_root / 'nuscenes_models' / CFG.stem
    code, log = run_train('uninterrupted', output_root, data_path, ['--workers', '0'], tmp_path / 'a.log')
    assert code == 0, log[-4000:]

    code, log = run_train('resumed', output_root, data_path, ['--workers', '2'], tmp_path / 'b1.log',
                          wrapper=[KILL_SCRIPT, KILL_AT_IT])
    assert code == -signal.SIGKILL, f'the run was not killed (exit code {code}):\n{log[-4000:]}'
    ckpt_dir = run_dir / 'resumed' / 'ckpt'
    stale = sorted(ckpt_dir.glob('.latest_model.pth.*.tmp'))
    assert len(stale) == 1, sorted(p.name for p in ckpt_dir.iterdir())
    on_disk = torch.load(ckpt_dir / 'latest_model.pth', weights_only=True)
    assert (on_disk['epoch'], on_disk['it']) == (1, KILL_AT_IT - 1)  # mid-epoch 2 (0-based epoch 1)
    assert [p.name for p in ckpt_dir.glob('checkpoint_epoch_*.pth')] == ['checkpoint_epoch_1.pth']

    code, log = run_train('resumed', output_root, data_path, ['--workers', '2', '--resume', 'auto'],
                          tmp_path / 'b2.log')
    assert code == 0, log[-4000:]
    assert f'newest readable checkpoint is {ckpt_dir / "latest_model.pth"}' in log
    assert 'continuing at iteration 1/4' in log and str(stale[0]) in log
    assert not stale[0].exists()

    reference = torch.load(run_dir / 'uninterrupted' / 'ckpt' / f'checkpoint_epoch_{EPOCHS}.pth', weights_only=True)
    resumed = torch.load(ckpt_dir / f'checkpoint_epoch_{EPOCHS}.pth', weights_only=True)
    assert count_tensors(reference) > 200 and (reference['epoch'], reference['it']) == (EPOCHS, 4 * EPOCHS)
    diffs = differences(reference, resumed)
    assert not diffs, f'{len(diffs)} entries differ after kill + --resume auto, e.g. {diffs[:8]}'
