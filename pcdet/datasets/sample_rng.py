"""Per-sample RNG seeding of the training data pipeline: the random draws made while loading a sample are a function
of `(data seed, epoch, position in the epoch, dataset index)` only.

Why: augmentation (flip / rotation / scaling / GT sampling), sweep selection and point shuffling draw from the
global numpy RNG. If that RNG is one stream per process, a sample's draws depend on everything the process loaded
before it, which differs between an uninterrupted run and a resumed one (skipped batches are never loaded, new
DataLoader workers start fresh, a worker's share of the batches moves). Seeding the RNGs per sample from its key
makes the data of every iteration independent of history, worker count and worker assignment, so there is no
mutable data-pipeline state to checkpoint.

    SampleKey(index, rng_key)           an int (the dataset index) that also carries `rng_key = (seed, epoch, pos)`
    SeededBatchSampler(sampler, batch_size, drop_last=False)
        .set_epoch_seed(epoch, data_seed)   the batches of the next iterator carry SampleKeys; no seed: plain ints
    load_samples(dataset, keys) -> list     `[dataset[key] ...]`, each SampleKey under `seeded_rngs(...)`
    seeded_rngs(*entropy)                   context: python, numpy and torch (CPU) global RNGs seeded from
                                            `entropy`, the previous states restored afterwards

`DatasetTemplate.__getitems__` is `load_samples`, so a DataLoader with a SeededBatchSampler (the training loader of
`pcdet.datasets.build_dataloader`) loads every sample seeded; evaluation loaders and plain indices are unchanged.
The CUDA RNG is never touched (the model's dropout keeps its stream).
"""
import contextlib
import random

import numpy as np
import torch
from torch.utils.data import BatchSampler


class SampleKey(int):
    """A dataset index (it IS the int, so datasets that ignore the key still work) carrying the RNG key of the
    sample's slot in the epoch: `rng_key = (data_seed, epoch, position)`."""

    def __new__(cls, index, rng_key=None):
        key = super().__new__(cls, index)
        key.rng_key = None if rng_key is None else tuple(int(v) for v in rng_key)
        return key

    def __getnewargs__(self):  # pickled into DataLoader workers with its rng_key
        return int(self), self.rng_key

    def __repr__(self):
        return f'SampleKey({int(self)}, rng_key={self.rng_key})'


def sample_seeds(*entropy):
    """(numpy seed < 2**32, python/torch seed < 2**63): a pure function of the non-negative ints `entropy`
    (numpy's SeedSequence, so neighbouring keys give unrelated streams)."""
    words = np.random.SeedSequence([int(v) for v in entropy]).generate_state(3, dtype=np.uint32)
    return int(words[0]), (int(words[1]) << 31) ^ int(words[2])


@contextlib.contextmanager
def seeded_rngs(*entropy):
    """Seed python's, numpy's and torch's CPU global RNGs from `entropy` for the block; restore their states after
    it (so loading in the main process, `--workers 0`, leaves the training RNG streams untouched)."""
    numpy_seed, other_seed = sample_seeds(*entropy)
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(other_seed)
    np.random.seed(numpy_seed)
    torch.default_generator.manual_seed(other_seed)  # not torch.manual_seed: that would reseed CUDA too
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def load_samples(dataset, keys):
    """`[dataset[key] for key in keys]`, each SampleKey with an rng_key loaded under `seeded_rngs(*rng_key, key)`
    (the index is part of the entropy so that ranks sharing a position draw differently)."""
    samples = []
    for key in keys:
        rng_key = getattr(key, 'rng_key', None)
        if rng_key is None:
            samples.append(dataset[key])
            continue
        with seeded_rngs(*rng_key, int(key)):
            samples.append(dataset[int(key)])
    return samples


class SeededBatchSampler(BatchSampler):
    """BatchSampler whose batches hold SampleKeys `(index, (data_seed, epoch, position))` once `set_epoch_seed` was
    called; `position` counts the samples of the epoch from 0 in sampler order, so a resume that skips batches
    (train_loop's `_SkipBatches` wraps this sampler) gives the remaining samples the same keys as an uninterrupted
    run. `epoch` and `data_seed` are read when an iterator starts."""

    def __init__(self, sampler, batch_size, drop_last=False):
        super().__init__(sampler, batch_size, drop_last)
        self.epoch, self.data_seed = 0, None

    def set_epoch_seed(self, epoch, data_seed):
        if int(epoch) < 0 or (data_seed is not None and int(data_seed) < 0):
            raise ValueError(f'SeededBatchSampler.set_epoch_seed: epoch and data_seed must be >= 0, got {epoch}, '
                             f'{data_seed}')
        self.epoch, self.data_seed = int(epoch), None if data_seed is None else int(data_seed)

    def __iter__(self):
        data_seed, epoch = self.data_seed, self.epoch
        if data_seed is None:
            yield from super().__iter__()
            return
        position = 0
        for batch in super().__iter__():
            yield [SampleKey(index, (data_seed, epoch, position + offset)) for offset, index in enumerate(batch)]
            position += len(batch)
