"""Detection evaluation (spec §1.13): recall counters, `generate_prediction_dicts`, `result.pkl`, the dataset's
official metric.

Reads per batch: the model's eval `ret_dict` (`roi_<t>`, `rcnn_<t>`, `gt`: recall counters for every t of
MODEL.POST_PROCESSING.RECALL_THRESH_LIST), `batch_dict` and `pred_dicts` as `dataset.generate_prediction_dicts`
reads them (`frame_id` (B,), optional `metadata` (B,); per sample `pred_boxes (K, 7|9)`, `pred_scores (K,)`,
`pred_labels (K,)` 1-based). With `save_to_file` the dataset also writes its per-frame files into
`<result_dir>/final_result/data/`.

Writes on rank 0: `<result_dir>/result.pkl` (atomic; the det_annos list in dataset order) and whatever
`dataset.evaluation(det_annos, class_names, output_path=<result_dir>/final_result/data, [eval_metric=...])` writes
there (e.g. `results_nusc.json`). Metrics: `recall/roi_<t>`, `recall/rcnn_<t>` plus the dataset's result dict.
`eval_metric` (MODEL.POST_PROCESSING.EVAL_METRIC) is passed only when set and accepted by `dataset.evaluation`.
"""
import inspect

import torch

from ..utils.file_utils import atomic_pickle_dump
from .evaluator import DatasetEvaluator


def _post_processing_value(cfg, key):
    """MODEL.POST_PROCESSING[key] of a full config, else the default the detectors declare (POST_PROCESSING_SCHEMA;
    a config without MODEL, e.g. in tests, reads the defaults)."""
    from ..models.detectors.detector3d_template import POST_PROCESSING_SCHEMA
    model_cfg = cfg['MODEL'] if cfg is not None and 'MODEL' in cfg else {}
    # not Detector3DTemplate.CONFIG_SCHEMA.get: filling an absent block would demand its NMS_CONFIG.NMS_TYPE
    post = model_cfg['POST_PROCESSING'] if 'POST_PROCESSING' in model_cfg else None
    return POST_PROCESSING_SCHEMA.get(post, key)


def _recall_thresholds(cfg):
    return list(_post_processing_value(cfg, 'RECALL_THRESH_LIST'))


def _as_number(value):
    return float(value.sum()) if torch.is_tensor(value) else float(value)


def statistics_info(cfg, ret_dict, metric, disp_dict):
    """Accumulate upstream's recall counters (`roi_<t>`, `rcnn_<t>`, `gt`) from a model's eval `ret_dict`."""
    thresholds = _recall_thresholds(cfg)
    ret_dict = ret_dict or {}
    for thresh in thresholds:
        metric[f'recall_roi_{thresh}'] += _as_number(ret_dict.get(f'roi_{thresh}', 0))
        metric[f'recall_rcnn_{thresh}'] += _as_number(ret_dict.get(f'rcnn_{thresh}', 0))
    metric['gt_num'] += _as_number(ret_dict.get('gt', 0))
    if thresholds:
        t = thresholds[0]
        disp_dict[f'recall_{t}'] = (f'({metric[f"recall_roi_{t}"]:.0f}, {metric[f"recall_rcnn_{t}"]:.0f}) / '
                                    f'{metric["gt_num"]:.0f}')


def _evaluation_kwargs(dataset, cfg, output_path):
    kwargs = {'output_path': output_path}
    metric = _post_processing_value(cfg, 'EVAL_METRIC')
    if metric is not None:
        params = inspect.signature(dataset.evaluation).parameters
        if 'eval_metric' in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs['eval_metric'] = metric
    return kwargs


class DetectionEvaluator(DatasetEvaluator):
    """Today's detection evaluation behind the evaluator interface (module docs)."""

    def __init__(self, dataset, cfg, result_dir, logger=None, dataloader=None, dist_test=False, save_to_file=False):
        super().__init__(dataset, result_dir, logger=logger, dataloader=dataloader, dist_test=dist_test)
        self.cfg = cfg
        self.save_to_file = bool(save_to_file)
        self.class_names = dataset.class_names
        self.thresholds = _recall_thresholds(cfg)
        self.final_output_dir = self.result_dir / 'final_result' / 'data'
        self.final_output_dir.mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self):
        self.det_annos = []
        self.metric = {'gt_num': 0.0}
        for thresh in self.thresholds:
            self.metric[f'recall_roi_{thresh}'] = 0.0
            self.metric[f'recall_rcnn_{thresh}'] = 0.0

    def process(self, batch_dict, pred_dicts, ret_dict=None):
        disp_dict = {}
        statistics_info(self.cfg, ret_dict, self.metric, disp_dict)
        self.det_annos += self.dataset.generate_prediction_dicts(
            batch_dict, pred_dicts, self.class_names,
            output_path=self.final_output_dir if self.save_to_file else None)
        return disp_dict

    def evaluate(self):
        det_annos = self.gather_frames(self.det_annos)
        metric = self.sum_over_ranks(self.metric)
        if not self.is_main:
            return '', {}
        logger = self.logger
        ret_dict = {}
        gt_num_cnt = metric['gt_num']
        for thresh in self.thresholds:
            roi_recall = metric[f'recall_roi_{thresh}'] / max(gt_num_cnt, 1)
            rcnn_recall = metric[f'recall_rcnn_{thresh}'] / max(gt_num_cnt, 1)
            logger.info(f'recall_roi_{thresh}: {roi_recall:f}')
            logger.info(f'recall_rcnn_{thresh}: {rcnn_recall:f}')
            ret_dict[f'recall/roi_{thresh}'] = roi_recall
            ret_dict[f'recall/rcnn_{thresh}'] = rcnn_recall
        total_pred_objects = sum(len(anno['name']) for anno in det_annos)
        logger.info(f'Average predicted number of objects({len(det_annos)} samples): '
                    f'{total_pred_objects / max(1, len(det_annos)):.3f}')
        atomic_pickle_dump(det_annos, self.result_dir / 'result.pkl')

        result_str, result_dict = self.dataset.evaluation(
            det_annos, self.class_names, **_evaluation_kwargs(self.dataset, self.cfg, self.final_output_dir))
        ret_dict.update(result_dict or {})
        return result_str, ret_dict
