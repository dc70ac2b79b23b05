"""Tiny stand-ins used by the training tests: a linear-regression "detector" over a synthetic dataset that
implements the pcdet dataset interface (collate_batch, generate_prediction_dicts, evaluation). They exist so the
training machinery is tested without the real datasets/models."""
import math

import numpy as np
import torch
from easydict import EasyDict
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


class RegressionDataset(Dataset):
    def __init__(self, n=16, dim=3, training=True, augment=True, seed=0):
        rng = np.random.RandomState(seed)
        self.x = rng.randn(n, dim).astype(np.float32)
        weights = rng.randn(dim, 1)
        self.y = (self.x @ weights + 0.1 * rng.randn(n, 1)).astype(np.float32)
        self.class_names = ['Car']
        self.training = training
        self.augment = augment
        self.merged_epochs = 0
        self.evaluated = None

    def __len__(self):
        return len(self.x) * max(self.merged_epochs, 1)

    def merge_all_iters_to_one_epoch(self, merge=True, epochs=None):
        self.merged_epochs = epochs if merge else 0

    def __getitem__(self, index):
        index = index % len(self.x)
        x = self.x[index].copy()
        if self.training and self.augment:
            x = x + np.random.normal(0.0, 0.05, size=x.shape).astype(np.float32)  # global numpy RNG
        return {'x': x, 'y': self.y[index], 'frame_id': f'{index:04d}'}

    @staticmethod
    def collate_batch(batch_list):
        return {'x': np.stack([b['x'] for b in batch_list]), 'y': np.stack([b['y'] for b in batch_list]),
                'frame_id': np.array([b['frame_id'] for b in batch_list]), 'batch_size': len(batch_list)}

    def generate_prediction_dicts(self, batch_dict, pred_dicts, class_names, output_path=None):
        annos = []
        for i, pred in enumerate(pred_dicts):
            annos.append({'name': np.array(class_names)[pred['pred_labels'].long().numpy() - 1],
                          'score': pred['pred_scores'].numpy(), 'boxes_lidar': pred['pred_boxes'].numpy(),
                          'pred_labels': pred['pred_labels'].numpy(), 'frame_id': batch_dict['frame_id'][i]})
        return annos

    def evaluation(self, det_annos, class_names, output_path=None, **kwargs):
        self.evaluated = det_annos
        frame_ids = [a['frame_id'] for a in det_annos]
        preds = np.array([float(a['score'][0]) for a in det_annos])
        targets = np.array([float(self.y[int(f)][0]) for f in frame_ids])
        mse = float(np.mean((preds - targets) ** 2))
        return f'mse: {mse:.6f}', {'mse': mse, 'frames': len(det_annos)}


class TinyDetector(nn.Module):
    """Linear regression with the detector interface: train -> (ret_dict, tb_dict, disp_dict),
    eval -> (pred_dicts, recall_dict)."""

    def __init__(self, dim=3, dropout=0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, 1)
        self.register_buffer('global_step', torch.zeros(1, dtype=torch.long))

    def update_global_step(self):
        self.global_step += 1

    def forward(self, batch_dict):
        pred = self.linear(self.dropout(batch_dict['x']))
        if self.training:
            loss = ((pred.float() - batch_dict['y']) ** 2).mean()
            return {'loss': loss}, {'mse': loss.detach(), 'const': 1.0}, {}
        pred_dicts = [{'pred_scores': pred[i].float(), 'pred_boxes': torch.zeros(1, 7),
                       'pred_labels': torch.ones(1, dtype=torch.long)} for i in range(pred.shape[0])]
        n = pred.shape[0]
        return pred_dicts, {'gt': n, 'roi_0.3': 0, 'rcnn_0.3': n}


def load_to_device(batch_dict, device):
    for key in ('x', 'y'):
        if isinstance(batch_dict[key], np.ndarray):
            batch_dict[key] = torch.from_numpy(batch_dict[key]).to(device)


def model_func(model, batch_dict):
    load_to_device(batch_dict, 'cpu')
    ret_dict, tb_dict, disp_dict = model(batch_dict)
    return ret_dict['loss'].mean(), tb_dict, disp_dict


class StridedEvalSampler(Sampler):
    """OpenPCDet-style eval sharding: pad by repeating the head, then indices[rank::world_size]."""

    def __init__(self, dataset, num_replicas, rank):
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.num_samples = math.ceil(len(dataset) / num_replicas)

    def __iter__(self):
        indices = list(range(len(self.dataset)))
        total = self.num_samples * self.num_replicas
        indices = (indices * math.ceil(total / len(indices)))[:total]
        return iter(indices[self.rank:total:self.num_replicas])

    def __len__(self):
        return self.num_samples


def make_loader(dataset, batch_size, shuffle=False, sampler=None):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      num_workers=0, collate_fn=dataset.collate_batch, drop_last=False)


def optim_cfg(**overrides):
    cfg = EasyDict({'OPTIMIZER': 'adam_onecycle', 'LR': 0.01, 'WEIGHT_DECAY': 0.01, 'MOMENTUM': 0.9,
                    'MOMS': [0.95, 0.85], 'PCT_START': 0.4, 'DIV_FACTOR': 10, 'GRAD_NORM_CLIP': 10,
                    'BATCH_SIZE_PER_GPU': 4, 'NUM_EPOCHS': 2})
    cfg.update(overrides)
    return cfg


def eval_cfg():
    return EasyDict({'MODEL': {'POST_PROCESSING': {'RECALL_THRESH_LIST': [0.3]}},
                     'DATA_CONFIG': {'DATA_SPLIT': {'train': 'train', 'test': 'val'}}})


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
