"""Config system: _BASE_CONFIG_ resolution, merge rules, typed --set overrides, saving."""
import logging
import os

import pytest
import yaml

from pcdet.config import (
    ConfigError,
    cfg_from_list,
    cfg_from_yaml_file,
    config_to_yaml,
    log_config_to_file,
    require_keys,
    save_config_to_file,
)


def write_yaml(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.fixture
def config_tree(tmp_path):
    write_yaml(tmp_path / 'cfgs/dataset_configs/base.yaml', {
        'DATASET': 'NuScenesDataset', 'MAX_SWEEPS': 10, 'POINT_CLOUD_RANGE': [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
        'DATA_SPLIT': {'train': 'train', 'test': 'val'},
        'DATA_AUGMENTOR': {'DISABLE_AUG_LIST': ['placeholder'], 'AUG_CONFIG_LIST': [{'NAME': 'a'}, {'NAME': 'b'}]},
    })
    model = write_yaml(tmp_path / 'cfgs/models/model.yaml', {
        'CLASS_NAMES': ['car', 'pedestrian'],
        'DATA_CONFIG': {'_BASE_CONFIG_': '../dataset_configs/base.yaml', 'MAX_SWEEPS': 5,
                        'DATA_AUGMENTOR': {'AUG_CONFIG_LIST': [{'NAME': 'c'}]}},
        'OPTIMIZATION': {'LR': 0.003, 'NUM_EPOCHS': 20, 'USE_AMP': False, 'MOMS': [0.95, 0.85]},
    })
    return tmp_path, model


def test_base_config_resolved_relative_to_including_file(config_tree, monkeypatch):
    root, model = config_tree
    monkeypatch.chdir('/')  # CWD must not matter
    cfg = cfg_from_yaml_file(model)
    assert cfg.DATA_CONFIG.DATASET == 'NuScenesDataset'
    assert cfg.DATA_CONFIG.MAX_SWEEPS == 5  # override wins
    assert cfg.DATA_CONFIG.DATA_SPLIT.test == 'val'  # nested dict from base kept
    # Lists replace wholesale, sibling keys of a merged dict survive.
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST == [{'NAME': 'c'}]
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ['placeholder']


def test_base_config_falls_back_to_cwd(tmp_path, monkeypatch):
    write_yaml(tmp_path / 'cfgs/dataset_configs/base.yaml', {'A': 1})
    model = write_yaml(tmp_path / 'elsewhere/model.yaml',
                       {'DATA_CONFIG': {'_BASE_CONFIG_': 'cfgs/dataset_configs/base.yaml'}})
    monkeypatch.chdir(tmp_path)  # OpenPCDet style: paths relative to tools/
    assert cfg_from_yaml_file(model).DATA_CONFIG.A == 1


def test_nested_bases_and_cycle_detection(tmp_path):
    write_yaml(tmp_path / 'a.yaml', {'_BASE_CONFIG_': 'b.yaml', 'X': 1})
    write_yaml(tmp_path / 'b.yaml', {'_BASE_CONFIG_': 'c.yaml', 'Y': 2})
    write_yaml(tmp_path / 'c.yaml', {'Z': 3, 'Y': 0})
    cfg = cfg_from_yaml_file(tmp_path / 'a.yaml')
    assert (cfg.X, cfg.Y, cfg.Z) == (1, 2, 3)
    write_yaml(tmp_path / 'c.yaml', {'_BASE_CONFIG_': 'a.yaml'})
    with pytest.raises(ConfigError, match='cycle'):
        cfg_from_yaml_file(tmp_path / 'a.yaml')


def test_missing_files_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        cfg_from_yaml_file(tmp_path / 'nope.yaml')
    write_yaml(tmp_path / 'm.yaml', {'DATA_CONFIG': {'_BASE_CONFIG_': 'missing_base.yaml'}})
    with pytest.raises(ConfigError, match='missing_base.yaml'):
        cfg_from_yaml_file(tmp_path / 'm.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('A: [1, 2\n')
    with pytest.raises(ConfigError, match='bad.yaml'):
        cfg_from_yaml_file(bad)
    listy = tmp_path / 'list.yaml'
    listy.write_text('- 1\n- 2\n')
    with pytest.raises(ConfigError, match='mapping'):
        cfg_from_yaml_file(listy)


def test_set_overrides_are_typed(config_tree):
    _, model = config_tree
    cfg = cfg_from_yaml_file(model)
    cfg_from_list(['OPTIMIZATION.LR', '0.01', 'DATA_CONFIG.MAX_SWEEPS', '3', 'OPTIMIZATION.USE_AMP', 'True',
                   'OPTIMIZATION.MOMS', '0.9,0.8', 'DATA_CONFIG.DATA_SPLIT', 'train:mini_train,test:mini_val',
                   'CLASS_NAMES', "['car']"], cfg)
    assert cfg.OPTIMIZATION.LR == 0.01 and isinstance(cfg.OPTIMIZATION.LR, float)
    assert cfg.DATA_CONFIG.MAX_SWEEPS == 3
    assert cfg.OPTIMIZATION.USE_AMP is True
    assert cfg.OPTIMIZATION.MOMS == [0.9, 0.8]
    assert cfg.DATA_CONFIG.DATA_SPLIT == {'train': 'mini_train', 'test': 'mini_val'}
    assert cfg.CLASS_NAMES == ['car']
    cfg_from_list(['OPTIMIZATION.LR', '1'], cfg)  # an int literal on a float field is accepted as float
    assert cfg.OPTIMIZATION.LR == 1.0 and isinstance(cfg.OPTIMIZATION.LR, float)


@pytest.mark.parametrize('override, message', [
    (['OPTIMIZATION.NUM_EPOCHS', '12.5'], 'type mismatch'),
    (['OPTIMIZATION.NOT_A_KEY', '1'], 'not found'),
    (['NOPE.LR', '1'], 'NOPE'),
    (['OPTIMIZATION.LR'], 'KEY VALUE'),
    (['DATA_CONFIG.DATA_SPLIT', 'bogus:1'], 'unknown sub-key'),
])
def test_bad_overrides_name_the_key(config_tree, override, message):
    _, model = config_tree
    with pytest.raises(ConfigError, match=message):
        cfg_from_list(override, cfg_from_yaml_file(model))


def test_no_shared_state_between_loads(config_tree):
    _, model = config_tree
    first = cfg_from_yaml_file(model)
    first.DATA_CONFIG.MAX_SWEEPS = 99
    assert cfg_from_yaml_file(model).DATA_CONFIG.MAX_SWEEPS == 5


def test_saved_config_round_trips(config_tree, tmp_path):
    _, model = config_tree
    cfg = cfg_from_yaml_file(model)
    out = tmp_path / 'out' / 'resolved.yaml'
    save_config_to_file(cfg, out)
    reloaded = yaml.safe_load(out.read_text())
    assert reloaded['DATA_CONFIG']['MAX_SWEEPS'] == 5
    assert reloaded['ROOT_DIR'] == str(cfg.ROOT_DIR)
    assert not [p for p in os.listdir(out.parent) if p.endswith('.tmp')]
    assert 'POINT_CLOUD_RANGE' in config_to_yaml(cfg)


def test_log_config_and_require_keys(config_tree, caplog):
    _, model = config_tree
    cfg = cfg_from_yaml_file(model)
    logger = logging.getLogger('test_config_logger')
    with caplog.at_level(logging.INFO, logger='test_config_logger'):
        log_config_to_file(cfg, logger=logger)
    assert 'cfg.OPTIMIZATION.LR: 0.003' in caplog.text
    require_keys(cfg.DATA_CONFIG, ['DATASET', 'MAX_SWEEPS'], 'DATA_CONFIG')
    with pytest.raises(ConfigError, match='DATA_CONFIG is missing required key.*VOXEL_SIZE'):
        require_keys(cfg.DATA_CONFIG, ['DATASET', 'VOXEL_SIZE'], 'DATA_CONFIG')
