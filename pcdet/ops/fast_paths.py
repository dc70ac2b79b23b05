"""Dispatcher for optional accelerated kernels living in the top-level `common_ops` package.

Every op in `pcdet.ops` is a complete pure PyTorch / numba reference. A fast path `common_ops.<name>` (a module
defining a callable `<name>`) is used only when it is importable and `PCDET_DISABLE_FAST_OPS` is not `1`. A fast
path takes and returns exactly what its reference takes and returns; it may return `NotImplemented` to decline
an input it does not support (e.g. CPU tensors for a CUDA-only kernel), and the reference then runs.
See common_ops/README.md for the full contract.
"""
import functools
import importlib
import logging
import os

DISABLE_ENV = 'PCDET_DISABLE_FAST_OPS'

# Names the reference ops look up, for documentation and for tests that compare fast paths to references.
KNOWN_OPS = ('boxes_overlap_bev', 'paired_boxes_overlap_bev', 'nms_gpu', 'points_in_boxes_mask', 'scatter_max')


def fast_ops_disabled():
    """True when the environment asks for reference ops only."""
    return os.environ.get(DISABLE_ENV, '0') == '1'


@functools.lru_cache(maxsize=None)
def _import_fast_op(name):
    """Import `common_ops.<name>` once and return its `<name>` callable, or None when it is not installed."""
    module_name = f'common_ops.{name}'
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if err.name not in ('common_ops', module_name):
            # The fast path exists but one of its own dependencies is missing: say so once, then fall back.
            logging.getLogger('pcdet').warning('fast path %s unavailable (%s); using the reference op', name, err)
        return None
    op = getattr(module, name, None)
    return op if callable(op) else None


def get_fast_op(name):
    """Return the accelerated callable for op `name`, or None when absent or disabled by `PCDET_DISABLE_FAST_OPS=1`."""
    if fast_ops_disabled():
        return None
    return _import_fast_op(name)


def call_fast_op(name, *args, **kwargs):
    """Run the fast path for `name` if there is one; return `NotImplemented` when the caller must use its reference."""
    op = get_fast_op(name)
    if op is None:
        return NotImplemented
    return op(*args, **kwargs)
