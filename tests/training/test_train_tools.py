"""tools/train.py and tools/test.py: flags, config resolution, output folders, and an end-to-end run (train ->
refusals -> resume -> evaluate) with the stand-in dataset/model patched into the tools."""
import importlib.util
import logging
import pickle
from pathlib import Path

import pytest
import torch

from pcdet.config import ROOT_DIR
from pcdet.training.eval_loop import epoch_id_from_ckpt
from pcdet.training.run_utils import derive_output_dir, exp_group_path

from training_standins import RegressionDataset, TinyDetector, load_to_device, make_loader

CONFIG = """
CLASS_NAMES: ['Car']
DATA_CONFIG:
    DATASET: StandinDataset
    DATA_SPLIT: {train: train, test: val}
MODEL:
    NAME: TinyDetector
    POST_PROCESSING: {RECALL_THRESH_LIST: [0.3], EVAL_METRIC: standin}
OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 4
    NUM_EPOCHS: 2
    OPTIMIZER: adam_onecycle
    LR: 0.01
    WEIGHT_DECAY: 0.01
    MOMENTUM: 0.9
    MOMS: [0.95, 0.85]
    PCT_START: 0.4
    DIV_FACTOR: 10
    GRAD_NORM_CLIP: 10
"""


@pytest.fixture(autouse=True)
def _standins_skip_key_validation(monkeypatch):
    """StandinDataset / TinyDetector are not registered modules, so their keys have no schema; key validation
    is tested in tests/config/test_config_schema.py."""
    monkeypatch.setattr('pcdet.training.run_utils.validate_config', lambda cfg, **kwargs: cfg)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'pcdet_tool_{name}', ROOT_DIR / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def train_tool():
    return _load_tool('train')


@pytest.fixture(scope='module')
def test_tool():
    return _load_tool('test')


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / 'cfgs' / 'standin_models' / 'tiny.yaml'
    path.parent.mkdir(parents=True)
    path.write_text(CONFIG)
    return path


def test_output_dir_derivation(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT_DIR)
    assert exp_group_path('tools/cfgs/waymo_models/dsvt_pillar.yaml') == 'waymo_models'
    monkeypatch.chdir(ROOT_DIR / 'tools')
    assert exp_group_path('cfgs/waymo_models/dsvt_pillar.yaml') == 'waymo_models'
    assert exp_group_path('/abs/x/cfgs/nuscenes_models/sub/m.yaml') == 'nuscenes_models/sub'
    assert exp_group_path('/abs/my_configs/m.yaml') == 'my_configs'  # no cfgs/: the parent folder's name
    assert exp_group_path('/cfgs/old/tools/cfgs/a/m.yaml') == 'a'  # the LAST cfgs/ component counts
    assert derive_output_dir('cfgs/waymo_models/dsvt_pillar.yaml', 'run1') == \
        ROOT_DIR / 'output' / 'waymo_models' / 'dsvt_pillar' / 'run1'
    assert derive_output_dir('/x/cfgs/m.yaml', output_root=tmp_path) == tmp_path / 'm' / 'default'
    assert epoch_id_from_ckpt('output/dsvt_2x/ckpt/checkpoint_epoch_24.pth') == '24'
    assert epoch_id_from_ckpt('runs/exp3/latest_model.pth') == 'no_number'  # upstream would say '3'


def test_train_flags_and_config_resolution(train_tool, cfg_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative config path resolved from the CWD
    args, cfg = train_tool.parse_args(['--cfg_file', 'cfgs/standin_models/tiny.yaml', '--ckpt', 'a.pth',
                                       '--batch_size', '8', '--use_amp', '--set', 'OPTIMIZATION.LR', '0.5',
                                       'OPTIMIZATION.NUM_EPOCHS', '7'])
    assert args.resume == 'a.pth' and args.batch_size == 8 and args.use_amp
    assert Path(args.cfg_file) == cfg_file.resolve()
    assert (cfg.OPTIMIZATION.LR, cfg.OPTIMIZATION.NUM_EPOCHS) == (0.5, 7)
    assert (cfg.TAG, cfg.EXP_GROUP_PATH) == ('tiny', 'standin_models')
    defaults, _ = train_tool.parse_args(['--cfg_file', str(cfg_file), '--fp16'])
    assert defaults.use_amp and defaults.resume is None and defaults.workers == 4
    assert (defaults.max_ckpt_save_num, defaults.ckpt_save_time_interval, defaults.tcp_port) == (30, 300, 18888)
    assert defaults.launcher == 'none' and defaults.extra_tag == 'default'
    with pytest.raises(SystemExit):
        train_tool.parse_args(['--cfg_file', str(cfg_file), '--ckpt', 'a.pth', '--resume', 'b.pth'])


def test_test_flags_and_eval_dirs(test_tool, cfg_file):
    args, cfg = test_tool.parse_args(['--cfg_file', str(cfg_file), '--ckpt', '/r/ckpt/checkpoint_epoch_5.pth'])
    assert args.max_waiting_mins == 30 and args.eval_tag == 'default' and not args.eval_all
    out = Path('/o')
    assert test_tool.eval_output_dir_for(args, cfg, out) == out / 'eval' / 'epoch_5' / 'val' / 'default'
    args, cfg = test_tool.parse_args(['--cfg_file', str(cfg_file), '--eval_all', '--eval_tag', 't'])
    assert test_tool.eval_output_dir_for(args, cfg, out) == out / 'eval' / 'eval_all_default' / 't'


def _patch(tool, monkeypatch, built):
    def build_dataloader(dataset_cfg, class_names, batch_size, dist, workers=4, logger=None, training=True,
                         seed=None, merge_all_iters_to_one_epoch=False, total_epochs=0, root_path=None):
        dataset = RegressionDataset(n=8 if training else 5, training=training, augment=training)
        built.append((training, batch_size, seed))
        return dataset, make_loader(dataset, batch_size, shuffle=training), None

    def load_params_from_file(model, filename, logger, to_cpu=True, strict=False):
        model.load_state_dict(torch.load(filename, weights_only=True)['model_state'])

    monkeypatch.setattr(tool, 'build_dataloader', build_dataloader)
    monkeypatch.setattr(tool, 'build_network', lambda model_cfg, num_class, dataset: TinyDetector())
    monkeypatch.setattr(tool, 'load_data_to_device', load_to_device)
    monkeypatch.setattr(tool, 'load_params_from_file', load_params_from_file)


@pytest.fixture
def clean_pcdet_logger():
    yield
    logger = logging.getLogger('pcdet')
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def test_train_then_refuse_then_resume_then_test(train_tool, test_tool, cfg_file, tmp_path, monkeypatch,
                                                 clean_pcdet_logger):
    built = []
    _patch(train_tool, monkeypatch, built)
    _patch(test_tool, monkeypatch, built)
    out_root = tmp_path / 'out'
    base = ['--cfg_file', str(cfg_file), '--output_root', str(out_root), '--workers', '0', '--fix_random_seed']
    run_dir = train_tool.main(base)
    assert run_dir == out_root / 'standin_models' / 'tiny' / 'default'
    ckpt_dir = run_dir / 'ckpt'
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ['checkpoint_epoch_1.pth', 'checkpoint_epoch_2.pth']
    assert (run_dir / 'tiny.yaml').read_text() == CONFIG
    assert 'OPTIMIZER: adam_onecycle' in (run_dir / 'resolved_config.yaml').read_text()
    log_text = next(run_dir.glob('train_*.log')).read_text()
    assert 'cfg.OPTIMIZATION.LR: 0.01' in log_text and 'git:' in log_text
    assert any((run_dir / 'tensorboard').iterdir())
    result = run_dir / 'eval' / 'eval_with_train' / 'epoch_2' / 'val' / 'result.pkl'
    with open(result, 'rb') as handle:
        assert [a['frame_id'] for a in pickle.load(handle)] == [f'{i:04d}' for i in range(5)]
    assert built[:2] == [(True, 4, 666), (False, 4, None)]
    seeded = train_tool.main(['--cfg_file', str(cfg_file), '--output_root', str(out_root), '--workers', '0',
                              '--seed', '5', '--extra_tag', 'seed5', '--skip_eval'])
    assert built[-1] == (True, 4, 5)  # --seed implies --fix_random_seed with that data seed
    weights = [torch.load(d / 'ckpt' / 'checkpoint_epoch_2.pth', weights_only=True)['model_state'] for d in
               (run_dir, seeded)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    with pytest.raises(SystemExit) as exc:  # same run folder, no --resume: refused, nothing overwritten
        train_tool.main(base)
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # everything already trained: refused with a reason
        train_tool.main(base + ['--resume', 'auto'])
    assert exc.value.code == 2
    assert 'zero iterations left' in next(iter(sorted(run_dir.glob('train_*.log'))[-1:])).read_text()

    train_tool.main(base + ['--resume', 'auto', '--epochs', '3', '--skip_eval'])
    assert (ckpt_dir / 'checkpoint_epoch_3.pth').is_file()
    resumed = torch.load(ckpt_dir / 'checkpoint_epoch_3.pth', weights_only=True)
    assert (resumed['epoch'], resumed['it']) == (3, 6)

    ret = test_tool.main(['--cfg_file', str(cfg_file), '--output_root', str(out_root), '--workers', '0',
                          '--ckpt', str(ckpt_dir / 'checkpoint_epoch_3.pth'), '--infer_time'])
    assert ret['frames'] == 5 and 'recall/rcnn_0.3' in ret
    assert (run_dir / 'eval' / 'epoch_3' / 'val' / 'default' / 'result.pkl').is_file()

    evaluated = test_tool.main(['--cfg_file', str(cfg_file), '--output_root', str(out_root), '--workers', '0',
                                '--eval_all', '--max_waiting_mins', '0', '--start_epoch', '2'])
    assert evaluated == ['2', '3']
    eval_all_dir = run_dir / 'eval' / 'eval_all_default' / 'default'
    assert (eval_all_dir / 'eval_list_val.txt').read_text().split() == ['2', '3']
    assert (eval_all_dir / 'epoch_3' / 'val' / 'result.pkl').is_file()
    assert test_tool.main(['--cfg_file', str(cfg_file), '--output_root', str(out_root), '--workers', '0',
                           '--eval_all', '--max_waiting_mins', '0']) == ['1']  # 2 and 3 were already listed
