"""Differential-gated progressive learning driver (spec §2.9, decision D9) and the encoder probes CKA needs.

`DifferentialGate` keeps in-memory CPU copies of the encoder (`vfe.*`, `backbone_3d.*`) after each epoch. At the
start of epoch t >= 2 (0-based) it runs both snapshots -- after epochs t-1 and t-2 -- in eval mode (so no masking:
both see the same tokens) on a fixed, seeded set of NUM_FRAMES training frames, takes the linear CKA of every
encoder layer in LAYERS between the two, and sets `c_r` = their mean and `β_t = dgpl_beta(c_r, GAMMA, DELTA)` for
the whole epoch. Epochs 0 and 1 have β = 0. After a resume the snapshots are read from
`<ckpt_dir>/checkpoint_epoch_{t}.pth` and `checkpoint_epoch_{t-1}.pth` (the files written after 0-based epochs t-1
and t-2); when they are gone, the β restored with the checkpoint (`dense_head.dgpl_beta`) is kept and a warning
says so.

Probe helpers (also used by tools/compute_cka.py):
    build_probe_batch(dataset, num_frames, seed) -> collated batch of fixed frames (numpy RNG seeded and restored)
    encoder_layer_features(vfe, backbone_3d, batch, device) -> list of (N_stage, C) per encoder layer
"""
import copy
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ...utils.batching import load_data_to_device
from .cka import linear_cka
from .dgpl import dgpl_beta

ENCODER_PREFIXES = ('vfe.', 'backbone_3d.')


def encoder_state(model):
    """CPU copy of the encoder tensors (`vfe.*`, `backbone_3d.*`) of a detector's state dict."""
    return {key: value.detach().to('cpu', copy=True) for key, value in model.state_dict().items()
            if key.startswith(ENCODER_PREFIXES)}


def build_probe_batch(dataset, num_frames, seed):
    """Collated batch of `num_frames` frames drawn once with `seed`; augmentation randomness is seeded too and the
    global numpy RNG is restored afterwards, so training randomness is untouched."""
    num_frames = min(int(num_frames), len(dataset))
    indices = sorted(np.random.RandomState(seed).choice(len(dataset), num_frames, replace=False).tolist())
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        samples = [dataset[index] for index in indices]
    finally:
        np.random.set_state(state)
    return dataset.collate_batch(samples)


@torch.no_grad()
def encoder_layer_features(vfe, backbone_3d, batch, device):
    """Activations of every encoder layer (after its `LN(x2 + x)`) in eval mode, as a list of (N_stage, C) tensors.
    The modules' train/eval state is restored afterwards."""
    batch = load_data_to_device(dict(batch), device)
    batch['record_encoder_layers'] = True
    modes = (vfe.training, backbone_3d.training)
    vfe.eval()
    backbone_3d.eval()
    try:
        out = backbone_3d(vfe(batch))
    finally:
        vfe.train(modes[0])
        backbone_3d.train(modes[1])
    return [features for _, features in out['encoder_layer_features']]


def _load_encoder_from_checkpoint(path):
    from ...utils.checkpoint import read_checkpoint
    checkpoint = read_checkpoint(path, to_cpu=True)
    state = checkpoint.get('model_state', checkpoint)
    return {key: value for key, value in state.items() if key.startswith(ENCODER_PREFIXES)}


class DifferentialGate:
    """Per-epoch β of the teacher-feature loss (module docstring). `dgpl_cfg`: the resolved `DENSE_HEAD.DGPL`."""

    def __init__(self, dgpl_cfg):
        self.cfg = dgpl_cfg
        self.snapshots = OrderedDict()   # 0-based epoch -> encoder state after that epoch
        self._probe_batch = None
        self._probe_modules = None

    def record(self, model, epoch):
        """Keep the encoder state after 0-based `epoch` (the last two are kept)."""
        self.snapshots[int(epoch)] = encoder_state(model)
        while len(self.snapshots) > 2:
            self.snapshots.popitem(last=False)

    def _snapshot(self, epoch, ckpt_dir):
        if epoch in self.snapshots:
            return self.snapshots[epoch]
        path = Path(ckpt_dir) / f'checkpoint_epoch_{epoch + 1}.pth' if ckpt_dir is not None else None
        if path is not None and path.is_file():
            return _load_encoder_from_checkpoint(path)
        return None

    def _features(self, model, state, dataset, device):
        if self._probe_modules is None:
            self._probe_modules = (copy.deepcopy(model.vfe), copy.deepcopy(model.backbone_3d))
        vfe, backbone = self._probe_modules
        vfe.load_state_dict({k[len('vfe.'):]: v for k, v in state.items() if k.startswith('vfe.')})
        backbone.load_state_dict({k[len('backbone_3d.'):]: v for k, v in state.items()
                                  if k.startswith('backbone_3d.')})
        if self._probe_batch is None:
            self._probe_batch = build_probe_batch(dataset, self.cfg['NUM_FRAMES'], self.cfg['SEED'])
        return encoder_layer_features(vfe.to(device), backbone.to(device), self._probe_batch, device)

    def snapshot_similarity(self, model, epoch, dataset, device, ckpt_dir=None):
        """Mean linear CKA over LAYERS between the encoders after epochs `epoch-1` and `epoch-2`, or None when a
        snapshot is unavailable."""
        newer, older = self._snapshot(epoch - 1, ckpt_dir), self._snapshot(epoch - 2, ckpt_dir)
        if newer is None or older is None:
            return None
        feats_newer = self._features(model, newer, dataset, device)
        feats_older = self._features(model, older, dataset, device)
        layers = list(self.cfg['LAYERS'])
        if max(layers) >= len(feats_newer):
            raise ValueError(f'DENSE_HEAD.DGPL.LAYERS {layers} names layers the encoder does not have (it has '
                             f'{len(feats_newer)} layers)')
        return float(torch.stack([linear_cka(feats_newer[i], feats_older[i]) for i in layers]).mean())

    def beta_for_epoch(self, model, epoch, dataset, device, ckpt_dir=None, logger=None):
        """(β, c_r) for 0-based `epoch`; β None means "keep the current value" (snapshots missing after a resume)."""
        logger = logger or logging.getLogger('pcdet')
        if epoch < 2:
            return 0.0, None
        c_r = self.snapshot_similarity(model, epoch, dataset, device, ckpt_dir)
        if c_r is None:
            logger.warning(f'DGPL: encoder snapshots after epochs {epoch - 1} and {epoch - 2} are unavailable; '
                           'keeping the restored beta')
            return None, None
        return dgpl_beta(min(max(c_r, 0.0), 1.0), self.cfg['GAMMA'], self.cfg['DELTA']), c_r
