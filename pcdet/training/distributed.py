"""Distributed helpers: `env://` initialisation (torchrun or SLURM), DDP wrapping, batch splitting, result merging.

    init_dist(launcher='pytorch', backend=None, tcp_port=None, timeout_minutes=30) -> DistInfo
    slurm_to_torchrun_env(environ=None, tcp_port=None) -> dict      (SLURM_* -> RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*)
    split_batch_size(total, world_size) -> per-process batch size
    wrap_ddp(model, dist_info, sync_bn=False, find_unused_parameters=False, logger=None) -> model
    all_gather_object(obj) -> list (one entry per rank; [obj] when not distributed)
    merge_sharded_results(parts, index_parts=None, total=None) -> list in dataset order
    gather_rng_states() -> list of per-rank RNG states (collective; call on every rank)

Differences from upstream (spec §1.12, §6 item 6), on purpose:
* Only `env://` rendezvous: torchrun (`--launcher pytorch`) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/PORT; SLURM
  (`--launcher slurm`) is mapped onto the same variables. No forced `spawn` start method, no tcp:// init.
* `world_size` is the GLOBAL number of processes (upstream returned the local GPU count, wrong on multi-node).
* gloo on CPU, NCCL on GPU; `torch.cuda.set_device(LOCAL_RANK)` before init.
* Eval results are merged in memory with `all_gather_object` (no pickles in a shared tmpdir).
"""
import datetime
import os
import shutil
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    backend: str = ''

    @property
    def distributed(self):
        return self.world_size > 1 or dist.is_available() and dist.is_initialized()

    @property
    def is_main(self):
        return self.rank == 0


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def barrier():
    if is_dist():
        dist.barrier()


def default_device(local_rank=0):
    if torch.cuda.is_available():
        return torch.device('cuda', local_rank % max(torch.cuda.device_count(), 1))
    return torch.device('cpu')


def single_process_info():
    return DistInfo(device=default_device(0))


def _first_slurm_host(nodelist):
    if not nodelist or shutil.which('scontrol') is None:
        return None
    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    hosts = out.stdout.split()
    return hosts[0] if out.returncode == 0 and hosts else None


def slurm_to_torchrun_env(environ=None, tcp_port=None):
    """The torchrun variables for a process started by `srun` (one task per GPU).

    RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = first host of
    `scontrol show hostnames $SLURM_NODELIST` (falls back to SLURM_LAUNCH_NODE_IPADDR), MASTER_PORT = tcp_port.
    Variables already present in the environment are kept (an explicit MASTER_ADDR/PORT wins).
    """
    environ = os.environ if environ is None else environ
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in environ]
    if missing:
        raise RuntimeError(f'--launcher slurm: {", ".join(missing)} not set; run under `srun` '
                           '(tools/scripts/slurm_train.sh) or use --launcher pytorch with torchrun')
    env = {
        'RANK': environ['SLURM_PROCID'],
        'WORLD_SIZE': environ['SLURM_NTASKS'],
        'LOCAL_RANK': environ.get('SLURM_LOCALID', '0'),
    }
    master_addr = environ.get('MASTER_ADDR') or _first_slurm_host(
        environ.get('SLURM_STEP_NODELIST') or environ.get('SLURM_JOB_NODELIST') or environ.get('SLURM_NODELIST'))
    master_addr = master_addr or environ.get('SLURM_LAUNCH_NODE_IPADDR')
    if not master_addr:
        raise RuntimeError('--launcher slurm: cannot determine MASTER_ADDR (no scontrol, no SLURM_LAUNCH_NODE_IPADDR);'
                           ' export MASTER_ADDR')
    env['MASTER_ADDR'] = master_addr
    env['MASTER_PORT'] = str(environ.get('MASTER_PORT') or tcp_port or 18888)
    return env


def init_dist(launcher='pytorch', backend=None, tcp_port=None, timeout_minutes=30):
    """Initialise torch.distributed from the environment and return a DistInfo.

    `launcher`: 'pytorch' (torchrun / torch.distributed.run) or 'slurm'. `backend`: None = nccl with CUDA, else gloo.
    """
    if launcher == 'slurm':
        os.environ.update(slurm_to_torchrun_env(tcp_port=tcp_port))
    elif launcher != 'pytorch':
        raise ValueError(f'unknown launcher {launcher!r} (none, pytorch, slurm)')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher}: environment variable(s) {", ".join(missing)} not set. Start the '
                           'tool with `torchrun --nproc_per_node=N tools/train.py --launcher pytorch ...` '
                           '(tools/scripts/dist_train.sh) or use --launcher none for one process.')
    rank = int(os.environ['RANK'])
    world_size = int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available()
    backend = backend or ('nccl' if use_cuda else 'gloo')
    device = torch.device('cpu')
    if use_cuda:
        device = torch.device('cuda', local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {}
        if backend == 'nccl':
            kwargs['device_id'] = device
        dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def split_batch_size(total_batch_size, world_size):
    """`--batch_size` is the TOTAL over all processes; each process gets total / world_size."""
    total_batch_size, world_size = int(total_batch_size), int(world_size)
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(f'--batch_size {total_batch_size} is the total batch size and must be a positive multiple '
                         f'of the number of processes ({world_size})')
    return total_batch_size // world_size


def convert_sync_bn(model, logger=None):
    """`nn.SyncBatchNorm.convert_sync_batchnorm` (CUDA only: SyncBatchNorm has no CPU kernel)."""
    if not torch.cuda.is_available():
        if logger is not None:
            logger.warning('--sync_bn ignored: SyncBatchNorm needs CUDA')
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model, dist_info, find_unused_parameters=False, broadcast_buffers=True):
    """DistributedDataParallel around `model` (already on `dist_info.device`); identity when not distributed."""
    if not is_dist():
        return model
    device_ids = [dist_info.device.index] if dist_info.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                     find_unused_parameters=find_unused_parameters,
                                                     broadcast_buffers=broadcast_buffers)


def unwrap_model(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_gather_object(obj):
    """Every rank's `obj`, in rank order ([obj] without torch.distributed)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Rank `src`'s `obj` on every rank (`obj` unchanged without torch.distributed)."""
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_sum(values):
    """Element-wise sum over ranks of a dict of numbers (used for recall counters)."""
    if not is_dist():
        return dict(values)
    merged = {}
    for part in all_gather_object(dict(values)):
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def merge_sharded_results(parts, index_parts=None, total=None):
    """Merge per-rank result lists back into dataset order.

    With `index_parts` (the dataset index of every result on every rank, e.g. `list(sampler)`), results are placed by
    index and padded duplicates dropped. Without it the sharding is assumed strided (`indices[rank::world_size]`,
    OpenPCDet's eval sampler), so results interleave rank by rank. The result is truncated to `total`.
    """
    if index_parts is not None:
        by_index = {}
        for results, indices in zip(parts, index_parts):
            if len(results) != len(indices):
                raise ValueError(f'merge_sharded_results: {len(results)} results for {len(indices)} indices')
            for index, result in zip(indices, results):
                by_index.setdefault(int(index), result)
        merged = [by_index[i] for i in sorted(by_index)]
    else:
        merged = []
        for i in range(max((len(p) for p in parts), default=0)):
            merged.extend(p[i] for p in parts if i < len(p))
    return merged if total is None else merged[:total]


def get_rng_state():
    """This process's python/numpy/torch/cuda RNG state in a `torch.load(weights_only=True)`-safe form."""
    import random

    import numpy as np
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state):
    """Restore what `get_rng_state` returned; returns the names of the restored generators."""
    import random

    import numpy as np
    restored = []
    if state.get('python') is not None:
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
        restored.append('python')
    if state.get('numpy') is not None:
        name, keys, pos, has_gauss, cached = state['numpy']
        keys = keys.numpy() if hasattr(keys, 'numpy') else np.asarray(keys)
        np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        restored.append('numpy')
    if state.get('torch') is not None:
        torch.set_rng_state(state['torch'].cpu())
        restored.append('torch')
    if state.get('cuda') is not None and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
            restored.append('cuda')
    return restored


def gather_rng_states():
    """RNG states of all ranks (collective: every rank must call it)."""
    return all_gather_object(get_rng_state())
