"""Geometry and scatter ops, all pure PyTorch / numba (no compiled extension).

Importing `pcdet.ops` does no work: import the sub-modules you need, e.g.
`from pcdet.ops.iou3d_nms import iou3d_nms_utils`. Every op runs on whatever device its inputs live on, despite
OpenPCDet names such as `*_gpu`. Optional accelerated kernels are picked up through `pcdet.ops.fast_paths`.

`pcdet.ops.gaussian_splatting.render_gaussians` renders 3-D Gaussians to colour / feature / depth / opacity maps
(projection in `pcdet.ops.gaussian_projection`; optional gsplat fast path on CUDA; docs/GAUSSIAN_SPLATTING.md).
"""
