"""Optional accelerated kernels (Triton / CUDA) for `pcdet.ops`; see README.md for the contract.

Empty on purpose: no fast kernel exists yet, and importing this package must stay free of side effects.
`pcdet.ops.fast_paths.get_fast_op(name)` imports `common_ops.<name>` lazily and uses its `<name>` callable.
"""
