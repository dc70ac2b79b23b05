"""Detector registry (`MODEL.NAME` -> class) and `build_detector`.

Every detector takes `(model_cfg, num_class, dataset)` where `dataset` is a dataset or a
`detector3d_template.ModelGeometry` (see `pcdet.models.build.build_network`).
"""
from .centerpoint import CenterPoint
from .contrastive import ContrastivePretrain
from .detector3d_template import Detector3DTemplate, ModelGeometry  # noqa: F401 (ModelGeometry: public)
from .gaussian_render import GaussianRenderPretrain
from .gpicture import GPICTURE
from .task_models import OccupancyNet, Segmentor3D
from .transfusion import TransFusion

__all__ = {
    'Detector3DTemplate': Detector3DTemplate,
    'CenterPoint': CenterPoint,
    'GPICTURE': GPICTURE,
    'ContrastivePretrain': ContrastivePretrain,
    'GaussianRenderPretrain': GaussianRenderPretrain,
    'Segmentor3D': Segmentor3D,
    'OccupancyNet': OccupancyNet,
    'TransFusion': TransFusion,
}


def build_detector(model_cfg, num_class, dataset):
    """`__all__[model_cfg.NAME](model_cfg=model_cfg, num_class=num_class, dataset=dataset)`."""
    name = model_cfg.get('NAME', None) if hasattr(model_cfg, 'get') else None
    if name not in __all__ or name == 'Detector3DTemplate':
        known = sorted(k for k in __all__ if k != 'Detector3DTemplate')
        raise KeyError(f'MODEL.NAME: unknown detector {name!r}; known: {known}')
    return __all__[name](model_cfg=model_cfg, num_class=num_class, dataset=dataset)
