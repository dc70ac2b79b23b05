"""DDP on CPU (gloo, 2 spawned processes): same parameters as one process with the same GLOBAL batch; distributed
evaluation merges shards in memory back into dataset order. Plus the SLURM/world-size/batch-split helpers."""
import logging
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data.distributed import DistributedSampler

from pcdet.training import build_optimizer, build_scheduler, eval_one_epoch, train_model
from pcdet.training.distributed import (
    init_dist,
    merge_sharded_results,
    slurm_to_torchrun_env,
    split_batch_size,
    wrap_ddp,
)

from training_standins import (
    RegressionDataset,
    StridedEvalSampler,
    TinyDetector,
    eval_cfg,
    load_to_device,
    make_loader,
    model_func,
    optim_cfg,
    params_of,
)

GLOBAL_BATCH, EPOCHS = 4, 2


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _run(model, loader, sampler, ckpt_dir, rank, logger):
    cfg = optim_cfg()
    torch.manual_seed(0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, len(loader), EPOCHS, cfg)
    return train_model(model, optimizer, loader, model_func, scheduler, cfg, 0, EPOCHS, 0, rank=rank, tb_log=None,
                       ckpt_save_dir=ckpt_dir, train_sampler=sampler, logger=logger, show_progress=False,
                       data_seed=0, ckpt_save_time_interval=0)  # latest_model.pth after every iteration


def _eval(model, world_size, rank, result_dir, dist_test, logger):
    eval_set = RegressionDataset(n=7, training=False)  # 7 frames over 2 ranks: one padded duplicate
    sampler = StridedEvalSampler(eval_set, world_size, rank) if dist_test else None
    loader = make_loader(eval_set, batch_size=2, sampler=sampler)
    return eval_one_epoch(eval_cfg(), None, model, loader, 'x', logger, dist_test=dist_test, result_dir=result_dir,
                          load_fn=load_to_device, show_progress=False)


def _ddp_worker(rank, world_size, port, out_dir):
    import os
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_dist('pytorch')
    assert (info.rank, info.world_size, info.backend) == (rank, world_size, 'gloo')
    logger = logging.getLogger(f'ddp{rank}')
    torch.manual_seed(0)
    model = TinyDetector()
    dataset = RegressionDataset(n=16, augment=False)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    loader = make_loader(dataset, split_batch_size(GLOBAL_BATCH, world_size), sampler=sampler)
    ddp_model = wrap_ddp(model, info)
    assert isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel)
    result = _run(ddp_model, loader, sampler, out_dir / 'ckpt', rank, logger)
    ret = _eval(ddp_model, world_size, rank, out_dir / 'eval', True, logger)
    if rank == 0:
        torch.save({'params': params_of(model), 'ret': ret, 'it': result.accumulated_iter}, out_dir / 'ddp.pt')
    else:
        assert ret == {}
    # Both ranks leave together: a rank that tears gloo down while its peer still sends aborts the peer (SIGABRT,
    # 'terminate called without an active exception') on a loaded machine.
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    ddp = torch.load(tmp_path / 'ddp.pt', weights_only=False)

    logger = logging.getLogger('single')
    torch.manual_seed(0)
    model = TinyDetector()
    dataset = RegressionDataset(n=16, augment=False)
    single = _run(model, make_loader(dataset, GLOBAL_BATCH), None, tmp_path / 'single_ckpt', 0, logger)
    assert ddp['it'] == single.accumulated_iter == EPOCHS * 16 // GLOBAL_BATCH
    for key, value in params_of(model).items():
        torch.testing.assert_close(ddp['params'][key], value, rtol=1e-6, atol=1e-6)

    # distributed eval: all 7 frames once, in dataset order, same metric as one process
    with open(tmp_path / 'eval' / 'result.pkl', 'rb') as handle:
        det_annos = pickle.load(handle)
    assert [a['frame_id'] for a in det_annos] == [f'{i:04d}' for i in range(7)]
    single_ret = _eval(model, 1, 0, tmp_path / 'single_eval', False, logger)
    assert ddp['ret']['frames'] == 7 and ddp['ret']['recall/rcnn_0.3'] == 1.0
    assert ddp['ret']['mse'] == pytest.approx(single_ret['mse'], rel=1e-5)

    ckpt = torch.load(tmp_path / 'ckpt' / f'checkpoint_epoch_{EPOCHS}.pth', weights_only=True)
    assert len(ckpt['rng_state_per_rank']) == 2 and not any(k.startswith('module.') for k in ckpt['model_state'])
    # the mid-epoch latest checkpoint carries every rank's RNG too (else rank 1 resumes with a fresh RNG)
    latest = torch.load(tmp_path / 'ckpt' / 'latest_model.pth', weights_only=True)
    assert len(latest['rng_state_per_rank']) == 2


def test_distributed_sample_order_follows_the_data_seed():
    """DistributedSampler shuffles with its own `seed` (default 0): set_epoch_order derives it from the data seed,
    so two --seed runs see different orders, while both ranks of one run still split one permutation."""
    from pcdet.training.train_loop import set_epoch_order
    dataset = RegressionDataset(n=16, augment=False)

    def order(data_seed, rank, epoch=0):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True)
        set_epoch_order(None, sampler, epoch, data_seed)
        return list(sampler)
    assert order(1, 0) != order(2, 0)
    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0) + order(1, 1)) == list(range(16))  # the two shards partition the data set
    assert order(1, 0, epoch=0) != order(1, 0, epoch=1)


def test_merge_sharded_results_restores_order():
    order = list(range(7))
    strided = [[0, 2, 4, 6], [1, 3, 5, 0]]  # indices[rank::2] after padding by repeating the head
    assert merge_sharded_results(strided, total=7) == order
    assert merge_sharded_results(strided, index_parts=strided, total=7) == order
    contiguous = [[0, 1, 2, 3], [4, 5, 6, 0]]  # any layout works when the indices are known
    assert merge_sharded_results(contiguous, index_parts=contiguous, total=7) == order


def test_slurm_env_mapping_and_batch_split(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')  # no scontrol: falls back to SLURM_LAUNCH_NODE_IPADDR
    env = slurm_to_torchrun_env({'SLURM_PROCID': '5', 'SLURM_NTASKS': '8', 'SLURM_LOCALID': '1',
                                 'SLURM_NODELIST': 'node[1-2]', 'SLURM_LAUNCH_NODE_IPADDR': '10.0.0.7'},
                                tcp_port=23456)
    assert env == {'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'MASTER_ADDR': '10.0.0.7',
                   'MASTER_PORT': '23456'}
    with pytest.raises(RuntimeError, match='srun'):
        slurm_to_torchrun_env({})
    assert split_batch_size(16, 8) == 2
    with pytest.raises(ValueError, match='multiple'):
        split_batch_size(6, 4)
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        init_dist('pytorch')
