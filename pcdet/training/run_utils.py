"""Shared plumbing of `tools/train.py` and `tools/test.py`: argument parsers, config loading, output folders,
environment report, TensorBoard writer.

    build_train_parser() / build_test_parser() -> argparse.ArgumentParser (OpenPCDet's flags, spec §1.11)
    parse_config(args) -> cfg        (loads --cfg_file from the repo root or tools/, applies --set, TAG, group)
    exp_group_path(cfg_file) -> str  (config folder relative to the last `cfgs/` in its path, else its folder name)
    derive_output_dir(cfg_file, extra_tag='default', output_root=None) -> Path  (<root>/output/<group>/<tag>/<extra>)
    collect_env_info() -> list of 'key: value' strings (versions, CUDA, git hash)
    create_tb_writer(log_dir, logger=None) -> tensorboardX.SummaryWriter | None
"""
import argparse
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

from ..config import ROOT_DIR, cfg_from_list, cfg_from_yaml_file, resolve_config_path
from ..config_registry import validate_config


def _common_args(parser):
    parser.add_argument('--cfg_file', type=str, required=True, help='config file (from the repo root or tools/)')
    parser.add_argument('--batch_size', type=int, default=None,
                        help='TOTAL batch size over all processes '
                             '(default: OPTIMIZATION.BATCH_SIZE_PER_GPU per process)')
    parser.add_argument('--workers', type=int, default=4, help='data loader workers per process')
    parser.add_argument('--extra_tag', type=str, default='default', help='output sub-folder name')
    parser.add_argument('--pretrained_model', type=str, default=None, help='weights to initialise from (non-strict)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--tcp_port', type=int, default=18888, help='MASTER_PORT for --launcher slurm')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None,
                        help='accepted for torch.distributed.launch compatibility; LOCAL_RANK from the env is used')
    parser.add_argument('--max_waiting_mins', type=float, default=0, help='--eval_all: stop after this long idle')
    parser.add_argument('--start_epoch', type=int, default=0, help='evaluate checkpoints from this epoch on')
    parser.add_argument('--save_to_file', action='store_true', default=False,
                        help='let the dataset write per-frame prediction files into final_result/data')
    parser.add_argument('--output_root', type=str, default=None,
                        help='root of the output tree (default: <repo>/output)')
    parser.add_argument('--set', dest='set_cfgs', default=None, nargs=argparse.REMAINDER,
                        help='config overrides KEY VALUE ...; must be the last flag')
    return parser


def _int_at_least(flag, minimum):
    """argparse type: an int >= `minimum`, else an error naming `flag` (e.g. `--epochs 0` would only fail later,
    inside the LR scheduler)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{flag} must be an integer >= {minimum}, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{flag} must be >= {minimum}, got {value}')
        return value
    return parse


def build_train_parser():
    parser = argparse.ArgumentParser(description='pcdet training (OpenPCDet-compatible flags)')
    _common_args(parser)
    parser.add_argument('--epochs', type=_int_at_least('--epochs', 1), default=None,
                        help='default: OPTIMIZATION.NUM_EPOCHS')
    parser.add_argument('--seed', type=_int_at_least('--seed', 0), default=None,
                        help='--fix_random_seed with this seed instead of 666 (seed studies; implies the flag)')
    parser.add_argument('--resume', type=str, default=None, metavar='auto|PATH',
                        help="continue a run: 'auto' = newest checkpoint in this run's ckpt/ folder, or a path")
    parser.add_argument('--ckpt', type=str, default=None, help='OpenPCDet alias of --resume PATH')
    parser.add_argument('--overwrite', action='store_true', default=False,
                        help='start a fresh run even though ckpt/ already holds checkpoints of an earlier run')
    parser.add_argument('--sync_bn', action='store_true', default=False, help='convert BatchNorm to SyncBatchNorm')
    parser.add_argument('--fix_random_seed', action='store_true', default=False,
                        help='seed 666 + rank, deterministic kernels, fixed data order')
    parser.add_argument('--ckpt_save_interval', type=int, default=1, help='save checkpoint_epoch_N every N epochs')
    parser.add_argument('--max_ckpt_save_num', type=int, default=30, help='keep the last N epoch checkpoints')
    parser.add_argument('--merge_all_iters_to_one_epoch', action='store_true', default=False)
    parser.add_argument('--num_epochs_to_eval', type=int, default=0,
                        help='after training evaluate the last N epochs (0: only the final checkpoint)')
    parser.add_argument('--skip_eval', action='store_true', default=False, help='do not evaluate after training')
    parser.add_argument('--use_tqdm_to_record', action='store_true', default=False,
                        help='progress only through tqdm (no periodic log lines)')
    parser.add_argument('--logger_iter_interval', type=int, default=50, help='log a line every N iterations')
    parser.add_argument('--ckpt_save_time_interval', type=int, default=300,
                        help='save latest_model.pth every N seconds of training')
    parser.add_argument('--wo_gpu_stat', action='store_true', default=False, help='accepted; no effect')
    parser.add_argument('--use_amp', '--fp16', dest='use_amp', action='store_true', default=False,
                        help='mixed precision (fp16 unless OPTIMIZATION.AMP names bf16)')
    return parser


def build_test_parser():
    parser = argparse.ArgumentParser(description='pcdet evaluation (OpenPCDet-compatible flags)')
    _common_args(parser)
    parser.set_defaults(max_waiting_mins=30)
    parser.add_argument('--ckpt', type=str, default=None, help='checkpoint to evaluate')
    parser.add_argument('--eval_tag', type=str, default='default', help='eval output sub-folder name')
    parser.add_argument('--eval_all', action='store_true', default=False,
                        help='evaluate every checkpoint_epoch_*.pth in --ckpt_dir, polling for new ones')
    parser.add_argument('--ckpt_dir', type=str, default=None, help="default: this run's ckpt/ folder")
    parser.add_argument('--infer_time', action='store_true', default=False, help='report model forward time')
    parser.add_argument('--allow_partial_load', action='store_true', default=False,
                        help='evaluate even when --ckpt / --pretrained_model does not fit the model exactly '
                             '(default: refuse with CheckpointMismatchError); what did not load is logged as a '
                             'WARNING')
    return parser


def exp_group_path(cfg_file):
    """`tools/cfgs/waymo_models/dsvt.yaml` -> 'waymo_models'; `.../cfgs/a/b/x.yaml` -> 'a/b'; a config outside any
    `cfgs/` folder -> its parent folder's name. Works for relative and absolute paths from any CWD."""
    parent = Path(os.path.abspath(str(cfg_file))).parent
    parts = parent.parts
    if 'cfgs' in parts:
        index = len(parts) - 1 - parts[::-1].index('cfgs')
        return '/'.join(parts[index + 1:])
    return parent.name


def derive_output_dir(cfg_file, extra_tag='default', output_root=None):
    output_root = Path(output_root) if output_root is not None else ROOT_DIR / 'output'
    group = exp_group_path(cfg_file)
    out = output_root / group if group else output_root
    return out / Path(cfg_file).stem / extra_tag


def parse_config(args):
    """Resolve and load `args.cfg_file`, apply `--set`, record TAG / EXP_GROUP_PATH; also sets
    `args.cfg_file` to the resolved path."""
    cfg_path = resolve_config_path(args.cfg_file, what='Config file')
    args.cfg_file = str(cfg_path)
    cfg = cfg_from_yaml_file(cfg_path)
    cfg.TAG = cfg_path.stem
    cfg.EXP_GROUP_PATH = exp_group_path(cfg_path)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    validate_config(cfg, source=str(cfg_path))
    return cfg


def collect_env_info():
    import numpy as np
    import torch

    from ..version import __version__
    info = [f'pcdet: {__version__}', f'python: {platform.python_version()} ({sys.executable})',
            f'torch: {torch.__version__}', f'numpy: {np.__version__}',
            f'cuda available: {torch.cuda.is_available()}']
    if torch.cuda.is_available():
        info.append(f'cuda: {torch.version.cuda}, cudnn: {torch.backends.cudnn.version()}')
        info.append('gpus: ' + ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    info.append(f'git: {git_revision()}')
    return info


def git_revision(root=ROOT_DIR):
    try:
        rev = subprocess.run(['git', '-C', str(root), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return 'unknown'
        dirty = subprocess.run(['git', '-C', str(root), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def create_tb_writer(log_dir, logger=None):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        if logger is not None:
            logger.warning('tensorboardX is not installed: no TensorBoard logs')
        return None
    return SummaryWriter(log_dir=str(log_dir))


# Indirections to the dataset/model modules, imported on first use so the tools start fast and the training
# machinery never imports a model it does not run; tests replace these names on the tool modules with stand-ins.
def build_dataloader(*args, **kwargs):
    from ..datasets import build_dataloader as impl
    return impl(*args, **kwargs)


def build_network(*args, **kwargs):
    from ..models.build import build_network as impl
    return impl(*args, **kwargs)


def load_data_to_device(batch_dict, device):
    from ..utils.batching import load_data_to_device as impl
    return impl(batch_dict, device)


def load_params_from_file(model, filename, logger, to_cpu=True, strict=True):
    """Load weights for evaluation: strict by default (a checkpoint of another architecture raises
    `CheckpointMismatchError` naming the file and keys). `strict=False` (test.py --allow_partial_load) loads what
    matches and logs a WARNING listing what did not load. Returns the `LoadReport`."""
    from ..utils.checkpoint import load_params_from_file as impl
    from ..utils.checkpoint import partial_load_warning
    report = impl(model, filename, logger, to_cpu=to_cpu, strict=strict)
    if not report.is_exact:
        (logger or logging.getLogger('pcdet')).warning(partial_load_warning(report))
    return report


def load_pretrained_model(model, filename, pretrained_cfg, logger):
    from ..utils.checkpoint import load_pretrained_model as impl
    return impl(model, filename, pretrained_cfg, logger)
