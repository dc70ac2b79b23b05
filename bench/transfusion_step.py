"""Share of the TransFusion-L head in a training step at nuScenes size, next to CenterHead on the same BEV map.

Both models are built from the shipped configs: `nuscenes_models/dsvt_pillar_transfusion.yaml` (DSVT repo's
TransFusion-L: 200 proposals, hidden 128, 41 x 41 local cross-attention, IoU branch) and its CenterHead twin
`nuscenes_models/dsvt_pillar_centerpoint.yaml` (same data, encoder, BEV backbone; 6-group CenterHead). One training
step = BEV backbone forward (the real `BaseBEVResBackbone`: 128 ch at 360 x 360 -> 384 ch at 180 x 180) + head
forward with its targets and losses + backward + AdamW step. The BEV backbone input stands in for the DSVT encoder's
output: a scattered pillar map with `--num_pillars` non-zero cells (a 10-sweep nuScenes frame has ~20-25k pillars
at 0.3 m), random features. The encoder itself (VFE + DSVT, identical for both heads) is not timed: its cost depends
on the point cloud, see bench/dsvt.py; with it the head shares below are smaller. GT: `--num_gt` boxes per frame
(default 40, a busy nuScenes key frame) with class-typical sizes, random positions, headings and velocities.

Rows (medians over `--repeats` steps after `--warmup`; every timer synchronises on CUDA):

    BEV backbone forward     model.backbone_2d.forward
    head forward + loss      dense_head.forward (TransFusion: prediction, targets, losses) + dense_head.get_loss
      of which prediction    TransFusionHead.predict (dense heatmap, query init, decoder, FFNs) /
                             CenterHead: the forward's network part (shared conv + separate heads)
      of which decoder       TransFusion's decoder layer (position embeddings, self- and cross-attention, FFN;
                             with VARIANT dsvt on the (2R+1)^2 gathered keys of every query), part of prediction
      of which targets       TransFusionHead.get_targets (Hungarian assignment + Gaussian heatmaps) /
                             CenterHead.assign_targets
      of which Hungarian     HungarianAssigner3D.assign (cost matrix incl. 3-D IoU, linear_sum_assignment on CPU)
    head backward            loss.backward() start until the gradient reaches `spatial_features_2d` (autograd runs
                             the head's nodes first)
    BEV backbone backward    the rest of backward
    optimizer                AdamW step + zero_grad
Head share = (head forward + loss + head backward) / step.

    OMP_NUM_THREADS=1 python bench/transfusion_step.py                       # CPU, 3 steps after 1 warm-up
    python bench/transfusion_step.py --device cuda --repeats 20 --warmup 5
    python bench/transfusion_step.py --batch_size 4 --variant openpcdet      # OpenPCDet's head (global keys)
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.models.build import build_network_from_cfg  # noqa: E402

CFG_DIR = ROOT / 'tools' / 'cfgs' / 'nuscenes_models'
TRANSFUSION_CFG = CFG_DIR / 'dsvt_pillar_transfusion.yaml'
CENTERHEAD_CFG = CFG_DIR / 'dsvt_pillar_centerpoint.yaml'
ROWS = ('BEV backbone forward', 'head forward + loss', '  of which prediction', '  of which decoder',
        '  of which targets', '  of which Hungarian', 'head backward', 'BEV backbone backward', 'optimizer')
ADDED = ('BEV backbone forward', 'head forward + loss', 'head backward', 'BEV backbone backward', 'optimizer')
# (dx, dy, dz) per nuScenes class
SIZES = np.array([[4.6, 1.9, 1.7], [6.9, 2.5, 2.8], [6.4, 2.8, 3.2], [11.0, 2.9, 3.5], [12.3, 2.9, 3.9],
                  [0.5, 2.5, 1.0], [2.1, 0.8, 1.5], [1.7, 0.6, 1.3], [0.7, 0.7, 1.8], [0.4, 0.4, 1.1]])
CLASS_FREQ = np.array([0.40, 0.07, 0.01, 0.01, 0.02, 0.14, 0.01, 0.01, 0.20, 0.13])


class Timers:
    """Wall-clock timers around methods (instance attributes shadow the class method; `restore` removes them)."""

    def __init__(self, device):
        self.device, self.times, self.patched = device, {}, []

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def wrap(self, obj, attr, name):
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.sync()
            self.times[name] = self.times.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            return out
        setattr(obj, attr, timed)
        self.patched.append((obj, attr))

    def restore(self):
        for obj, attr in self.patched:
            delattr(obj, attr)
        self.patched = []


def synthetic_inputs(cfg, batch_size, num_pillars, num_gt, seed=0):
    """`spatial_features` (B, C, ny, nx) with `num_pillars` random non-zero cells per frame and `gt_boxes`
    (B, num_gt, 10) [x, y, z, dx, dy, dz, heading, vx, vy, label (1-based)]."""
    rng = np.random.default_rng(seed)
    nx, ny, _ = cfg.MODEL.MAP_TO_BEV.INPUT_SHAPE
    channels = cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES
    features = np.zeros((batch_size, channels, ny * nx), np.float32)
    pc_range = np.asarray(cfg.DATA_CONFIG.POINT_CLOUD_RANGE)
    gt = np.zeros((batch_size, num_gt, 10), np.float32)
    for b in range(batch_size):
        cells = rng.choice(ny * nx, num_pillars, replace=False)
        features[b][:, cells] = rng.normal(size=(channels, num_pillars))
        labels = rng.choice(10, num_gt, p=CLASS_FREQ / CLASS_FREQ.sum())
        xy = rng.uniform(pc_range[:2] + 4, pc_range[3:5] - 4, (num_gt, 2))
        gt[b, :, :2] = xy
        gt[b, :, 2] = rng.uniform(-2.0, 0.0, num_gt)
        gt[b, :, 3:6] = SIZES[labels] * rng.uniform(0.9, 1.1, (num_gt, 1))
        gt[b, :, 6] = rng.uniform(-np.pi, np.pi, num_gt)
        gt[b, :, 7:9] = rng.normal(0, 2, (num_gt, 2))
        gt[b, :, 9] = labels + 1
    return torch.from_numpy(features.reshape(batch_size, channels, ny, nx)), torch.from_numpy(gt)


def time_steps(name, cfg, features, gt_boxes, device, repeats, warmup):
    torch.manual_seed(0)
    model = build_network_from_cfg(cfg).to(device).train()
    head = model.dense_head
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timers = Timers(device)
    timers.wrap(model.backbone_2d, 'forward', 'BEV backbone forward')
    timers.wrap(head, 'forward', 'head forward + loss')
    timers.wrap(head, 'get_loss', 'head get_loss')
    if hasattr(head, 'predict'):                                  # TransFusionHead
        timers.wrap(head, 'predict', '  of which prediction')
        timers.wrap(head.decoder, 'forward', '  of which decoder')
        timers.wrap(head, 'get_targets', '  of which targets')
        timers.wrap(head.bbox_assigner, 'assign', '  of which Hungarian')
    else:                                                         # CenterHead
        timers.wrap(head, 'assign_targets', '  of which targets')
    features, gt_boxes = features.to(device), gt_boxes.to(device)
    rows = {row: [] for row in ROWS + ('step',)}
    hook = {}

    def on_head_input_grad(grad):
        if 'first' not in hook:
            timers.sync()
            hook['first'] = time.perf_counter()

    for step in range(warmup + repeats):
        timers.times = {}
        hook.clear()
        batch = {'spatial_features': features, 'gt_boxes': gt_boxes, 'batch_size': features.shape[0]}
        timers.sync()
        start = time.perf_counter()
        batch = model.backbone_2d(batch)
        batch['spatial_features_2d'].register_hook(on_head_input_grad)
        batch = head(batch)
        loss, _ = head.get_loss()
        timers.sync()
        backward_start = time.perf_counter()
        loss.backward()
        timers.sync()
        backward_end = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timers.sync()
        end = time.perf_counter()
        times = dict(timers.times)
        get_loss_ms = times.pop('head get_loss', 0.0)
        if not hasattr(head, 'predict'):                          # CenterHead: network part of its forward
            times['  of which prediction'] = times['head forward + loss'] - times.get('  of which targets', 0.0)
        times['head forward + loss'] += get_loss_ms
        if 'first' not in hook:
            raise RuntimeError('the gradient never reached spatial_features_2d')
        times['head backward'] = (hook['first'] - backward_start) * 1e3
        times['BEV backbone backward'] = (backward_end - hook['first']) * 1e3
        times['optimizer'] = (end - backward_end) * 1e3
        times['step'] = (end - start) * 1e3
        if step >= warmup:
            for row in rows:
                rows[row].append(times.get(row, float('nan')))
        print(f'{name} step {step}{" (warm-up)" if step < warmup else ""}: {times["step"]:.0f} ms, '
              f'loss {loss.item():.3f}', flush=True)
    timers.restore()
    medians = {row: statistics.median(values) for row, values in rows.items()}
    medians['head share'] = sum(medians[r] for r in ('head forward + loss', 'head backward')) / medians['step']
    return medians, sum(p.numel() for p in head.parameters())


def cells(value, medians):
    """'ms | share' table cells of one row, '- | -' for a row the model does not have."""
    return '- | -' if value != value else f'{value:,.1f} | {100 * value / medians["step"]:.1f}%'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=1)
    parser.add_argument('--num_gt', type=int, default=40)
    parser.add_argument('--num_pillars', type=int, default=22000)
    parser.add_argument('--variant', choices=('dsvt', 'openpcdet'), default='dsvt',
                        help='TransFusion VARIANT (openpcdet: global cross-attention, no IoU branch / NMS)')
    parser.add_argument('--repeats', type=int, default=None, help='timed steps (default 3 on CPU, 20 on CUDA)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 1 / 5)')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)

    tf_cfg, ch_cfg = cfg_from_yaml_file(TRANSFUSION_CFG), cfg_from_yaml_file(CENTERHEAD_CFG)
    if args.variant == 'openpcdet':
        head = tf_cfg.MODEL.DENSE_HEAD
        head.VARIANT, head.QUERY_RADIUS = 'openpcdet', None
        head.SEPARATE_HEAD_CFG.HEAD_DICT.pop('iou')
        head.POST_PROCESSING.pop('NMS_CONFIG')
        head.POST_PROCESSING.USE_IOU_TO_RECTIFY_SCORE = False
    features, gt_boxes = synthetic_inputs(tf_cfg, args.batch_size, args.num_pillars, args.num_gt)
    print(f'device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch_size}, '
          f'{args.num_pillars} pillars / frame on {tuple(features.shape[2:])}, {args.num_gt} GT / frame, '
          f'TransFusion VARIANT {args.variant}, median of {repeats} steps after {warmup} warm-up')
    results = {}
    for name, cfg in (('TransFusion', tf_cfg), ('CenterHead', ch_cfg)):
        results[name] = time_steps(name, cfg, features, gt_boxes, device, repeats, warmup)

    (tf, tf_params), (ch, ch_params) = results['TransFusion'], results['CenterHead']
    print(f'\nhead parameters: TransFusion {tf_params:,}, CenterHead {ch_params:,}')
    print('| part | TransFusion: ms | share | CenterHead: ms | share | TransFusion / CenterHead |')
    print('|---|---|---|---|---|---|')
    for row in ROWS + ('step',):
        a, b = tf[row], ch[row]
        ratio = f'{a / b:.2f}x' if b == b and b > 0 and a == a else '-'
        print(f'| {row.strip()} | {cells(a, tf)} | {cells(b, ch)} | {ratio} |')
    head_tf = tf['head forward + loss'] + tf['head backward']
    head_ch = ch['head forward + loss'] + ch['head backward']
    print(f'| **head (forward + loss + backward)** | **{head_tf:,.1f}** | **{100 * tf["head share"]:.1f}%** | '
          f'**{head_ch:,.1f}** | **{100 * ch["head share"]:.1f}%** | **{head_tf / head_ch:.2f}x** |')
    other = {n: r['step'] - sum(r[k] for k in ADDED) for n, r in (('TransFusion', tf), ('CenterHead', ch))}
    print(f'unaccounted per step (detector glue, timer overhead): {other["TransFusion"]:.1f} / '
          f'{other["CenterHead"]:.1f} ms')


if __name__ == '__main__':
    main()
