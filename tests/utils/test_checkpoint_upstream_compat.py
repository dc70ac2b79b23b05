"""A checkpoint not written by pcdet (an OpenPCDet / DSVT / GPICTURE release: no `pcdet_version` entry) loaded into
a DSVT whose upstream-quirk COMPAT switches are off warns loudly (logger WARNING + UpstreamCheckpointWarning),
naming the switches and the `--set` that reproduces upstream; a pcdet checkpoint, switches on, or no DSVT tensor
loaded -> no warning. Checked through every loading path: load_params_from_file (test.py --ckpt, eval_loop),
load_pretrained_model (train.py --pretrained_model), load_params_with_optimizer, Predictor (demo)."""
import logging
import warnings

import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet.config import ROOT_DIR, cfg_from_list, cfg_from_yaml_file
from pcdet.inference import Predictor
from pcdet.models.backbones_3d.dsvt import DSVT
from pcdet.models.build import build_network_from_cfg
from pcdet.training.checkpointing import checkpoint_state, save_checkpoint
from pcdet.utils.checkpoint import (
    PCDET_MARKER_KEY,
    UpstreamCheckpointWarning,
    load_params_from_file,
    load_params_with_optimizer,
    load_pretrained_model,
)

POS = 'MODEL.BACKBONE_3D.COMPAT.POS_EMBED_SHIFT_BUG'
POOL = 'MODEL.BACKBONE_3D.COMPAT.POOL_UNMASKED_EMPTY_SLOTS'
UPSTREAM_VERSION = 'pcdet+0.6.0+8cacccec'  # what OpenPCDet / the DSVT repo write


OFF = {'POS_EMBED_SHIFT_BUG': False, 'POOL_UNMASKED_EMPTY_SLOTS': False}  # as the shipped DSVT configs state


def pillar_dsvt_cfg(compat=OFF):
    cfg = EasyDict(NAME='DSVT', INPUT_LAYER=EasyDict(
        downsample_stride=[], window_shape=[[6, 6, 1]], hybrid_factor=[2, 2, 1], shifts_list=[[[0, 0, 0], [3, 3, 0]]],
        normalize_pos=False), block_name=['DSVTBlock'], set_info=[[8, 2]], d_model=[16], nhead=[2],
        dim_feedforward=[32], dropout=0.0, activation='gelu')
    if compat is not None:
        cfg.COMPAT = compat
    return cfg


def voxel_dsvt_cfg(compat=OFF):
    cfg = EasyDict(NAME='DSVT', INPUT_LAYER=EasyDict(
        downsample_stride=[[1, 1, 4]], window_shape=[[6, 6, 8], [6, 6, 2]], hybrid_factor=[2, 2, 1],
        shifts_list=[[[0, 0, 0], [3, 3, 0]]] * 2, normalize_pos=False), block_name=['DSVTBlock'] * 2,
        set_info=[[8, 1]] * 2, d_model=[16] * 2, nhead=[2] * 2, dim_feedforward=[32] * 2, dropout=0.0,
        activation='gelu', reduction_type='attention')
    if compat is not None:
        cfg.COMPAT = compat
    return cfg


class Detector(nn.Module):
    """vfe-less stand-in: a DSVT as `backbone_3d` (the detectors' module name) and a head."""

    def __init__(self, dsvt_cfg, variant='pillar'):
        super().__init__()
        grid, voxel, pc_range = (([30, 30, 1], [0.32, 0.32, 6], [0, 0, -2, 9.6, 9.6, 4]) if variant == 'pillar'
                                 else ([20, 20, 8], [0.32, 0.32, 0.1875], [0, 0, 0, 6.4, 6.4, 1.5]))
        self.backbone_3d = DSVT(dsvt_cfg, input_channels=16, grid_size=grid, voxel_size=voxel,
                                point_cloud_range=pc_range)
        self.dense_head = nn.Linear(16, 4)


def upstream_file(path, model, bare=False):
    """Saved the way OpenPCDet's checkpoint_state / a hand-made state dict would be: no pcdet marker."""
    state = model.state_dict() if bare else {'model_state': model.state_dict(), 'optimizer_state': None,
                                             'epoch': 24, 'it': 1000, 'version': UPSTREAM_VERSION}
    torch.save(state, path)
    return path


def load_warnings(load):
    """Run `load()`; -> list of UpstreamCheckpointWarning messages it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        load()
    return [str(w.message) for w in caught if issubclass(w.category, UpstreamCheckpointWarning)]


def test_upstream_checkpoint_into_compat_off_dsvt_warns_naming_the_switch(tmp_path, caplog):
    path = upstream_file(tmp_path / 'dsvt_upstream.pth', Detector(pillar_dsvt_cfg()))
    with caplog.at_level(logging.WARNING, logger='pcdet'):
        with pytest.warns(UpstreamCheckpointWarning) as record:
            report = load_params_from_file(Detector(pillar_dsvt_cfg()), path, strict=True)
    assert report.is_exact  # the weights fit: only the switch tells the two behaviours apart
    message = str(record[0].message)
    assert str(path) in message and UPSTREAM_VERSION in message
    assert f'--set {POS} True' in message
    assert POOL not in message  # a one-stage (pillar) DSVT has no pooling: that switch cannot matter
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [message]


def test_voxel_dsvt_names_both_switches_and_only_the_ones_still_off(tmp_path):
    path = upstream_file(tmp_path / 'voxel.pth', Detector(voxel_dsvt_cfg(), 'voxel'))
    both = load_warnings(lambda: load_params_from_file(Detector(voxel_dsvt_cfg(), 'voxel'), path, strict=True))
    assert len(both) == 1 and f'--set {POS} True {POOL} True' in both[0]
    pos_on = Detector(voxel_dsvt_cfg({'POS_EMBED_SHIFT_BUG': True, 'POOL_UNMASKED_EMPTY_SLOTS': False}), 'voxel')
    only_pool = load_warnings(lambda: load_params_from_file(pos_on, path, strict=True))
    assert len(only_pool) == 1 and f'--set {POOL} True' in only_pool[0] and POS not in only_pool[0]


@pytest.mark.parametrize('variant,compat', [
    ('pillar', {'POS_EMBED_SHIFT_BUG': True}),
    ('voxel', {'POS_EMBED_SHIFT_BUG': True, 'POOL_UNMASKED_EMPTY_SLOTS': True})])
def test_no_warning_with_the_switches_on(tmp_path, variant, compat):
    make_cfg = pillar_dsvt_cfg if variant == 'pillar' else voxel_dsvt_cfg
    path = upstream_file(tmp_path / 'up.pth', Detector(make_cfg(compat), variant))
    assert load_warnings(lambda: load_params_from_file(Detector(make_cfg(compat), variant), path, strict=True)) == []


def test_no_warning_for_a_pcdet_checkpoint(tmp_path):
    model = Detector(pillar_dsvt_cfg())
    state = checkpoint_state(model, None, 3, 30)
    assert PCDET_MARKER_KEY in state  # the save side writes the marker the load side looks for
    path = save_checkpoint(state, tmp_path / 'checkpoint_epoch_3')
    assert load_warnings(lambda: load_params_from_file(Detector(pillar_dsvt_cfg()), path, strict=True)) == []
    assert load_warnings(lambda: load_params_with_optimizer(Detector(pillar_dsvt_cfg()), path, to_cpu=True)) == []


def test_bare_state_dict_and_resume_warn_too(tmp_path):
    bare = upstream_file(tmp_path / 'bare.pth', Detector(pillar_dsvt_cfg()), bare=True)
    assert len(load_warnings(lambda: load_params_from_file(Detector(pillar_dsvt_cfg()), bare, strict=True))) == 1
    full = upstream_file(tmp_path / 'full.pth', Detector(pillar_dsvt_cfg()))
    assert len(load_warnings(lambda: load_params_with_optimizer(Detector(pillar_dsvt_cfg()), full,
                                                                to_cpu=True))) == 1


def test_no_warning_when_no_dsvt_tensor_was_loaded(tmp_path):
    head_only = tmp_path / 'head.pth'
    torch.save({'model_state': {k: v for k, v in Detector(pillar_dsvt_cfg()).state_dict().items()
                                if k.startswith('dense_head.')}, 'version': UPSTREAM_VERSION}, head_only)
    model = Detector(pillar_dsvt_cfg())
    assert load_warnings(lambda: load_params_from_file(model, head_only, min_matched_fraction=0.0)) == []
    plain = nn.Sequential(nn.Linear(3, 3))  # no DSVT at all
    path = tmp_path / 'plain.pth'
    torch.save({'model_state': nn.Sequential(nn.Linear(3, 3)).state_dict()}, path)
    assert load_warnings(lambda: load_params_from_file(plain, path, strict=True)) == []


def test_pretrained_model_path_warns(tmp_path):
    """train.py --pretrained_model goes through load_pretrained_model."""
    path = upstream_file(tmp_path / 'gpicture_release.pth', Detector(pillar_dsvt_cfg()))
    messages = load_warnings(lambda: load_pretrained_model(Detector(pillar_dsvt_cfg()), path,
                                                           {'PREFIXES': ['backbone_3d.'], 'MIN_COVERAGE': 0.95}))
    assert len(messages) == 1 and POS in messages[0]


def test_predictor_path_warns_and_the_suggested_fix_silences_it(tmp_path):
    """tools/demo.py builds a Predictor. This config has no COMPAT block, so `--set` cannot reach the switch: the
    warning says to add the block instead, and doing so silences it."""
    cfg_file = ROOT_DIR / 'tools' / 'cfgs' / 'nuscenes_models' / 'dsvt_tiny_synthetic.yaml'
    path = upstream_file(tmp_path / 'release.pth', build_network_from_cfg(cfg_from_yaml_file(cfg_file)))
    messages = load_warnings(lambda: Predictor.from_files(cfg_file, path))
    assert len(messages) == 1
    assert 'add `COMPAT: {POS_EMBED_SHIFT_BUG: True}` under MODEL.BACKBONE_3D' in messages[0]
    assert '--set MODEL' not in messages[0]
    fixed = cfg_from_yaml_file(cfg_file)
    fixed.MODEL.BACKBONE_3D.COMPAT = {'POS_EMBED_SHIFT_BUG': True}
    assert load_warnings(lambda: Predictor(fixed, path)) == []


def test_a_switch_missing_from_the_compat_block_is_named_as_a_line_to_add(tmp_path):
    """gpicture_nuscenes_detection.yaml inherits `COMPAT: {POS_EMBED_SHIFT_BUG: False}` only: --set reaches that
    switch but not POOL_UNMASKED_EMPTY_SLOTS."""
    cfg = voxel_dsvt_cfg({'POS_EMBED_SHIFT_BUG': False})
    path = upstream_file(tmp_path / 'voxel.pth', Detector(cfg, 'voxel'))
    messages = load_warnings(lambda: load_params_from_file(Detector(cfg, 'voxel'), path, strict=True))
    assert len(messages) == 1
    assert f'--set {POS} True;' in messages[0] and '--set ' + POOL not in messages[0]
    assert 'add `POOL_UNMASKED_EMPTY_SLOTS: True` under MODEL.BACKBONE_3D.COMPAT' in messages[0]


def test_suggested_set_works_on_a_config_with_a_compat_block(tmp_path):
    """The `--set` named in the warning is accepted by the config loader and silences the warning."""
    cfg_file = ROOT_DIR / 'tools' / 'cfgs' / 'nuscenes_models' / 'dsvt_tiny_synthetic.yaml'
    cfg = cfg_from_yaml_file(cfg_file)
    cfg.MODEL.BACKBONE_3D.COMPAT = {'POS_EMBED_SHIFT_BUG': False}
    path = upstream_file(tmp_path / 'release.pth', build_network_from_cfg(cfg))
    messages = load_warnings(lambda: Predictor(cfg, path))
    assert len(messages) == 1
    suggested = messages[0].split('--set ')[1].split(' (docs/DSVT.md')[0].split()
    assert suggested == [POS, 'True']
    cfg_from_list(suggested, cfg)
    assert load_warnings(lambda: Predictor(cfg, path)) == []
