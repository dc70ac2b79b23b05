"""CKA (spec §2.8) against the definition with double-centred Gram matrices, and DGPL after a resume (spec §2.9,
docs/GPICTURE.md): at the start of 0-based epoch t the gate compares the encoders after epochs t-1 and t-2, which a
resumed run reads from checkpoint_epoch_{t}.pth and checkpoint_epoch_{t-1}.pth (file k is written after epoch k-1)."""
import copy
import math
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.models.build import build_network_from_cfg
from pcdet.models.pretraining.cka import linear_cka
from pcdet.models.pretraining.progressive import DifferentialGate, build_probe_batch, encoder_layer_features

CFG_DIR = Path(__file__).resolve().parents[2] / 'tools' / 'cfgs' / 'gpicture_models'


def reference_cka(x, y):
    """HSIC form: <H K H, H L H>_F / (|H K H|_F |H L H|_F), K = X Xᵀ, L = Y Yᵀ, H = I - 11ᵀ/n (double centring of
    the Gram matrices, written out elementwise), float64."""
    def centred_gram(a):
        k = a.double() @ a.double().t()
        return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    kc, lc = centred_gram(x), centred_gram(y)
    return float((kc * lc).sum() / math.sqrt(float((kc * kc).sum()) * float((lc * lc).sum())))


@pytest.mark.parametrize('seed', range(3))
def test_linear_cka_matches_the_definition_with_offsets_on_both_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 6, generator=generator) * torch.tensor([1.0, 3.0, 0.2, 1.0, 5.0, 0.5]) + 4.0
    y = torch.tanh(x @ torch.randn(6, 5, generator=generator)) + torch.randn(80, 5, generator=generator) * 0.3
    y = y + torch.tensor([10.0, -3.0, 0.0, 7.0, 2.0])
    assert linear_cka(x, y).item() == pytest.approx(reference_cka(x, y), abs=1e-9)
    assert linear_cka(y, x).item() == pytest.approx(reference_cka(x, y), abs=1e-9)


class _ProbeDataset:
    """Small fixed clouds with a collate_batch like the real datasets' (teacher features not needed in eval)."""

    def __init__(self, n=5, num_points=250):
        self.samples = []
        for i in range(n):
            generator = torch.Generator().manual_seed(100 + i)
            xyz = torch.rand(num_points, 3, generator=generator) * torch.tensor([30.0, 30.0, 6.0]) - torch.tensor(
                [15.0, 15.0, 4.0])
            self.samples.append(torch.cat([xyz, torch.rand(num_points, 2, generator=generator)], dim=1))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @staticmethod
    def collate_batch(samples):
        points = torch.cat([torch.cat([torch.full((s.shape[0], 1), float(i)), s], 1) for i, s in enumerate(samples)])
        return {'points': points.numpy(), 'batch_size': len(samples)}


def test_resumed_gate_reads_the_checkpoints_of_epochs_t_minus_1_and_t_minus_2(tmp_path):
    torch.manual_seed(0)
    cfg = cfg_from_yaml_file(str(CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'))
    model = build_network_from_cfg(cfg)
    states = {}
    for file_index in (1, 2, 3):       # checkpoint_epoch_{k}.pth: written after 0-based epoch k - 1
        with torch.no_grad():
            for name, param in model.backbone_3d.named_parameters():
                if 'stage_0' in name:
                    param.add_(torch.randn_like(param) * 0.3)
        states[file_index] = copy.deepcopy(model.state_dict())
        torch.save({'model_state': states[file_index], 'epoch': file_index},
                   tmp_path / f'checkpoint_epoch_{file_index}.pth')
    dataset = _ProbeDataset()
    batch = build_probe_batch(dataset, cfg.MODEL.DENSE_HEAD.DGPL.NUM_FRAMES, cfg.MODEL.DENSE_HEAD.DGPL.SEED)

    def layer_features(state):
        probe = build_network_from_cfg(cfg)
        probe.load_state_dict(state)
        return encoder_layer_features(probe.vfe, probe.backbone_3d, batch, torch.device('cpu'))

    feats = {k: layer_features(states[k]) for k in (1, 2, 3)}
    layers = list(cfg.MODEL.DENSE_HEAD.DGPL.LAYERS)

    def mean_cka(a, b):
        return sum(reference_cka(feats[a][i], feats[b][i]) for i in layers) / len(layers)

    expected, off_by_one = mean_cka(3, 2), mean_cka(2, 1)
    assert abs(expected - off_by_one) > 1e-3        # the test can tell the two pairs apart
    # a resumed run: no in-memory snapshots, β restored from the checkpoint
    model.gate = DifferentialGate(model.dense_head.dgpl_cfg)
    model.dense_head.set_beta(0.123)
    beta, c_r = model.on_train_epoch_start(3, dataset, ckpt_dir=tmp_path)
    assert c_r == pytest.approx(expected, abs=1e-6)
    gamma, delta = cfg.MODEL.DENSE_HEAD.DGPL.GAMMA, cfg.MODEL.DENSE_HEAD.DGPL.DELTA
    expected_beta = 0.0 if expected < delta else 1.0 - math.exp(-gamma * (expected - delta))
    assert beta == pytest.approx(expected_beta, abs=1e-6)
    assert float(model.dense_head.dgpl_beta) == pytest.approx(expected_beta, abs=1e-6)
    # epoch 4 needs checkpoint_epoch_4.pth (after epoch 3), which does not exist: the restored β is kept
    model.gate = DifferentialGate(model.dense_head.dgpl_cfg)
    model.dense_head.set_beta(0.123)
    beta, c_r = model.on_train_epoch_start(4, dataset, ckpt_dir=tmp_path)
    assert c_r is None and beta == pytest.approx(0.123) and float(model.dense_head.dgpl_beta) == pytest.approx(0.123)


@pytest.mark.parametrize('stored_beta', [0.8, 0.5])
def test_configured_fixed_beta_wins_over_the_resumed_checkpoint(tmp_path, caplog, stored_beta):
    """A run resumed with another DGPL.FIXED_BETA trains with the configured β, and says so when the checkpoint's
    β differed; the resume goes through the training loader (load_params_with_optimizer)."""
    from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
    from pcdet.utils.checkpoint import load_params_with_optimizer
    cfg = cfg_from_yaml_file(str(CFG_DIR / 'gpicture_tiny_synthetic_pretrain.yaml'))
    model = build_network_from_cfg(cfg)
    model.dense_head.set_beta(stored_beta)
    save_checkpoint(checkpoint_state(model, epoch=5, it=50), tmp_path / 'checkpoint_epoch_5')
    cfg.MODEL.DENSE_HEAD.DGPL.FIXED_BETA = 0.5
    resumed = build_network_from_cfg(cfg)
    resumed.dense_head.dgpl_beta.fill_(0.0)          # not the configured value: the load must set it
    with caplog.at_level('INFO', logger='pcdet'):
        load_params_with_optimizer(resumed, tmp_path / 'checkpoint_epoch_5.pth', to_cpu=True)
    assert float(resumed.dense_head.dgpl_beta) == 0.5
    beta, c_r = resumed.on_train_epoch_start(6, _ProbeDataset(), ckpt_dir=tmp_path)
    assert beta == 0.5 and c_r is None
    overrides = [r.getMessage() for r in caplog.records if 'FIXED_BETA' in r.getMessage()]
    if stored_beta == 0.5:
        assert overrides == []
    else:
        assert len(overrides) == 1 and '0.8' in overrides[0] and 'overrides' in overrides[0]
        assert [r.levelname for r in caplog.records if 'FIXED_BETA' in r.getMessage()] == ['WARNING']
