"""Losses and target helpers of the segmentation and occupancy heads (pure tensor functions, any device).

* `cross_entropy_ignore(logits, labels, ignore_index, weight=None)`: `nn.CrossEntropyLoss(weight, ignore_index,
  reduction='mean')` (the weighted mean over the non-ignored elements), but 0 (connected to the graph) instead of
  NaN when every element is ignored.
* `lovasz_softmax(probas, labels, ignore_index=None, classes='present')`: Lovász-softmax (Berman et al. 2018; the
  Cylinder3D / OpenOccupancy `lovasz_softmax_flat`, spec §A.5) on probabilities (P, C) or (B, C, ...): ignored
  elements dropped, the whole batch pooled (`per_image=False`); per class c, errors `|[y = c] - p_c|` sorted
  descending, dotted with the gradient of the Lovász extension of the Jaccard loss (treated as a constant);
  mean over the classes present in the labels (`classes='present'`), over all classes (`'all'`), or over a list.
  All classes are handled in one sort (a class-major (K, P) sort along P) instead of a Python loop.
* `geo_scal_loss(logits, target, ignore_index=255, empty_index=0)` and `sem_scal_loss(logits, target,
  ignore_index=255)`: MonoScene's scene-class affinity losses as OpenOccupancy uses them (spec §B.7), on logits
  (B, C, ...) and labels (B, ...); both are `F.binary_cross_entropy(x, 1)` of precision / recall / specificity
  ratios (so `-log x` with PyTorch's clamp at -100). Deviation, documented in docs/SEGMENTATION_OCCUPANCY.md: a
  ratio whose target set is empty is left out (the reference would add the clamped value 100 with a ~1e12 gradient):
  geo_scal drops precision and recall when no valid voxel is occupied and specificity when none is free;
  sem_scal only visits classes present in the target (as the reference) and drops specificity when the class
  covers every valid voxel. With no valid element both return 0.
* `occupancy_losses(logits, target, class_weights, ignore_index=255, empty_index=0)`: the four OpenOccupancy terms
  {'ce', 'sem_scal', 'geo_scal', 'lovasz'} sharing one softmax (what `OccHead` calls).
* `downsample_occupancy_labels(gt, ratio, num_classes=17, ignore_index=255, empty_index=0)`: the coarse GT of
  OpenOccupancy (spec §B.7) with an explicit tie rule: per coarse cell of `ratio` (rx, ry, rz) children, 0 if all
  children are free; else the most frequent label among the children labelled 1..num_classes-1 (ties -> the
  smallest label); `ignore_index` only when every occupied child is noise. (OpenOccupancy's `torch.mode` rule
  counts noise as a label and leaves ties to the implementation.)
* `OPENOCCUPANCY_CLASS_FREQUENCIES` and `openoccupancy_class_weights()`: the CE class weights `1 / ln(f + 0.001)`.
"""
import math

import torch
import torch.nn.functional as F

# nuScenes-Occupancy voxel counts per class, index 0 = empty then the 16 lidarseg classes in official order
# (barrier .. vegetation). Source: OpenOccupancy `projects/occ_plugin/utils/nusc_param.py::nusc_class_frequencies`
# (used by `OccHead` with `balance_cls_weight=True`, its default). `1 / ln(f + 0.001)` rounded to 4 decimals gives
# exactly the weights listed in the implementation spec §B.7 (tests/models/test_seg_losses.py checks this).
OPENOCCUPANCY_CLASS_FREQUENCIES = (
    2242961742295, 25985376, 1561108, 28862014, 196106643, 15920504, 2158753, 26539491, 4004729, 34838681,
    75173306, 2255027978, 50959399, 646022466, 869055679, 1446141335, 1724391378)


def openoccupancy_class_weights():
    """(17,) float32 tensor `1 / ln(f_c + 0.001)` over `OPENOCCUPANCY_CLASS_FREQUENCIES` (empty first)."""
    return torch.tensor([1.0 / math.log(f + 0.001) for f in OPENOCCUPANCY_CLASS_FREQUENCIES], dtype=torch.float32)


def _zero(tensor):
    """A 0-d zero that keeps `tensor` in the autograd graph (so an empty loss term still backpropagates)."""
    return tensor.sum() * 0.0


def cross_entropy_ignore(logits, labels, ignore_index, weight=None):
    """Cross-entropy of logits (N, C) or (B, C, ...) against integer labels (N,) or (B, ...), mean over the
    non-ignored elements (weighted mean with `weight` (C,)); 0 when every element is ignored."""
    labels = labels.long()
    if not bool((labels != ignore_index).any()):
        return _zero(logits)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index, reduction='mean')


def _flatten_probas(probas, labels, ignore_index):
    """(P, C) probabilities and (P,) labels without the ignored elements."""
    if probas.dim() > 2:
        num_classes = probas.shape[1]
        probas = probas.movedim(1, -1).reshape(-1, num_classes)
    labels = labels.reshape(-1).long()
    if probas.shape[0] != labels.shape[0]:
        raise ValueError(f'lovasz_softmax: {probas.shape[0]} probability rows but {labels.shape[0]} labels')
    if ignore_index is not None:
        keep = labels != ignore_index
        probas, labels = probas[keep], labels[keep]
    return probas, labels


def lovasz_grad(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss for ground truth sorted by decreasing error, along the
    last dim: (..., P) 0/1 -> (..., P). `g_1 = J_1`, `g_k = J_k - J_{k-1}` with `J_k = 1 - I_k / U_k`."""
    gts = gt_sorted.sum(dim=-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=-1)
    union = gts + (1.0 - gt_sorted).cumsum(dim=-1)
    jaccard = 1.0 - intersection / union
    if gt_sorted.shape[-1] > 1:
        jaccard = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
    return jaccard


def lovasz_softmax(probas, labels, ignore_index=None, classes='present'):
    """Lovász-softmax loss (0-d) of probabilities `probas` (P, C) or (B, C, ...) and labels (P,) or (B, ...)."""
    probas, labels = _flatten_probas(probas, labels, ignore_index)
    if probas.numel() == 0:
        return _zero(probas)
    num_classes = probas.shape[1]
    if classes in ('all', 'present'):
        class_ids = torch.arange(num_classes, device=probas.device)
    else:
        class_ids = torch.as_tensor(list(classes), dtype=torch.long, device=probas.device)
    if classes == 'present':
        counts = torch.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
        class_ids = class_ids[counts[class_ids] > 0]
        if class_ids.numel() == 0:
            return _zero(probas)
    # class-major (K, P) so that every sort runs along contiguous memory
    fg = (labels[None, :] == class_ids[:, None]).to(probas.dtype)
    errors = (fg - probas.t()[class_ids]).abs()
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    fg_sorted = fg.gather(1, perm)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(dim=1)
    return per_class.mean()


def _valid_softmax(logits, target, ignore_index):
    """Softmax probabilities (M, C) and labels (M,) of the elements whose label is not `ignore_index`."""
    num_classes = logits.shape[1]
    probas = F.softmax(logits, dim=1).movedim(1, -1).reshape(-1, num_classes)
    target = target.reshape(-1).long()
    keep = target != ignore_index
    return probas[keep], target[keep]


def _bce_one(x):
    """`F.binary_cross_entropy(x, 1)` elementwise (-log x, clamped at 100 as PyTorch)."""
    return F.binary_cross_entropy(x, torch.ones_like(x), reduction='none')


def geo_scal_from_probas(probas, target, empty_index=0, eps=1e-5):
    """`geo_scal_loss` on the valid softmax probabilities (M, C) and labels (M,)."""
    if target.numel() == 0:
        return _zero(probas)
    empty = probas[:, empty_index]
    nonempty = 1.0 - empty
    occupied = target != empty_index
    num_occupied = occupied.sum().to(probas.dtype)
    num_free = target.numel() - num_occupied
    terms = []
    if bool(num_occupied > 0):
        intersection = nonempty[occupied].sum()
        terms.append(intersection / (nonempty.sum() + eps))
        terms.append(intersection / (num_occupied + eps))
    if bool(num_free > 0):
        terms.append(empty[~occupied].sum() / (num_free + eps))
    return _bce_one(torch.stack(terms).clamp(0, 1)).sum()


def geo_scal_loss(logits, target, ignore_index=255, empty_index=0, eps=1e-5):
    """Geometric scene-class affinity loss: BCE(precision, 1) + BCE(recall, 1) + BCE(specificity, 1) of the
    occupied (non-empty) state, with q = 1 - p_empty over the non-ignored voxels."""
    probas, target = _valid_softmax(logits, target, ignore_index)
    return geo_scal_from_probas(probas, target, empty_index, eps) if target.numel() else _zero(logits)


def sem_scal_from_probas(probas, target):
    """`sem_scal_loss` on the valid softmax probabilities (M, C) and labels (M,) (per-class sums, no one-hot)."""
    if target.numel() == 0:
        return _zero(probas)
    num_valid, num_classes = probas.shape
    target_sum = torch.bincount(target, minlength=num_classes).to(probas.dtype)
    nominator = probas.new_zeros(num_classes).index_add(0, target, probas.gather(1, target[:, None]).squeeze(1))
    prob_sum = probas.sum(dim=0)
    not_target_sum = num_valid - target_sum
    # Σ (1 - p)(1 - t) = Σ (1 - p) - Σ_{t = 1} (1 - p)
    true_negative = (num_valid - prob_sum) - (target_sum - nominator)
    present = target_sum > 0
    precision_ok = present & (prob_sum > 0)
    specificity_ok = present & (not_target_sum > 0)
    ones, zeros = torch.ones_like(prob_sum), torch.zeros_like(prob_sum)
    precision = nominator / torch.where(precision_ok, prob_sum, ones)
    recall = nominator / torch.where(present, target_sum, ones)
    specificity = true_negative / torch.where(specificity_ok, not_target_sum, ones)
    loss = (torch.where(precision_ok, _bce_one(precision.clamp(0, 1)), zeros)
            + torch.where(present, _bce_one(recall.clamp(0, 1)), zeros)
            + torch.where(specificity_ok, _bce_one(specificity.clamp(0, 1)), zeros))
    return loss.sum() / present.sum()


def sem_scal_loss(logits, target, ignore_index=255):
    """Semantic scene-class affinity loss: for every class i present in the (non-ignored) target,
    BCE(Σ p_i t_i / Σ p_i, 1) + BCE(Σ p_i t_i / Σ t_i, 1) + BCE(Σ (1-p_i)(1-t_i) / Σ (1-t_i), 1); mean over
    the present classes."""
    probas, target = _valid_softmax(logits, target, ignore_index)
    return sem_scal_from_probas(probas, target) if target.numel() else _zero(logits)


def occupancy_losses(logits, target, class_weights=None, ignore_index=255, empty_index=0):
    """{'ce', 'sem_scal', 'geo_scal', 'lovasz'} of logits (B, C, ...) and labels (B, ...), sharing one softmax
    (the same values as the four functions called one by one)."""
    probas, valid_target = _valid_softmax(logits, target, ignore_index)
    return {
        'ce': cross_entropy_ignore(logits, target, ignore_index, class_weights),
        'sem_scal': sem_scal_from_probas(probas, valid_target) if valid_target.numel() else _zero(logits),
        'geo_scal': geo_scal_from_probas(probas, valid_target, empty_index) if valid_target.numel() else
        _zero(logits),
        'lovasz': lovasz_softmax(probas, valid_target),
    }


def downsample_occupancy_labels(gt, ratio, num_classes=17, ignore_index=255, empty_index=0):
    """Coarse occupancy labels of `gt` (B, X, Y, Z) integer (or float holding integers) at `ratio` (rx, ry, rz).

    Returns (B, X/rx, Y/ry, Z/rz) int64: `empty_index` when every child is empty; else the most frequent class
    among the children labelled 1..num_classes-1 (ties -> the smallest class); `ignore_index` when every non-empty
    child is `ignore_index` (noise). A label outside {empty, 1..num_classes-1, ignore} is a ValueError. One
    bincount of (coarse cell, label) over the non-empty voxels: the cost follows the number of occupied voxels.
    """
    if gt.dim() != 4:
        raise ValueError(f'gt_occupancy must be (B, X, Y, Z), got shape {tuple(gt.shape)}')
    rx, ry, rz = (int(r) for r in ratio)
    batch, nx, ny, nz = gt.shape
    if nx % rx or ny % ry or nz % rz:
        raise ValueError(f'gt_occupancy grid {(nx, ny, nz)} is not divisible by the down-sampling ratio '
                         f'{(rx, ry, rz)}')
    cx, cy, cz = nx // rx, ny // ry, nz // rz
    if empty_index != 0:
        raise ValueError(f'downsample_occupancy_labels: empty_index must be 0 (got {empty_index})')
    # the occupied voxels (flat index into gt), their labels and their coarse cells
    flat = torch.nonzero(gt.reshape(-1)).squeeze(1)
    labels = gt.reshape(-1)[flat]
    bad = ((labels > num_classes - 1) & (labels != ignore_index)) | (labels < 0)
    if bool(bad.any()):
        raise ValueError(f'gt_occupancy holds label {float(labels[bad][0]):g}; expected {empty_index} (free), '
                         f'1..{num_classes - 1} or {ignore_index} (noise)')
    z = flat % nz
    y = (flat // nz) % ny
    xb = flat // (nz * ny)                                  # b * nx + x
    cell = ((xb // rx) * cy + y // ry) * cz + z // rz       # (b * cx + x // rx) since nx = cx * rx
    # slots: 1..C-1 classes, C noise
    slot = labels.to(torch.int64)
    slot.masked_fill_(labels == ignore_index, num_classes)
    num_cells = batch * cx * cy * cz
    counts = torch.bincount(cell * (num_classes + 1) + slot, minlength=num_cells * (num_classes + 1))
    counts = counts.view(num_cells, num_classes + 1)
    class_counts = counts[:, 1:num_classes]
    out = torch.full((num_cells,), empty_index, dtype=torch.long, device=gt.device)
    out.masked_fill_(counts[:, num_classes] > 0, ignore_index)
    has_class = class_counts.sum(dim=1) > 0
    out[has_class] = class_counts[has_class].argmax(dim=1) + 1     # first maximum: the smallest class on ties
    return out.view(batch, cx, cy, cz)
