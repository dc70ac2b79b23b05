"""Offline per-point teacher features (spec §1.4 D-SEAL-2, §2.3, decision D2).

    build_teacher(teacher_cfg) -> Teacher     by `teacher_cfg.NAME` (`DATA_CONFIG.TEACHER_FEATURES`):
        synthetic_semantic   SyntheticSemanticTeacher (label-driven test stand-in, synthetic_semantic.py)
        seal_minkunet        SealMinkUNetTeacher (imported on first use: it pulls in torch / the checkpoint)
        geometric            GeometricTeacher (label-free local-geometry descriptors, geometric.py)
        image_projection     ImageProjectionTeacher (2-D backbone features projected from the camera images,
                             image_projection.py; imported on first use: it pulls in torch)
    KNOWN_TEACHERS                            the names above

Modules: base (the protocol), synthetic_semantic, seal_minkunet, feature_store (per-frame float16 files + manifest),
prepare (the `python -m pcdet.datasets.teachers.prepare` CLI, also `tools/prepare_seal_features.py`).
"""
import importlib

from ...config import ConfigError
from ...config_schema import schema_of
from .base import TEACHER_FEATURES_SCHEMA

KNOWN_TEACHERS = {
    'synthetic_semantic': 'pcdet.datasets.teachers.synthetic_semantic:SyntheticSemanticTeacher',
    'seal_minkunet': 'pcdet.datasets.teachers.seal_minkunet:SealMinkUNetTeacher',
    'geometric': 'pcdet.datasets.teachers.geometric:GeometricTeacher',
    'image_projection': 'pcdet.datasets.teachers.image_projection:ImageProjectionTeacher',
}


def teacher_class(name):
    """The Teacher class registered under `name`; an unknown name raises ConfigError listing the known ones."""
    if name not in KNOWN_TEACHERS:
        raise ConfigError(f'DATA_CONFIG.TEACHER_FEATURES.NAME: unknown teacher {name!r}; known: '
                          f'{sorted(KNOWN_TEACHERS)}')
    module_name, _, attr = KNOWN_TEACHERS[name].partition(':')
    return getattr(importlib.import_module(module_name), attr)  # lazy: seal_minkunet imports torch and friends


def teacher_schema(name):
    """CONFIG_SCHEMA of the teacher registered as `name` (`TEACHER_FEATURES` is validated by its NAME)."""
    return schema_of(teacher_class(name))


def extra_arrays_of(teacher_cfg):
    """Names of the extra per-point arrays the teacher of `teacher_cfg` stores beside its features (e.g.
    'superpixel_ids'); () for teachers without any and for names that are not registered (injected test teachers)."""
    name = TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'NAME')
    if name not in KNOWN_TEACHERS:
        return ()
    extra_arrays_for = getattr(teacher_class(name), 'extra_arrays_for', None)
    return tuple(extra_arrays_for(teacher_cfg)) if extra_arrays_for is not None else ()


def build_teacher(teacher_cfg):
    """Teacher instance for `teacher_cfg` (needs NAME; the other keys are the teacher's own, e.g. NUM_FEATURES)."""
    return teacher_class(TEACHER_FEATURES_SCHEMA.get(teacher_cfg, 'NAME'))(teacher_cfg)


__all__ = ['KNOWN_TEACHERS', 'TEACHER_FEATURES_SCHEMA', 'build_teacher', 'extra_arrays_of', 'teacher_class',
           'teacher_schema']
