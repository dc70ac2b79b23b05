"""DGPL gate β(c_r) (spec §2.9) on the spec's examples and its domain."""
import math

import pytest
import torch

from pcdet.models.pretraining import dgpl_beta


@pytest.mark.parametrize('c_r, expected', [(0.2, 0.0), (0.3, 0.632), (0.5, 0.950), (0.9, 0.999)])
def test_spec_examples(c_r, expected):
    assert dgpl_beta(c_r) == pytest.approx(expected, abs=1e-3)


def test_formula_and_below_delta():
    assert dgpl_beta(0.0) == 0.0 and dgpl_beta(0.1999) == 0.0
    assert dgpl_beta(0.7, gamma=4.0, delta=0.5) == pytest.approx(1 - math.exp(-0.8))
    assert dgpl_beta(torch.tensor(0.3, dtype=torch.float64)) == pytest.approx(1 - math.exp(-1.0))
    assert dgpl_beta(1.0 + 5e-7) == pytest.approx(1 - math.exp(-8.0))
    assert dgpl_beta(-5e-7) == 0.0


@pytest.mark.parametrize('bad', [-0.5, 1.5, float('nan')])
def test_out_of_range_raises(bad):
    with pytest.raises(ValueError, match='c_r'):
        dgpl_beta(bad)
