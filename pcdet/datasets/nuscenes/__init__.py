"""nuScenes: info generation (nuscenes_utils), GT database (gt_database), `NuScenesDataset` + CLI
(nuscenes_dataset) and evaluation glue (nuscenes_eval). Nothing is imported eagerly; `NuScenesDataset` is
resolved on first attribute access."""


def __getattr__(name):
    if name == 'NuScenesDataset':
        from .nuscenes_dataset import NuScenesDataset
        return NuScenesDataset
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['NuScenesDataset']
