"""OpenOccupancy's metric (spec §B.5): a 17x17 confusion matrix over the voxels whose GT is not noise, and the
SC / SSC IoUs computed from it.

    occupancy_confusion(gt, pred) -> (17, 17) int64, rows = GT class, columns = predicted class
    cm_to_ious(cm) -> (C,) float64 IoU per class (0/0 -> NaN)
    occupancy_metrics(cm) -> dict (SC_IoU, SSC_mIoU, SSC_mIoU_present, iou (17,), absent)

Inputs of `occupancy_confusion`: `gt` and `pred` of the same 3-D shape (512, 512, 40 in OpenOccupancy), numpy
arrays or torch tensors of any integer or float dtype holding integers: GT 0 free, 1..16 classes, 255 noise
(ignored); prediction 0 free, 1..16. Any other value raises ValueError naming the value. Counting is done in one
pass over both volumes: a numba kernel on CPU (8 voxels at a time skip runs of free/free voxels), `torch.bincount`
when either input is a CUDA tensor, a numpy bincount when numba is missing. All three give the same table.

Definitions (OpenOccupancy `utils/formating.py::cm_to_ious`, `detectors/occnet.py::evaluation_semantic`):
    IoU_c = CM[c, c] / (sum_j CM[c, j] + sum_i CM[i, c] - CM[c, c])  (NaN when the union is 0)
    SC IoU = IoU of "occupied" after binarising GT and prediction (x != 0), over the same voxels
    SSC mIoU = plain mean of IoU_1..16 (free is in the matrix but not in the mean); NaN as soon as one class is
               absent from both GT and prediction over the whole set, as the official sum/16 gives NaN then
    SSC mIoU present = mean over the classes with a non-empty union (reported beside the official number)
"""
import numpy as np
import torch

NUM_CLASSES = 17          # 0 free + 16 classes
IGNORE_LABEL = 255        # GT noise
TABLE_SIZE = 256          # the kernel counts (gt, pred) pairs of byte values in a 256x256 table

try:  # numba is a dependency of pcdet; without it the numpy fallback runs (slower, same result)
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def _pair_table_reference(gt, pred):
    """(256, 256) int64 counts of (gt, pred) byte pairs: numpy bincount (fallback and test reference)."""
    keys = gt.astype(np.intp) * TABLE_SIZE + pred
    return np.bincount(keys, minlength=TABLE_SIZE * TABLE_SIZE).reshape(TABLE_SIZE, TABLE_SIZE)


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _pair_table_kernel(gt, pred, gt_words, pred_words):  # pragma: no cover - compiled
        table = np.zeros(TABLE_SIZE * TABLE_SIZE, np.int64)
        free = 0
        for w in range(gt_words.size):
            if (gt_words[w] | pred_words[w]) == 0:
                free += 8
            else:
                for i in range(8 * w, 8 * w + 8):
                    table[np.int64(gt[i]) * TABLE_SIZE + np.int64(pred[i])] += 1
        for i in range(8 * gt_words.size, gt.size):
            table[np.int64(gt[i]) * TABLE_SIZE + np.int64(pred[i])] += 1
        table[0] += free
        return table.reshape(TABLE_SIZE, TABLE_SIZE)


def _check_byte_range(values, name):
    """uint8 view of an integer-valued array (ValueError for values outside 0..255 or non-integers)."""
    if values.dtype == np.uint8:
        return values
    if values.size and (values.min() < 0 or values.max() > 255):
        bad = values[(values < 0) | (values > 255)].reshape(-1)[0]
        raise ValueError(f'{name}: value {bad} outside the label range (GT 0..16 or 255, prediction 0..16)')
    as_bytes = values.astype(np.uint8)
    if values.dtype.kind == 'f' and not np.array_equal(as_bytes, values):
        raise ValueError(f'{name}: non-integer labels (dtype {values.dtype})')
    return as_bytes


def _pair_table_cpu(gt, pred):
    gt = np.ascontiguousarray(_check_byte_range(gt, 'gt_occupancy')).reshape(-1)
    pred = np.ascontiguousarray(_check_byte_range(pred, 'occ_pred')).reshape(-1)
    if numba is None:
        return _pair_table_reference(gt, pred)
    whole = gt.size // 8 * 8
    return _pair_table_kernel(gt, pred, gt[:whole].view(np.uint64), pred[:whole].view(np.uint64))


def _pair_table_torch(gt, pred):
    """Same table with torch ops on the device of the CUDA input."""
    device = gt.device if torch.is_tensor(gt) and gt.is_cuda else pred.device
    gt, pred = (torch.as_tensor(x, device=device).reshape(-1) for x in (gt, pred))
    for values, name in ((gt, 'gt_occupancy'), (pred, 'occ_pred')):
        if values.dtype != torch.uint8 and values.numel():
            low, high = values.min().item(), values.max().item()
            if low < 0 or high > 255:
                raise ValueError(f'{name}: value {low if low < 0 else high} outside the label range '
                                 '(GT 0..16 or 255, prediction 0..16)')
            if values.is_floating_point() and not torch.equal(values, values.round()):
                raise ValueError(f'{name}: non-integer labels (dtype {values.dtype})')
    keys = gt.long() * TABLE_SIZE + pred.long()
    return torch.bincount(keys, minlength=TABLE_SIZE * TABLE_SIZE).reshape(TABLE_SIZE, TABLE_SIZE).cpu().numpy()


def _as_numpy(values):
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def occupancy_confusion(gt, pred):
    """(17, 17) int64 confusion matrix (rows GT, columns prediction) over the voxels with gt != 255."""
    if tuple(gt.shape) != tuple(pred.shape) or len(gt.shape) != 3:
        raise ValueError(f'occupancy: GT shape {tuple(gt.shape)} and prediction shape {tuple(pred.shape)} must be '
                         'the same 3-D grid (512, 512, 40 for OpenOccupancy)')
    if any(torch.is_tensor(x) and x.is_cuda for x in (gt, pred)):
        table = _pair_table_torch(gt, pred)
    else:
        table = _pair_table_cpu(_as_numpy(gt), _as_numpy(pred))
    valid_gt = np.r_[np.arange(NUM_CLASSES), IGNORE_LABEL]
    bad_gt = np.setdiff1d(np.flatnonzero(table.sum(axis=1)), valid_gt)
    if bad_gt.size:
        raise ValueError(f'gt_occupancy: value {bad_gt[0]} is not a label (expected 0 free, 1..16, 255 noise)')
    bad_pred = np.flatnonzero(table[:, NUM_CLASSES:].sum(axis=0))
    if bad_pred.size:
        raise ValueError(f'occ_pred: value {bad_pred[0] + NUM_CLASSES} is not a label (expected 0 free or 1..16)')
    return np.ascontiguousarray(table[:NUM_CLASSES, :NUM_CLASSES])


def cm_to_ious(cm):
    """IoU per class of a square confusion matrix (OpenOccupancy's `cm_to_ious`; 0/0 -> NaN)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        return tp / union


def occupancy_metrics(cm):
    """SC / SSC metrics of a summed 17x17 confusion matrix (module docs).

    Returns {'SC_IoU', 'SSC_mIoU' (official: NaN if a class is absent), 'SSC_mIoU_present', 'iou' (17,) with
    iou[0] = free, 'absent' (class ids 1..16 with an empty union), 'num_voxels' (valid voxels counted)}."""
    cm = np.asarray(cm, dtype=np.int64)
    binary = np.array([[cm[0, 0], cm[0, 1:].sum()], [cm[1:, 0].sum(), cm[1:, 1:].sum()]])
    iou = cm_to_ious(cm)
    classes = iou[1:]
    absent = [c + 1 for c in range(len(classes)) if np.isnan(classes[c])]
    present = classes[~np.isnan(classes)]
    return {
        'SC_IoU': float(cm_to_ious(binary)[1]),
        'SSC_mIoU': float(classes.sum() / len(classes)),  # official: plain sum / 16, NaN propagates
        'SSC_mIoU_present': float(present.mean()) if present.size else float('nan'),
        'iou': iou,
        'absent': absent,
        'num_voxels': int(cm.sum()),
    }
