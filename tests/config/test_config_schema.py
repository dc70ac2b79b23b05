"""Config keys are checked: unknown keys (with path and closest key) and missing required keys fail before any
work; defaults live once, in the schema the module reads through."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml
from easydict import EasyDict

from pcdet.config import ConfigError, cfg_from_list, cfg_from_yaml_file
from pcdet.config_registry import config_errors, validate_config
from pcdet.config_schema import (
    REQUIRED,
    Ignored,
    Schema,
    UndeclaredKeyError,
    check_block,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / 'tools/cfgs').rglob('*.yaml'))
DSVT_NUSCENES = ROOT / 'tools/cfgs/nuscenes_models/dsvt_pillar_centerpoint.yaml'


def load(path=DSVT_NUSCENES):
    return cfg_from_yaml_file(path)


def rename(cfg, dotted, new_leaf):
    *parents, leaf = dotted.split('.')
    node = cfg
    for part in parents:
        node = node[part]
    node[new_leaf] = node.pop(leaf)
    return cfg


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: str(p.relative_to(ROOT / 'tools/cfgs')))
def test_every_shipped_config_validates(path):
    assert config_errors(load(path)) == []


@pytest.mark.parametrize('dotted, typo', [
    ('DATA_CONFIG.MAX_SWEEPS', 'MAX_SWEEPZ'),
    ('OPTIMIZATION.GRAD_NORM_CLIP', 'GRAD_NORM_CLIPP'),
    ('MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG.GAUSSIAN_OVERLAP', 'GAUSSIAN_OVERLAPP'),
    ('OPTIMIZATION', 'OPTIMIZATON'),
    ('MODEL.DENSE_HEAD.LOSS_CONFIG', 'LOSS_CONFG'),
    ('MODEL.DENSE_HEAD.POST_PROCESSING.NMS_CONFIG.NMS_THRESH', 'NMS_THRES'),
    ('DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST.0.DB_INFO_PATH', 'DB_INFO_PATHS'),
])
def test_typo_names_path_and_closest_key(dotted, typo):
    cfg = load()
    if '.0.' in dotted:  # a list entry
        head, tail = dotted.split('.0.')
        node = cfg
        for part in head.split('.'):
            node = node[part]
        rename(node[0], tail, typo)
        path = head + '[0].' + typo
    else:
        rename(cfg, dotted, typo)
        path = '.'.join(dotted.split('.')[:-1] + [typo])
    correct = dotted.split('.')[-1]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert re.search(rf'{re.escape(path)}: unknown key .*did you mean {correct}\?', str(err.value)), str(err.value)


def test_missing_required_keys_are_reported_up_front():
    cfg = load()
    cfg.MODEL.DENSE_HEAD.POST_PROCESSING.NMS_CONFIG.pop('NMS_TYPE')
    cfg.DATA_CONFIG.pop('POINT_CLOUD_RANGE')
    errors = config_errors(cfg)
    assert 'MODEL.DENSE_HEAD.POST_PROCESSING.NMS_CONFIG.NMS_TYPE: required key is missing' in '\n'.join(errors)
    assert any(e.startswith('DATA_CONFIG.POINT_CLOUD_RANGE: required key is missing') for e in errors)


def test_unknown_module_names_suggest_the_closest():
    cfg = load()
    cfg.MODEL.VFE.NAME = 'DynPilarVFE'
    cfg.DATA_CONFIG.DATA_PROCESSOR[0].NAME = 'shufle_points'
    cfg.DATA_CONFIG.DATASET = 'NuscenesDataset'
    message = '\n'.join(config_errors(cfg))
    assert "MODEL.VFE.NAME: unknown vfe 'DynPilarVFE' at MODEL.VFE.NAME; did you mean 'DynPillarVFE'?" in message
    assert "did you mean 'NuScenesDataset'?" in message


def test_underscore_keys_are_user_keys_and_set_checks_existence():
    cfg = load()
    cfg._NOTES = 'mine'
    cfg.MODEL.DENSE_HEAD._MY_FLAG = True
    assert config_errors(cfg) == []
    with pytest.raises(ConfigError, match='not found'):
        cfg_from_list(['OPTIMIZATION.GRAD_NORM_CLIPP', '10'], cfg)


def test_dataset_config_alone_validates_and_rejects_typos():
    cfg = cfg_from_yaml_file(ROOT / 'tools/cfgs/dataset_configs/nuscenes_dataset.yaml')
    assert config_errors(cfg) == []
    rename(cfg, 'MAX_SWEEPS', 'MAX_SWEEPZ')
    with pytest.raises(ConfigError, match=r'MAX_SWEEPZ: unknown key .*did you mean MAX_SWEEPS\?'):
        validate_config(cfg)


def test_accessor_fills_declared_defaults_and_rejects_undeclared_reads():
    schema = Schema('BLOCK', {'A': REQUIRED, 'B': 3, 'OLD': Ignored('upstream only'),
                              'SUB': Schema('BLOCK.SUB', {'X': 1})})
    cfg = EasyDict(A=1)
    assert (schema.get(cfg, 'A'), schema.get(cfg, 'B'), schema.get(cfg, 'SUB')) == (1, 3, {'X': 1})
    assert schema.fill(cfg) == {'A': 1, 'B': 3, 'SUB': {'X': 1}}
    with pytest.raises(UndeclaredKeyError, match="reads key 'C'"):
        schema.get(cfg, 'C')
    with pytest.raises(UndeclaredKeyError, match='ignored'):
        schema.get(cfg, 'OLD')
    with pytest.raises(ConfigError, match='required key A is missing'):
        schema.get({}, 'A')


def test_module_defaults_come_from_the_schema():
    """What a module reads for an absent key is the schema's default (one declaration)."""
    from pcdet.models.backbones_2d.map_to_bev.pointpillar_scatter import PointPillarScatter3d
    from pcdet.models.backbones_3d.dsvt.dsvt import COMPAT_SCHEMA, resolve_compat
    from pcdet.models.backbones_3d.dsvt_mae import MASK_CONFIG_SCHEMA, resolve_mask_config
    from pcdet.models.dense_heads.gpicture_head import DGPL_SCHEMA, resolve_dgpl_config
    from pcdet.training.optimization import OPTIMIZATION_SCHEMA
    from pcdet.training.train_loop import build_grad_scaler
    assert resolve_compat(EasyDict()) == COMPAT_SCHEMA.fill(None)
    assert resolve_dgpl_config(EasyDict()) == DGPL_SCHEMA.fill(None)
    mask = resolve_mask_config(EasyDict())
    assert {k: mask[k] for k in ('TYPE', 'RANDOM_MASK_RATIO', 'NORMALIZE_TARGETS')} == \
        {k: MASK_CONFIG_SCHEMA.fill(None)[k] for k in ('TYPE', 'RANDOM_MASK_RATIO', 'NORMALIZE_TARGETS')}
    scatter = PointPillarScatter3d(EasyDict(NAME='PointPillarScatter3d', NUM_BEV_FEATURES=8), grid_size=[4, 5, 1])
    assert (scatter.nx, scatter.ny, scatter.nz) == (4, 5, 1)
    assert OPTIMIZATION_SCHEMA.get(EasyDict(), 'GRAD_NORM_CLIP') == 0
    assert build_grad_scaler('off', 'cpu', EasyDict()) is not None


def test_the_three_hand_checks_now_use_the_schema():
    from pcdet.models.backbones_3d.dsvt.dsvt import resolve_compat
    from pcdet.models.backbones_3d.dsvt_mae import resolve_mask_config
    from pcdet.models.dense_heads.gpicture_head import resolve_dgpl_config
    cases = [(resolve_compat, 'COMPAT', 'POOL_UNMASKED_EMPTY_SLOT', 'POOL_UNMASKED_EMPTY_SLOTS'),
             (resolve_mask_config, 'MASK_CONFIG', 'LAMBDA_TRESHOLD', 'LAMBDA_THRESHOLD'),
             (resolve_dgpl_config, 'DGPL', 'GAMA', 'GAMMA')]
    for resolve, block, typo, correct in cases:
        with pytest.raises(ConfigError, match=rf'{block}.{typo}: unknown key .*did you mean {correct}\?'):
            resolve(EasyDict({block: {typo: 1}}))


CONVERTED = ['pcdet/models/backbones_3d/vfe/dynamic_pillar_vfe.py', 'pcdet/models/backbones_3d/dsvt/dsvt.py',
             'pcdet/models/backbones_3d/dsvt/shapes.py', 'pcdet/models/backbones_3d/dsvt/input_layer.py',
             'pcdet/models/backbones_3d/dsvt_mae.py', 'pcdet/models/backbones_2d/base_bev_res_backbone.py',
             'pcdet/models/backbones_2d/gpicture_decoder.py',
             'pcdet/models/backbones_2d/map_to_bev/pointpillar_scatter.py',
             'pcdet/models/dense_heads/center_head.py', 'pcdet/models/dense_heads/gpicture_head.py',
             'pcdet/models/detectors/gpicture.py', 'pcdet/models/model_utils/model_nms_utils.py',
             'pcdet/training/optimization.py', 'pcdet/training/schedulers.py',
             # dataset side and the leftover readers
             'pcdet/datasets/__init__.py', 'pcdet/datasets/dataset.py', 'pcdet/datasets/nuscenes/nuscenes_dataset.py',
             'pcdet/datasets/nuscenes/nuscenes_utils.py', 'pcdet/datasets/waymo/waymo_dataset.py',
             'pcdet/datasets/waymo/waymo_utils.py', 'pcdet/datasets/augmentor/data_augmentor.py',
             'pcdet/datasets/augmentor/database_sampler.py', 'pcdet/datasets/processor/data_processor.py',
             'pcdet/datasets/processor/point_feature_encoder.py', 'pcdet/datasets/processor/voxelization.py',
             'pcdet/datasets/teachers/__init__.py', 'pcdet/datasets/teachers/base.py',
             'pcdet/datasets/teachers/prepare.py', 'pcdet/datasets/teachers/feature_store.py',
             'pcdet/datasets/teachers/synthetic_semantic.py', 'pcdet/datasets/teachers/seal_minkunet.py',
             'pcdet/utils/point_io.py', 'pcdet/training/eval_loop.py', 'pcdet/utils/checkpoint.py',
             'pcdet/models/detectors/centerpoint.py']
RAW_READ = re.compile(r"\b\w*(cfg|config)\w*\.get\(\s*'[A-Za-z_]+'")


def raw_reads(text):
    return [line.strip() for line in text.splitlines() if RAW_READ.search(line)]


@pytest.mark.parametrize('relpath', CONVERTED)
def test_converted_modules_read_config_only_through_their_schema(relpath):
    raw = raw_reads((ROOT / relpath).read_text())
    assert raw == [], f'{relpath} reads config keys around its schema: {raw}'


def test_the_scan_catches_a_planted_raw_read():
    text = (ROOT / 'pcdet/datasets/nuscenes/nuscenes_dataset.py').read_text()
    assert raw_reads(text) == []
    planted = text.replace("max_sweeps=self._cfg('MAX_SWEEPS')", "max_sweeps=self.dataset_cfg.get('MAX_SWEEPS', 10)")
    assert planted != text
    assert raw_reads(planted) == ["'points': self.get_lidar_with_sweeps(index, "
                                  "max_sweeps=self.dataset_cfg.get('MAX_SWEEPS', 10)),"]


def test_dataset_side_schemas_are_the_modules_own():
    """The validator uses the very objects the modules read through (no copies that could drift)."""
    from pcdet.config_registry import dataset_schema, hook_schema
    from pcdet.datasets import HOOK_SCHEMA
    from pcdet.datasets.augmentor.data_augmentor import AUGMENTOR_SCHEMAS
    from pcdet.datasets.augmentor.database_sampler import DataBaseSampler
    from pcdet.datasets.dataset import DatasetTemplate
    from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
    from pcdet.datasets.processor.data_processor import PROCESSOR_SCHEMAS
    from pcdet.datasets.processor.point_feature_encoder import PointFeatureEncoder
    from pcdet.datasets.teachers.seal_minkunet import SealMinkUNetTeacher
    from pcdet.datasets.teachers.synthetic_semantic import SyntheticSemanticTeacher
    from pcdet.datasets.waymo.waymo_dataset import WaymoDataset
    assert dataset_schema('NuScenesDataset') is NuScenesDataset.CONFIG_SCHEMA
    assert dataset_schema('WaymoDataset') is WaymoDataset.CONFIG_SCHEMA
    assert hook_schema() is HOOK_SCHEMA
    keys = DatasetTemplate.CONFIG_SCHEMA.keys
    assert keys['POINT_FEATURE_ENCODING'] is PointFeatureEncoder.CONFIG_SCHEMA
    assert keys['DATA_AUGMENTOR'].keys['AUG_CONFIG_LIST'].resolve('gt_sampling') is DataBaseSampler.CONFIG_SCHEMA
    assert AUGMENTOR_SCHEMAS['gt_sampling'] is DataBaseSampler.CONFIG_SCHEMA
    assert keys['DATA_PROCESSOR'].resolve('shuffle_points') is PROCESSOR_SCHEMAS['shuffle_points']
    assert keys['TEACHER_FEATURES'].resolve('seal_minkunet') is SealMinkUNetTeacher.CONFIG_SCHEMA
    assert keys['TEACHER_FEATURES'].resolve('synthetic_semantic') is SyntheticSemanticTeacher.CONFIG_SCHEMA
    # per-dataset default: nuScenes keeps velocities, the template (Waymo) does not
    assert (NuScenesDataset.CONFIG_SCHEMA.keys['PRED_VELOCITY'], WaymoDataset.CONFIG_SCHEMA.keys['PRED_VELOCITY']) \
        == (True, False)


def _declared(schema, key):
    return schema.keys[key]


def test_dataset_side_modules_fill_the_declared_defaults(tmp_path):
    """A config without an optional key behaves as one that sets it to the schema's declared default."""
    import pickle

    import numpy as np

    from pcdet.datasets import HOOK_SCHEMA, apply_disable_augmentation_hook
    from pcdet.datasets.augmentor.data_augmentor import DATA_AUGMENTOR_SCHEMA, DataAugmentor
    from pcdet.datasets.augmentor.database_sampler import DataBaseSampler
    from pcdet.datasets.dataset import DatasetTemplate
    from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
    from pcdet.datasets.processor.data_processor import PROCESSOR_SCHEMAS, DataProcessor
    from pcdet.datasets.processor.point_feature_encoder import PointFeatureEncoder
    from pcdet.datasets.teachers import feature_store
    from pcdet.datasets.teachers.seal_minkunet import SealMinkUNetTeacher
    from pcdet.datasets.teachers.synthetic_semantic import SyntheticSemanticTeacher
    from pcdet.datasets.waymo import waymo_utils
    from pcdet.evaluation.detection import _recall_thresholds
    from pcdet.models.detectors.detector3d_template import POST_PROCESSING_SCHEMA
    from pcdet.utils.checkpoint import PRETRAINED_ENCODER_SCHEMA
    from pcdet.utils.point_io import NONFINITE_POINTS_SCHEMA, nonfinite_points_policy

    # point feature encoder: filter_sweeps
    encoding = {'encoding_type': 'absolute_coordinates_encoding', 'src_feature_list': ['x', 'y', 'z', 'timestamp'],
                'used_feature_list': ['x', 'y', 'z', 'timestamp']}
    points = np.array([[0, 0, 0, 0.0], [1, 1, 1, 0.05], [2, 2, 2, 0.1]], dtype=np.float32)
    declared = dict(encoding, filter_sweeps=_declared(PointFeatureEncoder.CONFIG_SCHEMA, 'filter_sweeps'))
    np.testing.assert_array_equal(PointFeatureEncoder(EasyDict(encoding)).forward({'points': points})['points'],
                                  PointFeatureEncoder(EasyDict(declared)).forward({'points': points})['points'])

    # data processor: mask_points_and_boxes_outside_range's switches
    schema = PROCESSOR_SCHEMAS['mask_points_and_boxes_outside_range']
    step = DataProcessor([EasyDict(NAME='mask_points_and_boxes_outside_range')], [-1, -1, -1, 1, 1, 1], True, 3)
    keywords = step.data_processor_queue[0].keywords
    assert (keywords['use_z'], keywords['filter_boxes'], keywords['min_num_corners'],
            keywords['use_center_to_filter']) == tuple(schema.keys[k] for k in (
                'MASK_Z', 'REMOVE_OUTSIDE_BOXES', 'min_num_corners', 'USE_CENTER_TO_FILTER'))

    # augmentor block: DISABLE_AUG_LIST / AUG_CONFIG_LIST
    assert DataAugmentor('/nonexistent', None, ['car']).active_augmentations == \
        list(DATA_AUGMENTOR_SCHEMA.fill(None).AUG_CONFIG_LIST)

    # gt_sampling: REMOVE_EXTRA_WIDTH, LIMIT_WHOLE_SCENE, PREPARE, BACKUP_DB_INFO
    with open(tmp_path / 'db.pkl', 'wb') as handle:
        pickle.dump({'car': [{'name': 'car', 'num_points_in_gt': 3, 'difficulty': 0}]}, handle)
    sampler = DataBaseSampler(tmp_path, EasyDict(NAME='gt_sampling', DB_INFO_PATH=['db.pkl'], SAMPLE_GROUPS=['car:1'],
                                                 NUM_POINT_FEATURES=5), ['car'])
    assert sampler.limit_whole_scene == _declared(DataBaseSampler.CONFIG_SCHEMA, 'LIMIT_WHOLE_SCENE')
    assert DataBaseSampler.CONFIG_SCHEMA.get(sampler.sampler_cfg, 'REMOVE_EXTRA_WIDTH') == [0, 0, 0]
    assert len(sampler.db_infos['car']) == 1  # PREPARE absent: no filter

    # template and per-dataset defaults: the prediction width follows PRED_VELOCITY / TRAIN_WITH_SPEED
    empty = [{'pred_scores': np.zeros(0), 'pred_boxes': np.zeros((0, 9)), 'pred_labels': np.zeros(0)}]
    batch = {'frame_id': ['f']}
    for cls, width in ((DatasetTemplate, 7), (NuScenesDataset, 9)):
        dataset = cls.__new__(cls)
        for cfg in (EasyDict(), EasyDict(PRED_VELOCITY=_declared(cls.CONFIG_SCHEMA, 'PRED_VELOCITY'))):
            dataset.dataset_cfg = cfg
            assert dataset.generate_prediction_dicts(batch, empty, ['car'])[0]['boxes_lidar'].shape == (0, width)

    # point_io, waymo_utils
    assert nonfinite_points_policy(EasyDict()) == NONFINITE_POINTS_SCHEMA.keys['NONFINITE_POINTS'] == 'warn'
    assert waymo_utils.points_tanh_dims(EasyDict()) == waymo_utils.points_tanh_dims(
        EasyDict(POINTS_TANH_DIM=_declared(waymo_utils.POINTS_TANH_SCHEMA, 'POINTS_TANH_DIM')))

    # teachers: ENABLED, FEATURE_DIR, and each teacher's own keys
    block = EasyDict(NAME='synthetic_semantic', NUM_FEATURES=8)
    assert feature_store.teacher_features_cfg(EasyDict(TEACHER_FEATURES=block)) is block
    assert feature_store.feature_dir_of(block) == 'teacher_features/synthetic_semantic'
    teacher = SyntheticSemanticTeacher(block)
    assert (teacher.seed, teacher.noise_std, teacher.num_labels) == tuple(
        SyntheticSemanticTeacher.CONFIG_SCHEMA.keys[k] for k in ('SEED', 'NOISE_STD', 'NUM_LABELS'))

    class Model(torch.nn.Module):
        out_channels = 8

    seal = SealMinkUNetTeacher.from_model(Model(), EasyDict(NAME='seal_minkunet', NUM_FEATURES=8))
    keys = SealMinkUNetTeacher.CONFIG_SCHEMA.keys
    assert (seal.voxel_size, seal.intensity_column, seal.intensity_scale, str(seal.device)) == (
        keys['VOXEL_SIZE'], keys['INTENSITY_COLUMN'], keys['INTENSITY_SCALE'], keys['DEVICE'])

    # hook, evaluation, pretrained encoder
    assert HOOK_SCHEMA.fill(None) == {'DisableAugmentationHook': None}
    assert apply_disable_augmentation_hook(None, EasyDict(DisableAugmentationHook=None), 0, 1) is False
    assert _recall_thresholds(EasyDict()) == _recall_thresholds(None) == POST_PROCESSING_SCHEMA.keys[
        'RECALL_THRESH_LIST']
    assert PRETRAINED_ENCODER_SCHEMA.get(EasyDict(), 'MIN_COVERAGE') == 0.95


def test_every_registered_model_class_declares_a_schema():
    from pcdet.config_schema import schema_of
    from pcdet.models.detectors import __all__ as detectors
    from pcdet.models.detectors.detector3d_template import get_registry
    classes = list(detectors.values())
    for slot in ('vfe', 'backbone_3d', 'map_to_bev_module', 'backbone_2d', 'dense_head'):
        classes += list(get_registry(slot).values())
    for cls in classes:
        schema_of(cls)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'pcdet_tool_{name}_schema', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_main_fails_fast_on_an_unknown_key(tmp_path, monkeypatch):
    train = _load_tool('train')
    built = []
    monkeypatch.setattr(train, 'build_dataloader', lambda *a, **k: built.append(1))
    cfg = yaml.safe_load((ROOT / 'tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml').read_text())
    cfg = copy.deepcopy(cfg)
    cfg['MODEL']['DENSE_HEAD']['LOSS_CONFG'] = cfg['MODEL']['DENSE_HEAD'].pop('LOSS_CONFIG')
    base = cfg['DATA_CONFIG']['_BASE_CONFIG_']
    cfg['DATA_CONFIG']['_BASE_CONFIG_'] = str((ROOT / 'tools/cfgs/nuscenes_models' / base).resolve()) \
        if (ROOT / 'tools/cfgs/nuscenes_models' / base).is_file() else str((ROOT / 'tools' / base).resolve())
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump(cfg))
    argv = ['--cfg_file', str(bad), '--output_root', str(tmp_path / 'out')]
    with pytest.raises(ConfigError, match=r'MODEL.DENSE_HEAD.LOSS_CONFG: unknown key .*did you mean LOSS_CONFIG\?'):
        train.main(argv)
    with pytest.raises(ConfigError, match='GRAD_NORM_CLIPP'):
        train.main(['--cfg_file', str(ROOT / 'tools/cfgs/nuscenes_models/dsvt_tiny_synthetic.yaml'),
                    '--output_root', str(tmp_path / 'out'), '--set', 'OPTIMIZATION.GRAD_NORM_CLIPP', '10'])
    assert built == [] and not (tmp_path / 'out').exists()


def test_missing_cfg_file_is_named_as_the_config_file(tmp_path):
    from argparse import Namespace

    from pcdet.training.run_utils import parse_config
    with pytest.raises(ConfigError, match=r'^Config file nope\.yaml not found') as err:
        parse_config(Namespace(cfg_file='nope.yaml', set_cfgs=None))
    assert '_BASE_CONFIG_' not in str(err.value)


def test_check_block_is_the_validator_for_one_fragment():
    schema = Schema('S', {'A': 1})
    check_block(None, schema, 'X')
    with pytest.raises(ConfigError, match=r'X.B: unknown key in S'):
        check_block({'B': 1}, schema, 'X')
