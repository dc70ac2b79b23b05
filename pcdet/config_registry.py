"""Which schema applies to which config sub-tree (the structure of an experiment config).

    top level      CLASS_NAMES, DATA_CONFIG, MODEL, OPTIMIZATION, HOOK, keys the tools write
    DATA_CONFIG    by DATASET -> that dataset class's CONFIG_SCHEMA (DatasetTemplate's keys + its own), whose
                   DATA_AUGMENTOR.AUG_CONFIG_LIST / DATA_PROCESSOR entries and TEACHER_FEATURES are picked by NAME
                   (data_augmentor.AUGMENTOR_SCHEMAS, data_processor.PROCESSOR_SCHEMAS, the teacher's CONFIG_SCHEMA)
    HOOK           pcdet.datasets.HOOK_SCHEMA
    MODEL          by NAME -> the detector's CONFIG_SCHEMA, whose slots (VFE, BACKBONE_3D, MAP_TO_BEV, BACKBONE_2D,
                   DENSE_HEAD, ...) are picked by NAME from the slot's registry -> that class's CONFIG_SCHEMA
    OPTIMIZATION   pcdet.training.optimization.OPTIMIZATION_SCHEMA

Imports are lazy: validating a config imports only the modules it names.
"""
from .config import ConfigError
from .config_schema import REQUIRED, Schema, Select, pick, schema_of, validate_block

# Written into the config by pcdet.config / the tools, never by a user.
RUNTIME_KEYS = {'ROOT_DIR': None, 'LOCAL_RANK': 0, 'TAG': None, 'EXP_GROUP_PATH': None}


def dataset_schema(name):
    """CONFIG_SCHEMA of the dataset class registered as `name` (DATA_CONFIG.DATASET)."""
    from .datasets import DATASET_REGISTRY, get_dataset_class
    pick(DATASET_REGISTRY, name, 'dataset', 'DATA_CONFIG.DATASET')
    return schema_of(get_dataset_class(name))


def detector_schema(name):
    """CONFIG_SCHEMA of the detector registered as `name` (MODEL.NAME)."""
    from .models.detectors import __all__ as detectors
    known = {k: v for k, v in detectors.items() if k != 'Detector3DTemplate'}
    return schema_of(pick(known, name, 'detector', 'MODEL.NAME'))


def hook_schema():
    from .datasets import HOOK_SCHEMA
    return HOOK_SCHEMA


def experiment_schema():
    """The schema of a full experiment config (tools/cfgs/*_models/*.yaml)."""
    from .training.optimization import OPTIMIZATION_SCHEMA
    return Schema('experiment config', {
        'CLASS_NAMES': REQUIRED,
        'DATA_CONFIG': Select(dataset_schema, by='DATASET', required=True),
        'MODEL': Select(detector_schema),
        'OPTIMIZATION': OPTIMIZATION_SCHEMA,
        'HOOK': hook_schema(),
        **RUNTIME_KEYS,
    })


def dataset_config_schema(name):
    """The schema of a dataset config used on its own (tools/cfgs/dataset_configs/*.yaml, info creation)."""
    return dataset_schema(name).extend(f'dataset config ({name})', {'CLASS_NAMES': None, **RUNTIME_KEYS})


def config_errors(cfg, schema=None):
    """Every problem of a resolved config, one line each (empty when valid). Without `schema`: an experiment
    config (`DATA_CONFIG` / `MODEL` / `OPTIMIZATION`), or a dataset config when it has `DATASET` at top level."""
    if schema is None:
        if 'DATASET' in cfg and 'DATA_CONFIG' not in cfg:
            try:
                schema = dataset_config_schema(cfg['DATASET'])
            except ConfigError as err:
                return [f'DATASET: {err}']
        else:
            schema = experiment_schema()
    return validate_block(cfg, schema, '', [])


def validate_config(cfg, schema=None, source=None):
    """Raise one ConfigError listing every unknown key (path + closest known key) and every missing required key
    of `cfg`; call it right after loading a config and applying `--set`, before building anything."""
    errors = config_errors(cfg, schema)
    if errors:
        where = f' {source}' if source else ''
        lines = '\n  '.join(errors)
        raise ConfigError(f'Config{where} has {len(errors)} problem(s) (keys starting with "_" are user keys and '
                          f'are not checked; see docs/CONFIG.md):\n  {lines}')
    return cfg
