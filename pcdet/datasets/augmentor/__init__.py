"""Training-time augmentation: the queue (DataAugmentor), the GT database sampler and the pure transforms."""
from . import augmentor_utils
from .data_augmentor import DataAugmentor
from .database_sampler import DataBaseSampler

__all__ = ['DataAugmentor', 'DataBaseSampler', 'augmentor_utils']
