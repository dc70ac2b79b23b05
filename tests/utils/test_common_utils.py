"""common_utils: angle wrapping, z-rotation, numpy/torch round trips, seeding, small helpers."""
import logging

import numpy as np
import pytest
import torch

from pcdet.utils import common_utils


def test_limit_period_wraps_into_half_open_interval():
    angles = torch.linspace(-20, 20, 2001, dtype=torch.float64)
    wrapped = common_utils.limit_period(angles, offset=0.5, period=2 * np.pi)
    assert (wrapped >= -np.pi).all() and (wrapped < np.pi).all()
    # Same angle: sin and cos unchanged.
    torch.testing.assert_close(torch.sin(wrapped), torch.sin(angles))
    torch.testing.assert_close(torch.cos(wrapped), torch.cos(angles))
    assert common_utils.limit_period(torch.tensor([np.pi]), 0.5, 2 * np.pi).item() == pytest.approx(-np.pi)
    assert common_utils.limit_period(torch.tensor([0.7]), offset=0, period=0.5).item() == pytest.approx(0.2)


def test_limit_period_numpy_in_numpy_out():
    wrapped = common_utils.limit_period(np.array([3.5, -3.5, 0.1]), 0.5, np.pi)
    assert isinstance(wrapped, np.ndarray)
    np.testing.assert_allclose(wrapped, [3.5 - np.pi, -3.5 + np.pi, 0.1], atol=1e-6)


def test_rotate_points_along_z_is_counter_clockwise():
    points = torch.tensor([[[1.0, 0.0, 2.0, 7.0], [0.0, 1.0, -1.0, 8.0]]])
    rotated = common_utils.rotate_points_along_z(points, torch.tensor([np.pi / 2]))
    expected = torch.tensor([[[0.0, 1.0, 2.0, 7.0], [-1.0, 0.0, -1.0, 8.0]]])  # extra columns pass through
    torch.testing.assert_close(rotated, expected, atol=1e-6, rtol=0)


def test_rotate_points_along_z_batch_and_numpy():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(3, 50, 3)).astype(np.float32)
    angles = np.array([0.1, -2.0, 3.0], dtype=np.float32)
    rotated = common_utils.rotate_points_along_z(points, angles)
    assert isinstance(rotated, np.ndarray) and rotated.shape == (3, 50, 3)
    for b in range(3):
        c, s = np.cos(angles[b]), np.sin(angles[b])
        np.testing.assert_allclose(rotated[b, :, 0], points[b, :, 0] * c - points[b, :, 1] * s, atol=1e-5)
        np.testing.assert_allclose(rotated[b, :, 1], points[b, :, 0] * s + points[b, :, 1] * c, atol=1e-5)
    # Rotations preserve lengths and compose.
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(points, axis=-1), rtol=1e-5)
    back = common_utils.rotate_points_along_z(rotated, -angles)
    np.testing.assert_allclose(back, points, atol=1e-5)


def test_check_numpy_to_torch():
    tensor, was_numpy = common_utils.check_numpy_to_torch(np.arange(3, dtype=np.float64))
    assert was_numpy and tensor.dtype == torch.float32
    same = torch.ones(2)
    assert common_utils.check_numpy_to_torch(same) == (same, False)


def test_set_random_seed_is_reproducible():
    common_utils.set_random_seed(123)
    first = (np.random.rand(3), torch.rand(3))
    common_utils.set_random_seed(123)
    second = (np.random.rand(3), torch.rand(3))
    np.testing.assert_array_equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_keep_arrays_by_name_and_dist_info():
    names = np.array(['car', 'pedestrian', 'car', 'cone'])
    keep = common_utils.keep_arrays_by_name(names, ['car', 'cone'])
    assert keep.dtype == np.int64 and keep.tolist() == [0, 2, 3]
    assert common_utils.get_dist_info() == (0, 1)


def test_create_logger_does_not_duplicate_handlers(tmp_path):
    log_file = tmp_path / 'log.txt'
    logger = common_utils.create_logger(log_file, name='pcdet.test_common_utils')
    common_utils.create_logger(log_file, name='pcdet.test_common_utils')
    assert len(logger.handlers) == 2
    logger.info('hello')
    assert 'hello' in log_file.read_text()
    assert common_utils.create_logger(name='pcdet.test_common_utils.rank1', rank=1).level == logging.ERROR
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()


def test_atomic_write_uses_umask_mode_and_cleans_up_on_error(tmp_path):
    import os

    from pcdet.utils.file_utils import atomic_save_text, atomic_write
    target = tmp_path / 'info.pkl'
    atomic_save_text('ok', target)
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(RuntimeError):
        with atomic_write(target, 'w') as handle:
            handle.write('half')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'ok' and [p.name for p in tmp_path.iterdir()] == ['info.pkl']


@pytest.mark.parametrize('durable', [True, False])
def test_atomic_write_durable_and_not_durable_leave_content_and_no_temporaries(tmp_path, monkeypatch, durable):
    import os

    from pcdet.utils import file_utils
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(file_utils.os, 'fsync', lambda fd: fsynced.append(fd) or real_fsync(fd))
    target = tmp_path / 'sub' / 'scan.bin'
    file_utils.atomic_save_bytes(b'\x00\x01' * 1000, target, durable=durable)
    assert target.read_bytes() == b'\x00\x01' * 1000
    file_utils.atomic_save_bytes(b'new', target, durable=durable)  # replaces the file
    with file_utils.atomic_write(tmp_path / 'table.json', 'w', durable=durable) as handle:
        handle.write('{}')
    assert (tmp_path / 'table.json').read_text() == '{}'
    with pytest.raises(RuntimeError), file_utils.atomic_write(target, 'wb', durable=durable) as handle:
        handle.write(b'half')
        raise RuntimeError('interrupted')
    assert target.read_bytes() == b'new'
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert sorted(p.name for p in tmp_path.rglob('*')) == ['scan.bin', 'sub', 'table.json']  # no .tmp left
    assert len(fsynced) == (3 if durable else 0)
