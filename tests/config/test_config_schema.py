"""Config keys are checked: unknown keys (with path and closest key) and missing required keys fail before any
work; defaults live once, in the schema the module reads through."""
import copy
import importlib.util
import re
from pathlib import Path

import pytest
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
             'pcdet/training/optimization.py', 'pcdet/training/schedulers.py']
RAW_READ = re.compile(r"\b\w*(cfg|config)\w*\.get\(\s*'[A-Za-z_]+'")


@pytest.mark.parametrize('relpath', CONVERTED)
def test_converted_modules_read_config_only_through_their_schema(relpath):
    raw = [line.strip() for line in (ROOT / relpath).read_text().splitlines() if RAW_READ.search(line)]
    assert raw == [], f'{relpath} reads config keys around its schema: {raw}'


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
