"""Exact intersection area of rotated BEV footprints, vectorised over pairs and chunked to bound memory.

Algorithm (spec §4.3 candidate points, without upstream's 1 cm inside-margin): the intersection of two convex
quads is the convex polygon whose vertices are among (a) corners of A inside B, (b) corners of B inside A and
(c) crossings of an edge of A with an edge of B. All candidates lie on the boundary of the intersection, so
sorting the valid ones by angle around their centroid orders them along that boundary and a fan gives the area.
Inside/crossing tests are tolerant (1e-10 of the pair's scale in float64, 2e-6 in float32), so boundary points
such as the corners of identical or touching boxes are kept; an accepted point lies at most that tolerance
outside the true polygon. Nearly parallel edges yield no crossing (their overlap ends are corners).

Precision: float64 on CPU (agrees with shapely to ~1e-12 m^2), float32 on accelerators (~1e-5 relative). Each
pair is translated so the midpoint of the two centres is the origin, which keeps far-from-origin boxes accurate.
"""
import torch

# Pairs handled per chunk: ~4 KB of temporaries per pair in float64, i.e. ~128 MB per chunk.
CHUNK_PAIRS = 1 << 15
# Rows of an (N, M) problem examined per block by the circumscribed-circle prefilter (N_rows * M <= this).
PREFILTER_BLOCK = 1 << 20

# Local corner template in units of half extents, counter-clockwise: (-,-), (+,-), (+,+), (-,+).
_CCW_TEMPLATE = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def work_dtype(device):
    """float64 on CPU (cheap, buys accuracy), float32 on accelerators."""
    return torch.float64 if torch.device(device).type == 'cpu' else torch.float32


def _tolerances(dtype):
    """(relative length tolerance, edge-parameter tolerance, parallel-edge threshold) for `dtype`."""
    if dtype == torch.float64:
        return 1e-10, 1e-10, 1e-12
    return 2e-6, 2e-6, 1e-5


def bev_corners_ccw(centres, dims, heading):
    """Footprint corners, counter-clockwise.

    Args:
        centres: (K, 2) footprint centres. dims: (K, 2) extents (dx, dy). heading: (K,) CCW yaw of the dx axis.
    Returns:
        (K, 4, 2) corners in the order (-,-), (+,-), (+,+), (-,+) of the local half extents, rotated and shifted.
    """
    template = centres.new_tensor(_CCW_TEMPLATE)
    local = template[None] * (dims[:, None, :] / 2)
    cos, sin = torch.cos(heading)[:, None], torch.sin(heading)[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack((x, y), dim=-1) + centres[:, None, :]


def _corners_inside(points, centres, dims, heading, tol):
    """(K, 4) mask: points (K, 4, 2) inside the box (tolerant by `tol` (K,) on each side)."""
    shifted = points - centres[:, None, :]
    cos, sin = torch.cos(heading)[:, None], torch.sin(heading)[:, None]
    u = shifted[..., 0] * cos + shifted[..., 1] * sin  # rotate by -heading into the box frame
    v = -shifted[..., 0] * sin + shifted[..., 1] * cos
    half = dims / 2 + tol[:, None]
    return (u.abs() <= half[:, 0:1]) & (v.abs() <= half[:, 1:2])


def bev_edges_ccw(dims, heading):
    """(K, 4, 2) edge vectors: edge i runs from corner i to corner i + 1 of `bev_corners_ccw`.

    Rotated directly from the local axes rather than differenced from corners, so their directions carry no
    cancellation error and exactly parallel edges test as parallel even for thin boxes.
    """
    zeros = torch.zeros_like(dims[:, 0])
    along_x = torch.stack((dims[:, 0], zeros), dim=-1)
    along_y = torch.stack((zeros, dims[:, 1]), dim=-1)
    local = torch.stack((along_x, along_y, -along_x, -along_y), dim=1)
    cos, sin = torch.cos(heading)[:, None], torch.sin(heading)[:, None]
    return torch.stack((local[..., 0] * cos - local[..., 1] * sin, local[..., 0] * sin + local[..., 1] * cos), -1)


def _edge_crossings(corners_a, edges_a, corners_b, edges_b, param_tol, parallel_tol):
    """All 16 edge-edge crossings of two quads given their corners and edge vectors (K, 4, 2).

    Returns:
        points (K, 16, 2) and valid mask (K, 16). (Nearly) parallel edges give no point: where they overlap, the
        overlap's ends are corners already caught by the inside tests; skipping them avoids the 0/0 of
        collinear edges.
    """
    start_a = corners_a[:, :, None, :]  # (K, 4, 1, 2), edge i of A
    edge_a = edges_a[:, :, None, :]
    start_b = corners_b[:, None, :, :]  # (K, 1, 4, 2), edge j of B
    edge_b = edges_b[:, None, :, :]

    def cross(p, q):
        return p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]

    denom = cross(edge_a, edge_b)  # (K, 4, 4)
    offset = start_b - start_a
    not_parallel = denom.abs() > parallel_tol * edge_a.norm(dim=-1) * edge_b.norm(dim=-1)
    safe_denom = torch.where(not_parallel, denom, torch.ones_like(denom))
    t = cross(offset, edge_b) / safe_denom  # position along A's edge
    s = cross(offset, edge_a) / safe_denom  # position along B's edge
    lo, hi = -param_tol, 1 + param_tol
    valid = not_parallel & (t >= lo) & (t <= hi) & (s >= lo) & (s <= hi)
    points = start_a + t.clamp(0, 1)[..., None] * edge_a
    return points.flatten(1, 2), valid.flatten(1, 2)


def _convex_polygon_area(points, valid):
    """Area of the convex polygon spanned by the valid points (K, C, 2) that all lie on its boundary."""
    weights = valid.to(points.dtype)
    count = weights.sum(dim=1)
    centroid = (points * weights[..., None]).sum(dim=1) / count.clamp(min=1)[:, None]
    rel = points - centroid[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, float('inf')))  # invalid points sort last
    order = angle.argsort(dim=1)
    rel = torch.gather(rel, 1, order[..., None].expand_as(rel))
    valid = torch.gather(valid, 1, order)
    # Fan from the first sorted point; a triangle counts only if both of its far vertices are valid.
    spokes = rel[:, 1:, :] - rel[:, :1, :]
    tri = spokes[:, :-1, 0] * spokes[:, 1:, 1] - spokes[:, :-1, 1] * spokes[:, 1:, 0]
    tri = torch.where(valid[:, 1:-1] & valid[:, 2:], tri, torch.zeros_like(tri))
    return tri.sum(dim=1).abs() / 2


def _paired_overlap_chunk(boxes_a, boxes_b, dtype):
    """Overlap areas (K,) of one chunk of row-aligned pairs, computed in `dtype`."""
    rel_tol, param_tol, parallel_tol = _tolerances(dtype)
    a, b = boxes_a.to(dtype), boxes_b.to(dtype)
    midpoint = (a[:, 0:2] + b[:, 0:2]) / 2
    centre_a, centre_b = a[:, 0:2] - midpoint, b[:, 0:2] - midpoint
    dims_a, dims_b = a[:, 3:5], b[:, 3:5]
    scale = torch.cat((dims_a, dims_b, centre_a.abs()), dim=1).amax(dim=1)
    tol = rel_tol * scale
    corners_a = bev_corners_ccw(centre_a, dims_a, a[:, 6])
    corners_b = bev_corners_ccw(centre_b, dims_b, b[:, 6])
    a_in_b = _corners_inside(corners_a, centre_b, dims_b, b[:, 6], tol)
    b_in_a = _corners_inside(corners_b, centre_a, dims_a, a[:, 6], tol)
    crossings, crossing_valid = _edge_crossings(corners_a, bev_edges_ccw(dims_a, a[:, 6]),
                                                corners_b, bev_edges_ccw(dims_b, b[:, 6]), param_tol, parallel_tol)
    points = torch.cat((corners_a, corners_b, crossings), dim=1)
    valid = torch.cat((a_in_b, b_in_a, crossing_valid), dim=1)
    return _convex_polygon_area(points, valid)


def paired_overlap_bev(boxes_a, boxes_b, dtype=None):
    """Exact BEV intersection area of row-aligned pairs.

    Args:
        boxes_a, boxes_b: (K, 7+) boxes `[x, y, z, dx, dy, dz, heading, ...]` on the same device.
        dtype: compute precision; default `work_dtype(device)` (tests force float32 on CPU to cover GPU numerics).
    Returns:
        (K,) overlap areas in that dtype on the input device.
    """
    dtype = dtype or work_dtype(boxes_a.device)
    num_pairs = boxes_a.shape[0]
    if num_pairs == 0:
        return boxes_a.new_zeros(0, dtype=dtype)
    chunks = [_paired_overlap_chunk(boxes_a[s:s + CHUNK_PAIRS], boxes_b[s:s + CHUNK_PAIRS], dtype)
              for s in range(0, num_pairs, CHUNK_PAIRS)]
    return torch.cat(chunks)


def circles_may_overlap(boxes_a, boxes_b, paired=False):
    """Mask of pairs whose circumscribed BEV circles intersect (conservative: never drops a real overlap).

    Args:
        boxes_a: (N, 7+). boxes_b: (M, 7+), or (N, 7+) when `paired`.
    Returns:
        (N, M) bool, or (N,) for row-aligned pairs when `paired`.
    Computed in (at least) float32: the 1e-4 relative slack dwarfs its rounding, and this is the O(N * M) part.
    """
    dtype = torch.promote_types(boxes_a.dtype, torch.float32)
    a, b = boxes_a[:, 0:5].to(dtype), boxes_b[:, 0:5].to(dtype)
    radius_a = a[:, 3:5].norm(dim=1) / 2
    radius_b = b[:, 3:5].norm(dim=1) / 2
    if not paired:
        a, b = a[:, None, :], b[None, :, :]
        radius_a, radius_b = radius_a[:, None], radius_b[None, :]
    dist_sq = (a[..., 0:2] - b[..., 0:2]).pow(2).sum(dim=-1)
    reach = (radius_a + radius_b) * (1 + 1e-4) + 1e-6
    return dist_sq <= reach * reach


def prefiltered_paired_overlap_bev(boxes_a, boxes_b):
    """`paired_overlap_bev` that skips pairs with disjoint circumscribed circles: (K, 7+), (K, 7+) -> (K,)."""
    out = boxes_a.new_zeros(boxes_a.shape[0], dtype=work_dtype(boxes_a.device))
    candidates = circles_may_overlap(boxes_a, boxes_b, paired=True).nonzero(as_tuple=True)[0]
    if candidates.numel():
        out[candidates] = paired_overlap_bev(boxes_a[candidates], boxes_b[candidates])
    return out


def overlap_bev_matrix(boxes_a, boxes_b, pair_fn=paired_overlap_bev):
    """(N, M) matrix of `pair_fn` over all pairs, zero where circumscribed circles are disjoint.

    `pair_fn(a (K, 7+), b (K, 7+)) -> (K,)` must be zero for disjoint footprints (overlap or IoU both are).
    Returned in `work_dtype(device)`.
    """
    num_a, num_b = boxes_a.shape[0], boxes_b.shape[0]
    out = boxes_a.new_zeros((num_a, num_b), dtype=work_dtype(boxes_a.device))
    if num_a == 0 or num_b == 0:
        return out
    rows_per_block = max(1, PREFILTER_BLOCK // num_b)
    for start in range(0, num_a, rows_per_block):
        block = boxes_a[start:start + rows_per_block]
        rows, cols = circles_may_overlap(block, boxes_b).nonzero(as_tuple=True)
        if rows.numel():
            out[rows + start, cols] = pair_fn(block[rows], boxes_b[cols]).to(out.dtype)
    return out
