#!/usr/bin/env python
"""Evaluate checkpoints: OpenPCDet's `tools/test.py` flags (docs/TRAINING.md), runnable from the repo root or tools/.

    python tools/test.py --cfg_file tools/cfgs/<group>/<model>.yaml --ckpt PATH [--batch_size TOTAL]
    python tools/test.py --cfg_file ... --eval_all [--ckpt_dir DIR] [--start_epoch N] [--max_waiting_mins 30]
    bash tools/scripts/dist_test.sh NGPUS --cfg_file ... --ckpt PATH

Checkpoints (--ckpt, --pretrained_model, every file of --eval_all) load strictly: one that does not fit the config
exactly (another architecture or head setting) stops with `CheckpointMismatchError` naming the file and the keys,
and a file torch cannot read stops with `CheckpointReadError`. `--allow_partial_load` evaluates such a model anyway
and logs a WARNING listing what did not load.

The evaluator follows DATA_CONFIG.TASK (pcdet/evaluation): `detection` (default; the dataset's official
detection metric), `segmentation` (nuScenes-lidarseg results folder + nuscenes-devkit LidarSegEval) or `occupancy`
(OpenOccupancy SC IoU / SSC mIoU). Every task logs its table and metrics; --eval_all also writes them to
tensorboard (`tensorboard_<split>/`).

Outputs in `output/<cfg group>/<cfg stem>/<extra_tag>/eval/epoch_<N>/<DATA_SPLIT.test>/<eval_tag>/`:
`log_eval_<time>.txt` and the task's files: detection `result.pkl`, `final_result/data/` (dataset files, plus
per-frame files with --save_to_file); segmentation `lidarseg/<eval_set>/<lidar_token>_lidarseg.bin`,
`<eval_set>/submission.json`, `result.pkl`, `result.txt`; occupancy `result.pkl` (metrics + confusion matrix),
`result.txt` (with --save_to_file also `final_result/data/occupancy/scene_<scene>/occupancy/<lidar_token>.npy`).
With --eval_all `eval/eval_all_default/<eval_tag>/` holds the log, `eval_list_<split>.txt` and `epoch_<N>/<split>/`
per checkpoint.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datetime  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pcdet.config import log_config_to_file  # noqa: E402
from pcdet.evaluation import task_of  # noqa: E402
from pcdet.training.distributed import init_dist, single_process_info, split_batch_size  # noqa: E402
from pcdet.training.eval_loop import epoch_id_from_ckpt, eval_one_epoch, repeat_eval_ckpt  # noqa: E402
from pcdet.training.run_utils import (  # noqa: E402
    build_dataloader,
    build_network,
    build_test_parser,
    collect_env_info,
    create_tb_writer,
    derive_output_dir,
    load_data_to_device,
    load_params_from_file,
    parse_config,
)
from pcdet.utils import common_utils  # noqa: E402
from pcdet.utils.checkpoint import DEFAULT_MIN_MATCHED_FRACTION, CheckpointMismatchError, CheckpointReadError  # noqa: E402


def parse_args(argv=None):
    args = build_test_parser().parse_args(argv)
    cfg = parse_config(args)
    np.random.seed(1024)
    return args, cfg


def eval_output_dir_for(args, cfg, output_dir):
    """`eval/epoch_<N>/<split>/<eval_tag>` for one checkpoint, `eval/eval_all_default/<eval_tag>` with --eval_all."""
    eval_output_dir = Path(output_dir) / 'eval'
    if not args.eval_all:
        split = cfg.DATA_CONFIG.DATA_SPLIT['test']
        eval_output_dir = eval_output_dir / f'epoch_{epoch_id_from_ckpt(args.ckpt)}' / split
    else:
        eval_output_dir = eval_output_dir / 'eval_all_default'
    if args.eval_tag is not None:
        eval_output_dir = eval_output_dir / args.eval_tag
    return eval_output_dir


def eval_weight_loader(strict):
    """`load(model, filename, logger, to_cpu=True)` for evaluation (eval_loop's loader signature): strict unless
    `--allow_partial_load`; a refusal names what to do in tools/test.py terms."""
    def load(model, filename, logger, to_cpu=True):
        try:
            return load_params_from_file(model, filename, logger, to_cpu=to_cpu, strict=strict)
        except CheckpointReadError:
            raise
        except CheckpointMismatchError as err:
            hint = ('tools/test.py --allow_partial_load evaluates it anyway (a WARNING lists what did not load)'
                    if strict else f'--allow_partial_load still refuses a checkpoint that fills fewer than '
                                   f'{DEFAULT_MIN_MATCHED_FRACTION:.0%} of the model\'s tensors')
            raise CheckpointMismatchError(f'{err}\n  {hint}') from err
    return load


def main(argv=None):
    args, cfg = parse_args(argv)
    if not args.eval_all and args.ckpt is None and args.pretrained_model is None:
        raise SystemExit('give --ckpt PATH (or --pretrained_model PATH), or --eval_all')
    dist_info = single_process_info() if args.launcher == 'none' else init_dist(args.launcher, tcp_port=args.tcp_port)
    dist_test = args.launcher != 'none'
    rank, world_size, device = dist_info.rank, dist_info.world_size, dist_info.device
    cfg.LOCAL_RANK = dist_info.local_rank
    if args.batch_size is None:
        batch_size = int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU)
    else:
        batch_size = split_batch_size(args.batch_size, world_size)

    output_dir = derive_output_dir(args.cfg_file, args.extra_tag, args.output_root)
    eval_output_dir = eval_output_dir_for(args, cfg, output_dir)
    eval_output_dir.mkdir(parents=True, exist_ok=True)
    log_file = eval_output_dir / f'log_eval_{datetime.datetime.now().strftime("%Y%m%d-%H%M%S")}.txt'
    logger = common_utils.create_logger(log_file if rank == 0 else None, rank=rank)

    logger.info('**********************Start logging**********************')
    for line in collect_env_info():
        logger.info(line)
    logger.info(f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "ALL")}')
    logger.info(f'world size {world_size}, batch size {batch_size} per process, total {batch_size * world_size}')
    for key, val in vars(args).items():
        logger.info(f'{key:24} {val}')
    log_config_to_file(cfg, logger=logger)

    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir is not None else output_dir / 'ckpt'
    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=batch_size, dist=dist_test,
        workers=args.workers, logger=logger, training=False)
    task = task_of(test_set, cfg)  # an unknown DATA_CONFIG.TASK stops here, before the model is built
    logger.info(f'evaluation task: {task} (DATA_CONFIG.TASK)')
    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=test_set)
    if getattr(model, 'skip_evaluation', False):
        logger.error(f'{args.cfg_file}: {cfg.MODEL.NAME} is a pretraining model without an evaluation metric; '
                     'evaluate a fine-tuned model instead (tools/train.py --pretrained_model CKPT)')
        raise SystemExit(2)

    load_weights = eval_weight_loader(strict=not args.allow_partial_load)
    with torch.no_grad():
        if args.eval_all:
            split = cfg.DATA_CONFIG.DATA_SPLIT['test']
            tb_log = create_tb_writer(eval_output_dir / f'tensorboard_{split}', logger) if rank == 0 else None
            model.to(device)
            return repeat_eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt_dir, dist_test=dist_test,
                                    cfg=cfg, tb_log=tb_log, load_params=load_weights,
                                    load_fn=load_data_to_device, device=device)
        if args.pretrained_model is not None:
            load_weights(model, args.pretrained_model, logger, to_cpu=True)
        if args.ckpt is not None:
            load_weights(model, args.ckpt, logger, to_cpu=True)
        model.to(device)
        return eval_one_epoch(cfg, args, model, test_loader, epoch_id_from_ckpt(args.ckpt), logger,
                              dist_test=dist_test, result_dir=eval_output_dir, load_fn=load_data_to_device,
                              device=device)


if __name__ == '__main__':
    try:
        main()
    except CheckpointMismatchError as error:  # includes CheckpointReadError; the message names file and keys
        raise SystemExit(f'tools/test.py: {error}') from None
