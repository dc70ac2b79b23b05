"""CenterHead (CenterPoint-style anchor-free BEV head), OpenPCDet-compatible (spec §3.6).

batch_dict contract (`forward`):
    reads   `spatial_features_2d (B, C_in, H, W)`, `batch_size`, and in training `gt_boxes (B, M, 8|10)`
            (`[x, y, z, dx, dy, dz, h, (vx, vy), label]`, label 1-based, 0 = padding row).
    writes  eval (or `predict_boxes_when_training`): `final_box_dicts`: list (B) of dicts
            `pred_boxes (K, 7|9)`, `pred_scores (K,)`, `pred_labels (K,)` long 1-based;
            with `predict_boxes_when_training` instead `rois (B, R, 7|9)`, `roi_scores (B, R)`,
            `roi_labels (B, R)` 1-based, `has_class_labels = True`.
    keeps   `self.forward_ret_dict = {'pred_dicts': [...], 'target_dicts': {...}}` for `get_loss()`.

Parameters (state-dict names as OpenPCDet): `shared_conv.{0,1}` (Conv3x3 -> BN -> ReLU),
`heads_list.<i>.<name>.{0.0, 0.1, ..., <num_conv-1>}` for every `<name>` in `SEPARATE_HEAD_CFG.HEAD_DICT` plus
`hm` (one SeparateHead per `CLASS_NAMES_EACH_HEAD` entry).

Config keys (`DENSE_HEAD`): `CLASS_AGNOSTIC`, `CLASS_NAMES_EACH_HEAD`, `SHARED_CONV_CHANNEL`,
`USE_BIAS_BEFORE_NORM`, `NUM_HM_CONV`, `BN_EPS`, `BN_MOM`, `SEPARATE_HEAD_CFG.{HEAD_ORDER, HEAD_DICT}`,
`TARGET_ASSIGNER_CONFIG.{FEATURE_MAP_STRIDE, NUM_MAX_OBJS, GAUSSIAN_OVERLAP, MIN_RADIUS}`, `IOU_REG_LOSS`,
`LOSS_CONFIG.LOSS_WEIGHTS.{cls_weight, loc_weight, code_weights}`, `POST_PROCESSING.{SCORE_THRESH,
POST_CENTER_LIMIT_RANGE, MAX_OBJ_PER_SAMPLE, USE_IOU_TO_RECTIFY_SCORE, IOU_RECTIFIER, NMS_CONFIG}`
(NMS_TYPE `nms_gpu` | `nms_normal_gpu` (class-agnostic per head), `class_specific_nms` (OPCD), `multi_class_nms`
(DSVT-repo legacy kernel), `circle_nms`); see docs/MODELS.md.

Differences from upstream (behaviour-preserving unless stated): targets are built on the input device with tensor
ops (no per-object loop, no `.cpu()`); class-id mappings follow the input device (no `.cuda()`); `get_loss()` does
not overwrite the stored logits with probabilities (calling it twice gives the same loss); the batch `gt_boxes`
labels are not modified in place; `IOU_REG_LOSS` works without an `iou` branch; `circle_nms` is implemented
(upstream raised NotImplementedError); `IOU_RECTIFIER` with a single value applies to all classes;
`class_specific_nms` applies `NMS_POST_MAXSIZE` unless `NMS_CONFIG.COMPAT_IGNORE_POST_MAXSIZE: True`.
"""
import copy
import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from torch.nn.init import kaiming_normal_

from ...config_schema import REQUIRED, MapOf, Schema
from ...utils import loss_utils
from ..detectors.detector3d_template import DENSE_HEAD_BASE_SCHEMA
from ..model_utils import centernet_utils, model_nms_utils
from .target_assigner import center_targets

# DENSE_HEAD.SEPARATE_HEAD_CFG of the CenterPoint-style heads (CenterHead, TransFusionHead)
SEPARATE_HEAD_CFG_SCHEMA = Schema('DENSE_HEAD.SEPARATE_HEAD_CFG', {
    'HEAD_ORDER': REQUIRED,
    'HEAD_DICT': MapOf(Schema('SEPARATE_HEAD_CFG.HEAD_DICT entry', {'out_channels': REQUIRED, 'num_conv': REQUIRED}),
                       default={}),
}, required=True)

class SeparateHead(nn.Module):
    """One conv branch per output (`center`, `center_z`, `dim`, `rot`, `vel`, `iou`, `hm`).

    Each branch: `(num_conv - 1) x [Conv3x3(C, C, bias=use_bias) -> BN -> ReLU]` then `Conv3x3(C, out, bias=True)`.
    `hm`'s last bias is `init_bias` (-2.19, prior 0.1); other branches: Kaiming-normal weights, zero biases.
    `forward(x (B, C, H, W)) -> {name: (B, out, H, W)}`.
    """

    def __init__(self, input_channels, sep_head_dict, init_bias=-2.19, use_bias=False, norm_func=None):
        super().__init__()
        self.sep_head_dict = sep_head_dict
        for cur_name in self.sep_head_dict:
            output_channels = self.sep_head_dict[cur_name]['out_channels']
            num_conv = self.sep_head_dict[cur_name]['num_conv']
            fc_list = []
            for _ in range(num_conv - 1):
                fc_list.append(nn.Sequential(
                    nn.Conv2d(input_channels, input_channels, kernel_size=3, stride=1, padding=1, bias=use_bias),
                    nn.BatchNorm2d(input_channels) if norm_func is None else norm_func(input_channels),
                    nn.ReLU(),
                ))
            fc_list.append(nn.Conv2d(input_channels, output_channels, kernel_size=3, stride=1, padding=1, bias=True))
            fc = nn.Sequential(*fc_list)
            if 'hm' in cur_name:
                fc[-1].bias.data.fill_(init_bias)
            else:
                for m in fc.modules():
                    if isinstance(m, nn.Conv2d):
                        kaiming_normal_(m.weight.data)
                        if m.bias is not None:
                            nn.init.constant_(m.bias, 0)
            self.__setattr__(cur_name, fc)

    def forward(self, x):
        return {cur_name: self.__getattr__(cur_name)(x) for cur_name in self.sep_head_dict}


TARGET_ASSIGNER_SCHEMA = Schema('DENSE_HEAD.TARGET_ASSIGNER_CONFIG', {
    'FEATURE_MAP_STRIDE': REQUIRED, 'NUM_MAX_OBJS': REQUIRED, 'GAUSSIAN_OVERLAP': REQUIRED, 'MIN_RADIUS': REQUIRED},
    required=True)
LOSS_WEIGHTS_SCHEMA = Schema('DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS', {
    'cls_weight': REQUIRED, 'loc_weight': REQUIRED, 'code_weights': None}, required=True)
POST_PROCESSING_SCHEMA = Schema('DENSE_HEAD.POST_PROCESSING', {
    'SCORE_THRESH': REQUIRED,
    'POST_CENTER_LIMIT_RANGE': REQUIRED,
    'MAX_OBJ_PER_SAMPLE': REQUIRED,
    'USE_IOU_TO_RECTIFY_SCORE': False,
    'IOU_RECTIFIER': None,              # one alpha per class (or one for all); needed with USE_IOU_TO_RECTIFY_SCORE
    'NMS_CONFIG': model_nms_utils.NMS_CONFIG_SCHEMA.extend('DENSE_HEAD.POST_PROCESSING.NMS_CONFIG', {}),
}, required=True)


class CenterHead(nn.Module):
    """CenterPoint head; see the module docstring for the batch_dict contract and config keys.

    Args (as built by `Detector3DTemplate.build_dense_head`):
        model_cfg: the `DENSE_HEAD` config. input_channels: BEV channels. num_class: number of classes.
        class_names: all class names (labels are 1-based indices into it). grid_size: (nx, ny, nz).
        point_cloud_range: (6,). voxel_size: (3,). predict_boxes_when_training: decode boxes in training too
        (two-stage models).
    """

    CONFIG_SCHEMA = DENSE_HEAD_BASE_SCHEMA.extend('MODEL.DENSE_HEAD (CenterHead)', {
        'CLASS_NAMES_EACH_HEAD': REQUIRED,
        'SHARED_CONV_CHANNEL': REQUIRED,
        'USE_BIAS_BEFORE_NORM': False,
        'NUM_HM_CONV': REQUIRED,
        'BN_EPS': 1e-5,
        'BN_MOM': 0.1,
        'IOU_REG_LOSS': False,
        'SEPARATE_HEAD_CFG': SEPARATE_HEAD_CFG_SCHEMA,
        'TARGET_ASSIGNER_CONFIG': TARGET_ASSIGNER_SCHEMA,
        'LOSS_CONFIG': Schema('DENSE_HEAD.LOSS_CONFIG', {'LOSS_WEIGHTS': LOSS_WEIGHTS_SCHEMA}, required=True),
        'POST_PROCESSING': POST_PROCESSING_SCHEMA,
    })

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range, voxel_size,
                 predict_boxes_when_training=True):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.grid_size = np.asarray(grid_size)
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        schema = self.CONFIG_SCHEMA
        self.feature_map_stride = TARGET_ASSIGNER_SCHEMA.get(schema.get(model_cfg, 'TARGET_ASSIGNER_CONFIG'),
                                                             'FEATURE_MAP_STRIDE')

        self.class_names = list(class_names)
        self.class_names_each_head = []
        self.class_id_mapping_each_head = []
        for cur_class_names in model_cfg.CLASS_NAMES_EACH_HEAD:
            self.class_names_each_head.append([x for x in cur_class_names if x in self.class_names])
            self.class_id_mapping_each_head.append(torch.tensor(
                [self.class_names.index(x) for x in cur_class_names if x in self.class_names], dtype=torch.long))
        assigned = [name for names in self.class_names_each_head for name in names]
        if sorted(assigned) != sorted(self.class_names) or len(set(assigned)) != len(assigned):
            raise ValueError(f'DENSE_HEAD.CLASS_NAMES_EACH_HEAD must list every class of CLASS_NAMES exactly once: '
                             f'CLASS_NAMES={self.class_names}, heads={self.class_names_each_head}')
        if any(len(names) == 0 for names in self.class_names_each_head):
            raise ValueError(f'DENSE_HEAD.CLASS_NAMES_EACH_HEAD has a head with no class of CLASS_NAMES '
                             f'{self.class_names}: {list(model_cfg.CLASS_NAMES_EACH_HEAD)}')

        use_bias = schema.get(model_cfg, 'USE_BIAS_BEFORE_NORM')
        norm_func = partial(nn.BatchNorm2d, eps=schema.get(model_cfg, 'BN_EPS'),
                            momentum=schema.get(model_cfg, 'BN_MOM'))
        self.shared_conv = nn.Sequential(
            nn.Conv2d(input_channels, model_cfg.SHARED_CONV_CHANNEL, 3, stride=1, padding=1, bias=use_bias),
            norm_func(model_cfg.SHARED_CONV_CHANNEL),
            nn.ReLU(),
        )

        self.heads_list = nn.ModuleList()
        self.separate_head_cfg = model_cfg.SEPARATE_HEAD_CFG
        head_dict = self.separate_head_cfg.HEAD_DICT
        missing = [name for name in self.separate_head_cfg.HEAD_ORDER if name not in head_dict]
        if missing:
            raise ValueError(f'SEPARATE_HEAD_CFG.HEAD_ORDER names {missing} that HEAD_DICT does not define')
        for cur_class_names in self.class_names_each_head:
            cur_head_dict = copy.deepcopy(head_dict)
            cur_head_dict['hm'] = dict(out_channels=len(cur_class_names), num_conv=model_cfg.NUM_HM_CONV)
            self.heads_list.append(SeparateHead(
                input_channels=model_cfg.SHARED_CONV_CHANNEL, sep_head_dict=cur_head_dict, init_bias=-2.19,
                use_bias=use_bias, norm_func=norm_func))

        self.code_size = sum(head_dict[name]['out_channels'] for name in self.separate_head_cfg.HEAD_ORDER)
        code_weights = LOSS_WEIGHTS_SCHEMA.get(model_cfg.LOSS_CONFIG.LOSS_WEIGHTS, 'code_weights')
        if code_weights is not None and len(code_weights) != self.code_size:
            raise ValueError(f'LOSS_CONFIG.LOSS_WEIGHTS.code_weights has {len(code_weights)} entries but HEAD_ORDER '
                             f'{list(self.separate_head_cfg.HEAD_ORDER)} predicts {self.code_size} values')
        self.predict_boxes_when_training = bool(predict_boxes_when_training)
        self.forward_ret_dict = {}
        self.build_losses()

    def build_losses(self):
        self.add_module('hm_loss_func', loss_utils.FocalLossCenterNet())
        self.add_module('reg_loss_func', loss_utils.RegLossCenterNet())

    # ----------------------------------------------------------------------------------------------------------
    # targets
    # ----------------------------------------------------------------------------------------------------------
    def _check_feature_map_size(self, feature_map_size):
        """feature_map_size (W, H) must match grid_size / FEATURE_MAP_STRIDE (floor or ceil)."""
        for axis, size in zip('xy', feature_map_size):
            cells = self.grid_size[0 if axis == 'x' else 1] / self.feature_map_stride
            if size not in (math.floor(cells), math.ceil(cells)):
                raise ValueError(
                    f'CenterHead: BEV feature map has {size} cells along {axis} but grid_size '
                    f'{self.grid_size.tolist()} / FEATURE_MAP_STRIDE {self.feature_map_stride} = {cells}; '
                    f'fix TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE or the BEV backbone strides')

    def assign_targets(self, gt_boxes, feature_map_size=None, **kwargs):
        """Targets for every head.

        Args:
            gt_boxes: (B, M, C + 1) global 1-based labels in the last column.
            feature_map_size: (H, W) of the BEV map (as `spatial_features_2d.shape[2:]`).
        Returns:
            dict of per-head lists: `heatmaps (B, n, H, W)`, `target_boxes (B, K, 8|10)`, `inds (B, K)`,
            `masks (B, K)`, `target_boxes_src (B, K, C + 1)`.
        """
        feature_map_size = [int(v) for v in feature_map_size][::-1]  # (H, W) -> (W, H)
        self._check_feature_map_size(feature_map_size)
        cfg = self.model_cfg.TARGET_ASSIGNER_CONFIG
        return center_targets.assign_targets(
            gt_boxes, self.class_names, self.class_names_each_head, feature_map_size, self.feature_map_stride,
            self.point_cloud_range, self.voxel_size, num_max_objs=cfg.NUM_MAX_OBJS,
            gaussian_overlap=cfg.GAUSSIAN_OVERLAP, min_radius=cfg.MIN_RADIUS)

    # ----------------------------------------------------------------------------------------------------------
    # loss
    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def sigmoid(x):
        return torch.clamp(x.sigmoid(), min=1e-4, max=1 - 1e-4)

    def get_loss(self):
        """Loss of the last training forward.

        Returns:
            loss: 0-d tensor. tb_dict: `hm_loss_head_<i>`, `loc_loss_head_<i>`, (`iou_loss_head_<i>`,
            `iou_reg_loss_head_<i>`), `rpn_loss` as floats.
        """
        if 'target_dicts' not in self.forward_ret_dict:
            raise RuntimeError('CenterHead.get_loss() needs a forward pass in training mode (with gt_boxes) first')
        pred_dicts = self.forward_ret_dict['pred_dicts']
        target_dicts = self.forward_ret_dict['target_dicts']
        loss_weights = self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS
        iou_reg = self.CONFIG_SCHEMA.get(self.model_cfg, 'IOU_REG_LOSS')

        tb_dict = {}
        loss = 0
        for idx, pred_dict in enumerate(pred_dicts):
            hm_pred = self.sigmoid(pred_dict['hm'])
            hm_loss = self.hm_loss_func(hm_pred, target_dicts['heatmaps'][idx]) * loss_weights['cls_weight']

            pred_boxes = torch.cat([pred_dict[name] for name in self.separate_head_cfg.HEAD_ORDER], dim=1)
            target_boxes = target_dicts['target_boxes'][idx]
            if target_boxes.shape[-1] < pred_boxes.shape[1]:
                raise ValueError(f'HEAD_ORDER predicts {pred_boxes.shape[1]} values but gt_boxes only give '
                                 f'{target_boxes.shape[-1]} (velocity head without velocity in gt_boxes?)')
            target_boxes = target_boxes[..., :pred_boxes.shape[1]]
            reg_loss = self.reg_loss_func(pred_boxes, target_dicts['masks'][idx], target_dicts['inds'][idx],
                                          target_boxes)
            code_weights = LOSS_WEIGHTS_SCHEMA.get(loss_weights, 'code_weights')
            if code_weights is not None:
                reg_loss = reg_loss * reg_loss.new_tensor(code_weights)
            loc_loss = reg_loss.sum() * loss_weights['loc_weight']

            loss = loss + hm_loss + loc_loss
            tb_dict['hm_loss_head_%d' % idx] = hm_loss.item()
            tb_dict['loc_loss_head_%d' % idx] = loc_loss.item()

            if 'iou' in pred_dict or iou_reg:
                batch_box_preds = centernet_utils.decode_bbox_from_pred_dicts(
                    pred_dict=pred_dict, point_cloud_range=self.point_cloud_range, voxel_size=self.voxel_size,
                    feature_map_stride=self.feature_map_stride)  # (B, H, W, 7|9)
                batch_box_preds_for_iou = batch_box_preds.permute(0, 3, 1, 2)  # (B, 7|9, H, W)
                masks, inds = target_dicts['masks'][idx], target_dicts['inds'][idx]
                boxes_src = target_dicts['target_boxes_src'][idx]

                if 'iou' in pred_dict:
                    iou_loss = loss_utils.calculate_iou_loss_centerhead(
                        iou_preds=pred_dict['iou'], batch_box_preds=batch_box_preds_for_iou.clone().detach(),
                        mask=masks, ind=inds, gt_boxes=boxes_src)
                    loss = loss + iou_loss
                    tb_dict['iou_loss_head_%d' % idx] = iou_loss.item()

                if iou_reg:
                    if masks.sum().item() != 0:
                        iou_reg_loss = loss_utils.calculate_iou_reg_loss_centerhead(
                            batch_box_preds=batch_box_preds_for_iou, mask=masks, ind=inds, gt_boxes=boxes_src)
                        iou_reg_loss = iou_reg_loss * loss_weights['loc_weight']
                    else:
                        iou_reg_loss = (batch_box_preds_for_iou * 0.).sum()  # keeps the graph connected
                    loss = loss + iou_reg_loss
                    tb_dict['iou_reg_loss_head_%d' % idx] = iou_reg_loss.item()

        tb_dict['rpn_loss'] = loss.item()
        return loss, tb_dict

    # ----------------------------------------------------------------------------------------------------------
    # decoding + post-processing
    # ----------------------------------------------------------------------------------------------------------
    def _rectify_scores(self, scores, iou, labels, post_process_cfg):
        """`score^(1 - a_c) * clamp(iou, 0, 1)^a_c` with `a_c = IOU_RECTIFIER[label]` (labels 0-based global)."""
        rectifier = scores.new_tensor(post_process_cfg.IOU_RECTIFIER).view(-1)
        if rectifier.numel() == 1:
            alpha = rectifier.expand_as(scores)
        elif rectifier.numel() >= self.num_class:
            alpha = rectifier[labels]
        else:
            raise ValueError(f'POST_PROCESSING.IOU_RECTIFIER needs 1 or {self.num_class} values, got '
                             f'{rectifier.numel()}')
        pred_iou = torch.clamp(iou, min=0, max=1.0)
        return torch.pow(scores, 1 - alpha) * torch.pow(pred_iou, alpha)

    def _nms_one_head(self, head_idx, final_dict, post_process_cfg):
        """NMS of one head's candidates; returns the kept indices (long)."""
        nms_config = post_process_cfg.NMS_CONFIG
        nms_type = nms_config.NMS_TYPE
        scores, boxes, labels = final_dict['pred_scores'], final_dict['pred_boxes'], final_dict['pred_labels']
        if nms_type == 'class_specific_nms':
            selected, _ = model_nms_utils.class_specific_nms(
                box_scores=scores, box_preds=boxes, box_labels=labels, nms_config=nms_config,
                score_thresh=model_nms_utils.NMS_CONFIG_SCHEMA.get(nms_config, 'SCORE_THRESH'))
        elif nms_type == 'multi_class_nms':
            selected, _ = model_nms_utils.multi_classes_nms_mmdet(
                box_scores=scores, box_preds=boxes, box_labels=labels, nms_config=nms_config,
                score_thresh=model_nms_utils.NMS_CONFIG_SCHEMA.get(nms_config, 'SCORE_THRESH'))
        elif nms_type == 'circle_nms':
            thresh = nms_config.NMS_THRESH
            if isinstance(thresh, (list, tuple)):
                thresh = thresh[head_idx]
            head_config = dict(nms_config)
            head_config['NMS_THRESH'] = thresh
            selected, _ = model_nms_utils.class_agnostic_nms(scores, boxes, head_config, score_thresh=None)
        else:
            selected, _ = model_nms_utils.class_agnostic_nms(
                box_scores=scores, box_preds=boxes, nms_config=nms_config, score_thresh=None)
        return selected

    def generate_predicted_boxes(self, batch_size, pred_dicts):
        """Decode every head, rectify scores with the IoU branch, filter, NMS, and merge the heads.

        Args:
            pred_dicts: list (heads) of raw SeparateHead outputs.
        Returns:
            list (B) of `{'pred_boxes' (K, 7|9), 'pred_scores' (K,), 'pred_labels' (K,) 1-based}`.
        """
        post_process_cfg = self.model_cfg.POST_PROCESSING
        ret_dict = [{'pred_boxes': [], 'pred_scores': [], 'pred_labels': []} for _ in range(batch_size)]
        for idx, pred_dict in enumerate(pred_dicts):
            batch_hm = pred_dict['hm'].sigmoid()
            post_center_limit_range = batch_hm.new_tensor(post_process_cfg.POST_CENTER_LIMIT_RANGE)
            batch_dim = pred_dict['dim'].exp()
            batch_rot_cos = pred_dict['rot'][:, 0].unsqueeze(dim=1)
            batch_rot_sin = pred_dict['rot'][:, 1].unsqueeze(dim=1)
            batch_vel = pred_dict['vel'] if 'vel' in self.separate_head_cfg.HEAD_ORDER else None
            batch_iou = (pred_dict['iou'] + 1) * 0.5 if 'iou' in pred_dict else None

            final_pred_dicts = centernet_utils.decode_bbox_from_heatmap(
                heatmap=batch_hm, rot_cos=batch_rot_cos, rot_sin=batch_rot_sin, center=pred_dict['center'],
                center_z=pred_dict['center_z'], dim=batch_dim, vel=batch_vel, iou=batch_iou,
                point_cloud_range=self.point_cloud_range, voxel_size=self.voxel_size,
                feature_map_stride=self.feature_map_stride, K=post_process_cfg.MAX_OBJ_PER_SAMPLE,
                circle_nms=False, score_thresh=post_process_cfg.SCORE_THRESH,
                post_center_limit_range=post_center_limit_range)

            mapping = self.class_id_mapping_each_head[idx].to(batch_hm.device)
            for k, final_dict in enumerate(final_pred_dicts):
                final_dict['pred_labels'] = mapping[final_dict['pred_labels'].long()]
                if POST_PROCESSING_SCHEMA.get(post_process_cfg, 'USE_IOU_TO_RECTIFY_SCORE') and \
                        'pred_iou' in final_dict:
                    final_dict['pred_scores'] = self._rectify_scores(
                        final_dict['pred_scores'], final_dict['pred_iou'], final_dict['pred_labels'],
                        post_process_cfg)
                selected = self._nms_one_head(idx, final_dict, post_process_cfg)
                ret_dict[k]['pred_boxes'].append(final_dict['pred_boxes'][selected])
                ret_dict[k]['pred_scores'].append(final_dict['pred_scores'][selected])
                ret_dict[k]['pred_labels'].append(final_dict['pred_labels'][selected])

        for k in range(batch_size):
            ret_dict[k]['pred_boxes'] = torch.cat(ret_dict[k]['pred_boxes'], dim=0)
            ret_dict[k]['pred_scores'] = torch.cat(ret_dict[k]['pred_scores'], dim=0)
            ret_dict[k]['pred_labels'] = torch.cat(ret_dict[k]['pred_labels'], dim=0).long() + 1
        return ret_dict

    @staticmethod
    def reorder_rois_for_refining(batch_size, pred_dicts):
        """Pad per-sample predictions into `rois (B, R, C)`, `roi_scores (B, R)`, `roi_labels (B, R)` (R >= 1)."""
        num_max_rois = max(1, max(len(cur_dict['pred_boxes']) for cur_dict in pred_dicts))
        pred_boxes = pred_dicts[0]['pred_boxes']
        rois = pred_boxes.new_zeros((batch_size, num_max_rois, pred_boxes.shape[-1]))
        roi_scores = pred_boxes.new_zeros((batch_size, num_max_rois))
        roi_labels = pred_boxes.new_zeros((batch_size, num_max_rois)).long()
        for bs_idx in range(batch_size):
            num_boxes = len(pred_dicts[bs_idx]['pred_boxes'])
            rois[bs_idx, :num_boxes, :] = pred_dicts[bs_idx]['pred_boxes']
            roi_scores[bs_idx, :num_boxes] = pred_dicts[bs_idx]['pred_scores']
            roi_labels[bs_idx, :num_boxes] = pred_dicts[bs_idx]['pred_labels']
        return rois, roi_scores, roi_labels

    def forward(self, data_dict):
        """See the module docstring for the keys read and written."""
        spatial_features_2d = data_dict['spatial_features_2d']
        x = self.shared_conv(spatial_features_2d)
        pred_dicts = [head(x) for head in self.heads_list]

        if self.training:
            if 'gt_boxes' not in data_dict:
                raise KeyError('CenterHead in training mode needs batch_dict["gt_boxes"] (B, M, 8|10)')
            self.forward_ret_dict['target_dicts'] = self.assign_targets(
                data_dict['gt_boxes'], feature_map_size=spatial_features_2d.size()[2:])
        self.forward_ret_dict['pred_dicts'] = pred_dicts

        if not self.training or self.predict_boxes_when_training:
            with torch.no_grad():
                final_dicts = self.generate_predicted_boxes(data_dict['batch_size'], pred_dicts)
            if self.predict_boxes_when_training:
                rois, roi_scores, roi_labels = self.reorder_rois_for_refining(data_dict['batch_size'], final_dicts)
                data_dict['rois'] = rois
                data_dict['roi_scores'] = roi_scores
                data_dict['roi_labels'] = roi_labels
                data_dict['has_class_labels'] = True
            else:
                data_dict['final_box_dicts'] = final_dicts
        return data_dict
