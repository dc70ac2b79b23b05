"""pcdet.utils.seg_losses against independent references: the Lovász extension as the integral of the set
function over thresholds (not the sorted-cumsum formula of the code), MonoScene's per-class loops for the scal
losses, a loop over the children of every coarse cell for the GT down-sampling, and the spec's OpenOccupancy
class weights."""
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from pcdet.utils.seg_losses import (
    cross_entropy_ignore,
    downsample_occupancy_labels,
    geo_scal_loss,
    lovasz_softmax,
    openoccupancy_class_weights,
    sem_scal_loss,
)

# implementation spec §B.7: w_c = 1 / ln(f_c + 0.001), empty first
SPEC_WEIGHTS = [0.0352, 0.0586, 0.0701, 0.0582, 0.0524, 0.0603, 0.0686, 0.0585, 0.0658, 0.0576, 0.0551, 0.0464,
                0.0563, 0.0493, 0.0486, 0.0474, 0.0470]


def jaccard_loss_of_set(error_set, foreground):
    """Δ_J(M) = |M| / |G ∪ M| (Berman et al.), M a set of element indices, G the foreground set."""
    if not error_set:
        return 0.0
    return len(error_set) / len(foreground | error_set)


def lovasz_extension(errors, foreground):
    """∫_0^1 Δ_J({i : m_i >= t}) dt, evaluated exactly on the piecewise-constant level sets."""
    values = sorted(set(errors), reverse=True) + [0.0]
    total = 0.0
    for high, low in zip(values[:-1], values[1:]):
        level_set = {i for i, m in enumerate(errors) if m >= high}
        total += (high - low) * jaccard_loss_of_set(level_set, foreground)
    return total


def reference_lovasz(probas, labels, ignore=None, classes='present'):
    rows = [i for i in range(len(labels)) if labels[i] != ignore]
    losses = []
    for c in range(probas.shape[1]):
        foreground = {k for k, i in enumerate(rows) if labels[i] == c}
        if classes == 'present' and not foreground:
            continue
        errors = [abs(float(labels[i] == c) - float(probas[i, c])) for i in rows]
        losses.append(lovasz_extension(errors, foreground))
    return sum(losses) / len(losses)


@pytest.mark.parametrize('seed', range(4))
def test_lovasz_equals_the_extension_integral(seed):
    generator = torch.Generator().manual_seed(seed)
    probas = torch.softmax(torch.randn(23, 5, generator=generator, dtype=torch.float64) * 2, dim=1)
    labels = torch.randint(0, 4, (23,), generator=generator)       # class 4 absent
    labels[:3] = 9                                                  # ignored rows
    got = lovasz_softmax(probas, labels, ignore_index=9)
    assert float(got) == pytest.approx(reference_lovasz(probas, labels.tolist(), ignore=9), abs=1e-12)
    everything = lovasz_softmax(probas[3:], labels[3:], classes='all')
    assert float(everything) == pytest.approx(reference_lovasz(probas[3:], labels[3:].tolist(), classes='all'),
                                              abs=1e-12)


def test_lovasz_hand_computed_case_and_shapes():
    # two elements, two classes: p = [[0.8, 0.2], [0.4, 0.6]], y = [0, 0]. Class 0: errors [0.2, 0.6], G = {0, 1}:
    # sorted (0.6 at 1, 0.2 at 0): J = [1/2, 2/2] -> g = [0.5, 0.5] -> 0.3 + 0.1 = 0.4. Class 1 absent (present mode).
    probas = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    assert float(lovasz_softmax(probas, torch.tensor([0, 0]))) == pytest.approx(0.4)
    # (B, C, X, Y) input equals its (P, C) flattening
    generator = torch.Generator().manual_seed(1)
    volume = torch.softmax(torch.randn(2, 4, 3, 5, generator=generator), dim=1)
    labels = torch.randint(0, 4, (2, 3, 5), generator=generator)
    flat = volume.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(lovasz_softmax(volume, labels), lovasz_softmax(flat, labels.reshape(-1)))
    empty = lovasz_softmax(flat.requires_grad_(), torch.full((30,), 7), ignore_index=7)
    assert float(empty.detach()) == 0.0
    empty.backward()


def test_lovasz_gradient_is_the_extension_gradient():
    generator = torch.Generator().manual_seed(3)
    probas = torch.softmax(torch.randn(9, 3, generator=generator, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 5])
    assert torch.autograd.gradcheck(lambda p: lovasz_softmax(p, labels, ignore_index=5), (probas,))


def test_cross_entropy_ignore_is_the_weighted_mean():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 255, 1, 1, 0, 255, 2, 3, 3])
    weight = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    rows = [i for i in range(12) if labels[i] != 255]
    num = sum(-weight[labels[i]] * log_p[i, labels[i]] for i in rows)
    den = sum(weight[labels[i]] for i in rows)
    assert float(cross_entropy_ignore(logits, labels, 255, weight)) == pytest.approx(float(num / den))
    zero = cross_entropy_ignore(logits.requires_grad_(), torch.full((12,), 255), 255)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def bce_one(x):
    return -max(math.log(x), -100.0) if x > 0 else 100.0


def reference_scal(logits, target, ignore=255, empty=0):
    """MonoScene geo_scal_loss / sem_scal_loss written as loops over voxels (floats)."""
    probas = torch.softmax(logits, dim=1).movedim(1, -1).reshape(-1, logits.shape[1]).tolist()
    labels = target.reshape(-1).tolist()
    rows = [(p, y) for p, y in zip(probas, labels) if y != ignore]
    eps = 1e-5
    inter = sum((1 - p[empty]) for p, y in rows if y != empty)
    q_sum = sum(1 - p[empty] for p, _ in rows)
    t_sum = sum(1 for _, y in rows if y != empty)
    free_sum = sum(1 for _, y in rows if y == empty)
    spec = sum(p[empty] for p, y in rows if y == empty) / (free_sum + eps)
    geo = bce_one(inter / (q_sum + eps)) + bce_one(inter / (t_sum + eps)) + bce_one(spec)
    sem, count = 0.0, 0
    for c in range(logits.shape[1]):
        tgt = [1.0 if y == c else 0.0 for _, y in rows]
        if sum(tgt) == 0:
            continue
        count += 1
        p_c = [p[c] for p, _ in rows]
        nominator = sum(a * t for a, t in zip(p_c, tgt))
        sem += bce_one(nominator / sum(p_c)) + bce_one(nominator / sum(tgt))
        sem += bce_one(sum((1 - a) * (1 - t) for a, t in zip(p_c, tgt)) / sum(1 - t for t in tgt))
    return geo, sem / count


@pytest.mark.parametrize('seed', range(3))
def test_scal_losses_match_the_loop_formulas(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 3, 4, 2, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, 4, (2, 3, 4, 2), generator=generator)     # class 4 absent
    target[0, 0] = 255
    geo, sem = reference_scal(logits, target)
    assert float(geo_scal_loss(logits, target)) == pytest.approx(geo, rel=1e-9)
    assert float(sem_scal_loss(logits, target)) == pytest.approx(sem, rel=1e-9)


def test_scal_losses_degenerate_targets_stay_finite():
    logits = torch.randn(1, 3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    all_free = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    loss = geo_scal_loss(logits, all_free) + sem_scal_loss(logits, all_free)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    logits = logits.detach()
    probas_free = torch.softmax(logits, dim=1)[:, 0]
    assert float(geo_scal_loss(logits, all_free)) == pytest.approx(bce_one(float(probas_free.mean()) /
                                                                           (1 + 1e-5 / 8)), rel=1e-6)
    ignored = torch.full((1, 2, 2, 2), 255)
    assert float(geo_scal_loss(logits, ignored)) == 0.0 == float(sem_scal_loss(logits, ignored))


def reference_downsample(gt, ratio, num_classes=17):
    batch, nx, ny, nz = gt.shape
    rx, ry, rz = ratio
    out = torch.zeros(batch, nx // rx, ny // ry, nz // rz, dtype=torch.long)
    for b in range(batch):
        for i in range(nx // rx):
            for j in range(ny // ry):
                for k in range(nz // rz):
                    children = gt[b, i * rx:(i + 1) * rx, j * ry:(j + 1) * ry, k * rz:(k + 1) * rz].reshape(-1)
                    children = [int(v) for v in children if int(v) != 0]
                    classes = Counter(v for v in children if v != 255)
                    if classes:
                        top = max(classes.values())
                        out[b, i, j, k] = min(c for c, n in classes.items() if n == top)
                    elif children:
                        out[b, i, j, k] = 255
    return out


@pytest.mark.parametrize('ratio', [(2, 2, 2), (4, 2, 1)])
def test_downsampling_matches_a_loop_over_children(ratio):
    generator = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 17, (2, 8, 8, 4), generator=generator)
    sparse = torch.rand(gt.shape, generator=generator)
    gt[sparse < 0.55] = 0                                          # mostly free
    gt[(sparse > 0.55) & (sparse < 0.7)] = 255                     # noise
    gt[0, :2, :2, :2] = 255                                        # a cell of noise only
    gt[1, 4:, 4:] = 0                                              # free cells
    gt[1, :2, :2, :2] = torch.tensor([[[0, 3], [255, 5]], [[255, 255], [0, 0]]])  # tie 3 vs 5 beats noise
    expected = reference_downsample(gt, ratio)
    assert torch.equal(downsample_occupancy_labels(gt, ratio), expected)
    assert torch.equal(downsample_occupancy_labels(gt.float(), ratio), expected)   # as load_data_to_device gives
    if ratio == (2, 2, 2):
        assert expected[0, 0, 0, 0] == 255 and expected[1, 0, 0, 0] == 3
    assert (expected == 255).any() and (expected == 0).any()


def test_downsampling_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match='label 17'):
        downsample_occupancy_labels(torch.full((1, 2, 2, 2), 17), (2, 2, 2))
    with pytest.raises(ValueError, match='not divisible'):
        downsample_occupancy_labels(torch.zeros(1, 6, 4, 4), (4, 4, 4))


def test_openoccupancy_class_weights_are_the_spec_values():
    weights = openoccupancy_class_weights()
    assert [round(float(w), 4) for w in weights] == SPEC_WEIGHTS
    logits = torch.randn(4, 17, dtype=torch.float64)
    labels = torch.tensor([0, 3, 16, 255])
    assert float(cross_entropy_ignore(logits, labels, 255, weights)) == pytest.approx(
        float(F.cross_entropy(logits, labels, weight=weights.double(), ignore_index=255)))
