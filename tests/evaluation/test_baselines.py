"""The trivial height baselines: their fit is the per-bin / per-layer majority (counted here by hand), and they answer
in the task models' prediction format so the evaluators score them unchanged."""
import numpy as np
import pytest
import torch

from pcdet.evaluation.baselines import HeightMajorityOccupancy, HeightMajoritySegmenter


def test_segmenter_takes_the_majority_labelled_class_of_each_bin():
    # bin 0 ([-5, -4.75)): labels 11, 11, 11, 14 and two ignored -> 11; bin 4 ([-4, -3.75)): 4, 4, 10 -> 4;
    # bins without labelled points (the ignored point at -2 does not count) -> overall majority 11 (3 x 11, 2 x 4)
    z = np.array([-4.9, -4.8, -4.85, -4.76, -4.9, -4.9, -3.9, -3.8, -3.76, -2.0])
    labels = np.array([11, 11, 11, 14, 0, 0, 4, 4, 10, 0])
    model = HeightMajoritySegmenter.fit(z, labels)
    expected = np.full(32, 11)
    expected[4] = 4
    assert model.bin_classes.tolist() == expected.tolist()


def test_segmenter_predicts_per_sample_rows_in_order_and_clamps_out_of_range_heights():
    model = HeightMajoritySegmenter(np.arange(32) % 16 + 1, z_min=-5.0, bin_size=0.25)
    points = torch.tensor([[0, 0, 0, -4.9, 0], [1, 0, 0, -4.6, 0], [0, 0, 0, 9.0, 0], [1, 0, 0, -99.0, 0]])
    pred_dicts, extra = model({'points': points, 'batch_size': 2})
    assert extra == {}
    assert pred_dicts[0]['point_seg_preds'].tolist() == [1, 16]    # bin 0 -> 1; above the range -> last bin (31)
    assert pred_dicts[1]['point_seg_preds'].tolist() == [2, 1]     # bin 1 -> 2; below the range -> bin 0


def test_segmenter_refuses_training_data_without_labels():
    with pytest.raises(ValueError, match='no labelled point'):
        HeightMajoritySegmenter.fit([0.0, 1.0], [0, 0])


def test_occupancy_layer_counts_leave_noise_out_and_the_majority_is_over_occupied_classes():
    volume = np.zeros((2, 2, 3), dtype=np.uint8)
    volume[:, :, 1] = 14            # layer 1: terrain everywhere
    volume[0, 0, 2] = 255           # layer 2: 3 free + 1 noise -> no occupied voxel -> overall majority (14)
    volume[:, 1, 0] = 4             # layer 0: 2 car + 2 free -> car
    counts = HeightMajorityOccupancy.layer_counts(volume)
    assert counts.shape == (3, 17)
    assert counts[0, 0] == 2 and counts[0, 4] == 2 and counts[1, 14] == 4 and counts[2].sum() == 3
    model = HeightMajorityOccupancy.fit(counts, (4, 5, 3), [0.0, 0.0, 0.0, 4.0, 5.0, 3.0])
    assert model.layer_classes.tolist() == [4, 14, 14]


def test_occupancy_baseline_marks_the_voxels_holding_points_with_their_layer_class():
    model = HeightMajorityOccupancy(np.array([4, 14, 16]), (4, 5, 3), [0.0, 0.0, 0.0, 4.0, 5.0, 3.0])
    points = torch.tensor([[0, 0.5, 0.5, 0.5, 0.0],    # sample 0, voxel (0, 0, 0) -> 4
                           [0, 3.5, 4.5, 2.5, 0.0],    # sample 0, voxel (3, 4, 2) -> 16
                           [0, 9.0, 0.5, 0.5, 0.0],    # outside the grid: ignored
                           [1, 1.5, 2.5, 1.5, 0.0]])   # sample 1, voxel (1, 2, 1) -> 14
    pred_dicts, _ = model({'points': points, 'batch_size': 2})
    first, second = pred_dicts[0]['occ_pred'], pred_dicts[1]['occ_pred']
    assert first.shape == (4, 5, 3) and first.dtype == torch.uint8
    assert first[0, 0, 0] == 4 and first[3, 4, 2] == 16 and int(first.count_nonzero()) == 2
    assert second[1, 2, 1] == 14 and int(second.count_nonzero()) == 1
