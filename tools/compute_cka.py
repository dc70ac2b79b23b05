#!/usr/bin/env python
"""Per-layer linear CKA between the DSVT encoders of two checkpoints on fixed frames (spec §2.8, §1.6).

    python tools/compute_cka.py --cfg_file CFG --ckpt_a A.pth --ckpt_b B.pth [--cfg_file_b CFG_B]
        [--num_frames 4] [--seed 0] [--split test|train] [--output cka.json] [--set KEY VALUE ...]

Both encoders (`vfe.*` + `backbone_3d.*` of each checkpoint's `model_state`) run in eval mode -- no masking, no
augmentation -- on the same `num_frames` frames of the split (drawn once with `seed`), so their tokens are the same
rows; the CKA of encoder layer i (the output of set-attention layer i, after its `LN(x2 + x)`) is printed and, with
`--output`, written as JSON {"layers": [...], "mean_first4": ...}. Use it to re-estimate the CKA_ALPHA constants
(e.g. pretrained vs. fine-tuned encoders) or to look at the DGPL similarity c_r of two epochs by hand.
The two configs must give the same encoder token set (same VFE grid and DSVT stages).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

from pcdet.config import cfg_from_list, cfg_from_yaml_file  # noqa: E402
from pcdet.config_registry import validate_config  # noqa: E402
from pcdet.utils.file_utils import atomic_save_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cfg_file', required=True)
    parser.add_argument('--cfg_file_b', default=None, help='config of checkpoint B (default: --cfg_file)')
    parser.add_argument('--ckpt_a', required=True)
    parser.add_argument('--ckpt_b', required=True)
    parser.add_argument('--num_frames', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--split', choices=['test', 'train'], default='test')
    parser.add_argument('--output', default=None, help='write the per-layer CKA as JSON here')
    parser.add_argument('--set', dest='set_cfgs', nargs=argparse.REMAINDER, default=None,
                        help='config overrides KEY VALUE ... (applied to both configs)')
    return parser.parse_args(argv)


def load_cfg(path, set_cfgs):
    cfg = cfg_from_yaml_file(str(path))
    if set_cfgs:
        cfg_from_list(set_cfgs, cfg)
    validate_config(cfg, source=str(path))
    if cfg.DATA_CONFIG.get('TEACHER_FEATURES', None) is not None:
        cfg.DATA_CONFIG.TEACHER_FEATURES.ENABLED = False  # encoder probes need no teacher targets
    return cfg


def encoder_of(cfg, ckpt_path):
    """(vfe, backbone_3d) of the model of `cfg` with the encoder tensors of `ckpt_path` (all must be present)."""
    from pcdet.models.build import build_network_from_cfg
    from pcdet.utils.checkpoint import CheckpointMismatchError, read_checkpoint
    model = build_network_from_cfg(cfg)
    checkpoint = read_checkpoint(ckpt_path, to_cpu=True)
    state = checkpoint.get('model_state', checkpoint)
    encoder = {k: v for k, v in state.items() if k.startswith(('vfe.', 'backbone_3d.'))}
    result = model.load_state_dict(encoder, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(('vfe.', 'backbone_3d.'))]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(f'{ckpt_path}: the encoder does not match {cfg.MODEL.NAME} of the config: '
                                      f'missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}')
    return model.vfe, model.backbone_3d


def main(argv=None):
    from pcdet.datasets import build_dataloader
    from pcdet.models.pretraining.cka import linear_cka
    from pcdet.models.pretraining.progressive import build_probe_batch, encoder_layer_features
    args = parse_args(argv)
    cfg_a = load_cfg(args.cfg_file, args.set_cfgs)
    cfg_b = load_cfg(args.cfg_file_b or args.cfg_file, args.set_cfgs)
    dataset, _, _ = build_dataloader(dataset_cfg=cfg_a.DATA_CONFIG, class_names=cfg_a.CLASS_NAMES, batch_size=1,
                                     dist=False, workers=0, training=args.split == 'train')
    batch = build_probe_batch(dataset, args.num_frames, args.seed)
    device = torch.device('cpu')
    feats_a = encoder_layer_features(*encoder_of(cfg_a, args.ckpt_a), batch, device)
    feats_b = encoder_layer_features(*encoder_of(cfg_b, args.ckpt_b), batch, device)
    if len(feats_a) != len(feats_b) or any(a.shape[0] != b.shape[0] for a, b in zip(feats_a, feats_b)):
        raise SystemExit('the two encoders produce different token sets (layers or rows differ): CKA needs the same '
                         'tokens; use configs with the same VFE grid and DSVT stages')
    values = [float(linear_cka(a, b)) for a, b in zip(feats_a, feats_b)]
    for index, value in enumerate(values):
        print(f'layer {index}: CKA {value:.4f} ({feats_a[index].shape[0]} tokens)')
    result = {'layers': values, 'mean_first4': sum(values[:4]) / len(values[:4]), 'num_frames': args.num_frames,
              'seed': args.seed, 'ckpt_a': str(args.ckpt_a), 'ckpt_b': str(args.ckpt_b)}
    print(f'mean of layers 0-3: {result["mean_first4"]:.4f}')
    if args.output:
        atomic_save_text(json.dumps(result, indent=2), args.output)
    return result


if __name__ == '__main__':
    main()
