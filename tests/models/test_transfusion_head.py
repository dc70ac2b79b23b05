"""TransFusionHead: Hungarian assignment vs brute force, box code round trip, heatmap targets vs a per-object loop,
query initialisation, post-processing, forward/backward with and without GT, upstream state-dict names.

References are written independently from the spec (seg_occ_transfusion.md §C, openpcdet_dsvt.md §3.7-§3.8).
"""
import itertools
import math

import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet.config import ConfigError
from pcdet.config_schema import check_block
from pcdet.models.dense_heads import __all__ as dense_heads
from pcdet.models.dense_heads.target_assigner.hungarian_assigner import HungarianAssigner3D
from pcdet.models.dense_heads.target_assigner.transfusion_targets import TransFusionBoxCoder, heatmap_targets
from pcdet.models.dense_heads.transfusion_head import TransFusionHead
from pcdet.models.detectors import __all__ as detectors

PC_RANGE = [-8.0, -8.0, -3.0, 8.0, 8.0, 3.0]
VOXEL = [0.5, 0.5, 6.0]
GRID = [32, 32, 1]          # stride 2 -> 16 x 16 BEV map
COSTS = {'cls_cost': {'gamma': 2.0, 'alpha': 0.25, 'weight': 0.15}, 'reg_cost': {'weight': 0.25},
         'iou_cost': {'weight': 0.25}}


def head_cfg(variant='openpcdet', iou=False, vel=True, dataset='none', **extra):
    head_dict = {'center': {'out_channels': 2, 'num_conv': 2}, 'height': {'out_channels': 1, 'num_conv': 2},
                 'dim': {'out_channels': 3, 'num_conv': 2}, 'rot': {'out_channels': 2, 'num_conv': 2}}
    order = ['center', 'height', 'dim', 'rot']
    if vel:
        head_dict['vel'] = {'out_channels': 2, 'num_conv': 2}
        order.append('vel')
    if iou:
        head_dict['iou'] = {'out_channels': 1, 'num_conv': 2}
    cfg = {
        'NAME': 'TransFusionHead', 'VARIANT': variant, 'CLASS_AGNOSTIC': False, 'USE_BIAS_BEFORE_NORM': False,
        'NUM_PROPOSALS': 12, 'HIDDEN_CHANNEL': 16, 'NUM_HEADS': 4, 'NMS_KERNEL_SIZE': 3, 'FFN_CHANNEL': 32,
        'DROPOUT': 0.0, 'BN_MOMENTUM': 0.1, 'ACTIVATION': 'relu', 'NUM_HM_CONV': 2,
        'SEPARATE_HEAD_CFG': {'HEAD_ORDER': order, 'HEAD_DICT': head_dict},
        'TARGET_ASSIGNER_CONFIG': {'FEATURE_MAP_STRIDE': 2, 'DATASET': dataset, 'GAUSSIAN_OVERLAP': 0.1,
                                   'MIN_RADIUS': 2, 'HUNGARIAN_ASSIGNER': COSTS},
        'LOSS_CONFIG': {'LOSS_WEIGHTS': {'cls_weight': 1.0, 'bbox_weight': 0.25, 'hm_weight': 1.0,
                                         'loss_iou_rescore_weight': 0.5,
                                         'code_weights': [1.0] * 8 + [0.2, 0.2] * vel},
                        'LOSS_CLS': {'use_sigmoid': True, 'gamma': 2.0, 'alpha': 0.25}},
        'POST_PROCESSING': {'SCORE_THRESH': 0.0, 'POST_CENTER_RANGE': [-10, -10, -10, 10, 10, 10]},
    }
    cfg.update(extra)
    return EasyDict(cfg)


def build_head(cfg=None, num_class=3, input_channels=8, grid=GRID, seed=0):
    torch.manual_seed(seed)
    return TransFusionHead(cfg or head_cfg(), input_channels, num_class, ['car', 'ped', 'cone'][:num_class], grid,
                           PC_RANGE, VOXEL, predict_boxes_when_training=False)


# ----------------------------------------------------------------------------------------------------------------
# Hungarian assignment
# ----------------------------------------------------------------------------------------------------------------
def reference_cost(boxes, gt, labels, logits, costs=COSTS):
    """Spec §C.4 cost, one pair at a time; boxes are axis-aligned (heading 0) so the BEV overlap is a rectangle."""
    w_cls, alpha, gamma = costs['cls_cost']['weight'], costs['cls_cost']['alpha'], costs['cls_cost']['gamma']
    cost = np.zeros((len(boxes), len(gt)))
    for i, b in enumerate(boxes.tolist()):
        for j, g in enumerate(gt.tolist()):
            p = 1 / (1 + math.exp(-float(logits[i, labels[j]])))
            pos = -alpha * (1 - p) ** gamma * math.log(p + 1e-12)
            neg = -(1 - alpha) * p ** gamma * math.log(1 - p + 1e-12)
            reg = abs(b[0] - g[0]) / (PC_RANGE[3] - PC_RANGE[0]) + abs(b[1] - g[1]) / (PC_RANGE[4] - PC_RANGE[1])
            ox = max(0.0, min(b[0] + b[3] / 2, g[0] + g[3] / 2) - max(b[0] - b[3] / 2, g[0] - g[3] / 2))
            oy = max(0.0, min(b[1] + b[4] / 2, g[1] + g[4] / 2) - max(b[1] - b[4] / 2, g[1] - g[4] / 2))
            oz = max(0.0, min(b[2] + b[5], g[2] + g[5]) - max(b[2], g[2]))     # z is the bottom (upstream)
            inter = ox * oy * oz
            iou = inter / max(b[3] * b[4] * b[5] + g[3] * g[4] * g[5] - inter, 1e-8)
            cost[i, j] = w_cls * (pos - neg) + costs['reg_cost']['weight'] * reg - costs['iou_cost']['weight'] * iou
    return cost


def brute_force(cost):
    """All injective assignments, cheapest first: list of (total cost, assigned_gt_inds (0 = background, j + 1))."""
    num_p, num_m = cost.shape
    if num_m == 0 or num_p == 0:
        return [(0.0, np.zeros(num_p, dtype=np.int64))]
    if num_p >= num_m:
        candidates = ((perm, range(num_m)) for perm in itertools.permutations(range(num_p), num_m))
    else:
        candidates = ((range(num_p), perm) for perm in itertools.permutations(range(num_m), num_p))
    results = []
    for rows, cols in candidates:
        rows, cols = list(rows), list(cols)
        assign = np.zeros(num_p, dtype=np.int64)
        assign[rows] = np.asarray(cols) + 1
        results.append((cost[rows, cols].sum(), assign))
    return sorted(results, key=lambda r: r[0])


def total_cost(cost, assign):
    return sum(cost[i, j - 1] for i, j in enumerate(assign) if j > 0)


def random_case(num_p, num_m, num_class, seed):
    gen = torch.Generator().manual_seed(seed)

    def boxes(n):
        b = torch.zeros(n, 9)
        b[:, :2] = torch.rand(n, 2, generator=gen) * 6 - 3          # close together: IoUs are often > 0
        b[:, 2] = torch.rand(n, generator=gen) - 0.5
        b[:, 3:6] = torch.rand(n, 3, generator=gen) * 2 + 0.5
        return b
    logits = torch.randn(num_p, num_class, generator=gen) * 2
    labels = torch.randint(0, num_class, (num_m,), generator=gen)
    return boxes(num_p), boxes(num_m), labels, logits


@pytest.mark.parametrize('num_p,num_m', [(5, 3), (4, 4), (3, 5), (6, 1), (2, 4)])
@pytest.mark.parametrize('seed', range(4))
def test_assigner_equals_brute_force(num_p, num_m, seed):
    boxes, gt, labels, logits = random_case(num_p, num_m, 3, seed)
    assigned, max_overlaps = HungarianAssigner3D(**COSTS).assign(boxes, gt, labels, logits, PC_RANGE)
    cost = reference_cost(boxes, gt, labels, logits)
    ranked = brute_force(cost)
    assert total_cost(cost, assigned.tolist()) == pytest.approx(ranked[0][0], abs=1e-6)
    if len(ranked) == 1 or ranked[1][0] - ranked[0][0] > 1e-6:   # unique optimum (L1 costs can tie exactly)
        assert assigned.tolist() == ranked[0][1].tolist()
    assert (assigned > 0).sum().item() == min(num_p, num_m)
    # max_overlaps: the (bottom-z) IoU of each matched pair, recovered from the reference cost terms
    for i, j in enumerate(assigned.tolist()):
        if j == 0:
            assert max_overlaps[i].item() == 0
        else:
            alone = reference_cost(boxes[i:i + 1], gt[j - 1:j], labels[j - 1:j], logits[i:i + 1],
                                   {**COSTS, 'cls_cost': {**COSTS['cls_cost'], 'weight': 0.0},
                                    'reg_cost': {'weight': 0.0}, 'iou_cost': {'weight': -1.0}})
            assert max_overlaps[i].item() == pytest.approx(alone[0, 0], abs=1e-5)


def test_assigner_each_cost_weight_matters():
    """Weights are not interchangeable: with the cls and reg weights swapped the brute-force answer changes."""
    swapped = {**COSTS, 'cls_cost': {**COSTS['cls_cost'], 'weight': 0.25}, 'reg_cost': {'weight': 0.15}}
    changed = 0
    for seed in range(8):
        boxes, gt, labels, logits = random_case(5, 3, 3, seed)
        changed += brute_force(reference_cost(boxes, gt, labels, logits))[0][1].tolist() != \
            brute_force(reference_cost(boxes, gt, labels, logits, swapped))[0][1].tolist()
    assert changed > 0


def test_assigner_without_gt_or_proposals():
    boxes, gt, labels, logits = random_case(4, 0, 3, 0)
    assigned, overlaps = HungarianAssigner3D(**COSTS).assign(boxes, gt, labels, logits, PC_RANGE)
    assert assigned.tolist() == [0, 0, 0, 0] and overlaps.tolist() == [0, 0, 0, 0]
    assigned, overlaps = HungarianAssigner3D(**COSTS).assign(boxes[:0], *random_case(0, 2, 3, 0)[1:3],
                                                             logits[:0], PC_RANGE)
    assert assigned.shape == (0,) and overlaps.shape == (0,)


# ----------------------------------------------------------------------------------------------------------------
# Box code and heatmap targets
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('height_is_top', [False, True])
@pytest.mark.parametrize('code_size', [8, 10])
def test_box_code_round_trip(height_is_top, code_size):
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(20, 9, generator=gen, dtype=torch.float64) * 10 - 5
    boxes[:, 3:6] = boxes[:, 3:6].abs() + 0.1
    boxes[:, 6] = torch.rand(20, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    coder = TransFusionBoxCoder(PC_RANGE, VOXEL, 2, code_size=code_size, height_is_top=height_is_top)
    codes = coder.encode(boxes)
    # spec §C.5 targets, written out
    torch.testing.assert_close(codes[:, 0], (boxes[:, 0] + 8.0) / 1.0)
    torch.testing.assert_close(codes[:, 2], boxes[:, 2] + (boxes[:, 5] / 2 if height_is_top else 0))
    torch.testing.assert_close(codes[:, 6:8], torch.stack((boxes[:, 6].sin(), boxes[:, 6].cos()), -1))
    decoded = coder.decode_codes(codes)
    torch.testing.assert_close(decoded, boxes[:, :code_size - 1])


def reference_heatmap(boxes, labels, num_classes, size_x, size_y, stride, overlap=0.1, min_radius=2):
    """Per-object loops over cells (spec §C.6)."""
    heatmap = np.zeros((num_classes, size_y, size_x))
    for box, label in zip(boxes.tolist(), labels.tolist()):
        w, ln = box[3] / VOXEL[0] / stride, box[4] / VOXEL[1] / stride
        if w <= 0 or ln <= 0:
            continue
        b1, c1 = ln + w, w * ln * (1 - overlap) / (1 + overlap)
        b2, c2 = 2 * (ln + w), (1 - overlap) * w * ln
        b3, c3 = -2 * overlap * (ln + w), (overlap - 1) * w * ln
        r = min((b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2, (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2,
                (b3 + math.sqrt(b3 ** 2 - 16 * overlap * c3)) / 2)
        r = max(min_radius, int(r))
        cx = int((box[0] - PC_RANGE[0]) / VOXEL[0] / stride)      # int() truncates toward zero
        cy = int((box[1] - PC_RANGE[1]) / VOXEL[1] / stride)
        sigma = (2 * r + 1) / 6
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                x, y = cx + dx, cy + dy
                if 0 <= x < size_x and 0 <= y < size_y:
                    v = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
                    v = 0.0 if v < np.finfo(np.float64).eps else v
                    heatmap[label, y, x] = max(heatmap[label, y, x], v)
    return heatmap


def test_heatmap_targets_equal_per_object_loop():
    boxes = torch.tensor([
        [1.3, -2.2, 0.0, 4.2, 1.9, 1.5, 0.4],
        [1.9, -1.4, 0.0, 3.9, 1.7, 1.5, 0.0],      # overlaps the first: element-wise max
        [-7.8, 7.9, 0.0, 0.6, 0.6, 1.7, 0.0],      # corner: clipped Gaussian, minimum radius
        [-8.2, 0.3, 0.0, 0.8, 0.8, 1.7, 0.0],      # centre just outside: truncation toward zero -> cell 0
        [3.0, 3.0, 0.0, 9.0, 7.5, 3.0, 1.0],       # large radius
        [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0],       # zero size: skipped
    ])
    labels = torch.tensor([0, 0, 1, 2, 1, 2])
    got = heatmap_targets(boxes, labels, 3, (16, 12), 2, PC_RANGE, VOXEL, 0.1, 2)
    expected = reference_heatmap(boxes, labels, 3, 16, 12, 2)
    assert got.shape == (3, 12, 16)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert (got == 1).sum().item() == 4                          # one peak per drawn object, distinct cells
    got_t = heatmap_targets(boxes, labels, 3, (16, 12), 2, PC_RANGE, VOXEL, 0.1, 2, transpose=True)
    np.testing.assert_allclose(got_t.numpy(), expected.transpose(0, 2, 1), rtol=1e-6, atol=1e-7)
    assert heatmap_targets(boxes[:0], labels[:0], 3, (16, 12), 2, PC_RANGE, VOXEL).abs().sum() == 0


# ----------------------------------------------------------------------------------------------------------------
# query initialisation and post-processing
# ----------------------------------------------------------------------------------------------------------------
class FixedHeatmap(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize('variant', ['openpcdet', 'dsvt'])
def test_query_init_peaks_border_and_positions(variant):
    """Local-max NMS, border cells, top-K over classes, query scores and positions (cell centre, x first).

    The OpenPCDet head reads the map as (Y, X); the DSVT head receives it transposed, (X, Y)."""
    head = build_head(head_cfg(variant=variant, NUM_PROPOSALS=3, QUERY_RADIUS=2 if variant == 'dsvt' else None))
    logits = torch.full((1, 3, 16, 16), -10.0)
    logits[0, 0, 5, 7] = 3.0          # class 0 peak at (row 5, col 7)
    logits[0, 0, 5, 8] = 2.0          # its neighbour: suppressed by the 3x3 local max
    logits[0, 1, 10, 2] = 1.0         # class 1 peak at (row 10, col 2)
    logits[0, 2, 0, 4] = 5.0          # border cell: never selected with a 3x3 kernel
    logits[0, 2, 12, 13] = 0.5
    head.heatmap_head = FixedHeatmap(logits)
    with torch.no_grad():             # zero centre offsets: the predicted centre is the query position
        head.prediction_head.center[-1].weight.zero_()
        head.prediction_head.center[-1].bias.zero_()
    head.eval()
    res = head.predict(torch.randn(1, 8, 16, 16))
    assert res['query_labels'].tolist() == [[0, 1, 2]]
    cells = torch.tensor([[5.5, 7.5], [10.5, 2.5], [12.5, 13.5]])     # (row, col) + 0.5
    expected_xy = cells if variant == 'dsvt' else cells.flip(1)
    torch.testing.assert_close(res['center'][0].t(), expected_xy)
    sig = torch.sigmoid(torch.tensor([3.0, 1.0, 0.5]))
    torch.testing.assert_close(res['query_heatmap_score'][0, [0, 1, 2], [0, 1, 2]], sig)
    # class 0 at class 1's cell: a flat background is its own local max and keeps its score
    assert res['query_heatmap_score'][0, 0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item())


def test_one_by_one_classes_for_nuscenes():
    cfg = head_cfg(NUM_PROPOSALS=2)
    cfg.TARGET_ASSIGNER_CONFIG.DATASET = 'nuScenes'
    head = build_head(cfg, num_class=10)
    logits = torch.full((1, 10, 16, 16), -10.0)
    logits[0, 8, 0, 0] = 2.0          # pedestrian on the border: 1x1 kernel, selected
    logits[0, 8, 0, 1] = 1.0          # its neighbour: also a candidate with a 1x1 kernel
    head.heatmap_head = FixedHeatmap(logits)
    head.eval()
    res = head.predict(torch.randn(1, 8, 16, 16))
    assert res['query_labels'].tolist() == [[8, 8]]
    with pytest.raises(ConfigError, match='DATASET'):
        build_head(cfg, num_class=3)


def test_post_processing_scores_filter_rectify_and_nms():
    cfg = head_cfg(iou=True, dataset='nuScenes')
    cfg.POST_PROCESSING = {'SCORE_THRESH': 0.01, 'POST_CENTER_RANGE': [-5, -5, -10, 5, 5, 10],
                           'USE_IOU_TO_RECTIFY_SCORE': True, 'IOU_RECTIFIER': [0.5],
                           'NMS_CONFIG': {'NMS_TYPE': 'nms_gpu', 'NMS_THRESH': 0.2, 'NMS_PRE_MAXSIZE': 1000,
                                          'NMS_POST_MAXSIZE': 100, 'SCORE_THRES': 0.0}}
    head = build_head(cfg, num_class=10)
    num_p = 4
    res = {'center': torch.tensor([[[8.0, 8.2, 8.0, 20.0], [8.0, 8.0, 8.0, 8.0]]]),   # last: x = 12 m, outside
           'height': torch.zeros(1, 1, num_p), 'dim': torch.zeros(1, 3, num_p), 'rot': torch.tensor(
               [[[0.0] * num_p, [1.0] * num_p]]), 'vel': torch.zeros(1, 2, num_p),
           'heatmap': torch.zeros(1, 10, num_p), 'iou': torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]),
           'query_heatmap_score': torch.full((1, 10, num_p), 0.5),
           'query_labels': torch.tensor([[8, 8, 0, 1]])}
    out = head.get_bboxes(res)[0]
    # proposals 0 and 1: same class 8 (pedestrian), 1 m boxes 0.2 m apart -> one is suppressed
    # proposal 2: class 0, no NMS; score 0.5 * 0.5 rectified with iou (1 + 1) / 2 = 1 -> sqrt(0.25) = 0.5
    assert sorted(out['pred_labels'].tolist()) == [1, 9]
    expected = {9: math.sqrt(0.25) * math.sqrt(0.5), 1: math.sqrt(0.25)}
    for label, score in zip(out['pred_labels'].tolist(), out['pred_scores'].tolist()):
        assert score == pytest.approx(expected[label])
    torch.testing.assert_close(out['pred_boxes'][out['pred_labels'] == 1][0, :3], torch.tensor([0.0, 0.0, 0.0]))


# ----------------------------------------------------------------------------------------------------------------
# forward / backward
# ----------------------------------------------------------------------------------------------------------------
GT_BOXES = torch.tensor([
    [[1.3, -2.2, 0.1, 4.0, 1.9, 1.5, 0.4, 1.0, 0.5, 1],
     [-3.9, 4.1, -0.2, 0.7, 0.7, 1.7, -1.0, 0.0, 0.0, 2],
     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],            # a frame without GT
     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
])


@pytest.mark.parametrize('variant,iou', [('openpcdet', False), ('dsvt', True)])
@pytest.mark.parametrize('gt', ['some', 'none', 'empty'])
def test_forward_backward_and_eval(variant, iou, gt):
    cfg = head_cfg(variant=variant, iou=iou, QUERY_RADIUS=3 if variant == 'dsvt' else None)
    head = build_head(cfg)
    gt_boxes = {'some': GT_BOXES, 'none': GT_BOXES[1:].expand(2, -1, -1), 'empty': GT_BOXES[:, :0]}[gt]
    feats = torch.randn(2, 8, 16, 16, requires_grad=True)
    head.train()
    batch = head({'spatial_features_2d': feats, 'gt_boxes': gt_boxes, 'batch_size': 2})
    loss, tb_dict = head.get_loss()
    assert loss is batch['loss'] and torch.isfinite(loss)
    assert {'loss_heatmap', 'loss_cls', 'loss_bbox', 'matched_ious', 'loss_trans'} <= set(tb_dict)
    assert ('loss_iou' in tb_dict) == iou
    loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    for name in ('shared_conv.weight', 'heatmap_head.1.weight', 'class_encoding.weight',
                 'decoder.multihead_attn.in_proj_weight', 'prediction_head.heatmap.1.weight'):
        assert head.get_parameter(name).grad is not None, name
    if gt == 'some':
        assert head.get_parameter('prediction_head.center.1.weight').grad.abs().sum() > 0
    else:
        assert tb_dict['loss_bbox'] == 0 and tb_dict['matched_ious'] == 0

    head.eval()
    with torch.no_grad():
        out = head({'spatial_features_2d': feats, 'batch_size': 2})['final_box_dicts']
    assert len(out) == 2
    for d in out:
        assert d['pred_boxes'].shape[1] == 9 and d['pred_boxes'].shape[0] <= 12
        assert d['pred_labels'].dtype == torch.long
        assert ((d['pred_labels'] >= 1) & (d['pred_labels'] <= 3)).all()


# ----------------------------------------------------------------------------------------------------------------
# upstream names: an upstream-shaped state dict loads strictly; registries; upstream config blocks validate
# ----------------------------------------------------------------------------------------------------------------
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def upstream_keys(c_in, hidden, num_class, heads, bias_before_norm):
    """OpenPCDet / DSVT-repo `TransFusionHead` state dict (spec §C.1, §C.3), written from the module names."""
    exp = {'shared_conv.weight': (hidden, c_in, 3, 3), 'shared_conv.bias': (hidden,),
           'heatmap_head.0.conv.weight': (hidden, hidden, 3, 3),
           'heatmap_head.1.weight': (num_class, hidden, 3, 3), 'heatmap_head.1.bias': (num_class,),
           'class_encoding.weight': (hidden, num_class, 1), 'class_encoding.bias': (hidden,)}
    if bias_before_norm:
        exp['heatmap_head.0.conv.bias'] = (hidden,)
    for b in BN:
        exp[f'heatmap_head.0.bn.{b}'] = () if b == 'num_batches_tracked' else (hidden,)
    for attn in ('self_attn', 'multihead_attn'):
        exp.update({f'decoder.{attn}.in_proj_weight': (3 * hidden, hidden),
                    f'decoder.{attn}.in_proj_bias': (3 * hidden,),
                    f'decoder.{attn}.out_proj.weight': (hidden, hidden), f'decoder.{attn}.out_proj.bias': (hidden,)})
    exp.update({'decoder.linear1.weight': (256, hidden), 'decoder.linear1.bias': (256,),
                'decoder.linear2.weight': (hidden, 256), 'decoder.linear2.bias': (hidden,)})
    for n in ('norm1', 'norm2', 'norm3'):
        exp[f'decoder.{n}.weight'] = exp[f'decoder.{n}.bias'] = (hidden,)
    for pe in ('self_posembed', 'cross_posembed'):
        p = f'decoder.{pe}.position_embedding_head'
        exp.update({f'{p}.0.weight': (hidden, 2, 1), f'{p}.0.bias': (hidden,), f'{p}.3.weight': (hidden, hidden, 1),
                    f'{p}.3.bias': (hidden,)})
        for b in BN:
            exp[f'{p}.1.{b}'] = () if b == 'num_batches_tracked' else (hidden,)
    for name, out in {**heads, 'heatmap': num_class}.items():
        p = f'prediction_head.{name}'
        exp[f'{p}.0.0.weight'] = (64, hidden, 1)
        if bias_before_norm:
            exp[f'{p}.0.0.bias'] = (64,)
        for b in BN:
            exp[f'{p}.0.1.{b}'] = () if b == 'num_batches_tracked' else (64,)
        exp[f'{p}.1.weight'] = (out, 64, 1)
        exp[f'{p}.1.bias'] = (out,)
    return exp


def nuscenes_head_cfg(variant):
    """The DENSE_HEAD blocks of OpenPCDet's transfusion_lidar.yaml / the DSVT repo's nuScenes config (spec §3.8)."""
    head_dict = {'center': {'out_channels': 2, 'num_conv': 2}, 'height': {'out_channels': 1, 'num_conv': 2},
                 'dim': {'out_channels': 3, 'num_conv': 2}, 'rot': {'out_channels': 2, 'num_conv': 2},
                 'vel': {'out_channels': 2, 'num_conv': 2}}
    weights = {'cls_weight': 1.0, 'bbox_weight': 0.25, 'hm_weight': 1.0, 'code_weights': [1.0] * 8 + [0.2, 0.2]}
    post = {'SCORE_THRESH': 0.0, 'POST_CENTER_RANGE': [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]}
    if variant == 'dsvt':
        head_dict['iou'] = {'out_channels': 1, 'num_conv': 2}
        weights['loss_iou_rescore_weight'] = 0.5
        post.update(USE_IOU_TO_RECTIFY_SCORE=True, IOU_RECTIFIER=[0.5], NMS_CONFIG={
            'NMS_TYPE': 'nms_gpu', 'NMS_THRESH': 0.2, 'NMS_PRE_MAXSIZE': 1000, 'NMS_POST_MAXSIZE': 100,
            'SCORE_THRES': 0.0})
    cfg = {'CLASS_AGNOSTIC': False, 'NAME': 'TransFusionHead', 'USE_BIAS_BEFORE_NORM': False, 'NUM_PROPOSALS': 200,
           'HIDDEN_CHANNEL': 128, 'NUM_CLASSES': 10, 'NUM_HEADS': 8, 'NMS_KERNEL_SIZE': 3, 'FFN_CHANNEL': 256,
           'DROPOUT': 0 if variant == 'dsvt' else 0.1, 'BN_MOMENTUM': 0.1, 'ACTIVATION': 'relu', 'NUM_HM_CONV': 2,
           'SEPARATE_HEAD_CFG': {'HEAD_ORDER': ['center', 'height', 'dim', 'rot', 'vel'], 'HEAD_DICT': head_dict},
           'TARGET_ASSIGNER_CONFIG': {'FEATURE_MAP_STRIDE': 2 if variant == 'dsvt' else 8, 'DATASET': 'nuScenes',
                                      'GAUSSIAN_OVERLAP': 0.1, 'MIN_RADIUS': 2, 'HUNGARIAN_ASSIGNER': COSTS},
           'LOSS_CONFIG': {'LOSS_WEIGHTS': weights, 'LOSS_CLS': {'use_sigmoid': True, 'gamma': 2.0, 'alpha': 0.25}},
           'POST_PROCESSING': post}
    if variant == 'dsvt':
        cfg['VARIANT'] = 'dsvt'
    return EasyDict(cfg)


@pytest.mark.parametrize('variant', ['openpcdet', 'dsvt'])
def test_upstream_state_dict_loads_strictly(variant):
    cfg = nuscenes_head_cfg(variant)
    check_block(cfg, TransFusionHead.CONFIG_SCHEMA, 'MODEL.DENSE_HEAD')
    c_in, grid = (384, [360, 360, 1]) if variant == 'dsvt' else (512, [1440, 1440, 40])
    head = TransFusionHead(cfg, c_in, 10, ['c%d' % i for i in range(10)], grid, [-54, -54, -5, 54, 54, 3],
                           [0.3, 0.3, 8.0] if variant == 'dsvt' else [0.075, 0.075, 0.2], False)
    heads = {'center': 2, 'height': 1, 'dim': 3, 'rot': 2, 'vel': 2, **({'iou': 1} if variant == 'dsvt' else {})}
    expected = upstream_keys(c_in, 128, 10, heads, bias_before_norm=variant == 'dsvt')
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: (got[k], s) for k, s in expected.items() if got[k] != s} == {}
    gen = torch.Generator().manual_seed(0)
    checkpoint = {k: (torch.randn(s, generator=gen) if not k.endswith('num_batches_tracked') else torch.tensor(3))
                  for k, s in expected.items()}
    head.load_state_dict(checkpoint, strict=True)
    torch.testing.assert_close(head.decoder.multihead_attn.in_proj_weight,
                               checkpoint['decoder.multihead_attn.in_proj_weight'])
    # classifier bias: -2.19 only in the DSVT variant (OpenPCDet tests 'hm' in name, which never matches)
    fresh = build_head(head_cfg(variant=variant), num_class=3)
    assert (fresh.prediction_head.heatmap[-1].bias == -2.19).all().item() == (variant == 'dsvt')


def test_registries_and_config_errors():
    assert dense_heads['TransFusionHead'] is TransFusionHead
    assert detectors['TransFusion'].__name__ == 'TransFusion'
    with pytest.raises(ConfigError, match='HEAD_ORDER'):
        build_head(head_cfg(SEPARATE_HEAD_CFG={'HEAD_ORDER': ['center', 'dim', 'height', 'rot'], 'HEAD_DICT': {
            k: {'out_channels': c, 'num_conv': 2} for k, c in [('center', 2), ('height', 1), ('dim', 3), ('rot', 2)]}}))
    with pytest.raises(ConfigError, match='NUM_CLASSES'):
        build_head(head_cfg(NUM_CLASSES=10))
    with pytest.raises(ValueError, match='cells along'):
        build_head(grid=[40, 40, 1])({'spatial_features_2d': torch.randn(1, 8, 16, 16), 'batch_size': 1})


def test_transfusion_detector_trains_and_predicts():
    """MODEL.NAME TransFusion: CenterPoint's flow with the head's loss and final_box_dicts; prefix `dense_head.`."""
    from pcdet.models.detectors import ModelGeometry, build_detector
    head = head_cfg()
    head['INPUT_FEATURES'] = 8
    model_cfg = EasyDict({'NAME': 'TransFusion', 'DENSE_HEAD': head,
                          'POST_PROCESSING': {'RECALL_THRESH_LIST': [0.3, 0.5]}})
    geometry = ModelGeometry(['car', 'ped', 'cone'], GRID, PC_RANGE, VOXEL, num_point_features=4)
    torch.manual_seed(0)
    model = build_detector(model_cfg, num_class=3, dataset=geometry)
    assert 'dense_head.decoder.multihead_attn.in_proj_weight' in model.state_dict()
    batch = {'spatial_features_2d': torch.randn(2, 8, 16, 16), 'gt_boxes': GT_BOXES.clone(), 'batch_size': 2}
    model.train()
    ret, tb_dict, _ = model(dict(batch))
    ret['loss'].backward()
    assert tb_dict['loss_rpn'] == pytest.approx(tb_dict['loss_trans'])
    model.eval()
    with torch.no_grad():
        preds, recall = model(dict(batch))
    assert len(preds) == 2 and recall['gt'] == 2
