"""tools/test.py loads checkpoints strictly: another architecture is refused (file and keys named) unless
--allow_partial_load, which evaluates loudly (a WARNING lists what did not load); a file that is not a checkpoint
is refused naming the file. The dataset / model are tiny stand-ins patched into the tool; the loading is real."""
import importlib.util
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pcdet.config import ROOT_DIR
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
from pcdet.training.eval_loop import _default_load_params
from pcdet.utils.checkpoint import CheckpointMismatchError, CheckpointReadError

CONFIG = """
CLASS_NAMES: ['Car']
DATA_CONFIG:
    DATASET: StandinDataset
    DATA_SPLIT: {train: train, test: val}
MODEL:
    NAME: StandinDetector
    NUM_HM_CONV: 2
    POST_PROCESSING: {RECALL_THRESH_LIST: [0.3]}
OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 2
"""


class StandinDataset(Dataset):
    class_names = ['Car']

    def __init__(self, n=4):
        self.x = np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 10

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {'x': self.x[index], 'frame_id': f'{index:04d}'}

    @staticmethod
    def collate_batch(batch_list):
        return {'x': torch.from_numpy(np.stack([b['x'] for b in batch_list])),
                'frame_id': [b['frame_id'] for b in batch_list], 'batch_size': len(batch_list)}

    def generate_prediction_dicts(self, batch_dict, pred_dicts, class_names, output_path=None):
        return [{'frame_id': batch_dict['frame_id'][i], 'name': np.array(['Car']),
                 'score': pred['pred_scores'].numpy()} for i, pred in enumerate(pred_dicts)]

    def evaluation(self, det_annos, class_names, output_path=None, **kwargs):
        return 'standin', {'frames': len(det_annos)}


class StandinDetector(nn.Module):
    """`num_hm_conv` plays the role of CenterHead's NUM_HM_CONV: it changes the head's layers and shapes."""

    def __init__(self, num_hm_conv):
        super().__init__()
        self.register_buffer('global_step', torch.zeros(1, dtype=torch.long))
        self.backbone = nn.Linear(3, 8)
        self.hm = nn.Sequential(*[nn.Linear(8, 8) for _ in range(num_hm_conv - 1)], nn.Linear(8, 1))

    def forward(self, batch_dict):
        scores = self.hm(self.backbone(batch_dict['x']))[:, 0]
        return [{'pred_scores': s.reshape(1)} for s in scores], {'gt': 0}


@pytest.fixture(autouse=True)
def _standins_skip_key_validation(monkeypatch):
    """The stand-in dataset and detector are not registered modules, so their keys have no schema; key validation
    is tested in tests/config/test_config_schema.py."""
    monkeypatch.setattr('pcdet.training.run_utils.validate_config', lambda cfg, **kwargs: cfg)


def _load_tool():
    spec = importlib.util.spec_from_file_location('pcdet_tool_test_strict', ROOT_DIR / 'tools' / 'test.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tool(monkeypatch):
    module = _load_tool()

    def build_dataloader(dataset_cfg, class_names, batch_size, dist, workers=4, logger=None, training=True, **kw):
        dataset = StandinDataset()
        return dataset, DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_batch), None

    monkeypatch.setattr(module, 'build_dataloader', build_dataloader)
    monkeypatch.setattr(module, 'build_network',
                        lambda model_cfg, num_class, dataset: StandinDetector(int(model_cfg.NUM_HM_CONV)))
    monkeypatch.setattr(module, 'load_data_to_device', lambda batch_dict, device: batch_dict)
    return module


@pytest.fixture
def pcdet_records(caplog):
    """Records of the tool's 'pcdet' logger (it does not propagate); file handlers are closed afterwards."""
    logger = logging.getLogger('pcdet')
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def workdir(tmp_path):
    cfg_file = tmp_path / 'cfgs' / 'standin_models' / 'tiny.yaml'
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text(CONFIG)
    torch.manual_seed(0)
    other = tmp_path / 'hm3' / 'checkpoint_epoch_4.pth'   # NUM_HM_CONV 3: hm.1 changes shape, hm.2 is extra
    other.parent.mkdir()
    save_checkpoint(checkpoint_state(StandinDetector(3), None, 4, 8), other)
    same = tmp_path / 'hm2' / 'checkpoint_epoch_5.pth'
    same.parent.mkdir()
    save_checkpoint(checkpoint_state(StandinDetector(2), None, 5, 10), same)
    base = ['--cfg_file', str(cfg_file), '--output_root', str(tmp_path / 'out'), '--workers', '0']
    return tmp_path, base, other, same


def _results(tmp_path):
    return sorted((tmp_path / 'out').rglob('result.pkl'))


def test_other_architecture_is_refused_naming_file_and_keys(tool, workdir, pcdet_records):
    tmp_path, base, other, _ = workdir
    with pytest.raises(CheckpointMismatchError) as err:
        tool.main(base + ['--ckpt', str(other)])
    message = str(err.value)
    assert str(other) in message
    assert 'hm.1.weight checkpoint (8, 8) vs model (1, 8)' in message   # shape-mismatched key
    assert 'hm.2.weight' in message                                      # unexpected key
    assert '--allow_partial_load' in message
    assert _results(tmp_path) == []                                     # nothing was evaluated


def test_pretrained_model_is_strict_too(tool, workdir, pcdet_records):
    tmp_path, base, other, _ = workdir
    with pytest.raises(CheckpointMismatchError, match='hm.2.weight'):
        tool.main(base + ['--pretrained_model', str(other)])
    assert _results(tmp_path) == []


def test_allow_partial_load_evaluates_with_a_warning_listing_what_did_not_load(tool, workdir, pcdet_records):
    tmp_path, base, other, _ = workdir
    ret = tool.main(base + ['--ckpt', str(other), '--allow_partial_load'])
    assert ret['frames'] == 4
    warnings = [r.getMessage() for r in pcdet_records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert 'PARTIAL LOAD' in warnings[0] and str(other) in warnings[0]
    assert 'loaded 5/7' in warnings[0]
    assert 'hm.1.weight checkpoint (8, 8) vs model (1, 8)' in warnings[0] and 'hm.2.bias' in warnings[0]


def test_matching_checkpoint_evaluates_without_warning(tool, workdir, pcdet_records):
    tmp_path, base, _, same = workdir
    assert tool.main(base + ['--ckpt', str(same)])['frames'] == 4
    assert not [r for r in pcdet_records.records if r.levelno >= logging.WARNING]


def test_eval_all_is_strict(tool, workdir, pcdet_records):
    tmp_path, base, other, _ = workdir
    with pytest.raises(CheckpointMismatchError, match='hm.2.weight'):
        tool.main(base + ['--eval_all', '--ckpt_dir', str(other.parent), '--max_waiting_mins', '0'])
    assert _results(tmp_path) == []
    # eval_loop's own default loader (used without a load_params argument) is strict as well
    with pytest.raises(CheckpointMismatchError, match='hm.2.weight'):
        _default_load_params(StandinDetector(2), str(other), logging.getLogger('pcdet'), to_cpu=True)


@pytest.mark.parametrize('content', [b'these are not weights\n', 'truncated'])
def test_not_a_checkpoint_is_refused_naming_the_file(tool, workdir, pcdet_records, content):
    tmp_path, base, _, same = workdir
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(same.read_bytes()[:len(same.read_bytes()) // 2] if content == 'truncated' else content)
    with pytest.raises(CheckpointReadError) as err:
        tool.main(base + ['--ckpt', str(bad)])
    assert f'cannot read {bad} as a PyTorch checkpoint' in str(err.value)
    assert _results(tmp_path) == []
