"""OpenOccupancy evaluation (nuScenes-Occupancy, spec §B.5) behind the evaluator interface.

Reads per batch:
    batch_dict['gt_occupancy']  (B, 512, 512, 40) GT, axis order (x, y, z): 0 free, 1..16 classes, 255 noise
                                (uint8 from the dataset; a float tensor after load_data_to_device is accepted)
    pred_dicts[b]['occ_pred']   (512, 512, 40) uint8 tensor, 0 free / 1..16 (the model's argmax at GT resolution)
    batch_dict['metadata'][b]   'lidar_token', 'scene_token' (only with save_to_file)
Per frame a 17x17 confusion matrix over the voxels with gt != 255 (occupancy_metric.occupancy_confusion); the
matrices are summed over the whole set (after the cross-rank merge, which drops padding duplicates) before any IoU.

Metrics (rank 0): `occupancy/SC_IoU`, `occupancy/SSC_mIoU` (official: plain mean over the 16 classes, NaN if one
is absent from GT and prediction over the set), `occupancy/SSC_mIoU_present` (mean over the classes present),
`occupancy/IoU_<class>` for free and the 16 classes, `occupancy/absent_classes` (list of names) and
`occupancy/num_frames`. Files: `<result_dir>/result.pkl` (metrics + the summed confusion matrix, atomic) and
`<result_dir>/result.txt` (the table). With `save_to_file` every frame's prediction is also written like the GT:
`<result_dir>/final_result/data/occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy`, int16 rows
`[z, y, x, label]` of the predicted occupied voxels.
"""
import io

import numpy as np
import torch

from ..utils.file_utils import atomic_pickle_dump, atomic_save_bytes, atomic_save_text
from .evaluator import DatasetEvaluator, format_table, format_value
from .occupancy_metric import NUM_CLASSES, occupancy_confusion, occupancy_metrics

GT_KEY, PRED_KEY = 'gt_occupancy', 'occ_pred'


def occupancy_to_rows(volume):
    """(N, 4) int16 `[z, y, x, label]` rows of the non-free voxels of an (X, Y, Z) label volume (the GT layout)."""
    volume = volume.detach().cpu().numpy() if torch.is_tensor(volume) else np.asarray(volume)
    x, y, z = np.nonzero(volume)
    return np.stack([z, y, x, volume[x, y, z]], axis=1).astype(np.int16)


def test_interval(dataset):
    """DATA_CONFIG.SAMPLED_INTERVAL['test'] of a pcdet dataset (1 for stand-ins without a config)."""
    schema, dataset_cfg = getattr(dataset, 'CONFIG_SCHEMA', None), getattr(dataset, 'dataset_cfg', None)
    if schema is None or dataset_cfg is None:
        return 1
    interval = schema.get(dataset_cfg, 'SAMPLED_INTERVAL')
    return int(interval['test']) if interval and 'test' in interval else 1


class OccupancyEvaluator(DatasetEvaluator):
    """Summed confusion matrix -> SC IoU / SSC mIoU (module docs). `class_names`: the 16 class names in
    official order (ids 1..16)."""

    def __init__(self, dataset, result_dir, class_names, logger=None, dataloader=None, dist_test=False,
                 save_to_file=False):
        super().__init__(dataset, result_dir, logger=logger, dataloader=dataloader, dist_test=dist_test)
        class_names = list(class_names or [])
        if len(class_names) != NUM_CLASSES - 1:
            raise ValueError(f'occupancy evaluation: CLASS_NAMES must list the {NUM_CLASSES - 1} occupancy classes '
                             f'in official order (ids 1..16), got {len(class_names)}: {class_names}')
        self.names = ['free'] + class_names
        self.save_to_file = bool(save_to_file)
        self.prediction_dir = self.result_dir / 'final_result' / 'data' / 'occupancy'
        self.result_dir.mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self):
        self.frame_cms = []

    def process(self, batch_dict, pred_dicts, ret_dict=None):
        if GT_KEY not in batch_dict:
            raise KeyError(f'occupancy evaluation needs batch_dict[{GT_KEY!r}] (B, 512, 512, 40): build the dataset '
                           'with DATA_CONFIG.TASK: occupancy')
        gts = batch_dict[GT_KEY]
        if len(gts) != len(pred_dicts):
            raise ValueError(f'occupancy evaluation: {len(pred_dicts)} prediction dicts for a batch of {len(gts)} '
                             f'{GT_KEY} volumes')
        for index, pred_dict in enumerate(pred_dicts):
            if PRED_KEY not in pred_dict:
                raise KeyError(f'occupancy evaluation: the model output of sample {index} has no {PRED_KEY!r} '
                               f'(keys: {sorted(pred_dict)})')
            pred = pred_dict[PRED_KEY]
            self.frame_cms.append(occupancy_confusion(gts[index], pred))
            if self.save_to_file:
                self._save_prediction(batch_dict, index, pred)
        return None

    def _save_prediction(self, batch_dict, index, pred):
        metadata = batch_dict['metadata'][index] if 'metadata' in batch_dict else {}
        missing = [key for key in ('scene_token', 'lidar_token') if key not in metadata]
        if missing:
            raise KeyError(f'occupancy --save_to_file: batch_dict["metadata"][{index}] lacks {missing}, needed to '
                           'name the prediction file')
        path = (self.prediction_dir / f'scene_{metadata["scene_token"]}' / 'occupancy' /
                f'{metadata["lidar_token"]}.npy')
        buffer = io.BytesIO()
        np.save(buffer, occupancy_to_rows(pred))
        atomic_save_bytes(buffer.getvalue(), path, durable=False)

    def evaluate(self):
        frame_cms = self.gather_frames(self.frame_cms)
        if not self.is_main:
            return '', {}
        if not frame_cms:
            raise ValueError('occupancy evaluation: no frame was processed')
        cm = np.sum(frame_cms, axis=0)
        result = occupancy_metrics(cm)
        absent = [self.names[c] for c in result['absent']]
        metrics = {'occupancy/SC_IoU': result['SC_IoU'], 'occupancy/SSC_mIoU': result['SSC_mIoU'],
                   'occupancy/SSC_mIoU_present': result['SSC_mIoU_present']}
        metrics.update({f'occupancy/IoU_{name}': float(iou) for name, iou in zip(self.names, result['iou'])})
        metrics['occupancy/absent_classes'] = absent
        metrics['occupancy/num_frames'] = len(frame_cms)
        result_str = self._format(result, cm, absent, len(frame_cms))
        interval = test_interval(self.dataset)
        if interval > 1:  # the official protocol scores every val frame
            note = (f'NOTE: DATA_CONFIG.SAMPLED_INTERVAL.test = {interval}: these numbers cover every {interval}-th '
                    'frame of the split, not the official all-frame protocol')
            self.logger.warning(note)
            result_str += '\n' + note + '\n'
            metrics['occupancy/subsampled_interval'] = interval
        atomic_pickle_dump({'metrics': metrics, 'confusion_matrix': cm, 'class_names': self.names},
                           self.result_dir / 'result.pkl')
        atomic_save_text(result_str, self.result_dir / 'result.txt')
        if self.save_to_file:
            self.logger.info(f'occupancy predictions written to {self.prediction_dir}')
        return result_str, metrics

    def _format(self, result, cm, absent, num_frames):
        gt_voxels, pred_voxels = cm.sum(axis=1), cm.sum(axis=0)
        rows = [[c, name, format_value(iou), int(gt_voxels[c]), int(pred_voxels[c])]
                for c, (name, iou) in enumerate(zip(self.names, result['iou']))]
        lines = [f'OpenOccupancy metric over {num_frames} frames ({result["num_voxels"]} voxels with GT != noise)',
                 format_table(['id', 'class', 'IoU', 'GT voxels', 'predicted voxels'], rows), '',
                 f'SC IoU (occupied vs free):           {format_value(result["SC_IoU"])}',
                 f'SSC mIoU (official, mean of 1..16):  {format_value(result["SSC_mIoU"])}',
                 f'SSC mIoU over present classes ({16 - len(absent)}/16): '
                 f'{format_value(result["SSC_mIoU_present"])}']
        if absent:
            lines.append(f'absent from GT and prediction (IoU NaN, official mIoU NaN): {", ".join(absent)}')
        return '\n'.join(lines) + '\n'
