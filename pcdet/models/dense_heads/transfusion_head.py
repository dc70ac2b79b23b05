"""TransFusion-L head (OpenPCDet `dense_heads/transfusion_head.py`; DSVT-repo variant as a config option).

Spec: openpcdet_dsvt.md §3.7-§3.8, seg_occ_transfusion.md §C. Flow of `forward`:
1. `shared_conv` (Conv3x3 C_in -> HIDDEN_CHANNEL) -> dense `heatmap_head` (`BasicBlock2D` + Conv3x3 -> K classes);
2. query init: sigmoid heatmap, local-max NMS (NMS_KERNEL_SIZE, border cells never selected; 1x1 for nuScenes
   classes 8, 9 / Waymo 1, 2 by `TARGET_ASSIGNER_CONFIG.DATASET`), top NUM_PROPOSALS over classes x cells,
   query = BEV feature at the cell + `class_encoding(one_hot(class))`, query position = cell centre (pixels);
3. one `decoder` layer (self-attention among queries, cross-attention to all BEV cells with learned position
   embeddings), `prediction_head` FFNs (`center` (+ query position), `height`, `dim`, `rot`, `vel`, `iou`, and the
   query classifier `heatmap`);
4. training: Hungarian assignment per sample (`target_assigner.hungarian_assigner`), Gaussian heatmap targets and
   box targets (`target_assigner.transfusion_targets`), losses (heatmap GaussianFocal / #peaks x hm_weight,
   sigmoid focal cls / #pos x cls_weight, L1 box x code_weights / #pos x bbox_weight, (IoU L1 x
   loss_iou_rescore_weight)); eval: `score = sigmoid(cls) * query_heatmap_score * one_hot(query_label)`, score and
   centre-range filter, optional IoU rectification and per-class-group NMS.

batch_dict contract: reads `spatial_features_2d (B, C_in, Y, X)`, `batch_size`, and in training `gt_boxes (B, M, 8|10)`
(label last, 1-based, padding rows have zero size). Writes in training `loss` (0-d) and `tb_dict` (floats:
`loss_heatmap`, `loss_cls`, `loss_bbox`, (`loss_iou`), `matched_ious`, `loss_trans`), also kept for `get_loss()`;
at eval `final_box_dicts`: list (B) of `pred_boxes (k, 7|9)`, `pred_scores (k,)`, `pred_labels (k,)` long 1-based.

`VARIANT` (default `openpcdet`) selects where the two upstream heads differ (spec §C, §E item 8):

| | `openpcdet` | `dsvt` |
|---|---|---|
| height target | `z` | `z + dz / 2` |
| BEV layout | features (Y, X), heatmap target (K, Y, X) | features transposed to (X, Y), target (K, X, Y) |
| cross-attention keys | all cells (global) | `(2 QUERY_RADIUS + 1)^2` window (radius 20), one query per sequence |
| classifier bias init | default (upstream tests `'hm' in name`) | -2.19 |
| bias before BN | `USE_BIAS_BEFORE_NORM` | always True |

The IoU branch (`iou` in HEAD_DICT), `USE_IOU_TO_RECTIFY_SCORE` and `POST_PROCESSING.NMS_CONFIG` (per-task NMS,
tasks from DATASET or `NMS_TASKS`) are the DSVT post-processing; without them the head behaves as OpenPCDet's (no NMS).

Parameter names (strict-loadable upstream checkpoints): `shared_conv.{weight,bias}`, `heatmap_head.0.{conv,bn}`,
`heatmap_head.1`, `class_encoding`, `decoder.{self_attn,multihead_attn,linear1,linear2,norm1..3,self_posembed,
cross_posembed}`, `prediction_head.<name>.{0.0 conv, 0.1 bn, 1 conv}`.

Differences from upstream (behaviour-preserving unless stated): frames without GT train (all proposals background);
position grids follow the actual feature-map shape (upstream's flip trick is only right for square maps); top-K uses
`torch.topk` (ties among zero scores may pick other cells than upstream's argsort); the DSVT IoU-loss targets use
properly decoded centres (upstream fed `z + dz/2` as the centre); `SeparateHead_Transfusion` with NUM_HM_CONV > 2
chains hidden channels (upstream crashed); no `.cuda()` calls, everything follows the input device.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ...config_schema import REQUIRED, Schema
from ...ops.iou3d_nms import iou3d_nms_utils
from ...utils import loss_utils
from ..detectors.detector3d_template import DENSE_HEAD_BASE_SCHEMA
from ..model_utils import model_nms_utils
from ..model_utils.transfusion_utils import (  # noqa: F401  (SeparateHead_Transfusion: upstream location)
    BasicBlock2D,
    PositionEmbeddingLearned,
    SeparateHead_Transfusion,
    TransformerDecoderLayer,
    clip_sigmoid,
)
from .center_head import SEPARATE_HEAD_CFG_SCHEMA
from .target_assigner.hungarian_assigner import HungarianAssigner3D
from .target_assigner.transfusion_targets import TransFusionBoxCoder, heatmap_targets

ONE_BY_ONE_NMS_CLASSES = {'nuScenes': (8, 9), 'Waymo': (1, 2)}
DEFAULT_NMS_TASKS = {  # DSVT-repo get_bboxes: class groups with their own NMS threshold (others: no NMS)
    'nuScenes': [{'CLASS_INDICES': [8], 'NMS_THRESH': 0.175}, {'CLASS_INDICES': [9], 'NMS_THRESH': 0.175}],
    'Waymo': [{'CLASS_INDICES': [0], 'NMS_THRESH': 0.7}, {'CLASS_INDICES': [1], 'NMS_THRESH': 0.7},
              {'CLASS_INDICES': [2], 'NMS_THRESH': 0.7}],
}


HUNGARIAN_SCHEMA = Schema('DENSE_HEAD.TARGET_ASSIGNER_CONFIG.HUNGARIAN_ASSIGNER', {
    'cls_cost': {'gamma': 2.0, 'alpha': 0.25, 'weight': 0.15},
    'reg_cost': {'weight': 0.25},
    'iou_cost': {'weight': 0.25}})
TARGET_ASSIGNER_SCHEMA = Schema('DENSE_HEAD.TARGET_ASSIGNER_CONFIG', {
    'FEATURE_MAP_STRIDE': REQUIRED, 'DATASET': 'nuScenes', 'GAUSSIAN_OVERLAP': 0.1, 'MIN_RADIUS': 2,
    'HUNGARIAN_ASSIGNER': HUNGARIAN_SCHEMA}, required=True)
LOSS_CONFIG_SCHEMA = Schema('DENSE_HEAD.LOSS_CONFIG', {
    'LOSS_WEIGHTS': Schema('DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS', {
        'cls_weight': 1.0, 'bbox_weight': 0.25, 'hm_weight': 1.0, 'loss_iou_rescore_weight': 0.5,
        'code_weights': None}),
    'LOSS_CLS': Schema('DENSE_HEAD.LOSS_CONFIG.LOSS_CLS', {'use_sigmoid': True, 'gamma': 2.0, 'alpha': 0.25})})
NMS_CONFIG_SCHEMA = Schema('DENSE_HEAD.POST_PROCESSING.NMS_CONFIG', {
    **model_nms_utils.NMS_CONFIG_SCHEMA.keys,
    'SCORE_THRES': None,  # DSVT-repo spelling: score threshold inside each task's NMS
}, absent='none')
POST_PROCESSING_SCHEMA = Schema('DENSE_HEAD.POST_PROCESSING', {
    'SCORE_THRESH': 0.0,
    'POST_CENTER_RANGE': REQUIRED,
    'USE_IOU_TO_RECTIFY_SCORE': False,
    'IOU_RECTIFIER': None,     # one alpha for all classes or one per class
    'NMS_CONFIG': NMS_CONFIG_SCHEMA,   # absent: no NMS (OpenPCDet); present: per-task NMS (DSVT)
    'NMS_TASKS': None,         # [{CLASS_INDICES: [...], NMS_THRESH: t}, ...]; None: DSVT's tasks for DATASET
}, required=True)


class TransFusionHead(nn.Module):
    """TransFusion-L head; see the module docstring for the contract, config keys and variants."""

    CONFIG_SCHEMA = DENSE_HEAD_BASE_SCHEMA.extend('MODEL.DENSE_HEAD (TransFusionHead)', {
        'VARIANT': 'openpcdet',            # openpcdet | dsvt
        'USE_BIAS_BEFORE_NORM': False,
        'NUM_PROPOSALS': REQUIRED,
        'HIDDEN_CHANNEL': REQUIRED,
        'NUM_CLASSES': None,               # upstream configs repeat the class count; checked when given
        'NUM_HEADS': REQUIRED,
        'NMS_KERNEL_SIZE': 3,
        'FFN_CHANNEL': REQUIRED,
        'DROPOUT': 0.1,
        'BN_MOMENTUM': 0.1,
        'ACTIVATION': 'relu',
        'NUM_HM_CONV': 2,
        'QUERY_RADIUS': None,              # local cross-attention window radius; None: global (dsvt: 20)
        'SEPARATE_HEAD_CFG': SEPARATE_HEAD_CFG_SCHEMA,
        'TARGET_ASSIGNER_CONFIG': TARGET_ASSIGNER_SCHEMA,
        'LOSS_CONFIG': LOSS_CONFIG_SCHEMA,
        'POST_PROCESSING': POST_PROCESSING_SCHEMA,
    })

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range, voxel_size,
                 predict_boxes_when_training=True):
        super().__init__()
        cfg = self.CONFIG_SCHEMA.fill(model_cfg)
        self.model_cfg = model_cfg
        self.cfg = cfg
        self.grid_size = np.asarray(grid_size)
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.num_classes = num_class
        self.class_names = list(class_names) if class_names is not None else None
        if cfg.VARIANT not in ('openpcdet', 'dsvt'):
            raise ConfigError(f'DENSE_HEAD.VARIANT must be openpcdet or dsvt, got {cfg.VARIANT!r}')
        self.dsvt = cfg.VARIANT == 'dsvt'
        if cfg.NUM_CLASSES is not None and cfg.NUM_CLASSES != num_class:
            raise ConfigError(f'DENSE_HEAD.NUM_CLASSES is {cfg.NUM_CLASSES} but the model has {num_class} classes')
        ta = cfg.TARGET_ASSIGNER_CONFIG
        self.feature_map_stride = ta.FEATURE_MAP_STRIDE
        self.dataset_name = ta.DATASET
        self.one_by_one_classes = ONE_BY_ONE_NMS_CLASSES.get(self.dataset_name, ())
        if any(c >= num_class for c in self.one_by_one_classes):
            raise ConfigError(f'TARGET_ASSIGNER_CONFIG.DATASET {self.dataset_name} uses 1x1 query NMS for classes '
                              f'{list(self.one_by_one_classes)} but the model has {num_class} classes; set DATASET '
                              f'to another name (e.g. none) for other class lists')
        self.num_proposals = cfg.NUM_PROPOSALS
        self.nms_kernel_size = cfg.NMS_KERNEL_SIZE
        self.query_radius = cfg.QUERY_RADIUS if cfg.QUERY_RADIUS is not None else (20 if self.dsvt else None)
        hidden = cfg.HIDDEN_CHANNEL
        self.hidden_channel = hidden
        bias = True if self.dsvt else bool(cfg.USE_BIAS_BEFORE_NORM)

        loss_cls = cfg.LOSS_CONFIG.LOSS_CLS
        if not loss_cls.use_sigmoid:
            raise ConfigError('LOSS_CONFIG.LOSS_CLS.use_sigmoid: only the sigmoid classifier is supported')
        self.loss_cls = loss_utils.SigmoidFocalClassificationLoss(gamma=loss_cls.gamma, alpha=loss_cls.alpha)
        self.loss_bbox = loss_utils.L1Loss()
        self.loss_heatmap = loss_utils.GaussianFocalLoss()
        weights = cfg.LOSS_CONFIG.LOSS_WEIGHTS
        self.loss_cls_weight, self.loss_bbox_weight = weights.cls_weight, weights.bbox_weight
        self.loss_heatmap_weight = weights.hm_weight
        self.loss_iou_rescore_weight = weights.loss_iou_rescore_weight

        head_cfg = cfg.SEPARATE_HEAD_CFG
        expected = ['center', 'height', 'dim', 'rot'] + (['vel'] if 'vel' in head_cfg.HEAD_ORDER else [])
        if list(head_cfg.HEAD_ORDER) != expected:
            raise ConfigError(f'SEPARATE_HEAD_CFG.HEAD_ORDER must be {expected} (the TransFusion box code), got '
                              f'{list(head_cfg.HEAD_ORDER)}')
        missing = [name for name in head_cfg.HEAD_ORDER if name not in head_cfg.HEAD_DICT]
        if missing:
            raise ConfigError(f'SEPARATE_HEAD_CFG.HEAD_ORDER names {missing} that HEAD_DICT does not define')
        self.code_size = sum(head_cfg.HEAD_DICT[name]['out_channels'] for name in head_cfg.HEAD_ORDER)
        code_weights = weights.code_weights if weights.code_weights is not None else [1.0] * self.code_size
        if len(code_weights) != self.code_size:
            raise ConfigError(f'LOSS_WEIGHTS.code_weights has {len(code_weights)} entries, HEAD_ORDER predicts '
                              f'{self.code_size} values')
        self.code_weights = [float(w) for w in code_weights]
        self.box_coder = TransFusionBoxCoder(self.point_cloud_range, self.voxel_size, self.feature_map_stride,
                                             code_size=self.code_size, height_is_top=self.dsvt)

        self.shared_conv = nn.Conv2d(input_channels, hidden, kernel_size=3, padding=1)
        self.heatmap_head = nn.Sequential(
            BasicBlock2D(hidden, hidden, kernel_size=3, padding=1, bias=bias),
            nn.Conv2d(hidden, num_class, kernel_size=3, padding=1))
        self.class_encoding = nn.Conv1d(num_class, hidden, 1)
        self.decoder = TransformerDecoderLayer(
            hidden, cfg.NUM_HEADS, cfg.FFN_CHANNEL, cfg.DROPOUT, cfg.ACTIVATION,
            self_posembed=PositionEmbeddingLearned(2, hidden), cross_posembed=PositionEmbeddingLearned(2, hidden))
        heads = copy.deepcopy(dict(head_cfg.HEAD_DICT))
        heads['heatmap'] = dict(out_channels=num_class, num_conv=cfg.NUM_HM_CONV)
        self.prediction_head = SeparateHead_Transfusion(hidden, 64, 1, heads, use_bias=bias,
                                                        bias_init_key='heatmap' if self.dsvt else 'hm')
        self.init_weights(cfg.BN_MOMENTUM)
        hung = ta.HUNGARIAN_ASSIGNER
        self.bbox_assigner = HungarianAssigner3D(hung.cls_cost, hung.reg_cost, hung.iou_cost)
        self.forward_ret_dict = {}

    def init_weights(self, bn_momentum):
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.momentum = bn_momentum

    # ----------------------------------------------------------------------------------------------------------
    # prediction
    # ----------------------------------------------------------------------------------------------------------
    def _check_feature_map(self, rows, cols):
        size_x, size_y = (rows, cols) if self.dsvt else (cols, rows)
        for axis, size, cells in (('x', size_x, self.grid_size[0]), ('y', size_y, self.grid_size[1])):
            if size not in (int(cells) // self.feature_map_stride, -(-int(cells) // self.feature_map_stride)):
                raise ValueError(f'TransFusionHead: BEV map has {size} cells along {axis} but grid_size / '
                                 f'FEATURE_MAP_STRIDE = {cells} / {self.feature_map_stride}')
        return size_x, size_y

    def _cell_positions(self, rows, cols, device):
        """(rows * cols, 2) `(x + 0.5, y + 0.5)` pixel centres of the flattened map cells."""
        r, c = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float32),
                              torch.arange(cols, device=device, dtype=torch.float32), indexing='ij')
        x, y = (r, c) if self.dsvt else (c, r)
        return torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1) + 0.5

    def _local_keys(self, lidar_feat_flatten, bev_pos, cells, rows, cols):
        """DSVT-repo local keys: a (2R+1)^2 window around each query cell, masked only where the *linear* key index
        leaves [0, rows * cols) (a window crossing a side wraps to the neighbouring row, as upstream)."""
        batch_size, channels, num_cells = lidar_feat_flatten.shape
        radius = self.query_radius
        offsets = torch.arange(-radius, radius + 1, device=cells.device)
        off_r, off_c = torch.meshgrid(offsets, offsets, indexing='ij')
        key_r = (cells // cols)[:, :, None] + off_r.reshape(1, 1, -1)
        key_c = (cells % cols)[:, :, None] + off_c.reshape(1, 1, -1)
        key_index = key_r * cols + key_c                                      # (B, P, W)
        key_mask = (key_index < 0) | (key_index >= num_cells)
        key_index = key_index.clamp(min=0, max=num_cells - 1)
        num_prop, window = key_index.shape[1], key_index.shape[2]
        flat_index = key_index.view(batch_size, 1, -1)
        key_feat = lidar_feat_flatten.gather(-1, flat_index.expand(-1, channels, -1))
        key_feat = key_feat.view(batch_size, channels, num_prop, window).permute(0, 2, 1, 3)
        key_pos = bev_pos[key_index.view(-1)].view(batch_size * num_prop, window, 2)
        return key_feat.reshape(batch_size * num_prop, channels, window), key_pos, key_mask.view(-1, window)

    def predict(self, inputs):
        """inputs (B, C_in, rows, cols) in the variant's layout -> dict of raw predictions (see module docstring)."""
        batch_size, _, rows, cols = inputs.shape
        lidar_feat = self.shared_conv(inputs)
        lidar_feat_flatten = lidar_feat.view(batch_size, lidar_feat.shape[1], -1)
        bev_pos = self._cell_positions(rows, cols, inputs.device)
        num_cells = rows * cols

        dense_heatmap = self.heatmap_head(lidar_feat)
        heatmap = dense_heatmap.detach().sigmoid()
        padding = self.nms_kernel_size // 2
        local_max = torch.zeros_like(heatmap)
        local_max[:, :, padding:rows - padding, padding:cols - padding] = F.max_pool2d(
            heatmap, kernel_size=self.nms_kernel_size, stride=1, padding=0)
        for cls in self.one_by_one_classes:
            local_max[:, cls] = heatmap[:, cls]
        heatmap = (heatmap * (heatmap == local_max)).view(batch_size, self.num_classes, -1)

        if self.num_proposals > heatmap.shape[1] * num_cells:
            raise ValueError(f'NUM_PROPOSALS {self.num_proposals} exceeds classes x BEV cells '
                             f'{heatmap.shape[1] * num_cells}')
        top_proposals = heatmap.view(batch_size, -1).topk(self.num_proposals, dim=-1).indices
        top_class = torch.div(top_proposals, num_cells, rounding_mode='floor')
        top_cells = top_proposals % num_cells
        query_feat = lidar_feat_flatten.gather(-1, top_cells[:, None, :].expand(-1, lidar_feat_flatten.shape[1], -1))
        self.query_labels = top_class
        one_hot = F.one_hot(top_class, num_classes=self.num_classes).permute(0, 2, 1).to(query_feat.dtype)
        query_feat = query_feat + self.class_encoding(one_hot)
        query_pos = bev_pos[top_cells]                                          # (B, P, 2) = (x, y) pixels

        if self.query_radius is None:
            query_feat = self.decoder(query_feat, lidar_feat_flatten, query_pos,
                                      bev_pos[None].expand(batch_size, -1, -1))
        else:
            key_feat, key_pos, key_mask = self._local_keys(lidar_feat_flatten, bev_pos, top_cells, rows, cols)
            num_prop = top_cells.shape[1]
            query_t = query_feat.permute(0, 2, 1).reshape(batch_size * num_prop, -1, 1)
            query_t = self.decoder(query_t, key_feat, query_pos.reshape(-1, 1, 2), key_pos, key_mask)
            query_feat = query_t.reshape(batch_size, num_prop, -1).permute(0, 2, 1)

        res = self.prediction_head(query_feat)
        res['center'] = res['center'] + query_pos.permute(0, 2, 1)
        res['query_heatmap_score'] = heatmap.gather(-1, top_cells[:, None, :].expand(-1, self.num_classes, -1))
        res['dense_heatmap'] = dense_heatmap
        res['query_labels'] = top_class
        return res

    def decode_preds(self, res):
        """(B, P, 7|9) boxes from raw predictions (`center`, `height`, `dim`, `rot`, `vel`)."""
        return self.box_coder.decode(res['center'], res['height'], res['dim'], res['rot'],
                                     res['vel'] if 'vel' in self.cfg.SEPARATE_HEAD_CFG.HEAD_ORDER else None)

    def forward(self, batch_dict):
        feats = batch_dict['spatial_features_2d']
        if self.dsvt:
            feats = feats.permute(0, 1, 3, 2).contiguous()   # (Y, X) -> (X, Y), as the DSVT repo
        self._check_feature_map(feats.shape[2], feats.shape[3])
        res = self.predict(feats)
        self.forward_ret_dict = {'pred_dicts': res}
        if self.training:
            if 'gt_boxes' not in batch_dict:
                raise KeyError('TransFusionHead in training mode needs batch_dict["gt_boxes"] (B, M, 8|10)')
            loss, tb_dict = self.loss(batch_dict['gt_boxes'], res, feats.shape[2:])
            batch_dict['loss'] = loss
            batch_dict['tb_dict'] = tb_dict
            self.forward_ret_dict.update(loss=loss, tb_dict=tb_dict)
        else:
            with torch.no_grad():
                batch_dict['final_box_dicts'] = self.get_bboxes(res)
        return batch_dict

    def get_loss(self):
        """(loss, tb_dict) of the last training forward (CenterPoint-style detectors call this)."""
        if 'loss' not in self.forward_ret_dict:
            raise RuntimeError('TransFusionHead.get_loss() needs a forward pass in training mode (with gt_boxes)')
        return self.forward_ret_dict['loss'], dict(self.forward_ret_dict['tb_dict'])

    # ----------------------------------------------------------------------------------------------------------
    # targets and losses
    # ----------------------------------------------------------------------------------------------------------
    def get_targets_single(self, gt_boxes, gt_labels, pred_boxes, cls_logits, map_shape):
        """Targets of one sample. gt_boxes (M, 7|9) and gt_labels (M,) 0-based (zero-size rows removed);
        pred_boxes (P, 7|9) detached; cls_logits (K, P)."""
        num_prop = pred_boxes.shape[0]
        assigned, ious = self.bbox_assigner.assign(pred_boxes, gt_boxes, gt_labels, cls_logits.t(),
                                                   self.point_cloud_range)
        pos = assigned > 0
        labels = torch.full((num_prop,), self.num_classes, dtype=torch.long, device=pred_boxes.device)
        bbox_targets = pred_boxes.new_zeros((num_prop, self.code_size))
        bbox_weights = pred_boxes.new_zeros((num_prop, self.code_size))
        if pos.any():
            matched = assigned[pos] - 1
            bbox_targets[pos] = self.box_coder.encode(gt_boxes[matched])
            bbox_weights[pos] = 1.0
            labels[pos] = gt_labels[matched].long()
        rows, cols = map_shape
        size_xy = (rows, cols) if self.dsvt else (cols, rows)
        ta = self.cfg.TARGET_ASSIGNER_CONFIG
        heatmap = heatmap_targets(gt_boxes, gt_labels, self.num_classes, size_xy, self.feature_map_stride,
                                  self.point_cloud_range, self.voxel_size, ta.GAUSSIAN_OVERLAP, ta.MIN_RADIUS,
                                  transpose=self.dsvt)
        num_pos = int(pos.sum())
        mean_iou = float(ious[pos].clamp(0, 1).sum()) / max(num_pos, 1)
        return labels, bbox_targets, bbox_weights, num_pos, mean_iou, heatmap

    def get_targets(self, gt_boxes, res, map_shape):
        pred_boxes = self.decode_preds({k: v.detach() for k, v in res.items()})
        out = []
        for b in range(gt_boxes.shape[0]):
            boxes = gt_boxes[b]
            valid = (boxes[:, 3] > 0) & (boxes[:, 4] > 0)
            out.append(self.get_targets_single(boxes[valid, :-1], boxes[valid, -1].long() - 1, pred_boxes[b],
                                               res['heatmap'][b].detach(), map_shape))
        labels, bbox_targets, bbox_weights, num_pos, mean_ious, heatmaps = zip(*out)
        return (torch.stack(labels), torch.stack(bbox_targets), torch.stack(bbox_weights), sum(num_pos),
                float(np.mean(mean_ious)), torch.stack(heatmaps))

    def loss(self, gt_boxes, res, map_shape):
        """Total loss and tb_dict (see the module docstring)."""
        labels, bbox_targets, bbox_weights, num_pos, matched_ious, heatmap = self.get_targets(gt_boxes, res,
                                                                                               map_shape)
        tb_dict = {}
        loss_heatmap = self.loss_heatmap(clip_sigmoid(res['dense_heatmap']), heatmap).sum() / \
            max(heatmap.eq(1).float().sum().item(), 1)
        loss_all = loss_heatmap * self.loss_heatmap_weight

        cls_score = res['heatmap'].permute(0, 2, 1).reshape(-1, self.num_classes)
        one_hot = F.one_hot(labels.reshape(-1), num_classes=self.num_classes + 1)[:, :-1].to(cls_score.dtype)
        label_weights = cls_score.new_ones(cls_score.shape[0])
        loss_cls = self.loss_cls(cls_score, one_hot, label_weights).sum() / max(num_pos, 1)

        preds = torch.cat([res[name] for name in self.cfg.SEPARATE_HEAD_CFG.HEAD_ORDER], dim=1).permute(0, 2, 1)
        reg_weights = bbox_weights * bbox_weights.new_tensor(self.code_weights)
        loss_bbox = (self.loss_bbox(preds, bbox_targets) * reg_weights).sum() / max(num_pos, 1)
        loss_all = loss_all + loss_cls * self.loss_cls_weight + loss_bbox * self.loss_bbox_weight
        tb_dict.update(loss_heatmap=loss_heatmap.item() * self.loss_heatmap_weight,
                       loss_cls=loss_cls.item() * self.loss_cls_weight,
                       loss_bbox=loss_bbox.item() * self.loss_bbox_weight)

        if 'iou' in res:
            loss_iou = self.iou_loss(res, bbox_targets, bbox_weights)
            loss_all = loss_all + loss_iou * self.loss_iou_rescore_weight
            tb_dict['loss_iou'] = loss_iou.item() * self.loss_iou_rescore_weight
        tb_dict['matched_ious'] = matched_ious
        tb_dict['loss_trans'] = loss_all.item()
        return loss_all, tb_dict

    def iou_loss(self, res, bbox_targets, bbox_weights):
        """DSVT IoU branch: L1(iou, 2 IoU3D(pred, gt) - 1) over positives whose IoU > 0, / their count."""
        pred_boxes = self.decode_preds({k: v.detach() for k, v in res.items()})[..., :7].reshape(-1, 7)
        target_boxes = self.box_coder.decode_codes(bbox_targets.reshape(-1, self.code_size))[:, :7]
        positive = bbox_weights[..., 0].reshape(-1) > 0
        iou_pred = res['iou'].reshape(-1)
        if not positive.any():
            return iou_pred.sum() * 0.0
        iou_target = res['iou'].new_zeros(iou_pred.shape)
        iou_target[positive] = iou3d_nms_utils.paired_boxes_iou3d_gpu(pred_boxes[positive],
                                                                      target_boxes[positive]).to(iou_target.dtype)
        valid = positive & (iou_target > 0)
        loss = F.l1_loss(iou_pred[valid], iou_target[valid] * 2 - 1, reduction='sum')
        return loss / max(int(valid.sum()), 1)

    # ----------------------------------------------------------------------------------------------------------
    # post-processing
    # ----------------------------------------------------------------------------------------------------------
    def _nms_tasks(self, post_cfg):
        tasks = post_cfg.NMS_TASKS if post_cfg.NMS_TASKS is not None else DEFAULT_NMS_TASKS.get(self.dataset_name)
        if tasks is None:
            raise ConfigError(f'POST_PROCESSING.NMS_CONFIG is set but DATASET {self.dataset_name} has no default NMS '
                              f'tasks; set POST_PROCESSING.NMS_TASKS')
        return tasks

    def get_bboxes(self, res):
        """Final boxes per sample (see the module docstring)."""
        post_cfg = self.cfg.POST_PROCESSING
        one_hot = F.one_hot(res['query_labels'], num_classes=self.num_classes).permute(0, 2, 1)
        batch_score = res['heatmap'].sigmoid() * res['query_heatmap_score'] * one_hot
        scores, labels = batch_score.max(dim=1)
        boxes = self.decode_preds(res)
        center_range = boxes.new_tensor(post_cfg.POST_CENTER_RANGE)
        mask = (boxes[..., :3] >= center_range[:3]).all(2) & (boxes[..., :3] <= center_range[3:]).all(2)
        mask &= scores > post_cfg.SCORE_THRESH
        rectify = post_cfg.USE_IOU_TO_RECTIFY_SCORE and 'iou' in res
        ret = []
        for b in range(boxes.shape[0]):
            cur_boxes, cur_scores, cur_labels = boxes[b, mask[b]], scores[b, mask[b]], labels[b, mask[b]]
            if rectify:
                iou = torch.clamp((res['iou'][b, 0, mask[b]] + 1) * 0.5, min=0, max=1.0)
                alpha = cur_scores.new_tensor(post_cfg.IOU_RECTIFIER).view(-1)
                alpha = alpha.expand(self.num_classes) if alpha.numel() == 1 else alpha
                alpha = alpha[cur_labels]
                cur_scores = torch.pow(cur_scores, 1 - alpha) * torch.pow(iou, alpha)
            if post_cfg.NMS_CONFIG is not None:
                keep = self._task_nms(cur_boxes, cur_scores, cur_labels, post_cfg)
                cur_boxes, cur_scores, cur_labels = cur_boxes[keep], cur_scores[keep], cur_labels[keep]
            ret.append({'pred_boxes': cur_boxes, 'pred_scores': cur_scores, 'pred_labels': cur_labels.long() + 1})
        return ret

    def _task_nms(self, boxes, scores, labels, post_cfg):
        """Boolean keep mask: classes of a task share one NMS at the task's threshold; other classes are kept."""
        keep = torch.ones_like(scores, dtype=torch.bool)
        for task in self._nms_tasks(post_cfg):
            task_mask = torch.zeros_like(keep)
            for cls in task['CLASS_INDICES']:
                task_mask |= labels == cls
            keep &= ~task_mask
            if not task_mask.any():
                continue
            nms_config = dict(post_cfg.NMS_CONFIG)
            nms_config['NMS_THRESH'] = task['NMS_THRESH']
            nms_config.pop('SCORE_THRES', None)
            selected, _ = model_nms_utils.class_agnostic_nms(
                box_scores=scores[task_mask], box_preds=boxes[task_mask][:, :7].detach(), nms_config=nms_config,
                score_thresh=NMS_CONFIG_SCHEMA.get(post_cfg.NMS_CONFIG, 'SCORE_THRES'))
            keep[task_mask.nonzero().view(-1)[selected]] = True
        return keep
