"""Where the time of one GPICTURE pretraining step goes, on a nuScenes-sized synthetic frame.

Runs full training steps (`loss, tb_dict, _ = model(batch)`, `loss['loss'].backward()`, gradient clipping and an
AdamW step) of the model built from `--cfg_file` (default: the full-size nuScenes pretrain config: 0.2 m voxels,
512 x 512 x 40 grid, d_model 256) with both losses active (`dense_head.set_beta(1.0)`). The model's own methods
are wrapped with timers inside the real forward, so the parts add up to the step:

    VFE              model.vfe.forward (dynamic voxelisation + PFN layers)
    teacher targets  backbone_3d.teacher_targets (per-voxel mean of the per-point teacher features)
    I2Mask           backbone_3d.compute_mask (k-means on the targets + per-cluster random masking)
    encoder          backbone_3d.forward minus the two rows above (DSVT on the visible voxels)
    decoder          backbone_2d.forward (mask tokens + decoder DSVT on all stage-0 voxels)
    head + losses    dense_head.forward + dense_head.get_loss (point targets, chamfer, teacher SmoothL1)
    backward + optim loss.backward(), clip_grad_norm_(35), AdamW step, zero_grad
    other            step total minus the rows above (batch copy, detector glue)
With `--device cuda` every timer synchronises the device at both ends, so each row is the GPU time of its part
(the synchronisations cost a little themselves). Rows are medians over `--repeats` timed steps after `--warmup`
untimed ones (defaults: 2 and 0 on CPU, where a full-size step takes about a minute on 2 shared cores;
20 and 3 on CUDA); the share column is the row's median over the median step total.

Reference measured in the same run: after the steps, the same number of voxels the last step's I2Mask masked
(on the same voxels, same valid flags; with --batch_size > 1 one ratio for the batch, so per-sample counts may
differ by a voxel) is masked uniformly at random with
`pcdet.models.backbones_3d.dsvt_mae.random_mask` (`--repeats` x 5 runs, median); the script prints the I2Mask
median / that median ("x random"), the masked fraction and the I2Mask share of the step. The issue's target is
that I2Mask does not dominate the step: <= 10% of the step on GPU. The CPU share does not carry over: on a GPU the
dense transformer rows shrink far more than k-means' many small kernels and its per-iteration host syncs
(early-stop check), so measure with --device cuda before quoting a GPU share.

Input frame (per sample; `--batch_size` samples use different scenes): the project's scene simulator
(`pcdet.datasets.synthetic.scene.simulate_scene`) and 32-beam ray caster (`pcdet.datasets.synthetic.lidar.cast_scan`,
nuScenes HDL-32E elevations, 1084 azimuth steps like the real sensor, ~29-30k points per scan). `--sweeps` counts
scans as nuScenes' MAX_SWEEPS does: the key frame at t = 0 plus `--sweeps - 1` real earlier sweeps, each ray-cast
at t = -0.05 k s (20 Hz; ego and objects move between them), transformed into the key-frame sensor frame,
time_lag = 0.05 k; default 10 (~290k points, the real nuScenes setting). Points outside POINT_CLOUD_RANGE are
dropped and the rest shuffled, as the data pipeline does. Teacher features: the project's `synthetic_semantic`
teacher (NUM_FEATURES 64, SEED 0, NOISE_STD 0.05; a fixed random unit vector per raw nuScenes-lidarseg label +
noise, renormalised) on the simulator's per-point labels, mapped to lidarseg labels as the synthetic nuScenes writer
maps them.

    python bench/gpicture_step.py                                  # full-size config, CPU (~2.5 min, 2 cores)
    python bench/gpicture_step.py --cfg_file tools/cfgs/gpicture_models/gpicture_tiny_synthetic_pretrain.yaml \
        --repeats 5 --warmup 1                                     # quick (~15 s): tiny pillar model, same frame
    python bench/gpicture_step.py --device cuda --repeats 20 --warmup 3 [--amp] [--batch_size 4]

`--amp` runs the forward under bf16 autocast (CUDA only); backward and optimizer run outside it.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.datasets.synthetic import nuscenes_schema as schema  # noqa: E402
from pcdet.datasets.synthetic.geometry import invert_pose, pose_matrix  # noqa: E402
from pcdet.datasets.synthetic.lidar import LidarConfig, cast_scan  # noqa: E402
from pcdet.datasets.synthetic.scene import SceneConfig, simulate_scene  # noqa: E402
from pcdet.datasets.teachers.synthetic_semantic import SyntheticSemanticTeacher  # noqa: E402
from pcdet.models.backbones_3d.dsvt_mae import random_mask  # noqa: E402
from pcdet.models.build import build_network_from_cfg  # noqa: E402

DEFAULT_CFG = 'tools/cfgs/gpicture_models/gpicture_nuscenes_pretrain.yaml'
SWEEP_PERIOD_S = 0.05
EGO_FROM_SENSOR = pose_matrix(np.eye(3), [0.94, 0.0, 1.84])  # nuScenes LIDAR_TOP mounting (roof, 1.84 m)
ROWS = ('VFE', 'teacher targets', 'I2Mask', 'encoder', 'decoder', 'head + losses', 'backward + optim', 'other')


def synthetic_frame(num_scans, point_cloud_range, seed):
    """(points (N, 5) float32 [x, y, z, intensity, time_lag] in the key-frame sensor frame, labels (N,) raw
    nuScenes-lidarseg index): the key frame plus `num_scans - 1` earlier sweeps of one simulated scene."""
    scene = simulate_scene(SceneConfig(t_start=-SWEEP_PERIOD_S * num_scans, t_end=0.5),
                           np.random.default_rng([seed, 0]))
    lidar_config = LidarConfig(azimuth_steps=1084)
    object_lidarseg = np.array([schema.lidarseg_index(schema.category_name(kind, subtype))
                                for kind, subtype in zip(scene.objects.kinds, scene.objects.subtypes)], dtype=np.int64)
    surface_lidarseg = schema.surface_lidarseg_lut().astype(np.int64)
    key_from_global = invert_pose(scene.ego_pose_at(0.0) @ EGO_FROM_SENSOR)
    points, labels = [], []
    for k in range(num_scans):
        t = -SWEEP_PERIOD_S * k
        global_from_sensor = scene.ego_pose_at(t) @ EGO_FROM_SENSOR
        scan = cast_scan(scene, t, global_from_sensor, lidar_config, np.random.default_rng([seed, 1, k]))
        key_from_sensor = key_from_global @ global_from_sensor
        xyz = scan.points[:, :3].astype(np.float64) @ key_from_sensor[:3, :3].T + key_from_sensor[:3, 3]
        time_lag = np.full((len(xyz), 1), SWEEP_PERIOD_S * k)
        points.append(np.concatenate([xyz, scan.points[:, 3:4], time_lag], axis=1).astype(np.float32))
        labels.append(np.where(scan.hit_object_id >= 0, object_lidarseg[np.maximum(scan.hit_object_id, 0)],
                               surface_lidarseg[scan.semantic_label]))
    points, labels = np.concatenate(points), np.concatenate(labels)
    pc_range = np.asarray(point_cloud_range, dtype=np.float32)
    keep = ((points[:, :3] >= pc_range[:3]) & (points[:, :3] <= pc_range[3:])).all(axis=1)
    order = np.random.default_rng([seed, 2]).permutation(int(keep.sum()))
    return points[keep][order], labels[keep][order]


def synthetic_batch(num_scans, batch_size, point_cloud_range, device):
    teacher = SyntheticSemanticTeacher({'NUM_FEATURES': 64, 'SEED': 0, 'NOISE_STD': 0.05})
    points, features = [], []
    for b in range(batch_size):
        xyz, labels = synthetic_frame(num_scans, point_cloud_range, seed=b)
        points.append(np.concatenate([np.full((len(xyz), 1), b, dtype=np.float32), xyz], axis=1))
        features.append(teacher(xyz, labels))
    return {'points': torch.from_numpy(np.concatenate(points)).to(device),
            'point_teacher_features': torch.from_numpy(np.concatenate(features)).to(device),
            'batch_size': batch_size}


class StepTimers:
    """Wraps bound methods with synchronised wall-clock timers; `times[name]` accumulates ms within a step."""

    def __init__(self, device):
        self.device = device
        self.times = {}

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def wrap(self, obj, method, name):
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            result = original(*args, **kwargs)
            self.sync()
            self.times[name] = self.times.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            return result
        setattr(obj, method, timed)  # an instance attribute shadows the class method (nn.Module calls self.forward)
        return original


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg_file', default=DEFAULT_CFG)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--repeats', type=int, default=None, help='timed steps (median); default 2 on CPU, 20 on CUDA')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps first; default 0 on CPU, 3 on CUDA')
    parser.add_argument('--sweeps', type=int, default=10, help='scans per frame incl. the key frame (MAX_SWEEPS)')
    parser.add_argument('--batch_size', type=int, default=1, help='frames per step (the config trains with 4/GPU)')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast for the forward (CUDA only)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but torch.cuda.is_available() is False')
    if args.amp and args.device != 'cuda':
        parser.error('--amp is bf16 autocast on CUDA; use --device cuda')
    if args.repeats is None:
        args.repeats = 2 if args.device == 'cpu' else 20
    if args.warmup is None:
        args.warmup = 0 if args.device == 'cpu' else 3
    if args.sweeps < 1 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error('--sweeps, --repeats and --batch_size must be >= 1, --warmup >= 0')
    device = torch.device(args.device)

    cfg_path = Path(args.cfg_file)
    if not cfg_path.is_absolute() and not cfg_path.exists():
        cfg_path = ROOT / cfg_path
    cfg = EasyDict()
    cfg_from_yaml_file(str(cfg_path), cfg)
    torch.manual_seed(args.seed)
    model = build_network_from_cfg(cfg).to(device)
    model.train()
    model.dense_head.set_beta(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    grad_clip = float(cfg.get('OPTIMIZATION', {}).get('GRAD_NORM_CLIP', 35.0))

    start = time.perf_counter()
    batch = synthetic_batch(args.sweeps, args.batch_size, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, device)
    frame_s = time.perf_counter() - start

    timers = StepTimers(device)
    backbone = model.backbone_3d
    timers.wrap(model.vfe, 'forward', 'VFE')
    timers.wrap(backbone, 'forward', 'backbone_3d')
    timers.wrap(backbone, 'teacher_targets', 'teacher targets')
    timers.wrap(backbone, 'compute_mask', 'I2Mask')
    timed_compute_mask = backbone.compute_mask
    mask_inputs = {}

    def compute_mask(targets, valid, batch_index, batch_size):  # keeps the inputs for the reference (no sync)
        mask_inputs.update(valid=valid, batch_index=batch_index, batch_size=batch_size)
        return timed_compute_mask(targets, valid, batch_index, batch_size)
    backbone.compute_mask = compute_mask
    timers.wrap(model.backbone_2d, 'forward', 'decoder')
    timers.wrap(model.dense_head, 'forward', 'head + losses')
    timers.wrap(model.dense_head, 'get_loss', 'head + losses')
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        step_batch = dict(batch)  # the model overwrites keys
        timers.times = {}
        timers.sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss, tb_dict, _ = model(step_batch)
        timers.sync()
        backward_start = time.perf_counter()
        loss['loss'].backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timers.sync()
        end = time.perf_counter()
        row = dict(timers.times)
        row['backward + optim'] = (end - backward_start) * 1e3
        row['encoder'] = row.pop('backbone_3d') - row['teacher targets'] - row['I2Mask']
        row['total'] = (end - start) * 1e3
        row['other'] = row['total'] - sum(row[name] for name in ROWS if name != 'other')
        return row, step_batch, tb_dict

    for _ in range(args.warmup):
        step()
    rows = []
    for _ in range(args.repeats):
        row, step_batch, tb_dict = step()
        rows.append(row)
    if not torch.isfinite(tb_dict['loss_rpn']):
        raise RuntimeError(f'non-finite loss: {tb_dict}')

    # Reference: the same number of voxels masked uniformly at random, on the last step's voxels.
    valid, batch_index = mask_inputs['valid'], mask_inputs['batch_index']
    num_masked, num_valid = int(step_batch['mae_mask'].sum()), int(valid.sum())
    ratio = (num_masked + 0.5) / max(num_valid, 1)  # floor(ratio * n_valid) == num_masked for batch_size 1

    def reference():
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        return random_mask(valid, batch_index, mask_inputs['batch_size'], ratio, generator)
    reference()
    ref_times = []
    for _ in range(5 * args.repeats):
        timers.sync()
        start = time.perf_counter()
        ref_mask, _ = reference()
        timers.sync()
        ref_times.append((time.perf_counter() - start) * 1e3)
    ref_ms = statistics.median(ref_times)
    ref_count = int(ref_mask.sum())

    num_points = int(batch['points'].shape[0])
    num_voxels = int(step_batch['mae_voxel_coords'].shape[0])
    num_visible = int(step_batch['mae_visible_index'].numel())
    model_cfg = cfg.MODEL
    print(f'GPICTURE pretraining step: {cfg_path.name} ({model_cfg.VFE.NAME}, {model_cfg.BACKBONE_3D.NAME} d_model '
          f'{model_cfg.BACKBONE_3D.d_model[0]}, grid {"x".join(map(str, backbone.sparse_shape_list[0]))}); '
          f'device {args.device} {"bf16 autocast" if args.amp else "fp32"}; torch {torch.__version__}, '
          f'{torch.get_num_threads()} CPU threads')
    print(f'frame: batch {args.batch_size} x {args.sweeps} scans, {num_points} points ({frame_s:.1f} s to simulate), '
          f'{num_voxels} stage-0 voxels, {num_masked} masked ({num_masked / max(num_voxels, 1):.1%}), '
          f'{num_visible} visible encoded; loss {float(tb_dict["loss_rpn"]):.4f} '
          f'(points {float(tb_dict["loss_points"]):.4f}, teacher {float(tb_dict["loss_seal"]):.4f})')
    totals = [row['total'] for row in rows]
    total_ms = statistics.median(totals)
    header = f'{"part":<18}{"median ms":>11}{"share":>8}{"min ms":>10}{"max ms":>10}'
    print(header)
    print('-' * len(header))
    for name in ROWS + ('total',):
        values = [row[name] for row in rows]
        median = statistics.median(values)
        print(f'{name:<18}{median:>11.1f}{median / total_ms:>8.1%}{min(values):>10.1f}{max(values):>10.1f}')
    mask_ms = statistics.median(row['I2Mask'] for row in rows)
    print(f'median of {args.repeats} timed steps after {args.warmup} warm-up; share = row median / total median.')
    print(f'reference: random_mask of the same {ref_count} voxels ({ref_count / max(num_voxels, 1):.1%} of '
          f'{num_voxels}) {ref_ms:.2f} ms; I2Mask {mask_ms:.1f} ms = x{mask_ms / ref_ms:.1f} random')
    print(f'I2Mask share {mask_ms / total_ms:.1%} of the step ({mask_ms:.1f} of {total_ms:.1f} ms, '
          f'masked fraction {num_masked / max(num_voxels, 1):.1%}; target <= 10% on GPU)')


if __name__ == '__main__':
    main()
