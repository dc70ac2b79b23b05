"""Pick the evaluator of a config's task.

    build_evaluator(dataset, cfg, result_dir, dataloader=None, logger=None, dist_test=False, save_to_file=False)
        -> DetectionEvaluator | LidarSegEvaluator | OccupancyEvaluator

Config keys read: `DATA_CONFIG.TASK` (`detection` default | `segmentation` | `occupancy`), declared in
`DatasetTemplate.CONFIG_SCHEMA` and read through the dataset's schema; for segmentation also the dataset's
`VERSION` and (nuScenes) `EVAL_SET`. `cfg` is the full config (MODEL.POST_PROCESSING is read by detection);
`cfg=None` or a config without DATA_CONFIG means detection.
"""
from ..config import ConfigError
from ..datasets.dataset import TASKS  # the one list of tasks (re-exported by pcdet.evaluation)


def _schema_of(dataset):
    from ..datasets.dataset import DatasetTemplate
    return getattr(dataset, 'CONFIG_SCHEMA', None) or DatasetTemplate.CONFIG_SCHEMA


def _data_cfg(dataset, cfg):
    if cfg is not None and 'DATA_CONFIG' in cfg:
        return cfg['DATA_CONFIG']
    return getattr(dataset, 'dataset_cfg', None)


def task_of(dataset, cfg):
    """DATA_CONFIG.TASK (declared default 'detection'); ConfigError for an unknown task."""
    task = _schema_of(dataset).get(_data_cfg(dataset, cfg), 'TASK')
    if task not in TASKS:
        raise ConfigError(f'DATA_CONFIG.TASK: unknown task {task!r}; expected one of {list(TASKS)}')
    return task


def lidarseg_eval_set(dataset, cfg=None):
    """The devkit split to evaluate a nuScenes dataset on: DATA_CONFIG.EVAL_SET, else the version's val split
    (v1.0-mini -> mini_val, v1.0-trainval -> val, v1.0-test -> test), as the detection evaluation does."""
    from ..datasets.nuscenes.nuscenes_eval import EVAL_SET_OF_VERSION
    schema, data_cfg = _schema_of(dataset), _data_cfg(dataset, cfg)
    version = schema.need(data_cfg, 'VERSION', 'for the nuScenes-lidarseg evaluation (TASK: segmentation)')
    eval_set = schema.get(data_cfg, 'EVAL_SET') if 'EVAL_SET' in schema.keys else None
    eval_set = eval_set or EVAL_SET_OF_VERSION.get(version)
    if eval_set is None:
        raise ConfigError(f'DATA_CONFIG.EVAL_SET: no default nuScenes-lidarseg eval set for VERSION {version!r}; '
                          f'set EVAL_SET to a devkit split name')
    return version, eval_set


def build_evaluator(dataset, cfg, result_dir, dataloader=None, logger=None, dist_test=False, save_to_file=False):
    """The evaluator of DATA_CONFIG.TASK for `dataset`, writing into `result_dir` (module docs)."""
    task = task_of(dataset, cfg)
    common = dict(logger=logger, dataloader=dataloader, dist_test=dist_test)
    if task == 'detection':
        from .detection import DetectionEvaluator
        return DetectionEvaluator(dataset, cfg, result_dir, save_to_file=save_to_file, **common)
    if task == 'segmentation':
        from .lidarseg import LidarSegEvaluator
        version, eval_set = lidarseg_eval_set(dataset, cfg)
        return LidarSegEvaluator(dataset, result_dir, dataroot=dataset.root_path, version=version,
                                 eval_set=eval_set, **common)
    from .occupancy import OccupancyEvaluator
    return OccupancyEvaluator(dataset, result_dir, class_names=dataset.class_names, save_to_file=save_to_file,
                              **common)
