"""Move a collated batch (`DatasetTemplate.collate_batch` / `pcdet.datasets.collate.collate_batch`) to a device.

Needs numpy and torch only, so the training loops, the predictor and the pretraining probes import it without
importing the models package. `pcdet.models` and `pcdet.models.build` re-export both functions (OpenPCDet users
import `load_data_to_gpu` from `pcdet.models`).
"""
import numpy as np
import torch

# batch_dict keys that load_data_to_device leaves alone (strings / metadata), as upstream's load_data_to_gpu.
SKIP_KEYS = ('frame_id', 'metadata', 'calib', 'image_paths', 'ori_shape', 'img_process_infos')
# Label arrays that keep an integer dtype on the device: a float32 copy of a (B, 512, 512, 40) occupancy volume would
# be 4x its uint8 size, and indices / class ids beyond 2^24 would not survive float32.
INTEGER_KEYS = {'point_seg_labels': torch.long, 'point_raw_index': torch.long, 'point_superpixel_ids': torch.long,
                'gt_occupancy': torch.uint8}


def load_data_to_device(batch_dict, device):
    """Move a collated batch to `device` in place (and return it), with upstream `load_data_to_gpu` semantics.

    Every `np.ndarray` value becomes a float32 tensor on `device` (integer arrays too, e.g. `voxel_coords`;
    modules cast with `.long()`), except `image_shape` (int32), the label keys in `INTEGER_KEYS` (int64 / uint8),
    keys in `SKIP_KEYS`, and non-numeric arrays (strings / objects), which stay as they are. Tensors already in the
    batch are moved to `device`; other values (e.g. `batch_size`) are untouched.
    """
    device = torch.device(device)
    for key, val in batch_dict.items():
        if key in SKIP_KEYS:
            continue
        if isinstance(val, torch.Tensor):
            batch_dict[key] = val.to(device)
        elif not isinstance(val, np.ndarray):
            continue
        elif val.dtype.kind not in 'biuf':
            continue
        elif key == 'image_shape':
            batch_dict[key] = torch.from_numpy(val).int().to(device)
        elif key in INTEGER_KEYS:
            batch_dict[key] = torch.from_numpy(val).to(device=device, dtype=INTEGER_KEYS[key])
        else:
            batch_dict[key] = torch.from_numpy(val).float().to(device)
    return batch_dict


def load_data_to_gpu(batch_dict, device=None):
    """OpenPCDet name: `load_data_to_device` on `device` (default: CUDA when available, else CPU)."""
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return load_data_to_device(batch_dict, device)
