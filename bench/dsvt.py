"""Benchmark the DSVT-Pillar backbone (Waymo config: d_model 192, set size 36, 4 blocks) on a Waymo-sized frame.

Measures forward (inference, no grad) and forward+backward (training mode) time and peak memory of
`backbone_3d` (input layer + 4 DSVT blocks) on a synthetic frame of ~25k pillars whose occupancy looks like a
Waymo top-LiDAR sweep (dense rings near the sensor thinning with range, walls, vehicle-sized clusters). Every row is
compared with a reference measured in the same run: the same model and weights with the set attention computed the
way upstream does it (`SetAttention.attention_impl = 'mha'`: gather sets, `nn.MultiheadAttention`, `torch.unique`
un-scatter), so the ratio column isolates the SDPA / voxel-level-projection choice.

    python bench/dsvt.py                          # CPU fp32 (+ CUDA bf16-autocast and fp32 when available)
    python bench/dsvt.py --device cuda --repeats 20
    python bench/dsvt.py --device cpu --repeats 1 --num_pillars 10000 --no-reference

Peak memory (first timed run of each row): on CUDA `torch.cuda.max_memory_allocated` above the memory in use before
the run; on CPU the resident set size sampled every 2 ms during the run above the RSS before it, after returning
freed heap memory to the OS (`malloc_trim`), a process-level proxy.
"""
import argparse
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcdet.models.backbones_3d import __all__ as backbones_3d  # noqa: E402
from pcdet.models.backbones_3d.dsvt import SetAttention  # noqa: E402

POINT_CLOUD_RANGE = [-74.88, -74.88, -2, 74.88, 74.88, 4.0]
VOXEL_SIZE = [0.32, 0.32, 6]
GRID = (468, 468, 1)


def waymo_dsvt_pillar_cfg():
    """BACKBONE_3D of DSVT-repo `dsvt_plain_1f_onestage.yaml` (spec §3.8)."""
    return EasyDict(
        NAME='DSVT',
        INPUT_LAYER=EasyDict(sparse_shape=[468, 468, 1], downsample_stride=[], d_model=[192], set_info=[[36, 4]],
                             window_shape=[[12, 12, 1]], hybrid_factor=[2, 2, 1],
                             shifts_list=[[[0, 0, 0], [6, 6, 0]]], normalize_pos=False),
        block_name=['DSVTBlock'], set_info=[[36, 4]], d_model=[192], nhead=[8], dim_feedforward=[384], dropout=0.0,
        activation='gelu', output_shape=[468, 468], conv_out_channel=192)


def synthetic_waymo_pillars(num_pillars, seed=0):
    """(num_pillars, 4) long [b=0, z=0, y, x]: pillar occupancy of a plausible Waymo sweep.

    Ground rings: points uniform in range r in [2.5, 75] m (so area density ~ 1/r), walls (line segments), and
    vehicle/pedestrian-sized Gaussian clusters; points are added until enough distinct pillars exist, then a random
    subset of exactly `num_pillars` is kept.
    """
    rng = np.random.default_rng(seed)
    lo, size = np.array(POINT_CLOUD_RANGE[:2]), np.array(VOXEL_SIZE[:2])
    cells = np.zeros(0, dtype=np.int64)
    while cells.size < num_pillars:
        r = rng.uniform(2.5, 75.0, 60000)
        phi = rng.uniform(-np.pi, np.pi, r.size)
        ground = np.stack((r * np.cos(phi), r * np.sin(phi)), 1)
        starts = rng.uniform(-60, 60, (40, 2))
        dirs = rng.normal(size=(40, 2))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        t = rng.uniform(0, 25, (40, 400))
        walls = (starts[:, None] + t[..., None] * dirs[:, None]).reshape(-1, 2)
        centres = rng.uniform(-50, 50, (150, 2))
        blobs = (centres[:, None] + rng.normal(scale=(1.2, 0.6), size=(150, 60, 2))).reshape(-1, 2)
        xy = np.concatenate((ground, walls, blobs))
        ij = np.floor((xy - lo) / size).astype(np.int64)
        ij = ij[((ij >= 0) & (ij < np.array(GRID[:2]))).all(1)]
        cells = np.unique(np.concatenate((cells, ij[:, 1] * GRID[0] + ij[:, 0])))
    cells = rng.choice(cells, num_pillars, replace=False)
    cells.sort()
    y, x = cells // GRID[0], cells % GRID[0]
    zeros = np.zeros_like(cells)
    return torch.from_numpy(np.stack((zeros, zeros, y, x), 1))


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or sampled RSS (/proc/self/statm) on CPU."""

    def __init__(self, device, enabled=True):
        self.device = device
        self.enabled = enabled
        self.peak_mb = float('nan')

    @staticmethod
    def _rss():
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except (OSError, ValueError):
            return 0

    def __enter__(self):
        if not self.enabled:
            return self
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = self.peak = self._rss()
            self.stop = threading.Event()

            def sample():
                while not self.stop.is_set():
                    self.peak = max(self.peak, self._rss())
                    time.sleep(0.002)
            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self._rss())
            self.peak_mb = (self.peak - self.base) / 2 ** 20
        return False


def set_attention_impl(model, impl):
    for module in model.modules():
        if isinstance(module, SetAttention):
            module.attention_impl = impl


def release_cached_memory(device):
    """Return freed memory to the OS / driver so that the next phase's peak is measured from a clean level."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    else:
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass


def timed(fn, device, repeats, warmup=1):
    """Median wall time (ms) of `fn` over `repeats` runs after `warmup`; peak memory of the first timed run."""
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    times, peak_mb = [], float('nan')
    for i in range(max(1, repeats)):
        if i == 0:
            release_cached_memory(device)
        sync()
        with PeakMemory(device, enabled=i == 0) as mem:
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
        if i == 0:
            peak_mb = mem.peak_mb
    return statistics.median(times), peak_mb


def bench_device(device, dtype_name, model, coords, repeats, reference):
    autocast = dtype_name == 'bf16'
    feats = torch.randn(coords.shape[0], 192, generator=torch.Generator().manual_seed(1)).to(device)
    coords = coords.to(device)

    def batch():
        return {'voxel_features': feats, 'voxel_coords': coords, 'batch_size': 1}

    def forward():
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model(batch())

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(batch())['voxel_features']
        out.float().square().mean().backward()

    def input_layer():
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model.input_layer(batch())

    rows = []
    for mode, fn in (('input layer', input_layer), ('forward', forward), ('forward+backward', forward_backward)):
        set_attention_impl(model, 'sdpa')
        ms, mb = timed(fn, device, repeats)
        ref_ms = ref_mb = None
        if reference and mode != 'input layer':
            set_attention_impl(model, 'mha')
            ref_ms, ref_mb = timed(fn, device, repeats)
            set_attention_impl(model, 'sdpa')
        rows.append((device.type, dtype_name, mode, ms, mb, ref_ms, ref_mb))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto',
                        help='auto = CPU, plus CUDA when available')
    parser.add_argument('--repeats', type=int, default=None, help='timed runs per row (default: 1 on CPU, 20 on CUDA)')
    parser.add_argument('--num_pillars', type=int, default=25000)
    parser.add_argument('--no-reference', dest='reference', action='store_false',
                        help='skip the upstream-attention reference rows (halves the run time)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    devices = []
    if args.device in ('auto', 'cpu'):
        devices.append(torch.device('cpu'))
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            parser.error('--device cuda but torch.cuda.is_available() is False')
        devices.append(torch.device('cuda'))

    coords = synthetic_waymo_pillars(args.num_pillars, args.seed)
    torch.manual_seed(args.seed)
    model = backbones_3d['DSVT'](waymo_dsvt_pillar_cfg(), input_channels=192, grid_size=GRID,
                                 voxel_size=VOXEL_SIZE, point_cloud_range=POINT_CLOUD_RANGE)
    with torch.no_grad():
        info = model.input_layer({'voxel_features': torch.zeros(coords.shape[0], 192), 'voxel_coords': coords})
    sets = [info[f'set_voxel_inds_stage0_shift{i}'].shape[1] for i in range(2)]
    print(f'DSVT-Pillar (Waymo): d_model 192, set size 36, 4 blocks; {coords.shape[0]} pillars on a 468x468 grid, '
          f'{sets[0]} / {sets[1]} sets (shift 0 / 1, slot fill {coords.shape[0] / (36 * sets[0]):.2f} / '
          f'{coords.shape[0] / (36 * sets[1]):.2f}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads')

    rows = []
    for device in devices:
        repeats = args.repeats or (1 if device.type == 'cpu' else 20)
        model.to(device)
        dtypes = ['fp32'] if device.type == 'cpu' else ['bf16', 'fp32']
        for dtype_name in dtypes:
            rows += bench_device(device, dtype_name, model, coords, repeats, args.reference)
        model.to('cpu')

    header = f'{"device":<7}{"dtype":<6}{"mode":<18}{"time ms":>10}{"peak MB":>10}{"ref ms":>10}{"ref MB":>10}' \
             f'{"speedup":>9}'
    print(header)
    print('-' * len(header))
    for dev, dtype_name, mode, ms, mb, ref_ms, ref_mb in rows:
        ref_cols = f'{ref_ms:>10.1f}{ref_mb:>10.0f}{ref_ms / ms:>8.2f}x' if ref_ms is not None else \
            f'{"-":>10}{"-":>10}{"-":>9}'
        print(f'{dev:<7}{dtype_name:<6}{mode:<18}{ms:>10.1f}{mb:>10.0f}{ref_cols}')
    print('time = median wall time; ref = upstream attention computation (nn.MultiheadAttention on gathered sets) '
          'with the same weights; speedup = ref / ours.')


if __name__ == '__main__':
    main()
