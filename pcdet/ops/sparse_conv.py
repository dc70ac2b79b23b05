"""Pure-PyTorch sparse 3-D convolution on integer voxel coordinates, with MinkowskiEngine 0.5 (ME) semantics.

This is the REFERENCE backend (`BACKEND: torch`) for networks written for ME, e.g. the Seal/SLidR teacher
`Res16UNet34C` (`pcdet.datasets.teachers.seal_minkunet`). spconv is the optional faster path to add later behind
the same weight layout and kernel-offset order documented here (it is not implemented; asking for it raises
`NotImplementedError` in the callers). Every op runs on the device of its inputs (CPU or CUDA).

Sparse tensors (`SparseTensor`)
    `coords` (M, 4) int64 `[b, x, y, z]`, unique rows, spatial parts multiples of the (isotropic, int) tensor
    stride `s`, exactly as ME's `C`; `features` (M, C) float. All tensors derived from one input share a
    `SparseContext` that holds the coordinate set of each tensor stride and caches kernel maps (the role of ME's
    coordinate manager; it lives as long as the tensors of one forward pass, nothing is global).

Ops (ME equivalents, all with `bias=False` unless a bias is given)
    * `submanifold_conv`: `MinkowskiConvolution(k odd, stride 1)`. Output coords = input coords (same rows),
      `out[p] = sum_k W[k]^T x[p + o_k * s]` over the neighbours that exist.
    * `strided_conv`: `MinkowskiConvolution(k=2, stride=2)`. Output coords = unique(floor(c / 2s) * 2s) (at stride
      2s), `out[q] = sum_k W[k]^T x[q + o_k * s]`, o_k in {0, 1}^3.
    * `transposed_conv`: `MinkowskiConvolutionTranspose(k=2, stride=2)` without `expand_coordinates`. Output
      coords = the coordinate set already registered at stride s/2 (the encoder's; the skip tensor's), in its row
      order; each fine voxel p receives `W[k]^T x[parent(p)]`, parent(p) = floor(p / s) * s, k = the kernel
      element of the offset (p - parent(p)) / (s/2) in {0, 1}^3 (ME builds this map as the strided conv's map from
      fine to coarse and swaps it). A fine voxel whose parent is absent receives 0.
    * `pointwise_conv`: `MinkowskiConvolution(k=1)` = a matmul (+ bias).
    Batch norm and ReLU act on `features` only: plain `nn.BatchNorm1d` / `torch.relu` (see `SparseTensor.replace`).

Internal weight layout (ONE layout for every op): `weight` (K, C_in, C_out), K = k^3, `out += x @ weight[i]` for
kernel offset `kernel_offsets(k)[i]`; `bias` (C_out,). Internal kernel-offset order: lexicographic over
(dx, dy, dz) with z FASTEST, x slowest -- the row-major flattening of a torch `conv3d` weight's (kx, ky, kz) axes
(and spconv's), i.e. `itertools.product(axis, axis, axis)`. Axis offsets: odd k: -(k-1)/2 .. (k-1)/2; even k:
0 .. k-1 (ME's even-kernel region starts at the voxel); each offset is multiplied by the tensor stride.

ME kernel layout: `kernel` (K, C_in, C_out) (or (C_in, C_out) for kernel volume 1) with ME's offset order,
which, as we know ME 0.5's `kernel_region.hpp` (`coordinate_at`: `kernel_index % kernel_size[0]` for the FIRST
spatial axis, then divide and continue), iterates x FASTEST, z slowest, offsets from lower to upper bound, times
the tensor stride. ME cannot be installed here, so this order is an assumption from reading the source, not
checked against a running ME: it lives in ONE function, `me_kernel_offsets`, which is all that changes if it is
wrong (`me_to_internal_permutation` / `me_kernel_to_internal` follow from it).

Implementation: coordinates are linearised to int64 keys over their bounding box (batch included), sorted once per
tensor stride; neighbour lookup is `torch.searchsorted` (no Python loop over voxels; the only loop is over the K
kernel offsets). Each offset does gather (x[in_rows]) - GEMM (@ W[k]) - scatter (index_add into out_rows).
"""
import itertools

import torch

_MAX_KEY = 2 ** 62  # linear keys must fit int64 with room to spare


# ----------------------------------------------------------------------------------------------- kernel offsets
def axis_offsets(kernel_size):
    """Offsets along one axis in units of the tensor stride: odd k -> -(k-1)/2..(k-1)/2, even k -> 0..k-1."""
    kernel_size = int(kernel_size)
    if kernel_size < 1:
        raise ValueError(f'kernel_size must be >= 1, got {kernel_size}')
    if kernel_size % 2:
        half = (kernel_size - 1) // 2
        return list(range(-half, half + 1))
    return list(range(kernel_size))


def kernel_offsets(kernel_size, dimension=3):
    """Internal kernel-offset order: (K, D) int64, lexicographic with the LAST axis (z) fastest.

    Row i is the offset (in units of the tensor stride) that `weight[i]` applies to; it equals the row-major
    flattening of a dense conv weight's spatial axes (kx, ky, kz).
    """
    rows = list(itertools.product(axis_offsets(kernel_size), repeat=dimension))
    return torch.tensor(rows, dtype=torch.long).view(-1, dimension)


def me_kernel_offsets(kernel_size, dimension=3):
    """MinkowskiEngine 0.5 kernel-offset order: (K, D) int64 with the FIRST axis (x) fastest.

    ME's HYPER_CUBE kernel region (`kernel_region.hpp`, `coordinate_at`) decomposes the kernel index as
    `i % k` for axis 0, then `(i // k) % k` for axis 1, ...; each axis runs from its lower to its upper bound
    (`axis_offsets`). This is the single place to change if ME's order turns out to differ.
    """
    rows = [tuple(reversed(row)) for row in itertools.product(axis_offsets(kernel_size), repeat=dimension)]
    return torch.tensor(rows, dtype=torch.long).view(-1, dimension)


def me_to_internal_permutation(kernel_size, dimension=3):
    """(K,) int64 `perm` with `internal_weight = me_kernel[perm]`: ME row of each internal kernel offset."""
    me_rows = {tuple(row): j for j, row in enumerate(me_kernel_offsets(kernel_size, dimension).tolist())}
    return torch.tensor([me_rows[tuple(row)] for row in kernel_offsets(kernel_size, dimension).tolist()],
                        dtype=torch.long)


def me_kernel_to_internal(me_kernel, kernel_size, dimension=3):
    """Convert an ME `kernel` tensor to the internal layout.

    Args:
        me_kernel: (K, C_in, C_out) in ME offset order, or (C_in, C_out) when K == 1 (ME's matmul path).
        kernel_size: int k, K = k ** dimension.
    Returns:
        (K, C_in, C_out) tensor in the internal offset order (`kernel_offsets`).
    """
    volume = int(kernel_size) ** dimension
    if me_kernel.dim() == 2 and volume == 1:
        me_kernel = me_kernel.unsqueeze(0)
    if me_kernel.dim() != 3 or me_kernel.shape[0] != volume:
        raise ValueError(f'ME kernel of kernel size {kernel_size} must have shape ({volume}, C_in, C_out)'
                         f'{" or (C_in, C_out)" if volume == 1 else ""}, got {tuple(me_kernel.shape)}')
    return me_kernel[me_to_internal_permutation(kernel_size, dimension).to(me_kernel.device)]


def _kernel_size_of(weight):
    """Kernel size k of an internal (k^3, C_in, C_out) weight."""
    if weight.dim() != 3:
        raise ValueError(f'weight must have the internal layout (K, C_in, C_out), got {tuple(weight.shape)}')
    k = round(weight.shape[0] ** (1.0 / 3.0))
    if k ** 3 != weight.shape[0]:
        raise ValueError(f'weight kernel volume {weight.shape[0]} is not a cube k^3')
    return k


# ------------------------------------------------------------------------------------------- coordinate hashing
def _bounding_box(coords):
    """Per-column (lo, extent) of (M, 4) coords as python int lists; raises if the linear key could overflow."""
    if coords.shape[0] == 0:
        return [0] * coords.shape[1], [1] * coords.shape[1]
    lo = coords.min(0).values.tolist()
    hi = coords.max(0).values.tolist()
    extent = [high - low + 1 for low, high in zip(lo, hi)]
    volume = 1
    for e in extent:
        volume *= e
    if volume >= _MAX_KEY:
        raise ValueError(f'coordinate bounding box {extent} is too large for int64 linear keys')
    return lo, extent


def _linear_keys(coords, lo, extent):
    """(M,) int64 row-major key of (M, D) coords inside the box `lo + [0, extent)` (caller checks validity)."""
    key = torch.zeros(coords.shape[0], dtype=torch.long, device=coords.device)
    for col in range(coords.shape[1]):
        key = key * extent[col] + (coords[:, col] - lo[col])
    return key


def unique_coords(coords):
    """Unique rows of integer coords, sorted lexicographically by (b, x, y, z).

    Args:
        coords: (M, D) integer tensor.
    Returns:
        unique (U, D) int64 and inverse (M,) int64 with `unique[inverse] == coords`.
    """
    coords = coords.long()
    lo, extent = _bounding_box(coords)
    keys = _linear_keys(coords, lo, extent)
    _, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    unique = coords.new_empty((int(inverse.max()) + 1 if inverse.numel() else 0, coords.shape[1]))
    unique[inverse] = coords  # every duplicate writes the same row
    return unique, inverse


class CoordinateIndex:
    """Batched lookup of coordinate rows in one unique coordinate set.

    Args:
        coords: (M, D) integer coordinates, unique rows (duplicates raise ValueError).
    `lookup(query (Q, D)) -> (Q,) int64` row of each query in `coords`, -1 where absent.
    """

    def __init__(self, coords):
        coords = coords.long()
        self.lo, self.extent = _bounding_box(coords)
        self.hi = [low + size - 1 for low, size in zip(self.lo, self.extent)]
        self.sorted_keys, self.order = torch.sort(_linear_keys(coords, self.lo, self.extent))
        if self.sorted_keys.numel() > 1 and bool((self.sorted_keys[1:] == self.sorted_keys[:-1]).any()):
            raise ValueError('sparse coordinates contain duplicate rows; quantise and take unique voxels first')

    def lookup(self, query):
        query = query.long()
        device = query.device
        lo = torch.tensor(self.lo, dtype=torch.long, device=device)
        hi = torch.tensor(self.hi, dtype=torch.long, device=device)
        inside = ((query >= lo) & (query <= hi)).all(1)
        rows = torch.full((query.shape[0],), -1, dtype=torch.long, device=device)
        if self.sorted_keys.numel() == 0 or not bool(inside.any()):
            return rows
        # Outside the box the key is meaningless (it could alias an existing key), so clamp it and mask later.
        keys = _linear_keys(torch.maximum(torch.minimum(query, hi), lo), self.lo, self.extent)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        found = inside & (self.sorted_keys[pos] == keys)
        rows[found] = self.order[pos[found]]
        return rows


# ------------------------------------------------------------------------------------------------ sparse tensor
class SparseContext:
    """Coordinate sets per tensor stride plus cached kernel maps, shared by the tensors of one forward pass.

    `coords_at(s)` (M_s, 4) int64; `register(s, coords)`; `submanifold_map(s, k)` and `stride_map(s)` are
    computed once per (stride, kernel) and reused by every layer at that stride.
    """

    def __init__(self):
        self._coords = {}
        self._indices = {}
        self._maps = {}

    def register(self, stride, coords):
        """Record the coordinate set of tensor stride `stride` (error if a different set is already there)."""
        stride = int(stride)
        if stride in self._coords:
            if self._coords[stride] is not coords:
                raise ValueError(f'coordinates at tensor stride {stride} are already registered in this context')
            return
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f'coords must have shape (M, 4) = [b, x, y, z], got {tuple(coords.shape)}')
        if bool((torch.remainder(coords[:, 1:], stride) != 0).any()):
            raise ValueError(f'spatial coordinates must be multiples of the tensor stride {stride}')
        self._coords[stride] = coords

    def has(self, stride):
        return int(stride) in self._coords

    def coords_at(self, stride):
        stride = int(stride)
        if stride not in self._coords:
            raise KeyError(f'no coordinates at tensor stride {stride} in this sparse context '
                           f'(have strides {sorted(self._coords)})')
        return self._coords[stride]

    def index_at(self, stride):
        """CoordinateIndex of the set at `stride` (built once)."""
        stride = int(stride)
        if stride not in self._indices:
            self._indices[stride] = CoordinateIndex(self.coords_at(stride))
        return self._indices[stride]

    def submanifold_map(self, stride, kernel_size):
        """Kernel map of a stride-1 conv with odd `kernel_size` at tensor stride `stride`.

        Returns a list over internal kernel offsets of (in_rows, out_rows) int64 pairs (same coordinate set).
        """
        key = ('submanifold', int(stride), int(kernel_size))
        if key not in self._maps:
            coords = self.coords_at(stride)
            index = self.index_at(stride)
            offsets = kernel_offsets(kernel_size).to(coords.device) * int(stride)
            pairs = []
            for offset in offsets:
                query = coords.clone()
                query[:, 1:] += offset
                in_rows = index.lookup(query)
                out_rows = torch.nonzero(in_rows >= 0).view(-1)
                pairs.append((in_rows[out_rows], out_rows))
            self._maps[key] = pairs
        return self._maps[key]

    def stride_map(self, fine_stride):
        """Parent map between the sets at `fine_stride` and `2 * fine_stride` (k=2, s=2 conv and transpose).

        Creates the coarse set `unique(floor(c / 2s) * 2s)` if it is not registered yet.
        Returns (parent_rows (M_fine,) int64 row in the coarse set or -1, kernel_index (M_fine,) int64 internal
        index of the offset (c - parent) / s in {0, 1}^3).
        """
        key = ('stride', int(fine_stride))
        if key not in self._maps:
            fine_stride = int(fine_stride)
            coarse_stride = 2 * fine_stride
            fine = self.coords_at(fine_stride)
            parents = fine.clone()
            parents[:, 1:] = torch.div(fine[:, 1:], coarse_stride, rounding_mode='floor') * coarse_stride
            if self.has(coarse_stride):
                parent_rows = self.index_at(coarse_stride).lookup(parents)
            else:
                coarse, parent_rows = unique_coords(parents)
                self.register(coarse_stride, coarse)
            local = torch.div(fine[:, 1:] - parents[:, 1:], fine_stride, rounding_mode='floor')
            kernel_index = (local[:, 0] * 2 + local[:, 1]) * 2 + local[:, 2]  # z fastest, as kernel_offsets(2)
            self._maps[key] = (parent_rows, kernel_index)
        return self._maps[key]


class SparseTensor:
    """Features on a sparse voxel set (ME's `SparseTensor`).

    Attributes:
        features: (M, C) float tensor, row i belongs to `coords[i]`.
        coords: (M, 4) int64 `[b, x, y, z]` (the context's set at `tensor_stride`).
        tensor_stride: int.
        context: the `SparseContext` shared with every tensor derived from the same input.
    """

    def __init__(self, features, coords, tensor_stride=1, context=None):
        if features.dim() != 2 or features.shape[0] != coords.shape[0]:
            raise ValueError(f'features must be (M, C) with M = coords rows {coords.shape[0]}, '
                             f'got {tuple(features.shape)}')
        self.context = context if context is not None else SparseContext()
        self.tensor_stride = int(tensor_stride)
        coords = coords.long()
        self.context.register(self.tensor_stride, coords)
        self.coords = self.context.coords_at(self.tensor_stride)
        self.features = features

    @classmethod
    def from_coords(cls, features, coords, tensor_stride=1):
        """New sparse tensor with a fresh context. coords (M, 4) int [b, x, y, z] unique, features (M, C)."""
        return cls(features, coords, tensor_stride)

    def replace(self, features):
        """Same coords / stride / context with new (M, C') features (for BN, ReLU, residual adds)."""
        return SparseTensor(features, self.coords, self.tensor_stride, self.context)

    def at_stride(self, features, tensor_stride):
        """A tensor at another stride of the same context (its coords must already be registered)."""
        return SparseTensor(features, self.context.coords_at(tensor_stride), tensor_stride, self.context)

    def __repr__(self):
        return (f'SparseTensor(M={self.features.shape[0]}, C={self.features.shape[1]}, '
                f'tensor_stride={self.tensor_stride})')


def cat_features(*tensors):
    """ME's `cat`: concatenate the features of tensors on the same coordinate set (same context and stride)."""
    first = tensors[0]
    for other in tensors[1:]:
        if other.context is not first.context or other.tensor_stride != first.tensor_stride:
            raise ValueError('cat_features needs tensors on the same coordinate set (same context and stride)')
    return first.replace(torch.cat([t.features for t in tensors], dim=1))


# ------------------------------------------------------------------------------------------------------- the ops
def _add_bias(features, bias):
    return features if bias is None else features + bias.view(1, -1)


def submanifold_conv(x, weight, bias=None):
    """Stride-1 conv with odd kernel k, output on the input coords (ME `MinkowskiConvolution(k, stride=1)`).

    Args:
        x: SparseTensor (M, C_in) at stride s. weight: (k^3, C_in, C_out) internal layout. bias: (C_out,) or None.
    Returns:
        SparseTensor (M, C_out), same coords and rows as x.
    """
    k = _kernel_size_of(weight)
    if k % 2 == 0:
        raise ValueError(f'submanifold_conv needs an odd kernel size, got {k}')
    if k == 1:
        return pointwise_conv(x, weight, bias)
    pairs = x.context.submanifold_map(x.tensor_stride, k)
    center = (weight.shape[0] - 1) // 2  # offset (0, 0, 0) maps every row to itself
    out = x.features @ weight[center]
    for i, (in_rows, out_rows) in enumerate(pairs):
        if i == center or in_rows.numel() == 0:
            continue
        out = out.index_add(0, out_rows, x.features[in_rows] @ weight[i])
    return x.replace(_add_bias(out, bias))


def pointwise_conv(x, weight, bias=None):
    """Kernel-1 conv = matmul (ME's matmul path). weight (1, C_in, C_out) or (C_in, C_out); bias (C_out,)."""
    if weight.dim() not in (2, 3) or (weight.dim() == 3 and weight.shape[0] != 1):
        raise ValueError(f'pointwise_conv needs kernel volume 1, got weight {tuple(weight.shape)}')
    matrix = weight.reshape(weight.shape[-2], weight.shape[-1])
    return x.replace(_add_bias(x.features @ matrix, bias))


def strided_conv(x, weight, bias=None):
    """k=2, stride-2 conv (ME `MinkowskiConvolution(k=2, stride=2)`).

    Args:
        x: SparseTensor (M, C_in) at stride s. weight: (8, C_in, C_out) internal layout. bias: (C_out,) or None.
    Returns:
        SparseTensor (M', C_out) at stride 2s on unique(floor(c / 2s) * 2s) (registered in x's context).
    """
    if _kernel_size_of(weight) != 2:
        raise ValueError(f'strided_conv supports kernel 2 / stride 2 only, got weight {tuple(weight.shape)}')
    parent_rows, kernel_index = x.context.stride_map(x.tensor_stride)
    coarse_stride = 2 * x.tensor_stride
    num_out = x.context.coords_at(coarse_stride).shape[0]
    out = x.features.new_zeros((num_out, weight.shape[2]))
    for i in range(weight.shape[0]):
        in_rows = torch.nonzero((kernel_index == i) & (parent_rows >= 0)).view(-1)
        if in_rows.numel():
            out = out.index_add(0, parent_rows[in_rows], x.features[in_rows] @ weight[i])
    return x.at_stride(_add_bias(out, bias), coarse_stride)


def transposed_conv(x, weight, bias=None):
    """k=2, stride-2 transposed conv onto the existing finer set (ME `MinkowskiConvolutionTranspose(k=2, s=2)`).

    Args:
        x: SparseTensor (M, C_in) at stride s >= 2; the set at stride s/2 must be registered in its context.
        weight: (8, C_in, C_out) internal layout. bias: (C_out,) or None.
    Returns:
        SparseTensor (M_fine, C_out) at stride s/2, rows in the order of the registered fine set.
    """
    if _kernel_size_of(weight) != 2:
        raise ValueError(f'transposed_conv supports kernel 2 / stride 2 only, got weight {tuple(weight.shape)}')
    if x.tensor_stride % 2:
        raise ValueError(f'transposed_conv needs an even tensor stride, got {x.tensor_stride}')
    fine_stride = x.tensor_stride // 2
    parent_rows, kernel_index = x.context.stride_map(fine_stride)
    out = x.features.new_zeros((parent_rows.shape[0], weight.shape[2]))
    for i in range(weight.shape[0]):
        out_rows = torch.nonzero((kernel_index == i) & (parent_rows >= 0)).view(-1)
        if out_rows.numel():
            out = out.index_add(0, out_rows, x.features[parent_rows[out_rows]] @ weight[i])
    return x.at_stride(_add_bias(out, bias), fine_stride)


class SparseConv3d(torch.nn.Module):
    """A sparse conv layer in the internal layout (ME's `MinkowskiConvolution[Transpose]` counterpart).

    Args:
        in_channels, out_channels: ints. kernel_size: odd k (stride 1) or 2 (stride 2). stride: 1 or 2.
        bias: learnable (C_out,) bias. transposed: k=2 s=2 transposed conv (onto the registered finer set).
    Parameters: `weight` (k^3, C_in, C_out) internal offset order; `bias` (C_out,) or None.
    forward(SparseTensor) -> SparseTensor.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, bias=False, transposed=False):
        super().__init__()
        kernel_size, stride = int(kernel_size), int(stride)
        if stride == 1 and not transposed and kernel_size % 2 == 1:
            self.mode = 'submanifold' if kernel_size > 1 else 'pointwise'
        elif kernel_size == 2 and stride == 2:
            self.mode = 'transposed' if transposed else 'strided'
        else:
            raise ValueError(f'unsupported sparse conv: kernel_size={kernel_size}, stride={stride}, '
                             f'transposed={transposed} (supported: odd k / stride 1, k=2 / stride 2)')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.transposed = kernel_size, stride, transposed
        self.weight = torch.nn.Parameter(torch.empty(kernel_size ** 3, in_channels, out_channels))
        self.bias = torch.nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """Uniform(+-1/sqrt(fan_in)) with fan_in = K * C_in, bias likewise (torch conv defaults' scale)."""
        bound = 1.0 / (self.weight.shape[0] * self.in_channels) ** 0.5
        torch.nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        op = {'submanifold': submanifold_conv, 'pointwise': pointwise_conv,
              'strided': strided_conv, 'transposed': transposed_conv}[self.mode]
        return op(x, self.weight, self.bias)

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'mode={self.mode}, bias={self.bias is not None}')
