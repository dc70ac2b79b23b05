"""`--pretrained_model` (tools/train.py -> load_pretrained_model) with the shipped GPICTURE fine-tune configs:
the encoders are identical, so MIN_COVERAGE is 1.0 and one missing encoder tensor stops the load; a checkpoint not
written by pcdet (a released GPICTURE checkpoint) warns that the DSVT COMPAT switches are off."""
import warnings
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
from pcdet.utils.checkpoint import CheckpointMismatchError, UpstreamCheckpointWarning, load_pretrained_model

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'
PRETRAIN, FINETUNE = 'gpicture_tiny_synthetic_pretrain.yaml', 'gpicture_tiny_synthetic_finetune.yaml'


def build(name):
    cfg = cfg_from_yaml_file(str(CFG_DIR / name))
    return cfg, build_network_from_cfg(cfg)


def load(path):
    """Load `path` into a fresh fine-tune model as train.py does -> (model, UpstreamCheckpointWarning messages)."""
    cfg, model = build(FINETUNE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        load_pretrained_model(model, path, cfg.MODEL.get('PRETRAINED_ENCODER', None))
    return model, [str(w.message) for w in caught if issubclass(w.category, UpstreamCheckpointWarning)]


@pytest.fixture(scope='module')
def pretrained():
    torch.manual_seed(0)
    return build(PRETRAIN)[1]


def test_pcdet_checkpoint_loads_the_whole_encoder_silently(pretrained, tmp_path):
    path = save_checkpoint(checkpoint_state(pretrained, epoch=1, it=1), tmp_path / 'pcdet')
    model, messages = load(path)
    assert messages == []
    source, loaded = pretrained.state_dict(), model.state_dict()
    encoder = [key for key in loaded if key.startswith(('vfe.', 'backbone_3d.'))]
    assert encoder and all(torch.equal(loaded[key], source[key]) for key in encoder)


def test_released_checkpoint_warns_about_the_compat_switches(pretrained, tmp_path):
    path = tmp_path / 'gpicture_release.pth'
    torch.save({'model_state': pretrained.state_dict(), 'epoch': 72, 'version': 'pcdet+0.6.0+8cacccec'}, path)
    _, messages = load(path)
    assert len(messages) == 1 and 'MODEL.BACKBONE_3D.COMPAT.POS_EMBED_SHIFT_BUG' in messages[0]


def test_one_missing_encoder_tensor_stops_the_fine_tune(pretrained, tmp_path):
    state = pretrained.state_dict()
    encoder = [key for key in state if key.startswith(('vfe.', 'backbone_3d.'))]
    assert len(encoder) > 20                      # one missing tensor is < 5%: MIN_COVERAGE 0.95 would accept it
    dropped = encoder[len(encoder) // 2]
    del state[dropped]
    path = save_checkpoint({**checkpoint_state(pretrained), 'model_state': state}, tmp_path / 'partial')
    with pytest.raises(CheckpointMismatchError, match=r'MIN_COVERAGE = 1\.0') as err:
        load(path)
    assert dropped in str(err.value)
