"""The evaluator interface every task implements, and the cross-rank merge they share.

    evaluator.reset()
    for batch_dict, (pred_dicts, ret_dict) in ...:
        disp = evaluator.process(batch_dict, pred_dicts, ret_dict=ret_dict)   # dict for the progress bar (or None)
    result_str, metrics = evaluator.evaluate()   # collective: call it on every rank; rank 0 gets the results

`process` sees one collated batch (`batch_dict`, after `load_data_to_device`) and the model's per-sample outputs
(`pred_dicts`, one dict per sample, plus the model's eval `ret_dict`, e.g. recall counters). It keeps per-frame
results in the order the loader produced them. `evaluate` gathers the per-frame results of every rank with
`all_gather_object`, puts them back in dataset order with the sampler's indices (the padding duplicates a
distributed sampler adds are dropped; an unknown sampler layout is taken to be OpenPCDet's strided sharding), and on
rank 0 computes the metrics: `(result_str, metrics)`, a readable text and a flat dict of numbers keyed
`<group>/<name>` (or the dataset's own keys for detection). Other ranks return `('', {})`.
"""
import logging
import math
from pathlib import Path

from ..training.distributed import all_gather_object, get_rank, is_dist, merge_sharded_results


def shard_indices(dataloader):
    """The dataset indices this rank's loader visits, in order (a distributed sampler's `list(sampler)`), else
    None (a plain loader visits the dataset in order)."""
    sampler = getattr(dataloader, 'sampler', None)
    if sampler is not None and hasattr(sampler, 'num_replicas'):
        return [int(i) for i in iter(sampler)]
    return None


class DatasetEvaluator:
    """Base class: `reset`, `process`, `evaluate` (module docs). Subclasses call `gather_frames` /
    `sum_over_ranks` in `evaluate` and return early unless `self.is_main`."""

    def __init__(self, dataset, result_dir, logger=None, dataloader=None, dist_test=False):
        self.dataset = dataset
        self.result_dir = Path(result_dir)
        self.logger = logger or logging.getLogger('pcdet')
        self.dataloader = dataloader
        self.dist_test = bool(dist_test) and is_dist()

    @property
    def is_main(self):
        return get_rank() == 0

    def reset(self):
        raise NotImplementedError

    def process(self, batch_dict, pred_dicts, ret_dict=None):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError

    # ---- cross-rank merge ------------------------------------------------------------------------------------------

    def gather_frames(self, frames):
        """This rank's per-frame results (processing order) -> all ranks' results in dataset order (every rank gets
        the merged list; without distributed evaluation `frames` itself)."""
        if not self.dist_test:
            return list(frames)
        index_parts = all_gather_object(shard_indices(self.dataloader))
        parts = all_gather_object(list(frames))
        if any(ix is None or len(ix) != len(p) for ix, p in zip(index_parts, parts)):
            index_parts = None  # unknown sampler layout: assume OpenPCDet's strided sharding
        total = len(self.dataset) if hasattr(self.dataset, '__len__') else None
        return merge_sharded_results(parts, index_parts, total=total)

    def sum_over_ranks(self, counters):
        """Element-wise sum over ranks of a dict of numbers (unchanged without distributed evaluation)."""
        if not self.dist_test:
            return dict(counters)
        merged = {key: 0.0 for key in counters}
        for part in all_gather_object(dict(counters)):
            for key, value in part.items():
                merged[key] += value
        return merged


def format_value(value, digits=4):
    """A metric for a text table: fixed digits, 'nan' for NaN."""
    if value is None:
        return '-'
    value = float(value)
    return 'nan' if math.isnan(value) else f'{value:.{digits}f}'


def format_table(headers, rows):
    """Plain fixed-width text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return '  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = '-' * len(line(cells[0]))
    return '\n'.join([line(cells[0]), rule] + [line(row) for row in cells[1:]])
