"""GPICTURE ablation in miniature: each pretext variant x several seeds -> 10%-label fine-tune of one or more tasks
(detection, segmentation, occupancy) -> the task's official evaluation; mean +- std per row, a Markdown table and a
bar chart per task.

    python tools/ablate_gpicture.py --data_path data/synthetic_nuscenes --version v1.0-trainval \
        --seeds 0 1 2 --rows scratch full points_only --jobs 2 --tasks detection \
        --out_md docs/gpicture_ablation.md --out_png docs/images/gpicture_ablation.png

Every run goes through the real tools in subprocesses (train.py / test.py / prepare_seal_features.py), one torch
thread each, `--jobs` at a time. A (row, seed) pretraining is shared by every task and lives in
`<output_root>/pretrain/<row>/seed<k>/`; each finished fine-tune writes
`<output_root>/<task>/<row>/seed<k>/result.json`. A rerun skips finished work, so the study resumes after an
interruption. The data set (synthetic nuScenes-format, infos; occupancy ground truth for the occupancy task) must
exist; teacher features are prepared per teacher variant when missing (resumable).

Rows (ROWS below): a pretraining config (`gpicture_tiny_synthetic_pretrain.yaml` unless the row names another, e.g.
the contrastive pretext's) with overrides (written to `<output_root>/configs/<row>.yaml`), or no pretraining
(scratch); every fine-tune of a task is its config in TASKS with the same schedule. A seed changes the pretraining and
the fine-tune (`train.py --seed`): weights, data order and augmentation. With several tasks, `--out_md` / `--out_png`
get the task name inserted before the suffix. The camera rows (CAMERA_ROWS) need camera images and `--with_cam`
infos in the data set.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
CFG_DIR = REPO_ROOT / 'tools' / 'cfgs' / 'gpicture_models'
PRETRAIN_CFG = CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'
FINETUNE_CFG = CFG_DIR / 'gpicture_tiny_synthetic_finetune.yaml'
CONTRASTIVE_CFG = REPO_ROOT / 'tools' / 'cfgs' / 'contrastive_models' / 'contrastive_tiny_synthetic_pretrain.yaml'
RENDER_CFG = REPO_ROOT / 'tools' / 'cfgs' / 'gaussian_models' / 'gaussian_tiny_synthetic_pretrain.yaml'
TEACHER = 'DATA_CONFIG.TEACHER_FEATURES.'
HEAD = 'MODEL.DENSE_HEAD.'



class Row(NamedTuple):
    """A study row: what it is, its overrides of `base_cfg` ({dotted key: value}; None = no pretraining, scratch), and
    the pretraining config it starts from. A dict value replaces the whole block (a teacher of another NAME has other
    keys). Teacher variants write their features to their own FEATURE_DIR (the feature store refuses to mix
    teachers)."""
    what: str
    overrides: Optional[dict]
    base_cfg: Path = PRETRAIN_CFG


ROWS = {
    'scratch': Row('no pretraining', None),
    'full': Row('GPICTURE: I²Mask + CKA α + DGPL, synthetic_semantic teacher', {}),
    'points_only': Row('points-only MAE (β fixed at 0: no teacher loss)', {HEAD + 'DGPL.FIXED_BETA': 0.0}),
    'teacher_only': Row('teacher-only (α = 0 for each of the 4 encoder layers: no point loss)',
                        {HEAD + 'CKA_ALPHA': [0.0, 0.0, 0.0, 0.0]}),
    'random_mask': Row("random mask at I²Mask's measured mean ratio (0.15) instead of I²Mask",
                       {'MODEL.BACKBONE_3D.MASK_CONFIG.TYPE': 'random',
                        'MODEL.BACKBONE_3D.MASK_CONFIG.RANDOM_MASK_RATIO': 0.15}),
    'fixed_beta': Row('β fixed at 1 instead of DGPL', {HEAD + 'DGPL.FIXED_BETA': 1.0}),
    'label_free': Row('label-free teacher (`geometric`: local-geometry descriptors)',
                      {TEACHER[:-1]: {'NAME': 'geometric', 'NUM_FEATURES': 64, 'SEED': 0,
                                      'FEATURE_DIR': 'teacher_features/geometric'}}),
    'noisy_20': Row('noisy oracle: 20% of the points get a wrong class code',
                    {TEACHER + 'LABEL_NOISE': 0.2, TEACHER + 'FEATURE_DIR': 'teacher_features/noisy_20'}),
    'noisy_50': Row('noisy oracle: 50% of the points get a wrong class code',
                    {TEACHER + 'LABEL_NOISE': 0.5, TEACHER + 'FEATURE_DIR': 'teacher_features/noisy_50'}),
    # Camera rows: the data set needs camera images and `--with_cam` infos (tools/scripts/ablate_gpicture.sh).
    'image_teacher': Row('GPICTURE with the image-projection teacher (seeded random-init CNN on the camera images)', {},
                         CFG_DIR / 'gpicture_tiny_synthetic_pretrain_image.yaml'),
    'contrastive': Row('contrastive pretraining: point-to-pixel + superpoint-to-superpixel InfoNCE on the image '
                       "teacher's features + CrossPoint NT-Xent", {}, CONTRASTIVE_CFG),
    'render': Row('Gaussian rendering pretext: per-pillar Gaussians rendered into the cameras (RGB, LiDAR depth, '
                  "the image teacher's features)", {}, RENDER_CFG),
}

CAMERA_ROWS = ('image_teacher', 'contrastive', 'render')


def detection_metrics(eval_dir):
    summary = json.loads((eval_dir / 'final_result' / 'data' / 'metrics_summary.json').read_text())
    return {'mAP': summary['mean_ap'], 'NDS': summary['nd_score'], 'car AP': summary['mean_dist_aps']['car']}


def evaluator_metrics(keys):
    """Reader of the metrics file the segmentation / occupancy evaluators write: {column: metric key}."""
    def read(eval_dir):
        metrics = json.loads((eval_dir / 'metrics.json').read_text())  # written by tools/test.py (eval_loop)
        return {column: metrics[key] for column, key in keys.items()}
    return read


# task -> (fine-tune config, metric columns, reader of tools/test.py's output folder, what scores it)
TASKS = {
    'detection': (FINETUNE_CFG, ('mAP', 'NDS', 'car AP'), detection_metrics, 'official nuScenes DetectionEval'),
    'segmentation': (CFG_DIR / 'gpicture_tiny_synthetic_segmentation.yaml', ('mIoU', 'fwIoU'),
                     evaluator_metrics({'mIoU': 'lidarseg/mIoU', 'fwIoU': 'lidarseg/fwIoU'}),
                     "nuscenes-devkit's LidarSegEval"),
    'occupancy': (CFG_DIR / 'gpicture_tiny_synthetic_occupancy.yaml', ('SSC mIoU', 'SC IoU'),
                  evaluator_metrics({'SSC mIoU': 'occupancy/SSC_mIoU_present', 'SC IoU': 'occupancy/SC_IoU'}),
                  "OpenOccupancy's SC IoU / SSC mIoU (mean over the classes present)"),
    # the same task read out by splatting Gaussians (GaussianOccHead) instead of the dense head
    'occupancy_gaussian': (CFG_DIR / 'gpicture_tiny_synthetic_occupancy_gaussian.yaml', ('SSC mIoU', 'SC IoU'),
                           evaluator_metrics({'SSC mIoU': 'occupancy/SSC_mIoU_present',
                                              'SC IoU': 'occupancy/SC_IoU'}),
                           "OpenOccupancy's SC IoU / SSC mIoU (mean over the classes present), Gaussian read-out"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data_path', required=True, help='DATA_CONFIG.DATA_PATH holding <version>/ with infos')
    parser.add_argument('--version', default='v1.0-trainval')
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--pretrain_epochs', type=int, default=16)
    parser.add_argument('--tasks', nargs='+', default=['detection'], choices=list(TASKS))
    parser.add_argument('--finetune_epochs', type=int, default=60)
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time (one torch thread each)')
    parser.add_argument('--output_root', default=str(REPO_ROOT / 'output' / 'ablation'))
    parser.add_argument('--out_md', default=None, help='write the Markdown table here')
    parser.add_argument('--out_png', default=None, help='write the bar chart here')
    parser.add_argument('--title', default='GPICTURE ablation', help='what the bar chart is titled (before the task)')
    parser.add_argument('--extra_set', nargs='*', default=[], help='more --set pairs for every run')
    return parser.parse_args(argv)


def run(args, log_path, env):
    """Run a tool (argument list) into `log_path`; raise naming the log when it fails."""
    with open(log_path, 'w') as log:
        code = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f'{" ".join(map(str, args[:3]))} exited with {code}; see {log_path}')


def tool_env():
    import os
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE', PYTHONHASHSEED='0')


def data_set(opts):
    return ['DATA_CONFIG.DATA_PATH', opts.data_path, 'DATA_CONFIG.VERSION', opts.version, *opts.extra_set]


def strip_base_keys(block):
    """A plain-dict copy of a resolved config without `_BASE_CONFIG_` entries (they would re-resolve relative to the
    written file) and without the keys the config loader adds (ROOT_DIR, LOCAL_RANK)."""
    if isinstance(block, dict):
        return {k: strip_base_keys(v) for k, v in block.items() if k not in ('_BASE_CONFIG_', 'ROOT_DIR', 'LOCAL_RANK')}
    if isinstance(block, (list, tuple)):
        return [strip_base_keys(v) for v in block]
    return block


def config_path(row, output_root):
    """Where `variant_config` writes the pretraining config of `row`."""
    return Path(output_root) / 'configs' / f'{row}.yaml'


def variant_config(row, output_root):
    """Write the pretraining config of `row` (its base config resolved, the row's overrides applied) to
    `<output_root>/configs/<row>.yaml` and return its path. `--set` cannot do this: it only changes existing keys."""
    import yaml

    from pcdet.config import cfg_from_yaml_file
    from pcdet.utils.file_utils import atomic_save_text
    cfg = strip_base_keys(cfg_from_yaml_file(ROWS[row].base_cfg))
    for dotted, value in ROWS[row].overrides.items():
        *parents, leaf = dotted.split('.')
        block = cfg
        for key in parents:
            block = block[key]
        block[leaf] = value
    path = config_path(row, output_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_text(f'# {ROWS[row].what} (tools/ablate_gpicture.py: {ROWS[row].base_cfg.name} + overrides)\n'
                    + yaml.safe_dump(cfg, sort_keys=False), path)
    return path


def pretrain(row, seed, opts, env):
    """The (row, seed) pretraining shared by every task -> its last checkpoint (None for scratch); resumable."""
    if ROWS[row].overrides is None:
        return None
    run_dir = Path(opts.output_root) / 'pretrain' / row / f'seed{seed}'
    done = list((run_dir / 'output').rglob(f'pretrain/ckpt/checkpoint_epoch_{opts.pretrain_epochs}.pth'))
    if done and (run_dir / 'done').is_file():
        return done[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    run([REPO_ROOT / 'tools' / 'train.py', '--cfg_file', config_path(row, opts.output_root), '--extra_tag',
         'pretrain', '--epochs', opts.pretrain_epochs, '--skip_eval', *common_args(seed, run_dir), '--set',
         *data_set(opts)], run_dir / 'pretrain.log', env)
    (run_dir / 'done').write_text('')
    return next((run_dir / 'output').rglob(f'pretrain/ckpt/checkpoint_epoch_{opts.pretrain_epochs}.pth'))


def common_args(seed, run_dir):
    return ['--workers', '0', '--seed', seed, '--use_tqdm_to_record', '--overwrite', '--output_root',
            run_dir / 'output']


def run_one(row, seed, opts, tasks=None):
    """Pretrain (unless scratch; shared by the tasks), fine-tune and evaluate each task for one (row, seed);
    -> list of result dicts (each cached in its result.json)."""
    env, results = tool_env(), []
    for task in tasks or opts.tasks:
        run_dir = Path(opts.output_root) / task / row / f'seed{seed}'
        result_file = run_dir / 'result.json'
        if result_file.is_file():
            results.append(json.loads(result_file.read_text()))
            continue
        start = time.monotonic()
        ckpt = pretrain(row, seed, opts, env)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_file, _, read_metrics, _ = TASKS[task]
        finetune_extra = ['--pretrained_model', ckpt] if ckpt is not None else []
        run([REPO_ROOT / 'tools' / 'train.py', '--cfg_file', cfg_file, '--extra_tag', 'finetune',
             '--epochs', opts.finetune_epochs, '--skip_eval', *common_args(seed, run_dir), *finetune_extra,
             '--set', *data_set(opts)], run_dir / 'finetune.log', env)
        finetune_dir = next((run_dir / 'output').rglob('finetune/ckpt')).parent
        run([REPO_ROOT / 'tools' / 'test.py', '--cfg_file', cfg_file, '--extra_tag', 'finetune', '--workers', '0',
             '--output_root', run_dir / 'output', '--ckpt',
             finetune_dir / 'ckpt' / f'checkpoint_epoch_{opts.finetune_epochs}.pth', '--set', *data_set(opts)],
            run_dir / 'test.log', env)
        eval_dir = next(finetune_dir.glob(f'eval/epoch_{opts.finetune_epochs}/*/default'))
        result = {'task': task, 'row': row, 'seed': seed, **read_metrics(eval_dir),
                  'seconds': round(time.monotonic() - start)}
        tmp = result_file.with_suffix('.tmp')
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(result_file)
        print(f'{task:>12} {row:>13} seed {seed}: ' + '  '.join(f'{name} {result[name]:.4f}'
                                                                for name in TASKS[task][1])
              + f'  ({result["seconds"]} s)', flush=True)
        results.append(result)
    return results


def prepare_teachers(opts):
    """Teacher features of every distinct teacher block the chosen rows' configs have (prepare_seal_features is
    resumable; rows with the same block share one feature folder)."""
    from pcdet.config import cfg_from_yaml_file
    needed = {}  # resolved TEACHER_FEATURES block -> first row using it
    for row in opts.rows:
        if ROWS[row].overrides is not None:
            block = cfg_from_yaml_file(config_path(row, opts.output_root)).DATA_CONFIG.get('TEACHER_FEATURES')
            if block is not None:  # the rendering pretext runs its 2-D teacher itself
                needed.setdefault(json.dumps(block, sort_keys=True, default=str), row)
    for row in needed.values():
        run([REPO_ROOT / 'tools' / 'prepare_seal_features.py', '--cfg_file', config_path(row, opts.output_root),
             '--split', 'train', '--quiet', '--set', *data_set(opts)], Path(opts.output_root) / f'teacher_{row}.log',
            tool_env())


def summarise(results, rows, task='detection'):
    """{row: {metric: (mean, std, n)}} over seeds (sample std; 0 for one seed) of one task's results."""
    table = {}
    for row in rows:
        runs = [r for r in results if r['row'] == row and r.get('task', 'detection') == task]
        if runs:
            table[row] = {name: (statistics.mean(r[name] for r in runs),
                                 statistics.stdev(r[name] for r in runs) if len(runs) > 1 else 0.0, len(runs))
                          for name in TASKS[task][1]}
    return table


def markdown(table, opts, task='detection'):
    metrics = TASKS[task][1]
    lines = [f'| row | what | seeds | {" | ".join(metrics)} |', '|---|---|---|' + '---|' * len(metrics)]
    for row, stats in table.items():
        cells = ' | '.join(f'{stats[name][0]:.3f} ± {stats[name][1]:.3f}' for name in metrics)
        lines.append(f'| {row} | {ROWS[row].what} | {stats[metrics[0]][2]} | {cells} |')
    lines.append('')
    lines.append(f'{task.capitalize()}: pretraining {opts.pretrain_epochs} epochs, fine-tune {opts.finetune_epochs} '
                 f'epochs on every 10th train frame, {TASKS[task][3]} on {opts.version} '
                 f'{"mini_val" if opts.version == "v1.0-mini" else "val"}; mean ± sample std over seeds '
                 f'{opts.seeds}.')
    return '\n'.join(lines) + '\n'


def plot(table, path, task='detection', title='GPICTURE ablation'):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows, metrics = list(table), TASKS[task][1]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), sharey=False, squeeze=False)
    for ax, name in zip(axes[0], metrics):
        means = [table[row][name][0] for row in rows]
        stds = [table[row][name][1] for row in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=['#999999' if r == 'scratch' else '#3b75af'
                                                                    for r in rows])
        ax.set_xticks(range(len(rows)), rows, rotation=45, ha='right', fontsize=8)
        ax.set_title(name)
    fig.suptitle(f'{title}, {task} (synthetic nuScenes, 10% labels): mean ± std over seeds', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def output_path(path, task, opts):
    """`path` itself for a single task, else with `_<task>` before the suffix."""
    if path is None or len(opts.tasks) == 1:
        return path
    path = Path(path)
    return path.with_name(f'{path.stem}_{task}{path.suffix}')


def main(argv=None):
    opts = parse_args(argv)
    Path(opts.output_root).mkdir(parents=True, exist_ok=True)
    for row in opts.rows:  # once, before any job: concurrent jobs of one row must not rewrite the file under a reader
        if ROWS[row].overrides is not None:
            variant_config(row, opts.output_root)
    prepare_teachers(opts)
    jobs = [(row, seed) for seed in opts.seeds for row in opts.rows]
    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        results = [result for batch in pool.map(lambda job: run_one(*job, opts), jobs) for result in batch]
    for task in opts.tasks:
        table = summarise(results, opts.rows, task)
        text = markdown(table, opts, task)
        print(text)
        out_md, out_png = output_path(opts.out_md, task, opts), output_path(opts.out_png, task, opts)
        if out_md:
            Path(out_md).parent.mkdir(parents=True, exist_ok=True)
            Path(out_md).write_text(text)
        if out_png:
            Path(out_png).parent.mkdir(parents=True, exist_ok=True)
            plot(table, out_png, task, opts.title)


if __name__ == '__main__':
    main()
