"""Evaluators: one interface (`reset`, `process(batch_dict, pred_dicts)`, `evaluate() -> (result_str, metrics)`)
for every task, picked by DATA_CONFIG.TASK (`build_evaluator`).

    evaluator.py          DatasetEvaluator base, cross-rank merge in dataset order, text tables
    build.py              build_evaluator(dataset, cfg, result_dir, ...), task_of
    detection.py          DetectionEvaluator: recall counters, result.pkl, dataset.evaluation (nuScenes, Waymo)
    lidarseg.py           LidarSegEvaluator: official nuScenes-lidarseg results folder + nuscenes-devkit LidarSegEval
    occupancy.py          OccupancyEvaluator: OpenOccupancy SC IoU / SSC mIoU
    occupancy_metric.py   the occupancy confusion matrix (numba, torch or numpy) and IoUs

Submodules import their heavy dependencies (models, devkit, scipy) where used.
"""
from .build import TASKS, build_evaluator, task_of
from .evaluator import DatasetEvaluator

__all__ = ['TASKS', 'DatasetEvaluator', 'build_evaluator', 'task_of']
