"""Schemas of the dataset-side config blocks (`DATA_CONFIG` by DATASET, augmentor and processor entries by NAME,
`POINT_FEATURE_ENCODING`, `TEACHER_FEATURES`, `HOOK`); see pcdet/config_schema.py for the value kinds.

Defaults here are the ones the dataset modules use; modules read optional keys through these schemas
(`SCHEMA.get(cfg, KEY)`), so a default lives in exactly one place. Importing this module imports no dataset code.
"""
from ..config_schema import REQUIRED, Ignored, Schema, SelectList, pick

_SHARED_MEMORY = Ignored('OpenPCDet shared-memory loading; pcdet reads points from disk')

AUGMENTOR_SCHEMAS = {
    'gt_sampling': Schema('DATA_AUGMENTOR gt_sampling', {
        'NAME': REQUIRED,
        'DB_INFO_PATH': REQUIRED,
        'SAMPLE_GROUPS': REQUIRED,
        'NUM_POINT_FEATURES': REQUIRED,
        'DB_DATA_PATH': None,
        'PREPARE': None,                            # {filter_by_min_points: [...], filter_by_difficulty: [...]}
        'REMOVE_EXTRA_WIDTH': [0, 0, 0],
        'LIMIT_WHOLE_SCENE': False,
        'DATABASE_WITH_FAKELIDAR': False,
        'FILTER_OBJ_POINTS_BY_TIMESTAMP': False,
        'TIME_RANGE': None,                         # with FILTER_OBJ_POINTS_BY_TIMESTAMP
        'BACKUP_DB_INFO': Schema('gt_sampling.BACKUP_DB_INFO', {
            'DB_INFO_PATH': REQUIRED, 'DB_DATA_PATH': None, 'NUM_POINT_FEATURES': REQUIRED}, absent='none'),
        'USE_ROAD_PLANE': Ignored('KITTI road planes are not supported'),
        'USE_SHARED_MEMORY': _SHARED_MEMORY,
    }),
    'random_world_flip': Schema('DATA_AUGMENTOR random_world_flip', {'NAME': REQUIRED, 'ALONG_AXIS_LIST': REQUIRED}),
    'random_world_rotation': Schema('DATA_AUGMENTOR random_world_rotation', {
        'NAME': REQUIRED, 'WORLD_ROT_ANGLE': REQUIRED}),
    'random_world_scaling': Schema('DATA_AUGMENTOR random_world_scaling', {
        'NAME': REQUIRED, 'WORLD_SCALE_RANGE': REQUIRED}),
    'random_world_translation': Schema('DATA_AUGMENTOR random_world_translation', {
        'NAME': REQUIRED, 'NOISE_TRANSLATE_STD': REQUIRED}),
}

_VOXEL_SIZE = {'NAME': REQUIRED, 'VOXEL_SIZE': REQUIRED}
PROCESSOR_SCHEMAS = {
    'mask_points_and_boxes_outside_range': Schema('DATA_PROCESSOR mask_points_and_boxes_outside_range', {
        'NAME': REQUIRED, 'REMOVE_OUTSIDE_BOXES': False, 'MASK_Z': False, 'min_num_corners': 1,
        'USE_CENTER_TO_FILTER': True}),
    'shuffle_points': Schema('DATA_PROCESSOR shuffle_points', {'NAME': REQUIRED, 'SHUFFLE_ENABLED': REQUIRED}),
    'transform_points_to_voxels': Schema('DATA_PROCESSOR transform_points_to_voxels', {
        **_VOXEL_SIZE, 'MAX_POINTS_PER_VOXEL': REQUIRED, 'MAX_NUMBER_OF_VOXELS': REQUIRED, 'DOUBLE_FLIP': False}),
    'transform_points_to_voxels_placeholder': Schema('DATA_PROCESSOR transform_points_to_voxels_placeholder',
                                                     _VOXEL_SIZE),
    'calculate_grid_size': Schema('DATA_PROCESSOR calculate_grid_size', {**_VOXEL_SIZE, 'DOWNSAMPLE_FACTOR': None}),
}

POINT_FEATURE_ENCODING_SCHEMA = Schema('DATA_CONFIG.POINT_FEATURE_ENCODING', {
    'encoding_type': REQUIRED, 'src_feature_list': REQUIRED, 'used_feature_list': REQUIRED, 'filter_sweeps': False},
    required=True)

TEACHER_FEATURES_SCHEMA = Schema('DATA_CONFIG.TEACHER_FEATURES', {
    'NAME': REQUIRED,                   # synthetic_semantic | seal_minkunet | geometric
    'NUM_FEATURES': REQUIRED,
    'ENABLED': True,
    'FEATURE_DIR': None,
    'SEED': 0, 'NOISE_STD': 0.05, 'NUM_LABELS': 32,                         # synthetic_semantic
    'LABEL_NOISE': 0.0,                 # synthetic_semantic: fraction of points given a wrong label (noisy oracle)
    'RADII': [0.5, 1.0, 2.0], 'GROUND_CELL': 4.0, 'RANGE_SCALE': 50.0,      # geometric
    'CHECKPOINT': None, 'BACKEND': 'torch', 'DEVICE': 'cpu', 'WEIGHTS_ONLY': True,
    'INTENSITY_COLUMN': 3, 'INTENSITY_SCALE': 1.0, 'VOXEL_SIZE': [0.2, 0.2, 0.2],  # seal_minkunet
})

HOOK_SCHEMA = Schema('HOOK', {
    'DisableAugmentationHook': Schema('HOOK.DisableAugmentationHook', {
        'DISABLE_AUG_LIST': REQUIRED, 'NUM_LAST_EPOCHS': REQUIRED}, absent='none'),
})


def _entry(schemas, what):
    return lambda name: pick(schemas, name, what, 'NAME')


DATASET_TEMPLATE_SCHEMA = Schema('DATA_CONFIG', {
    'DATASET': REQUIRED,
    'DATA_PATH': None,                  # needed to build the dataset (not for inference from files)
    'POINT_CLOUD_RANGE': REQUIRED,
    'DATA_SPLIT': None,                 # {train: <split>, test: <split>}; needed to build the dataset
    'INFO_PATH': {},                    # {train: [info files], test: [...]}
    'POINT_FEATURE_ENCODING': POINT_FEATURE_ENCODING_SCHEMA,
    'DATA_AUGMENTOR': Schema('DATA_CONFIG.DATA_AUGMENTOR', {
        'DISABLE_AUG_LIST': [],
        'AUG_CONFIG_LIST': SelectList(_entry(AUGMENTOR_SCHEMAS, 'augmentor')),
    }),
    'DATA_PROCESSOR': SelectList(_entry(PROCESSOR_SCHEMAS, 'processor')),
    'TEACHER_FEATURES': Schema('DATA_CONFIG.TEACHER_FEATURES', TEACHER_FEATURES_SCHEMA.keys, absent='none'),
    'PRED_VELOCITY': False,
    'TRAIN_WITH_SPEED': False,
    'PROCESSED_DATA_TAG': None,
    'SAMPLED_INTERVAL': None,           # {train: k, test: k}
    'VERSION': None,
    'MAX_SWEEPS': 1,
})

NUSCENES_SCHEMA = DATASET_TEMPLATE_SCHEMA.extend('DATA_CONFIG (NuScenesDataset)', {
    'VERSION': None,                    # needed to build the dataset
    'PRED_VELOCITY': True,
    'SET_NAN_VELOCITY_TO_ZEROS': False,
    'FILTER_MIN_POINTS_IN_GT': False,
    'BALANCED_RESAMPLING': False,
    'EVAL_SET': None,
})

WAYMO_SCHEMA = DATASET_TEMPLATE_SCHEMA.extend('DATA_CONFIG (WaymoDataset)', {
    'PROCESSED_DATA_TAG': None,         # needed to build the dataset
    'DISABLE_NLZ_FLAG_ON_POINTS': False,
    'FILTER_EMPTY_BOXES_FOR_TRAIN': False,
    'SEQUENCE_CONFIG': None,
    'STRICT_SEQUENCE_LIST': False,
    'POINTS_TANH_DIM': None,
    'USE_SHARED_MEMORY': False,
    'SHARED_MEMORY_FILE_LIMIT': _SHARED_MEMORY,
})

DATASET_SCHEMAS = {'NuScenesDataset': NUSCENES_SCHEMA, 'WaymoDataset': WAYMO_SCHEMA}
