"""SegHead: per-point LiDAR segmentation on a DSVT encoder (decision D5; nuScenes-lidarseg, spec §A).

Architecture:
1. Up-sampling to stage-0 voxels (U-Net style, sparse): the last stage's features are carried down one stage at a
   time through the encoder's pooling maps (`dsvt_pooling_maps[s]`: stage-s voxel -> its stage-(s+1) voxel) and
   fused with the stage's own output: `f_s <- GELU(LayerNorm(Linear([f_s, f_{s+1}[map_s]])))` (`up_blocks.<s>`).
   A one-stage encoder (the tiny pillar configs) has no up-sampling: its output is already per stage-0 voxel.
2. Per-point features: each point in the grid takes the feature of its stage-0 voxel (`point_voxel_index` of the
   dynamic VFE) and -- with `POINT_BRANCH.ENABLED` -- concatenates a small per-point MLP of
   `[(xyz - voxel centre) / voxel size, z, the other raw point features (intensity, time lag, ...)]`
   (`point_mlp`: Linear + BatchNorm1d + ReLU per width in `POINT_BRANCH.HIDDEN_CHANNELS`). Without it every point
   of a voxel receives the same logits; with 0.8 m x 0.8 m x 8 m pillars (the tiny configs) ground and car points
   of one pillar would be indistinguishable (docs/SEGMENTATION_OCCUPANCY.md, decision "point branch").
3. Classifier (`classifier`): Linear + BatchNorm1d + ReLU per width in `CLS_HIDDEN_CHANNELS` ([] = one linear
   layer, D5's per-voxel linear head), then Linear -> 16 (column c <-> official lidarseg id c + 1).

Loss (training): `LOSS_WEIGHTS.CE * CE + LOSS_WEIGHTS.LOVASZ * Lovasz-softmax`, both over the points inside the
grid whose label is not `IGNORE_INDEX` (0), classes present in the batch (spec §A.5; no class weights, as mmdet3d /
Pointcept).

forward(batch_dict):
    reads  points (P, 1 + C) [b, x, y, z, features...], batch_size, point_in_grid_mask (P,) bool and
           point_voxel_index (P_in,) long (dynamic VFE), dsvt_stage_features list (S) of (N_s, C_s),
           dsvt_stage_coords list (S) of (N_s, 4) [b, z, y, x], dsvt_pooling_maps list (S - 1) of (N_s,) (DSVT);
           training: point_seg_labels (P,) official ids 0..16 (any numeric dtype; 0 = ignore)
    writes point_seg_logits (P, 16) float (rows outside the grid are 0)
get_loss() -> (loss, tb_dict {loss_seg, loss_ce, loss_lovasz, point_acc})
get_predictions(batch_dict) -> list (B) of {'point_seg_preds': (N_b,) int64}: official ids 1..16, 0 for a point the
    grid does not cover; rows of sample b are the rows of `points` with points[:, 0] == b, in order.
"""
import torch
from torch import nn

from ...config import ConfigError
from ...config_schema import Schema, check_block
from ...utils.seg_losses import cross_entropy_ignore, lovasz_softmax
from ..detectors.detector3d_template import DENSE_HEAD_BASE_SCHEMA

# The 16 nuScenes-lidarseg challenge classes in official order (ids 1..16; 0 = ignore).
LIDARSEG_CLASS_NAMES = ('barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle', 'pedestrian',
                        'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat', 'sidewalk', 'terrain',
                        'manmade', 'vegetation')

POINT_BRANCH_SCHEMA = Schema('DENSE_HEAD.POINT_BRANCH', {'ENABLED': True, 'HIDDEN_CHANNELS': [32, 32]})
SEG_LOSS_WEIGHTS_SCHEMA = Schema('DENSE_HEAD.LOSS_WEIGHTS', {'CE': 1.0, 'LOVASZ': 1.0})


def read_block(schema, model_cfg, key, sub_schema, path):
    """`model_cfg[key]` checked against `sub_schema` (unknown keys are a ConfigError naming `path`), defaults
    filled in."""
    given = schema.get(model_cfg, key)
    check_block(given, sub_schema, path)
    return sub_schema.fill(given)


def check_class_names(class_names, num_class, head):
    """The heads map column c to official id c + 1, so CLASS_NAMES must be the 16 challenge classes in order."""
    if class_names is not None and tuple(class_names) != LIDARSEG_CLASS_NAMES:
        raise ValueError(f'{head}: CLASS_NAMES must be the 16 nuScenes-lidarseg challenge classes in official order '
                         f'{list(LIDARSEG_CLASS_NAMES)}, got {list(class_names)}')
    if num_class != len(LIDARSEG_CLASS_NAMES):
        raise ValueError(f'{head}: num_class {num_class}, expected {len(LIDARSEG_CLASS_NAMES)} (len(CLASS_NAMES))')


def encoder_stage_list(encoder_stages, input_channels, grid_size):
    """[(channels, [nx, ny, nz]), ...] per encoder stage; one stage at `grid_size` when the builder gives none."""
    if encoder_stages is None:
        return [(int(input_channels), [int(v) for v in grid_size])]
    return [(int(stage['channels']), [int(v) for v in stage['shape']]) for stage in encoder_stages]


def mlp(in_channels, widths):
    """Linear(no bias) + BatchNorm1d + ReLU per width -> (nn.Sequential, out_channels)."""
    layers = []
    for width in widths:
        layers += [nn.Linear(in_channels, int(width), bias=False), nn.BatchNorm1d(int(width)), nn.ReLU(inplace=True)]
        in_channels = int(width)
    return nn.Sequential(*layers), in_channels


def stage_outputs(batch_dict, num_stages, head):
    """(features, coords, pooling maps) of the encoder stages, checked against the stage count the head was
    built for."""
    features, coords = batch_dict['dsvt_stage_features'], batch_dict['dsvt_stage_coords']
    maps = batch_dict['dsvt_pooling_maps']
    if len(features) != num_stages or len(coords) != num_stages or len(maps) != num_stages - 1:
        raise ValueError(f'{head} was built for a {num_stages}-stage encoder but the batch holds {len(features)} '
                         f'stage outputs and {len(maps)} pooling maps (MODEL.BACKBONE_3D)')
    return features, coords, maps


class SegHead(nn.Module):
    CONFIG_SCHEMA = DENSE_HEAD_BASE_SCHEMA.extend('MODEL.DENSE_HEAD (SegHead)', {
        'POINT_BRANCH': POINT_BRANCH_SCHEMA,
        'CLS_HIDDEN_CHANNELS': [],          # classifier MLP widths before the last Linear
        'IGNORE_INDEX': 0,                  # official lidarseg ignore id
        'LOSS_WEIGHTS': SEG_LOSS_WEIGHTS_SCHEMA,
    })

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range, voxel_size,
                 encoder_stages=None, num_raw_point_features=None, **kwargs):
        super().__init__()
        schema = self.CONFIG_SCHEMA
        self.model_cfg = model_cfg
        check_class_names(class_names, num_class, 'SegHead')
        self.num_class = int(num_class)
        self.ignore_index = int(schema.get(model_cfg, 'IGNORE_INDEX'))
        if self.ignore_index != 0:  # targets are `label - 1` (column c <-> official id c + 1): only 0 can be ignored
            raise ConfigError(f'MODEL.DENSE_HEAD.IGNORE_INDEX must be 0 (the lidarseg ignore id), got '
                              f'{self.ignore_index}')
        self.loss_weights = read_block(schema, model_cfg, 'LOSS_WEIGHTS', SEG_LOSS_WEIGHTS_SCHEMA,
                                       'DENSE_HEAD.LOSS_WEIGHTS')
        point_branch = read_block(schema, model_cfg, 'POINT_BRANCH', POINT_BRANCH_SCHEMA, 'DENSE_HEAD.POINT_BRANCH')
        self.stages = encoder_stage_list(encoder_stages, input_channels, grid_size)
        self.up_blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(self.stages[s][0] + self.stages[s + 1][0], self.stages[s][0], bias=False),
                          nn.LayerNorm(self.stages[s][0]), nn.GELU())
            for s in range(len(self.stages) - 1)])
        feature_channels = self.stages[0][0]
        self.use_point_branch = bool(point_branch['ENABLED'])
        if self.use_point_branch:
            if num_raw_point_features is None or int(num_raw_point_features) < 3:
                raise ValueError('SegHead.POINT_BRANCH needs the number of raw point features (x, y, z, ...)')
            # (xyz - centre) / voxel size (3) + z and the non-xyz raw features (num_raw - 2)
            self.point_mlp, point_channels = mlp(3 + int(num_raw_point_features) - 2, point_branch['HIDDEN_CHANNELS'])
            feature_channels += point_channels
        hidden, cls_channels = mlp(feature_channels, schema.get(model_cfg, 'CLS_HIDDEN_CHANNELS'))
        self.classifier = nn.Sequential(*hidden, nn.Linear(cls_channels, self.num_class))
        self.register_buffer('voxel_size', torch.tensor([float(v) for v in voxel_size]), persistent=False)
        self.register_buffer('point_cloud_range', torch.tensor([float(v) for v in point_cloud_range]),
                             persistent=False)
        self.forward_ret_dict = {}

    def stage0_features(self, batch_dict):
        """(N0, C_0) features of the stage-0 voxels (the VFE's voxels, in its order) and their coords (N0, 4)."""
        features, coords, maps = stage_outputs(batch_dict, len(self.stages), 'SegHead')
        x = features[-1]
        for s in range(len(self.stages) - 2, -1, -1):
            x = self.up_blocks[s](torch.cat([features[s], x[maps[s]]], dim=1))
        return x, coords[0]

    def point_features(self, points, voxel_index, voxel_coords):
        """(P_in, C_pt) per-point branch input -> MLP output, for the in-grid points `points` (P_in, 1 + C)."""
        dtype = points.dtype
        voxel_size = self.voxel_size.to(points.device, dtype)
        centres = (voxel_coords[:, [3, 2, 1]].to(dtype) + 0.5) * voxel_size + self.point_cloud_range[:3].to(
            points.device, dtype)
        offsets = (points[:, 1:4] - centres[voxel_index]) / voxel_size
        return self.point_mlp(torch.cat([offsets, points[:, 3:]], dim=1))

    def forward(self, batch_dict):
        points = batch_dict['points']
        in_grid = batch_dict['point_in_grid_mask']
        voxel_index = batch_dict['point_voxel_index']
        voxel_features, voxel_coords = self.stage0_features(batch_dict)
        rows = in_grid  # the points that get logits
        labels = None
        if self.training:
            labels = self._checked_labels(batch_dict, points)
            # Training scores only labelled points: with sweeps unlabelled (SEG_LABEL_SWEEPS False) ~90% of a 10-sweep
            # cloud is ignore, and its point branch / classifier rows would cost time for a zero loss term.
            labelled = labels[in_grid] != self.ignore_index
            rows = in_grid.clone()
            rows[in_grid] = labelled
            voxel_index = voxel_index[labelled]
        features = voxel_features[voxel_index]
        if self.use_point_branch:
            features = torch.cat([features, self.point_features(points[rows], voxel_index, voxel_coords)], dim=1)
        logits_rows = self.classifier(features)
        logits = logits_rows.new_zeros((points.shape[0], self.num_class))
        logits[rows] = logits_rows
        batch_dict['point_seg_logits'] = logits  # training: zero rows for ignored points
        if self.training:
            self.forward_ret_dict = {'logits': logits_rows, 'labels': labels[rows]}
        return batch_dict

    def _checked_labels(self, batch_dict, points):
        if 'point_seg_labels' not in batch_dict:
            raise KeyError('SegHead (training) needs batch_dict["point_seg_labels"] (P,): set DATA_CONFIG.TASK: '
                           'segmentation')
        labels = batch_dict['point_seg_labels'].reshape(-1).long()
        if labels.shape[0] != points.shape[0]:
            raise ValueError(f'point_seg_labels has {labels.shape[0]} rows, points has {points.shape[0]}')
        # the dataset validates label files; the value check here runs on CPU tensors only, since on a GPU it would
        # synchronise the host every step
        if labels.device.type == 'cpu' and labels.numel() and (int(labels.min()) < 0 or
                                                                int(labels.max()) > self.num_class):
            raise ValueError(f'point_seg_labels must hold official ids 0..{self.num_class}, got '
                             f'[{int(labels.min())}, {int(labels.max())}]')
        return labels

    def get_loss(self):
        logits, labels = self.forward_ret_dict['logits'], self.forward_ret_dict['labels']
        targets = labels - 1                        # column c <-> id c + 1; ignore 0 -> -1
        ignore = self.ignore_index - 1
        loss_ce = cross_entropy_ignore(logits, targets, ignore)
        loss_lovasz = lovasz_softmax(torch.softmax(logits.float(), dim=1), targets, ignore_index=ignore)
        loss = self.loss_weights['CE'] * loss_ce + self.loss_weights['LOVASZ'] * loss_lovasz
        valid = targets != ignore
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == targets) & valid
            accuracy = correct.sum().float() / valid.sum().clamp(min=1)
        tb_dict = {'loss_seg': loss.detach(), 'loss_ce': loss_ce.detach(), 'loss_lovasz': loss_lovasz.detach(),
                   'point_acc': accuracy}
        return loss, tb_dict

    def get_predictions(self, batch_dict):
        """Per-sample official ids (see the module docstring)."""
        logits, points = batch_dict['point_seg_logits'], batch_dict['points']
        preds = logits.argmax(dim=1) + 1
        preds[~batch_dict['point_in_grid_mask']] = 0
        batch_index = points[:, 0].long()
        return [{'point_seg_preds': preds[batch_index == b]} for b in range(int(batch_dict['batch_size']))]
