"""Evaluation (spec §1.13): one checkpoint, a list of checkpoints, or polling a folder (`--eval_all`).

    eval_one_epoch(cfg, args, model, dataloader, epoch_id, logger, dist_test=False, result_dir=None,
                   load_fn=None, device=None, show_progress=True, evaluator=None) -> metrics (rank 0; {} elsewhere)
    repeat_eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt_dir, dist_test=False, cfg=None,
                     tb_log=None, load_params=None, poll_seconds=30) -> list of evaluated epoch ids
    eval_checkpoint_list(model, test_loader, args, eval_output_dir, logger, ckpts, cfg, ...)
    epoch_id_from_ckpt(path) -> 'N' for `checkpoint_epoch_N.pth`, else 'no_number'

`eval_one_epoch` is task-agnostic: it runs the model (`pred_dicts, ret_dict = model(batch_dict)`) and feeds every
batch to an evaluator (`pcdet.evaluation`, picked by DATA_CONFIG.TASK: detection, segmentation, occupancy), which
writes the task's files into `result_dir` (detection: `result.pkl` and `final_result/data/`, e.g.
`results_nusc.json`) and returns the metrics; rank 0 also writes them to `result_dir/metrics.json` (numbers,
strings and lists; NaN as null) for scripts. `args` only needs `save_to_file`, `infer_time` (and `start_epoch`,
`max_waiting_mins` for polling); missing attributes default to False/0.

Distributed evaluation: every rank runs the unwrapped model on its shard (no DDP wrapper, so shards of unequal
cost never deadlock); the evaluator merges per-frame results and counters in memory with `all_gather_object` and
puts them back in dataset order using the sampler's indices (padding duplicates dropped); rank 0 evaluates.
"""
import json
import logging
import math
import re
import time
from pathlib import Path

import torch

from ..utils.file_utils import atomic_save_text
from .distributed import broadcast_object, get_rank, is_dist, unwrap_model

CKPT_EPOCH = re.compile(r'checkpoint_epoch_(\d+)\.pth$')


def epoch_id_from_ckpt(path):
    """The epoch number in a `checkpoint_epoch_<N>.pth` file name ('no_number' otherwise). Unlike upstream, digits
    in folder names (`dsvt_2x/latest_model.pth`) are not mistaken for an epoch."""
    if path is None:
        return 'no_number'
    match = CKPT_EPOCH.search(Path(path).name)
    return match.group(1) if match else 'no_number'


def _default_load_fn():
    from ..utils.batching import load_data_to_device  # lazy: only needed with real models
    return load_data_to_device


def eval_one_epoch(cfg, args, model, dataloader, epoch_id, logger, dist_test=False, result_dir=None, load_fn=None,
                   device=None, show_progress=True, evaluator=None):
    """Run the model over `dataloader`, feed every batch to the task's evaluator (`build_evaluator`: picked by
    DATA_CONFIG.TASK, or the one given), log and return its metrics (rank 0; {} elsewhere)."""
    from ..evaluation import build_evaluator  # lazy: pcdet.evaluation imports this package's distributed helpers
    logger = logger or logging.getLogger('pcdet')
    save_to_file = bool(getattr(args, 'save_to_file', False))
    infer_time = bool(getattr(args, 'infer_time', False))
    result_dir = Path(result_dir)
    rank = get_rank()
    result_dir.mkdir(parents=True, exist_ok=True)
    dist_test = dist_test and is_dist()
    model = unwrap_model(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    load_fn = load_fn or _default_load_fn()

    dataset = dataloader.dataset
    if evaluator is None:
        evaluator = build_evaluator(dataset, cfg, result_dir, dataloader=dataloader, logger=logger,
                                    dist_test=dist_test, save_to_file=save_to_file)
    evaluator.reset()
    logger.info(f'*************** EPOCH {epoch_id} EVALUATION *****************')
    model.eval()
    pbar = None
    if rank == 0 and show_progress:
        import tqdm
        pbar = tqdm.tqdm(total=len(dataloader), leave=True, desc='eval', dynamic_ncols=True)
    warmup_batches = max(int(len(dataloader) * 0.1), 1) if len(dataloader) > 1 else 0
    infer_total, infer_count = 0.0, 0
    start_time = time.time()
    for i, batch_dict in enumerate(dataloader):
        load_fn(batch_dict, device)
        if infer_time and device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            pred_dicts, ret_dict = model(batch_dict)
        disp_dict = {}
        if infer_time:
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if i >= warmup_batches:
                infer_total += (time.perf_counter() - t0) * 1000.0
                infer_count += 1
                disp_dict['infer_time'] = f'{infer_total / infer_count:.2f} ms'
        disp_dict.update(evaluator.process(batch_dict, pred_dicts, ret_dict=ret_dict) or {})
        if pbar is not None:
            pbar.set_postfix(disp_dict)
            pbar.update()
    if pbar is not None:
        pbar.close()

    logger.info(f'*************** Performance of EPOCH {epoch_id} *****************')
    sec_per_example = (time.time() - start_time) / max(len(dataset), 1)
    logger.info(f'Generate label finished(sec_per_example: {sec_per_example:.4f} second).')
    if infer_time and infer_count:
        batch_size = getattr(dataloader, 'batch_size', None) or 1
        logger.info(f'Inference time: {infer_total / infer_count:.2f} ms per batch of {batch_size} '
                    f'({infer_count} batches after {warmup_batches} warm-up)')
    result_str, metrics = evaluator.evaluate()  # collective: every rank takes part, rank 0 gets the metrics
    if rank != 0:
        return {}
    logger.info(result_str)
    atomic_save_text(json.dumps(_json_metrics(metrics), indent=1, sort_keys=True), Path(result_dir) / 'metrics.json')
    logger.info(f'Result is saved to {result_dir}')
    logger.info('****************Evaluation done.*****************')
    return metrics


def _json_metrics(metrics):
    """The JSON-representable part of a metrics dict: numbers (NaN / inf -> None), strings, lists of them."""
    def convert(value):
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, str) or value is None:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return number if math.isfinite(number) else None
    return {str(key): convert(value) for key, value in (metrics or {}).items()}


def _default_load_params(model, filename, logger, to_cpu):
    from ..utils.checkpoint import load_params_from_file  # lazy: another module owns the load side
    # strict: evaluating a partly random model (another config / architecture) must fail, not report metrics
    load_params_from_file(model, filename, logger, to_cpu=to_cpu, strict=True)


def _read_record(record_file):
    record_file = Path(record_file)
    if not record_file.is_file():
        return []
    return [line.strip() for line in record_file.read_text().splitlines() if line.strip()]


def _append_record(record_file, epoch_id):
    lines = _read_record(record_file) + [str(epoch_id)]
    atomic_save_text('\n'.join(lines) + '\n', record_file)


def get_no_evaluated_ckpt(ckpt_dir, ckpt_record_file, start_epoch=0):
    """`(epoch_id, path)` of the oldest (by mtime) `checkpoint_epoch_*.pth` not yet listed in the record file and
    with epoch >= start_epoch; `(-1, None)` when there is none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return -1, None
    ckpts = sorted((p for p in ckpt_dir.glob('*checkpoint_epoch_*.pth') if CKPT_EPOCH.search(p.name)),
                   key=lambda p: p.stat().st_mtime)
    evaluated = set(_read_record(ckpt_record_file))
    for path in ckpts:
        epoch_id = CKPT_EPOCH.search(path.name).group(1)
        if epoch_id not in evaluated and int(epoch_id) >= start_epoch:
            return epoch_id, path
    return -1, None


def _eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt, epoch_id, cfg, dist_test, tb_log,
               load_params, load_fn, device, record_file):
    load_params = load_params or _default_load_params
    load_params(unwrap_model(model), str(ckpt), logger, to_cpu=True)
    if device is not None:
        model.to(device)
    split = cfg.DATA_CONFIG.DATA_SPLIT['test']
    cur_result_dir = Path(eval_output_dir) / f'epoch_{epoch_id}' / split
    tb_dict = eval_one_epoch(cfg, args, model, test_loader, epoch_id, logger, dist_test=dist_test,
                             result_dir=cur_result_dir, load_fn=load_fn, device=device)
    if get_rank() == 0:
        if tb_log is not None:
            for key, value in tb_dict.items():
                try:
                    tb_log.add_scalar(key, float(value), int(epoch_id))
                except (TypeError, ValueError):
                    pass
        _append_record(record_file, epoch_id)
    logger.info(f'Epoch {epoch_id} has been evaluated')
    return tb_dict


def eval_checkpoint_list(model, test_loader, args, eval_output_dir, logger, ckpts, cfg, dist_test=False,
                         tb_log=None, load_params=None, load_fn=None, device=None):
    """Evaluate the given checkpoints in order (used after training: no polling, no waiting)."""
    split = cfg.DATA_CONFIG.DATA_SPLIT['test']
    record_file = Path(eval_output_dir) / f'eval_list_{split}.txt'
    if get_rank() == 0:
        Path(eval_output_dir).mkdir(parents=True, exist_ok=True)
    results = {}
    for ckpt in ckpts:
        epoch_id = epoch_id_from_ckpt(ckpt)
        results[epoch_id] = _eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt, epoch_id, cfg,
                                       dist_test, tb_log, load_params, load_fn, device, record_file)
    return results


def repeat_eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt_dir, dist_test=False, cfg=None,
                     tb_log=None, load_params=None, load_fn=None, device=None, poll_seconds=30):
    """`--eval_all`: evaluate every new `checkpoint_epoch_*.pth` in `ckpt_dir` (epoch >= args.start_epoch), polling
    every `poll_seconds`; stop after `args.max_waiting_mins` without a new checkpoint. Evaluated epochs are listed
    in `eval_output_dir/eval_list_<split>.txt` so a restarted `--eval_all` skips them. Rank 0 picks the next
    checkpoint and broadcasts it, so all ranks evaluate the same file."""
    split = cfg.DATA_CONFIG.DATA_SPLIT['test']
    record_file = Path(eval_output_dir) / f'eval_list_{split}.txt'
    if get_rank() == 0:
        Path(eval_output_dir).mkdir(parents=True, exist_ok=True)
    start_epoch = int(getattr(args, 'start_epoch', 0) or 0)
    max_wait = float(getattr(args, 'max_waiting_mins', 0) or 0) * 60
    waited = 0.0
    evaluated = []
    while True:
        choice = get_no_evaluated_ckpt(ckpt_dir, record_file, start_epoch) if get_rank() == 0 else None
        epoch_id, ckpt = broadcast_object(choice)
        if epoch_id == -1:
            if waited >= max_wait:
                logger.info(f'No new checkpoint in {ckpt_dir} for {waited / 60:.1f} minutes; stopping '
                            f'(--max_waiting_mins {max_wait / 60:g})')
                break
            if get_rank() == 0:
                print(f'Wait {poll_seconds} seconds for next check (progress: {waited / 60:.1f} / '
                      f'{max_wait / 60:g} minutes): {ckpt_dir} \r', end='', flush=True)
            time.sleep(poll_seconds)
            waited += poll_seconds
            continue
        waited = 0.0
        _eval_ckpt(model, test_loader, args, eval_output_dir, logger, ckpt, epoch_id, cfg, dist_test, tb_log,
                   load_params, load_fn, device, record_file)
        evaluated.append(epoch_id)
    return evaluated
