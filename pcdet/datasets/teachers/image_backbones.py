"""2-D image backbones of the `image_projection` teacher: images in, dense feature maps out.

    build_image_backbone(backbone_cfg, num_features, section) -> ImageBackbone
    ImageBackbone(images) : (B, 3, H, W) float32 RGB normalised with IMAGENET_MEAN / IMAGENET_STD
                            -> (B, num_features, h, w) float32 feature map (any stride; the teacher maps pixel
                            coordinates onto it, image_projection.sample_feature_map)

`BACKBONE.NAME` picks the network:
    resnet_tiny        built-in pure-torch CNN (below), output stride 4, weights drawn from BACKBONE.SEED (or loaded
                       from BACKBONE.WEIGHTS): a fixed random-feature teacher for tests and synthetic data
    torchvision:<arch> torchvision.models.get_model(<arch>) up to BACKBONE.LAYER (default: its `features` module, else
                       `layer4`), weights from BACKBONE.WEIGHTS (a local state-dict file of the whole classifier)
    timm:<arch>        timm.create_model(<arch>).forward_features (convolutional networks: a 4-D output), weights
                       from BACKBONE.WEIGHTS
torchvision and timm are imported only for those names; a missing package, a missing weights file or weights that do
not fit the architecture (strict loading) raise ConfigError naming the package / file. When the network's channel
count C differs from NUM_FEATURES a fixed projection W (C, NUM_FEATURES), standard normal / sqrt(C) from SEED, maps
it (a random projection keeps cosine similarities approximately: the features are compared by cosine).
Without WEIGHTS a torchvision / timm network keeps its random initialisation drawn from SEED.
"""
import importlib
from pathlib import Path

import torch
from torch import nn

from ...config import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(in_channels, out_channels, stride):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResNetTiny(nn.Module):
    """Built-in backbone `resnet_tiny`: conv-BN-ReLU stages 3 -> 16 (stride 2) -> 32 (stride 2) -> 32, a residual
    3x3 block, then a 1x1 projection to `num_features`. (B, 3, H, W) -> (B, num_features, ceil(H/4), ceil(W/4))."""

    def __init__(self, num_features, width=32):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, width // 2, 2), conv_bn_relu(width // 2, width, 2))
        self.block = nn.Sequential(conv_bn_relu(width, width, 1),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Conv2d(width, int(num_features), 1)

    def forward(self, images):
        x = self.stem(images)
        return self.head(torch.relu(x + self.block(x)))


BUILTIN_BACKBONES = {'resnet_tiny': ResNetTiny}


class ImageBackbone(nn.Module):
    """A feature network plus an optional fixed channel projection (module doc); always in eval mode."""

    def __init__(self, network, projection=None):
        super().__init__()
        self.network = network
        self.register_buffer('projection', projection, persistent=False)
        self.eval()

    def forward(self, images):
        features = self.network(images)
        if isinstance(features, dict):  # torchvision feature extractor
            features = features['out']
        if features.dim() != 4:
            raise ConfigError(f'image backbone returned a {features.dim()}-D output {tuple(features.shape)}; the '
                              'image teacher needs a (B, C, h, w) feature map (a convolutional network / layer)')
        if self.projection is not None:
            features = torch.einsum('bchw,cf->bfhw', features, self.projection)
        return features


def seeded(seed, build):
    """`build()` with torch's global RNG seeded by `seed`, the caller's RNG state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def load_weights(network, weights, section):
    """Strictly load a local state-dict file into `network`; ConfigError naming the file when missing or unfit."""
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f'{section}.BACKBONE.WEIGHTS: weights file {path} not found (a local state-dict file)')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
        network.load_state_dict(state)
    except (RuntimeError, OSError, ValueError, TypeError, AttributeError) as err:
        raise ConfigError(f'{section}.BACKBONE.WEIGHTS: {path} does not fit the backbone ({str(err)[:500]})') from err


def _import_package(package, name, section):
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ConfigError(f'{section}.BACKBONE.NAME {name!r} needs the package {package!r}, which is not '
                          f'importable here ({err}); install it or use the built-in resnet_tiny') from err


def torchvision_network(arch, layer, weights, section):
    """torchvision `arch` with WEIGHTS loaded, cut after `layer` (module doc)."""
    torchvision = _import_package('torchvision', f'torchvision:{arch}', section)
    from torchvision.models.feature_extraction import create_feature_extractor
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as err:
        raise ConfigError(f'{section}.BACKBONE.NAME: unknown torchvision architecture {arch!r} ({err})') from err
    if weights:
        load_weights(model, weights, section)
    if layer is None:
        layer = 'features' if hasattr(model, 'features') else 'layer4' if hasattr(model, 'layer4') else None
    if layer is None:
        raise ConfigError(f'{section}.BACKBONE.LAYER: say which module of torchvision {arch!r} gives the feature map')
    return create_feature_extractor(model, {layer: 'out'})


def timm_network(arch, weights, section):
    """timm `arch` with WEIGHTS loaded; its forward_features gives the feature map (module doc)."""
    timm = _import_package('timm', f'timm:{arch}', section)
    try:
        model = timm.create_model(arch, pretrained=False)
    except RuntimeError as err:
        raise ConfigError(f'{section}.BACKBONE.NAME: unknown timm architecture {arch!r} ({err})') from err
    if weights:
        load_weights(model, weights, section)

    class ForwardFeatures(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner.forward_features(images)
    return ForwardFeatures(model)


def build_image_backbone(backbone_cfg, num_features, section):
    """ImageBackbone of a BACKBONE block {NAME, WEIGHTS, SEED, LAYER} producing `num_features` channels, in eval
    mode on the CPU (the teacher moves it to its DEVICE)."""
    name, weights = str(backbone_cfg['NAME']), backbone_cfg.get('WEIGHTS')
    seed, layer = int(backbone_cfg.get('SEED', 0)), backbone_cfg.get('LAYER')
    package, _, arch = name.partition(':')
    if name in BUILTIN_BACKBONES:
        network = seeded(seed, lambda: BUILTIN_BACKBONES[name](num_features))
        if weights:
            load_weights(network, weights, section)
    elif package == 'torchvision' and arch:
        network = seeded(seed, lambda: torchvision_network(arch, layer, weights, section))
    elif package == 'timm' and arch:
        network = seeded(seed, lambda: timm_network(arch, weights, section))
    else:
        raise ConfigError(f'{section}.BACKBONE.NAME {name!r}: expected one of {sorted(BUILTIN_BACKBONES)}, '
                          "'torchvision:<arch>' or 'timm:<arch>'")
    network.eval()
    with torch.no_grad():  # the channel count decides whether a projection is needed
        channels = ImageBackbone(network)(torch.zeros(1, 3, 64, 64)).shape[1]
    projection = None
    if channels != num_features:
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(channels, num_features, generator=generator) / channels ** 0.5
    return ImageBackbone(network, projection)
