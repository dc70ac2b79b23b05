"""Linear CKA (spec §2.8): feature-space form vs Gram form, invariances, identity, constant inputs."""
import pytest
import torch

from pcdet.models.pretraining import layerwise_cka, linear_cka, linear_cka_gram


@pytest.mark.parametrize('shape', [(10, 3, 5), (50, 16, 8), (30, 40, 2), (200, 7, 7)])
@pytest.mark.parametrize('seed', range(3))
def test_feature_form_equals_gram_form(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    n, d1, d2 = shape
    x = torch.randn(n, d1, generator=gen) + 3.0
    y = x[:, :1] * torch.randn(1, d2, generator=gen) + torch.randn(n, d2, generator=gen)
    assert linear_cka(x, y).item() == pytest.approx(linear_cka_gram(x, y).item(), abs=1e-6)


def test_invariances_and_identity():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 12, generator=gen, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(12, 9, generator=gen, dtype=torch.float64))
    base = linear_cka(x, y).item()
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    assert linear_cka(x @ q, y).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y).item() == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 100.0, y).item() == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x.float(), x.float()).item() == pytest.approx(1.0, abs=1e-7)
    assert 0.0 < base < 1.0 and linear_cka(x, y).dtype == torch.float64


def test_constant_input_gives_zero():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    assert linear_cka(x, torch.full((20, 3), 0.1)).item() == 0.0
    assert linear_cka(torch.zeros(20, 2), x).item() == 0.0
    assert linear_cka_gram(x, torch.full((20, 3), 0.1)).item() == 0.0


def test_layerwise_and_shape_errors():
    gen = torch.Generator().manual_seed(2)
    a = [torch.randn(15, 4, generator=gen) for _ in range(3)]
    b = [torch.randn(15, 6, generator=gen) for _ in range(3)]
    got = layerwise_cka(a, b)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.stack([linear_cka_gram(x, y) for x, y in zip(a, b)]), atol=1e-10)
    with pytest.raises(ValueError):
        layerwise_cka(a, b[:2])
    with pytest.raises(ValueError):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
