#!/usr/bin/env python
"""Plot training curves from a run's TensorBoard logs into one PNG (one panel per tag).

    python tools/plot_curves.py --logdir output/<group>/<cfg>/<tag>/tensorboard --out curves.png \
        [--tags train/loss train/loss_points dgpl/beta ...] [--smooth 20]

Without --tags every scalar tag is drawn. `--smooth N` overlays a running mean over N points (raw values faint).
A tag missing from the logs is an error listing the tags that exist, unless `--skip_missing` (e.g. `dgpl/c_r` of a
pretraining run shorter than 3 epochs).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from pcdet.utils.tb_events import read_scalars  # noqa: E402


def running_mean(values, window):
    if window <= 1 or len(values) < 2:
        return np.asarray(values, dtype=float)
    cumsum = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    out = np.empty(len(values))
    for i in range(len(values)):
        lo = max(0, i - window + 1)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def plot_curves(series, tags, out_path, smooth=20):
    """Write one PNG with a panel per tag of `series` ({tag: [(step, value)]}); returns the path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    missing = [tag for tag in tags if tag not in series]
    if missing:
        raise KeyError(f'tags {missing} are not in the logs; available: {sorted(series)}')
    cols = min(3, len(tags))
    rows = (len(tags) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        steps, values = zip(*series[tag])
        smoothed = len(values) > 2 * smooth
        ax.plot(steps, values, alpha=0.3 if smoothed else 1.0, marker=None if len(values) > 30 else 'o')
        if smoothed:
            ax.plot(steps, running_mean(values, smooth))
        ax.set_title(tag)
        ax.set_xlabel('iteration' if tag.startswith('train/') else 'epoch' if tag.startswith('dgpl/') else 'step')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis('off')
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--logdir', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--tags', nargs='+', default=None)
    parser.add_argument('--smooth', type=int, default=20)
    parser.add_argument('--skip_missing', action='store_true', help='leave out requested tags the logs do not have')
    args = parser.parse_args(argv)
    series = read_scalars(args.logdir)
    tags = args.tags or sorted(series)
    if args.skip_missing:
        skipped = [tag for tag in tags if tag not in series]
        if skipped:
            print(f'not in the logs, left out: {skipped}')
        tags = [tag for tag in tags if tag in series]
    path = plot_curves(series, tags, args.out, args.smooth)
    print(f'wrote {path}')
    return path


if __name__ == '__main__':
    main()
