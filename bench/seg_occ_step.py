"""Share of label / occupancy-volume loading in a sample, and of the seg / occ head in a training step.

Data side (always CPU): `dataset[i]` of the real `NuScenesDataset` (training mode, the task config's DATA_CONFIG,
DATA_PATH replaced, SAMPLED_INTERVAL 1) on a synthetic set written by the project's generator at real nuScenes density
(32 beams x 1084 azimuth steps, ~30k points per scan; 10 scenes x 2 key frames with >= 9 sweeps each; occupancy GT
on the 512 x 512 x 40 grid). The dataset's own functions are wrapped with timers, so the rows add up to `dataset[i]`:

    points + sweeps           get_lidar_with_sweeps minus the label rows in it (key frame + MAX_SWEEPS - 1 sweeps)
    labels: read + map        LidarsegLabels.columns (read the uint8 files, check, map 32 -> 16 classes)
    labels: carry columns     append_columns + split_columns (labels ride as float32 columns through the pipeline)
    occupancy: read + check   occupancy.load_occupancy_rows (np.load + validation of the [z, y, x, label] rows)
    occupancy: densify        occupancy.densify (rows -> 512 x 512 x 40 uint8 volume, duplicate vote)
    occupancy: aug transform  transform_with_augmentation (the volume follows flip / rotation / scaling)
    augmentation              data_augmentor.forward (points)
    encoding + processor      point_feature_encoder.forward + data_processor.forward (range mask, shuffle)
    other                     the rest of dataset[i] (info copy, metadata, lidar_aug_matrix)
Loading share: label read + map (segmentation) or volume read + check + densify + aug transform (occupancy) over
`dataset[i]`; medians over `--samples` frames after `--warmup_samples` untimed ones.

Model side (`--device`): training steps (`model(batch)`, backward, clip_grad_norm_ to GRAD_NORM_CLIP, AdamW,
zero_grad) of the config's model on `--batch_size` collated samples from the data side:

    VFE, DSVT encoder         model.vfe.forward, model.backbone_3d.forward
    head forward, head loss   dense_head.forward (occupancy: incl. down-sampling the GT), dense_head.get_loss
    head backward             loss.backward() start until the first gradient hook on the head's inputs (the DSVT
                              stage features) fires: autograd runs the head's nodes first (created last, highest
                              sequence numbers), so this is the head's share of the backward pass
    encoder backward + optim  the rest of backward, gradient clipping, AdamW, zero_grad
    other                     step total minus the rows above (detector glue)
The indented "of which" row (segmentation: Lovasz-softmax in the loss; occupancy: GT down-sampling in the forward) is
part of the row above it and is not added again.
With --device cuda every timer (and the hook) synchronises the device. Rows are medians over `--repeats` steps after
`--warmup` (defaults 2 / 0 on CPU, 10 / 3 on CUDA); head share = forward + loss + backward over the median step.

    python bench/seg_occ_step.py --task segmentation     # full-size config, CPU: ~25 s to write the set, ~1.5 min
    python bench/seg_occ_step.py --task occupancy --data_path /tmp/segocc   # ~2.5 min; the set is kept and reused
    python bench/seg_occ_step.py --task occupancy --cfg_file \\
        tools/cfgs/gpicture_models/gpicture_tiny_synthetic_occupancy.yaml --repeats 5 --warmup 1
    python bench/seg_occ_step.py --task segmentation --device cuda
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdet import datasets as pcdet_datasets  # noqa: E402
from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.datasets import dataset as dataset_module  # noqa: E402
from pcdet.datasets.nuscenes import nuscenes_dataset, occupancy  # noqa: E402
from pcdet.models.build import build_network_from_cfg  # noqa: E402
from pcdet.models.dense_heads import occ_head, seg_head  # noqa: E402
from pcdet.utils.batching import load_data_to_device  # noqa: E402

VERSION = 'v1.0-mini'
DEFAULT_CFGS = {task: f'tools/cfgs/gpicture_models/gpicture_nuscenes_{task}.yaml'
                for task in ('segmentation', 'occupancy')}
LOADING_ROWS = {'segmentation': ('labels: read + map',),
                'occupancy': ('occupancy: read + check', 'occupancy: densify', 'occupancy: aug transform')}
TASK_DATA_ROWS = {'segmentation': LOADING_ROWS['segmentation'] + ('labels: carry columns',),
                  'occupancy': LOADING_ROWS['occupancy']}
MODEL_ROWS = ('VFE', 'DSVT encoder', 'head forward', 'head loss', 'head backward', 'encoder backward + optim',
              'other')
HEAD_ROWS = ('head forward', 'head loss', 'head backward')
DETAIL = {'segmentation': (seg_head, 'lovasz_softmax', '  of which Lovasz-softmax', 'head loss'),
          'occupancy': (occ_head, 'downsample_occupancy_labels', '  of which GT down-sampling', 'head forward')}


class Timers:
    """Wraps callables (methods or module functions) with wall-clock timers; `times[name]` accumulates ms.
    `restore()` undoes every wrap (module functions are patched process-wide)."""

    def __init__(self, device):
        self.device, self.times, self.restores = device, {}, []

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def wrap(self, obj, attr, name):
        original, own = getattr(obj, attr), attr in vars(obj)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.times[name] = self.times.get(name, 0.0) + (time.perf_counter() - start) * 1e3
        setattr(obj, attr, timed)  # an instance attribute shadows the class method
        self.restores.append(lambda: setattr(obj, attr, original) if own else delattr(obj, attr))

    def restore(self):
        while self.restores:
            self.restores.pop()()


def ensure_data(data_path):
    """Writes the synthetic set + infos under `data_path` unless its train infos exist; returns seconds spent."""
    dataroot = Path(data_path) / VERSION
    if (dataroot / 'nuscenes_infos_10sweeps_train.pkl').is_file():
        return 0.0
    start = time.perf_counter()
    for command in ([sys.executable, '-m', 'pcdet.datasets.synthetic.nuscenes', '--root', str(dataroot), '--version',
                     VERSION, '--num_scenes', '10', '--samples_per_scene', '2', '--azimuth_steps', '1084', '--seed',
                     '0', '--quiet'],
                    [sys.executable, '-m', 'pcdet.datasets.nuscenes.nuscenes_dataset', '--func',
                     'create_nuscenes_infos', '--cfg_file', 'tools/cfgs/dataset_configs/nuscenes_synthetic.yaml',
                     '--version', VERSION, '--data_path', str(data_path)]):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f'{" ".join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}')
    return time.perf_counter() - start


def time_samples(dataset, task, num_samples, warmup):
    """Per-sample data rows (ms) of `num_samples` timed `dataset[i]` calls, and the samples themselves."""
    timers = Timers(torch.device('cpu'))
    timers.wrap(dataset, 'get_lidar_with_sweeps', 'points')
    timers.wrap(dataset.data_augmentor, 'forward', 'augmentation')
    timers.wrap(dataset.point_feature_encoder, 'forward', 'encoding + processor')
    timers.wrap(dataset.data_processor, 'forward', 'encoding + processor')
    if task == 'segmentation':
        timers.wrap(dataset.seg_labels, 'columns', 'labels: read + map')
        timers.wrap(nuscenes_dataset, 'append_columns', 'append')  # inside get_lidar_with_sweeps
        timers.wrap(dataset_module, 'split_columns', 'split')
    else:
        timers.wrap(occupancy, 'load_occupancy_rows', 'occupancy: read + check')
        timers.wrap(occupancy, 'densify', 'occupancy: densify')
        timers.wrap(dataset, 'transform_with_augmentation', 'occupancy: aug transform')
    names = ('points + sweeps',) + TASK_DATA_ROWS[task] + ('augmentation', 'encoding + processor', 'other')
    rows, samples = [], []
    try:
        for i in range(warmup + num_samples):
            timers.times = {}
            start = time.perf_counter()
            sample = dataset[i % len(dataset)]
            row = dict(timers.times, total=(time.perf_counter() - start) * 1e3)
            if i < warmup:
                continue
            row['points + sweeps'] = row.pop('points')
            if task == 'segmentation':
                row['labels: carry columns'] = row['append'] + row.pop('split')
                row['points + sweeps'] -= row['labels: read + map'] + row.pop('append')
            row['other'] = row['total'] - sum(row.get(name, 0.0) for name in names if name != 'other')
            rows.append(row)
            samples.append(sample)
    finally:
        timers.restore()
    return rows, samples, names


def time_steps(model, batch, task, device, repeats, warmup, grad_clip):
    """Per-step model rows (ms) of `repeats` timed training steps, and the last tb_dict."""
    timers = Timers(device)
    head = model.dense_head
    timers.wrap(model.vfe, 'forward', 'VFE')
    timers.wrap(model.backbone_3d, 'forward', 'DSVT encoder')
    timers.wrap(head, 'forward', 'head forward')
    timers.wrap(head, 'get_loss', 'head loss')
    detail_module, detail_attr, detail_name, detail_after = DETAIL[task]
    timers.wrap(detail_module, detail_attr, detail_name)
    timed_forward, hook = head.forward, {}

    def on_head_input_grad(grad):
        if 'first' not in hook:
            timers.sync()
            hook['first'] = time.perf_counter()

    def forward_with_hooks(batch_dict):
        for features in batch_dict['dsvt_stage_features']:
            if features.requires_grad:
                features.register_hook(on_head_input_grad)
        return timed_forward(batch_dict)
    head.forward = forward_with_hooks
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    try:
        for i in range(warmup + repeats):
            timers.times, step_batch = {}, dict(batch)  # the model writes into the batch dict
            hook.clear()
            timers.sync()
            start = time.perf_counter()
            loss, tb_dict, _ = model(step_batch)
            timers.sync()
            backward_start = time.perf_counter()
            loss['loss'].backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timers.sync()
            end = time.perf_counter()
            if i < warmup:
                continue
            row = dict(timers.times, total=(end - start) * 1e3)
            row['head backward'] = (hook.get('first', end) - backward_start) * 1e3
            row['encoder backward + optim'] = (end - backward_start) * 1e3 - row['head backward']
            row['other'] = row['total'] - sum(row[name] for name in MODEL_ROWS if name != 'other')
            rows.append(row)
    finally:
        timers.restore()
    if not torch.isfinite(loss['loss']):
        raise RuntimeError(f'non-finite loss: {tb_dict}')
    after = MODEL_ROWS.index(detail_after) + 1
    return rows, tb_dict, MODEL_ROWS[:after] + (detail_name,) + MODEL_ROWS[after:]


def print_table(title, rows, names):
    total = statistics.median(row['total'] for row in rows)
    header = f'{"part":<28}{"median ms":>11}{"share":>8}{"min ms":>10}{"max ms":>10}'
    print(f'{title}\n{header}\n{"-" * len(header)}')
    for name in names + ('total',):
        values = [row.get(name, 0.0) for row in rows]
        median = statistics.median(values)
        print(f'{name:<28}{median:>11.1f}{median / total:>8.1%}{min(values):>10.1f}{max(values):>10.1f}')


def load_config(cfg_file, data_path, sweeps):
    cfg_path = Path(cfg_file)
    if not cfg_path.is_absolute() and not cfg_path.exists():
        cfg_path = ROOT / cfg_path
    cfg = cfg_from_yaml_file(str(cfg_path), EasyDict())
    data_cfg = cfg.DATA_CONFIG
    data_cfg.DATA_PATH, data_cfg.VERSION = str(data_path), VERSION
    data_cfg.INFO_PATH = {'train': ['nuscenes_infos_10sweeps_train.pkl'], 'test': ['nuscenes_infos_10sweeps_val.pkl']}
    data_cfg.SAMPLED_INTERVAL = {'train': 1, 'test': 1}
    if sweeps is not None:
        data_cfg.MAX_SWEEPS = sweeps
    return cfg, cfg_path


def run(args):
    """Measures both sides; returns {'data': rows, 'model': rows, ...} (lists of per-sample / per-step dicts)."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix='seg_occ_bench_') as tmp:
        data_path = Path(args.data_path) if args.data_path else Path(tmp)
        generate_s = ensure_data(data_path)
        cfg, cfg_path = load_config(args.cfg_file or DEFAULT_CFGS[args.task], data_path, args.sweeps)
        if cfg.DATA_CONFIG.get('TASK') != args.task:
            raise SystemExit(f'{cfg_path} has DATA_CONFIG.TASK {cfg.DATA_CONFIG.get("TASK")!r}, not {args.task!r}')
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        dataset = pcdet_datasets.build_dataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=True)
        data_rows, samples, data_names = time_samples(dataset, args.task, args.samples, args.warmup_samples)
    batch = load_data_to_device(dataset.collate_batch(samples[-args.batch_size:]), device)
    model = build_network_from_cfg(cfg).to(device)
    model.train()
    grad_clip = float(cfg.get('OPTIMIZATION', {}).get('GRAD_NORM_CLIP', 35.0))
    model_rows, tb_dict, model_names = time_steps(model, batch, args.task, device, args.repeats, args.warmup,
                                                  grad_clip)
    return dict(cfg=cfg, cfg_path=cfg_path, data=data_rows, data_names=data_names, model=model_rows,
                model_names=model_names, tb_dict=tb_dict, batch=batch, num_samples=len(dataset),
                generate_s=generate_s)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(DEFAULT_CFGS), required=True)
    parser.add_argument('--cfg_file', default=None, help='default: the full-size gpicture_nuscenes_<task>.yaml')
    parser.add_argument('--data_path', default=None, help='DATA_PATH of the synthetic set (written there when it '
                        'has no infos yet); default: a temporary folder, deleted afterwards')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--repeats', type=int, default=None, help='timed steps; default 2 on CPU, 10 on CUDA')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps first; default 0 on CPU, 3 on CUDA')
    parser.add_argument('--samples', type=int, default=6, help='timed dataset[i] calls (different frames)')
    parser.add_argument('--warmup_samples', type=int, default=1)
    parser.add_argument('--sweeps', type=int, default=None, help='override MAX_SWEEPS (default: the config\'s)')
    parser.add_argument('--batch_size', type=int, default=1, help='samples per step (configs: seg 2, occ 1)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but torch.cuda.is_available() is False')
    args.repeats = args.repeats if args.repeats is not None else (2 if args.device == 'cpu' else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.device == 'cpu' else 3)
    if min(args.repeats, args.samples, args.batch_size) < 1 or min(args.warmup, args.warmup_samples) < 0 or \
            args.batch_size > args.samples or (args.sweeps is not None and not 1 <= args.sweeps <= 10):
        parser.error('need --repeats, --samples, --batch_size >= 1, --batch_size <= --samples, warm-ups >= 0, '
                     '1 <= --sweeps <= 10')
    return args


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    cfg, task, model_cfg = result['cfg'], args.task, result['cfg'].MODEL
    print(f'{task}: {result["cfg_path"].name} ({model_cfg.VFE.NAME}, {model_cfg.BACKBONE_3D.NAME} '
          f'{len(model_cfg.BACKBONE_3D.d_model)} stage(s) d_model {model_cfg.BACKBONE_3D.d_model[0]}, '
          f'{model_cfg.DENSE_HEAD.NAME}); MAX_SWEEPS {cfg.DATA_CONFIG.MAX_SWEEPS}; device {args.device}; torch '
          f'{torch.__version__}, {torch.get_num_threads()} CPU threads'
          + (f'; synthetic set written in {result["generate_s"]:.0f} s' if result['generate_s'] else ''))
    print_table(f'\ndata side: dataset[i], median of {args.samples} train frames (of {result["num_samples"]}) after '
                f'{args.warmup_samples} warm-up', result['data'], result['data_names'])
    points = int(result['batch']['points'].shape[0])
    print_table(f'\nmodel side: training step, batch {args.batch_size} ({points} points), median of {args.repeats} '
                f'after {args.warmup} warm-up', result['model'], result['model_names'])
    data, model = ({name: statistics.median(row[name] for row in rows) for name in names + ('total',)}
                   for rows, names in ((result['data'], result['data_names']), (result['model'], MODEL_ROWS)))
    loading = sum(data[name] for name in LOADING_ROWS[task])
    head = sum(model[name] for name in HEAD_ROWS)
    print('\nloss: ' + ', '.join(f'{key} {float(value):.4f}' for key, value in result['tb_dict'].items()))
    parts = ' + '.join(name.split(': ')[1] for name in LOADING_ROWS[task])
    print(f'{"label" if task == "segmentation" else "volume"} loading ({parts}): '
          f'{loading:.1f} ms = {loading / data["total"]:.1%} of the sample preparation ({data["total"]:.1f} ms)')
    print(f'{model_cfg.DENSE_HEAD.NAME} (forward + loss + backward): {head:.1f} ms = '
          f'{head / model["total"]:.1%} of the training step ({model["total"]:.1f} ms)')
    serial = args.batch_size * data['total'] + model['total']
    print(f'prepared serially in the step\'s process (workers 0): loading {args.batch_size * loading / serial:.1%}, '
          f'head {head / serial:.1%} of data ({args.batch_size} x {data["total"]:.0f} ms) + step')
    return result


if __name__ == '__main__':
    main()
