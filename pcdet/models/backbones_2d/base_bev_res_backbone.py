"""BaseBEVResBackbone (OpenPCDet `backbones_2d/base_bev_backbone.py`, DSVT repo `base_bev_res_backbone.py`; spec §3.5).

Parameter names are upstream's: `blocks.<level>.<k>.{conv1, bn1, conv2, bn2, downsample_layer.0,
downsample_layer.1}.*` and `deblocks.<level>.{0, 1}.*`. Unlike upstream, fractional upsample strides use
`int(round(1 / stride))` (upstream's `np.int` crashes on numpy >= 1.24; the nuScenes DSVT config hits it).
"""
import torch
from torch import nn

from ...config_schema import REQUIRED, Schema


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus identity or
    `downsample_layer = conv1x1(stride) -> BN`, add, ReLU. All BN eps 1e-3, momentum 0.01, convs without bias."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, padding=1, downsample=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=padding, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=1e-3, momentum=0.01)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-3, momentum=0.01)
        self.relu2 = nn.ReLU()
        self.downsample = downsample
        if self.downsample:
            self.downsample_layer = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, padding=0, bias=False),
                nn.BatchNorm2d(planes, eps=1e-3, momentum=0.01))
        self.stride = stride

    def forward(self, x):
        identity = self.downsample_layer(x) if self.downsample else x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class BaseBEVResBackbone(nn.Module):
    """Multi-level residual BEV backbone with per-level deblocks concatenated at the end.

    Config (`MODEL.BACKBONE_2D`): `LAYER_NUMS`, `LAYER_STRIDES`, `NUM_FILTERS` (per level; level l is
    `BasicBlock(c_in, F_l, stride_l, downsample=True)` + `LAYER_NUMS[l]` x `BasicBlock(F_l, F_l)`),
    `UPSAMPLE_STRIDES`, `NUM_UPSAMPLE_FILTERS` (per level: stride >= 1 -> ConvTranspose2d(k = s, stride s),
    < 1 -> Conv2d(k = 1/s, stride 1/s); each followed by BN + ReLU; one extra stride adds a final
    ConvTranspose2d(c, c) deblock on the concatenation, whose NUM_UPSAMPLE_FILTERS entry is unused, as upstream).

    forward(data_dict): reads `spatial_features (B, C_in, H, W)`; writes `spatial_features_2d
    (B, num_bev_features, H', W')` with `num_bev_features = sum(NUM_UPSAMPLE_FILTERS)` (or sum(NUM_FILTERS)
    without deblocks) and `H' = H * UPSAMPLE_STRIDES[0] / LAYER_STRIDES[0]`.
    """

    CONFIG_SCHEMA = Schema('MODEL.BACKBONE_2D (BaseBEVResBackbone)', {
        'NAME': REQUIRED, 'LAYER_NUMS': None, 'LAYER_STRIDES': None, 'NUM_FILTERS': None,
        'UPSAMPLE_STRIDES': None, 'NUM_UPSAMPLE_FILTERS': None})

    def __init__(self, model_cfg, input_channels):
        super().__init__()
        self.model_cfg = model_cfg
        if self.CONFIG_SCHEMA.get(model_cfg, 'LAYER_NUMS') is not None:
            if not len(model_cfg.LAYER_NUMS) == len(model_cfg.LAYER_STRIDES) == len(model_cfg.NUM_FILTERS):
                raise ValueError('BACKBONE_2D: LAYER_NUMS, LAYER_STRIDES and NUM_FILTERS need one entry per level, got '
                                 f'{list(model_cfg.LAYER_NUMS)}, {list(model_cfg.LAYER_STRIDES)}, '
                                 f'{list(model_cfg.NUM_FILTERS)}')
            layer_nums, layer_strides = list(model_cfg.LAYER_NUMS), list(model_cfg.LAYER_STRIDES)
            num_filters = list(model_cfg.NUM_FILTERS)
        else:
            layer_nums = layer_strides = num_filters = []
        if self.CONFIG_SCHEMA.get(model_cfg, 'UPSAMPLE_STRIDES') is not None:
            if len(model_cfg.UPSAMPLE_STRIDES) != len(model_cfg.NUM_UPSAMPLE_FILTERS):
                raise ValueError('BACKBONE_2D: UPSAMPLE_STRIDES and NUM_UPSAMPLE_FILTERS must have the same length, '
                                 f'got {list(model_cfg.UPSAMPLE_STRIDES)} and {list(model_cfg.NUM_UPSAMPLE_FILTERS)}')
            upsample_strides, num_upsample_filters = list(model_cfg.UPSAMPLE_STRIDES), \
                list(model_cfg.NUM_UPSAMPLE_FILTERS)
        else:
            upsample_strides = num_upsample_filters = []

        num_levels = len(layer_nums)
        c_in_list = [input_channels, *num_filters[:-1]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        for idx in range(num_levels):
            cur_layers = [BasicBlock(c_in_list[idx], num_filters[idx], layer_strides[idx], 1, True)]
            cur_layers.extend(BasicBlock(num_filters[idx], num_filters[idx]) for _ in range(layer_nums[idx]))
            self.blocks.append(nn.Sequential(*cur_layers))
            if len(upsample_strides) > 0:
                stride = upsample_strides[idx]
                if stride >= 1:
                    stride = int(round(stride))
                    deconv = nn.ConvTranspose2d(num_filters[idx], num_upsample_filters[idx], stride, stride=stride,
                                                bias=False)
                else:
                    stride = int(round(1 / stride))
                    deconv = nn.Conv2d(num_filters[idx], num_upsample_filters[idx], stride, stride=stride, bias=False)
                self.deblocks.append(nn.Sequential(
                    deconv, nn.BatchNorm2d(num_upsample_filters[idx], eps=1e-3, momentum=0.01), nn.ReLU()))

        # Channels of the concatenated level outputs. (Upstream sums all NUM_UPSAMPLE_FILTERS, including the entry
        # of an extra final deblock, which then mismatches the concatenation; the levels' entries are what is
        # concatenated.)
        c_in = sum(num_upsample_filters[:num_levels]) if len(num_upsample_filters) > 0 else sum(num_filters)
        if len(upsample_strides) > num_levels:
            stride = int(round(upsample_strides[-1]))
            self.deblocks.append(nn.Sequential(
                nn.ConvTranspose2d(c_in, c_in, stride, stride=stride, bias=False),
                nn.BatchNorm2d(c_in, eps=1e-3, momentum=0.01),
                nn.ReLU()))
        self.num_bev_features = c_in

    def forward(self, data_dict):
        x = data_dict['spatial_features']
        ups = []
        for i in range(len(self.blocks)):
            x = self.blocks[i](x)
            ups.append(self.deblocks[i](x) if len(self.deblocks) > 0 else x)
        if len(ups) > 1:
            x = torch.cat(ups, dim=1)
        elif len(ups) == 1:
            x = ups[0]
        if len(self.deblocks) > len(self.blocks):
            x = self.deblocks[-1](x)
        data_dict['spatial_features_2d'] = x
        return data_dict
