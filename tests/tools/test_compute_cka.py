"""tools/compute_cka.py: per-layer CKA of two encoders on fixed frames of the real dataset."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / 'tools' / 'compute_cka.py'
PRETRAIN_CFG = REPO_ROOT / 'tools/cfgs/gpicture_models/gpicture_tiny_synthetic_pretrain.yaml'
FINETUNE_CFG = REPO_ROOT / 'tools/cfgs/gpicture_models/gpicture_tiny_synthetic_finetune.yaml'


def load_tool():
    spec = importlib.util.spec_from_file_location('compute_cka_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(model, path):
    torch.save({'model_state': model.state_dict(), 'epoch': 1}, path)
    return path


def test_cka_between_checkpoints(synthetic_nuscenes_data_path, tmp_path):
    torch.manual_seed(0)
    pretrain = build_network_from_cfg(cfg_from_yaml_file(str(PRETRAIN_CFG)))
    ckpt_a = save(pretrain, tmp_path / 'a.pth')
    with torch.no_grad():
        for name, param in pretrain.backbone_3d.named_parameters():
            if 'stage_0.0.encoder_list.1' in name:
                param.add_(torch.randn_like(param))
    ckpt_b = save(pretrain, tmp_path / 'b.pth')
    finetune = build_network_from_cfg(cfg_from_yaml_file(str(FINETUNE_CFG)))
    finetune.load_state_dict({k: v for k, v in torch.load(ckpt_a)['model_state'].items()
                              if k.startswith(('vfe.', 'backbone_3d.'))}, strict=False)
    ckpt_fine = save(finetune, tmp_path / 'fine.pth')
    common = ['--num_frames', '2', '--set', 'DATA_CONFIG.DATA_PATH', str(synthetic_nuscenes_data_path)]
    tool = load_tool()

    same = tool.main(['--cfg_file', str(PRETRAIN_CFG), '--ckpt_a', str(ckpt_a), '--ckpt_b', str(ckpt_a), *common])
    assert same['layers'] == pytest.approx([1.0] * 4, abs=1e-6)
    out = tmp_path / 'cka.json'
    changed = tool.main(['--cfg_file', str(PRETRAIN_CFG), '--ckpt_a', str(ckpt_a), '--ckpt_b', str(ckpt_b),
                         '--output', str(out), *common])
    assert changed['layers'][0] == pytest.approx(1.0, abs=1e-6)    # layer 0 untouched
    assert changed['layers'][1] < 0.999                             # layer 1 perturbed
    assert json.loads(out.read_text())['layers'] == pytest.approx(changed['layers'])
    # a pretraining encoder vs. the same weights inside the fine-tune detector: identical activations
    across = tool.main(['--cfg_file', str(PRETRAIN_CFG), '--cfg_file_b', str(FINETUNE_CFG), '--ckpt_a', str(ckpt_a),
                        '--ckpt_b', str(ckpt_fine), *common])
    assert across['layers'] == pytest.approx([1.0] * 4, abs=1e-6)
