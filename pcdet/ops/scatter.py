"""Segment reductions along dim 0 on native PyTorch (`index_add_`, `scatter_reduce_`), replacing torch_scatter.

torch-scatter has no wheel for current torch, and the dynamic VFEs only need these reductions along dim 0.
`scatter_amax` is `scatter_max` without the argmax (the same maxima and gradient, computed by the same code): use it
when only the values are needed, since the argmax costs two more full-size passes (the VFE's max pooling).
Semantics follow torch_scatter: empty segments give 0 (sum, mean, max) and argmax `src.shape[0]` (one past the
end). Differences:
* `scatter_max` gradient: `scatter_reduce_(..., 'amax')` splits the gradient evenly among tied maxima, whereas
  torch_scatter gives all of it to the argmax element. Ties occur almost only at ReLU zeros, where the upstream
  gradient is already 0.
* Tied argmax is the lowest index here (deterministic); torch_scatter's CUDA kernel picks an arbitrary one.
* Float sums accumulate in a different order than torch_scatter's atomics, so results may differ in the last ulp.
"""
import torch

from . import fast_paths


def _prepare(src, index, dim_size):
    """Validate shapes; return (index broadcast to src's shape, dim_size)."""
    if index.dim() != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(f'index must have shape (N,) = ({src.shape[0]},) matching src (N, ...), '
                         f'got {tuple(index.shape)}')
    index = index.long()
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    expanded = index.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)
    return expanded, dim_size


def scatter_sum(src, index, dim_size=None):
    """Per-segment sum.

    Args:
        src: (N, ...) tensor. index: (N,) segment id of each row. dim_size: number of segments
            (default `index.max() + 1`).
    Returns:
        (dim_size, ...) sums; 0 for empty segments.
    """
    _, dim_size = _prepare(src, index, dim_size)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add(0, index.long(), src)


def segment_counts(index, dim_size):
    """(dim_size,) number of rows per segment, long."""
    return torch.bincount(index.long(), minlength=dim_size)[:dim_size] if index.numel() else \
        torch.zeros(dim_size, dtype=torch.long, device=index.device)


def scatter_mean(src, index, dim_size=None):
    """Per-segment mean, same arguments as `scatter_sum`; 0 for empty segments (integer src: floor division)."""
    _, dim_size = _prepare(src, index, dim_size)
    total = scatter_sum(src, index, dim_size)
    counts = segment_counts(index, dim_size).clamp(min=1).view((-1,) + (1,) * (src.dim() - 1))
    if src.is_floating_point():
        return total / counts.to(src.dtype)
    return torch.div(total, counts.to(total.dtype), rounding_mode='floor')


def _amax(src, expanded, dim_size):
    out_shape = (dim_size,) + tuple(src.shape[1:])
    # include_self=False: segments with no rows keep the initial 0, as torch_scatter reports them.
    return src.new_zeros(out_shape).scatter_reduce(0, expanded, src, 'amax', include_self=False)


def scatter_amax(src, index, dim_size=None):
    """Per-segment maximum only: `scatter_max(src, index, dim_size)[0]` without computing the argmax.

    Args:
        src: (N, ...) tensor. index: (N,) segment id of each row. dim_size: number of segments.
    Returns:
        (dim_size, ...) maxima, 0 for empty segments; gradient as `scatter_max` (split evenly among tied maxima).
    """
    expanded, dim_size = _prepare(src, index, dim_size)
    return _amax(src, expanded, dim_size)


def scatter_max(src, index, dim_size=None):
    """Per-segment maximum and its row.

    Args:
        src: (N, ...) tensor. index: (N,) segment id of each row. dim_size: number of segments.
    Returns:
        (max, argmax): (dim_size, ...) maxima (0 for empty segments) and long row indices into src of the lowest
        row attaining each maximum (`N` for empty segments).
    """
    expanded, dim_size = _prepare(src, index, dim_size)
    fast = fast_paths.call_fast_op('scatter_max', src, index, dim_size)
    if fast is not NotImplemented:
        return fast
    out_shape = (dim_size,) + tuple(src.shape[1:])
    maxima = _amax(src, expanded, dim_size)
    num_rows = src.shape[0]
    rows = torch.arange(num_rows, device=src.device).view(expanded.shape[:1] + (1,) * (src.dim() - 1))
    is_max = src.detach() == maxima.detach().gather(0, expanded)
    candidate = torch.where(is_max, rows.expand_as(src), torch.full_like(expanded, num_rows))
    argmax = torch.full(out_shape, num_rows, dtype=torch.long, device=src.device)
    argmax = argmax.scatter_reduce(0, expanded, candidate, 'amin', include_self=True)
    return maxima, argmax
