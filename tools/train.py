#!/usr/bin/env python
"""Train a detector: OpenPCDet's `tools/train.py` flags (docs/TRAINING.md), runnable from the repo root or tools/.

    python tools/train.py --cfg_file tools/cfgs/<group>/<model>.yaml [--batch_size TOTAL] [--epochs N]
        [--extra_tag TAG] [--resume auto|PATH] [--pretrained_model PATH] [--use_amp] [--fix_random_seed] ...
    bash tools/scripts/dist_train.sh NGPUS --cfg_file ...          # torchrun, --launcher pytorch

Outputs in `output/<cfg group>/<cfg stem>/<extra_tag>/`: `train_<time>.log`, `<stem>.yaml` (the file given),
`resolved_config.yaml` (what actually ran), `ckpt/checkpoint_epoch_<N>.pth`, `ckpt/latest_model.pth`,
`tensorboard/`, `eval/eval_with_train/epoch_<N>/<split>/`.
Nothing resumes implicitly: `--resume auto` continues the newest checkpoint of this run; without it a run folder
that already holds checkpoints is refused (use `--resume auto`, another `--extra_tag`, or `--overwrite`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datetime  # noqa: E402
import os  # noqa: E402

from pcdet.config import log_config_to_file, save_config_to_file  # noqa: E402
from pcdet.training import (  # noqa: E402
    build_grad_scaler,
    build_optimizer,
    build_scheduler,
    check_remaining_work,
    eval_checkpoint_list,
    resolve_amp_mode,
    resume_from,
    train_model,
)
from pcdet.training.checkpointing import CheckpointSaveError, ResumeError, epoch_checkpoints, find_resume_checkpoint  # noqa: E402
from pcdet.training.distributed import (  # noqa: E402
    barrier,
    broadcast_object,
    convert_sync_bn,
    init_dist,
    single_process_info,
    split_batch_size,
    unwrap_model,
    wrap_ddp,
)
from pcdet.training.optimization import OPTIMIZATION_SCHEMA  # noqa: E402
from pcdet.training.run_utils import (  # noqa: E402
    build_dataloader,
    build_network,
    build_train_parser,
    collect_env_info,
    create_tb_writer,
    derive_output_dir,
    load_data_to_device,
    load_params_from_file,
    load_pretrained_model,
    parse_config,
)
from pcdet.training.train_loop import make_model_func  # noqa: E402
from pcdet.utils import common_utils  # noqa: E402
from pcdet.utils.file_utils import atomic_save_bytes  # noqa: E402

FIXED_SEED = 666


def parse_args(argv=None):
    args = build_train_parser().parse_args(argv)
    if args.ckpt is not None:
        if args.resume is not None and args.resume != args.ckpt:
            raise SystemExit('--ckpt is an alias of --resume PATH; give only one of them')
        args.resume = args.ckpt
    cfg = parse_config(args)
    return args, cfg


def main(argv=None):
    args, cfg = parse_args(argv)
    dist_info = single_process_info() if args.launcher == 'none' else init_dist(args.launcher, tcp_port=args.tcp_port)
    dist_train = args.launcher != 'none'
    rank, world_size, device = dist_info.rank, dist_info.world_size, dist_info.device
    cfg.LOCAL_RANK = dist_info.local_rank

    if args.batch_size is None:
        batch_size = int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU)
    else:
        batch_size = split_batch_size(args.batch_size, world_size)
    total_epochs = int(args.epochs if args.epochs is not None else cfg.OPTIMIZATION.NUM_EPOCHS)
    if args.seed is not None:  # a seed study: the same determinism as --fix_random_seed, another seed
        args.fix_random_seed = True
    base_seed = FIXED_SEED if args.seed is None else args.seed
    if args.fix_random_seed:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        common_utils.set_random_seed(base_seed + rank, deterministic=True)

    output_dir = derive_output_dir(args.cfg_file, args.extra_tag, args.output_root)
    ckpt_dir = output_dir / 'ckpt'
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_file = output_dir / f'train_{datetime.datetime.now().strftime("%Y%m%d-%H%M%S")}.log'
    logger = common_utils.create_logger(log_file if rank == 0 else None, rank=rank)

    logger.info('**********************Start logging**********************')
    for line in collect_env_info():
        logger.info(line)
    logger.info(f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "ALL")}')
    logger.info(f'world size {world_size}, batch size {batch_size} per process, total {batch_size * world_size}')
    for key, val in vars(args).items():
        logger.info(f'{key:24} {val}')
    log_config_to_file(cfg, logger=logger)
    if rank == 0:
        atomic_save_bytes(Path(args.cfg_file).read_bytes(), output_dir / Path(args.cfg_file).name)
        save_config_to_file(cfg, output_dir / 'resolved_config.yaml')
    tb_log = create_tb_writer(output_dir / 'tensorboard', logger) if rank == 0 else None

    # A fresh run never silently reuses or clobbers an earlier run's checkpoints.
    existing = broadcast_object([str(p) for p in find_resume_checkpoint(ckpt_dir)] if rank == 0 else None)
    if args.resume is None and existing:
        if not args.overwrite:
            logger.error(f'{ckpt_dir} already holds checkpoints ({Path(existing[0]).name} is the newest). Pass '
                         '--resume auto to continue that run, use another --extra_tag for a new run, or --overwrite '
                         'to start over in this folder.')
            raise SystemExit(2)
        logger.warning(f'--overwrite: starting a fresh run; existing checkpoints in {ckpt_dir} will be replaced')

    data_seed_fixed = base_seed if args.fix_random_seed else None
    train_set, train_loader, train_sampler = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=batch_size, dist=dist_train,
        workers=args.workers, logger=logger, training=True,
        seed=None if data_seed_fixed is None else data_seed_fixed + 1000 * rank,
        merge_all_iters_to_one_epoch=args.merge_all_iters_to_one_epoch, total_epochs=total_epochs)

    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=train_set)
    if args.sync_bn:
        model = convert_sync_bn(model, logger)
    model.to(device)
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    iters_per_epoch = len(train_loader)
    if args.merge_all_iters_to_one_epoch:
        iters_per_epoch = len(train_loader) // max(total_epochs, 1)
    lr_scheduler = build_scheduler(optimizer, iters_per_epoch, total_epochs, cfg.OPTIMIZATION)
    amp_mode = resolve_amp_mode(cfg.OPTIMIZATION, args.use_amp)
    scaler = build_grad_scaler(amp_mode, device, cfg.OPTIMIZATION)
    logger.info(f'AMP: {amp_mode}; optimizer {cfg.OPTIMIZATION.OPTIMIZER}: '
                + ', '.join(f'{g.get("group_name", i)}={len(g["params"])}' for i, g in
                            enumerate(optimizer.param_groups)))

    if args.pretrained_model is not None:
        if args.resume is not None:
            logger.warning('--pretrained_model is ignored: --resume restores all weights')
        else:
            load_pretrained_model(model, args.pretrained_model, cfg.MODEL.get('PRETRAINED_ENCODER', None), logger)

    start_epoch, accumulated_iter, data_seed = 0, 0, None
    if args.resume is not None:
        try:  # 'auto': rank 0 listed the candidates, every rank loads the newest readable one of that list
            info = resume_from(args.resume, model, optimizer, lr_scheduler, scaler, ckpt_dir=ckpt_dir, logger=logger,
                               iters_per_epoch=iters_per_epoch, rank=rank, world_size=world_size,
                               candidates=existing if args.resume == 'auto' else None)
            check_remaining_work(info, total_epochs)
        except ResumeError as err:
            logger.error(str(err))
            raise SystemExit(2) from err
        start_epoch, accumulated_iter, data_seed = info.start_epoch, info.accumulated_iter, info.data_seed
    if data_seed is None:
        data_seed = data_seed_fixed if data_seed_fixed is not None else broadcast_object(
            int.from_bytes(os.urandom(4), 'little') if rank == 0 else None)

    model.train()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(model)
    logger.info(f'Trainable parameters: {n_params}')
    model = wrap_ddp(model, dist_info, find_unused_parameters=bool(
        OPTIMIZATION_SCHEMA.get(cfg.OPTIMIZATION, 'FIND_UNUSED_PARAMETERS')))

    logger.info(f'**********************Start training {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag})'
                '**********************')
    try:
        train_model(
            model, optimizer, train_loader, model_func=make_model_func(device, load_fn=load_data_to_device),
            lr_scheduler=lr_scheduler,
            optim_cfg=cfg.OPTIMIZATION, start_epoch=start_epoch, total_epochs=total_epochs,
            start_iter=accumulated_iter, rank=rank, tb_log=tb_log, ckpt_save_dir=ckpt_dir, train_sampler=train_sampler,
            ckpt_save_interval=args.ckpt_save_interval, max_ckpt_save_num=args.max_ckpt_save_num,
            merge_all_iters_to_one_epoch=args.merge_all_iters_to_one_epoch, amp_mode=amp_mode, scaler=scaler,
            logger=logger, logger_iter_interval=args.logger_iter_interval,
            ckpt_save_time_interval=args.ckpt_save_time_interval, use_logger_to_record=not args.use_tqdm_to_record,
            hook_cfg=cfg.get('HOOK', None), data_seed=data_seed, device=device)
    except CheckpointSaveError as err:  # e.g. disk full: one line naming the file, not a chained traceback
        logger.error(str(err))
        raise SystemExit(1) from None
    logger.info(f'**********************End training {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag})'
                '**********************')
    if tb_log is not None:
        tb_log.close()

    if args.skip_eval or getattr(unwrap_model(model), 'skip_evaluation', False):
        return output_dir  # pretraining models (GPICTURE) have no evaluation metric
    logger.info(f'**********************Start evaluation {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag})'
                '**********************')
    barrier()
    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=batch_size, dist=dist_train,
        workers=args.workers, logger=logger, training=False)
    eval_output_dir = output_dir / 'eval' / 'eval_with_train'
    first_epoch = max(total_epochs - args.num_epochs_to_eval, 0)
    ckpts = broadcast_object([str(p) for e, p in epoch_checkpoints(ckpt_dir) if e >= first_epoch]
                             if rank == 0 else None)
    eval_checkpoint_list(unwrap_model(model), test_loader, args, eval_output_dir, logger, ckpts, cfg,
                         dist_test=dist_train, load_params=load_params_from_file, load_fn=load_data_to_device,
                         device=device)
    logger.info(f'**********************End evaluation {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag})'
                '**********************')
    return output_dir


if __name__ == '__main__':
    main()
