"""Per-sample RNG seeding of the training loader: a sample's random draws depend on (data seed, epoch, position,
index) only — not on the worker count, on skipped batches (mid-epoch resume) or on what was loaded before."""
import pickle
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pcdet.datasets.sample_rng import SampleKey, SeededBatchSampler, load_samples, seeded_rngs
from pcdet.training.train_loop import _iterator_skipping, set_epoch_order

BATCH, FRAMES = 2, 10


class DrawingDataset(Dataset):
    """Each sample records draws from the three global RNGs a data pipeline might use."""

    def __len__(self):
        return FRAMES

    def __getitem__(self, index):
        return (int(index), float(np.random.random()), random.random(), float(torch.rand(1)))

    __getitems__ = load_samples  # what DatasetTemplate does


def epoch_samples(workers, epoch, skip=0, data_seed=7):
    dataset = DrawingDataset()
    loader = DataLoader(dataset, batch_sampler=SeededBatchSampler(RandomSampler(dataset), BATCH),
                        num_workers=workers, collate_fn=lambda batch: batch)
    set_epoch_order(loader, None, epoch, data_seed)
    return [sample for batch in _iterator_skipping(loader, skip) for sample in batch]


def test_samples_do_not_depend_on_workers_skipped_batches_or_history():
    full = epoch_samples(workers=0, epoch=1)
    assert sorted(s[0] for s in full) == list(range(FRAMES))
    assert epoch_samples(workers=2, epoch=1) == full
    assert epoch_samples(workers=0, epoch=1, skip=2) == full[2 * BATCH:]  # a mid-epoch resume
    assert epoch_samples(workers=2, epoch=1, skip=3) == full[3 * BATCH:]
    other_epoch = epoch_samples(workers=0, epoch=2)
    assert {s[1:] for s in other_epoch}.isdisjoint({s[1:] for s in full})
    assert {s[1:] for s in epoch_samples(workers=0, epoch=1, data_seed=8)}.isdisjoint({s[1:] for s in full})


def test_main_process_rng_streams_are_left_untouched():
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    epoch_samples(workers=0, epoch=0)
    after = (np.random.random(), random.random(), float(torch.rand(1)))
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    assert after == (np.random.random(), random.random(), float(torch.rand(1)))


def test_seeded_rngs_is_a_pure_function_of_its_key():
    with seeded_rngs(1, 2, 3, 4):
        first = (np.random.random(), random.random(), float(torch.rand(1)))
    np.random.random()  # the state outside must not matter
    with seeded_rngs(1, 2, 3, 4):
        assert (np.random.random(), random.random(), float(torch.rand(1))) == first
    with seeded_rngs(1, 2, 3, 5):
        assert np.random.random() != first[0]


def test_sample_key_is_the_index_and_survives_pickling():
    key = SampleKey(5, (7, 1, 3))
    assert key == 5 and [10, 11, 12, 13, 14, 15][key] == 15
    clone = pickle.loads(pickle.dumps(key))
    assert int(clone) == 5 and clone.rng_key == (7, 1, 3)
    unseeded = SeededBatchSampler(range(4), 2)  # no set_epoch_seed: plain indices, as before
    assert list(unseeded) == [[0, 1], [2, 3]] and not isinstance(next(iter(unseeded))[0], SampleKey)
    with pytest.raises(ValueError, match='epoch and data_seed must be >= 0'):
        unseeded.set_epoch_seed(0, -1)
