"""Waymo range images -> point clouds in the vehicle frame (numpy, vectorised; no TensorFlow).

Re-implements what `waymo_open_dataset.utils.frame_utils.convert_range_image_to_point_cloud` and
`range_image_utils.extract_point_cloud_from_range_image` compute, for every LiDAR and return:

* **Rows (inclination).** `LaserCalibration.beam_inclinations` (radians, ascending, one per row) when present,
  else uniform: `inclination[i] = min + (i + 0.5) / H * (max - min)` (`compute_inclination`). Both are then
  REVERSED, so row 0 is the highest beam.
* **Columns (azimuth).** In the LiDAR frame, column `c` of a width-`W` image has azimuth
  `(2 * (W - c - 0.5) / W - 1) * pi - az_correction` with `az_correction = atan2(E[1, 0], E[0, 0])` the yaw of
  the extrinsic `E` (laser -> vehicle). So in the vehicle frame column 0 looks backwards (+pi), azimuth decreases
  with the column index, and the middle of the image looks forward.
* **Point.** `p_laser = r * (cos(az) cos(inc), sin(az) cos(inc), sin(inc))`, `p_vehicle = E p_laser`.
* **TOP LiDAR per-pixel pose** (rolling shutter). `range_image_pose_compressed` of the TOP laser's FIRST return
  holds an [H, W, 6] MatrixFloat `(roll, pitch, yaw, x, y, z)` per pixel: the vehicle -> global pose when the
  pixel was fired, rotation `Rz(yaw) Ry(pitch) Rx(roll)`. The point is moved to the global frame with it and back
  into the vehicle frame of `Frame.pose`: `p = frame_pose^-1 (pixel_pose p_vehicle)`. The second return reuses
  the first return's poses. The other LiDARs have no pixel poses.
* **Kept pixels and features.** Pixels with range > 0 (row-major order, like `tf.where`); channels
  `[range, intensity, elongation, is_in_nlz]` -> rows `[x, y, z, intensity, elongation, nlz]` float32, the
  OpenPCDet `save_lidar_points` layout (NLZ flag: -1 outside no-label zones, 1 inside).

Differences from the TensorFlow code: geometry is computed in float64 (TF uses float32), so points agree to
~1e-4 m, better than the official float32 path; the output is float32 either way.

API:
    compute_inclination(min, max, height) -> (H,) ascending
    row_inclinations(calibration_dict, height) -> (H,) row order (row 0 highest)
    column_azimuths(width, extrinsic) -> (W,) LiDAR-frame azimuth of each column
    rotation_from_rpy(roll, pitch, yaw) -> (..., 3, 3)
    range_image_to_points(range_image, extrinsic, inclinations, pixel_pose=None, frame_pose=None,
                          return_pixel_index=False) -> (N, 6) float32 [, (N, 2) int64 (row, col)]
"""
import numpy as np

NUM_POINT_FEATURES = 6  # x, y, z, intensity, elongation, NLZ flag
RANGE, INTENSITY, ELONGATION, NLZ = 0, 1, 2, 3  # range image channels


def compute_inclination(inclination_min, inclination_max, height):
    """Uniform beam inclinations (ascending) of a `height`-row LiDAR, as the official `compute_inclination`."""
    return inclination_min + (0.5 + np.arange(height, dtype=np.float64)) / height * (inclination_max - inclination_min)


def row_inclinations(calibration, height):
    """(H,) inclination of each range-image row (row 0 = highest beam) for a decoded `LaserCalibration` dict."""
    beams = np.asarray(calibration.get('beam_inclinations', ()), dtype=np.float64)
    if beams.size == 0:
        if 'beam_inclination_min' not in calibration or 'beam_inclination_max' not in calibration:
            raise ValueError(f'laser {calibration.get("name")}: no beam_inclinations and no inclination min / max')
        beams = compute_inclination(calibration['beam_inclination_min'], calibration['beam_inclination_max'], height)
    elif beams.size != height:
        raise ValueError(f'laser {calibration.get("name")}: {beams.size} beam_inclinations for a range image of '
                         f'{height} rows')
    return beams[::-1].copy()


def azimuth_correction(extrinsic):
    """Yaw of the laser -> vehicle extrinsic, `atan2(E[1, 0], E[0, 0])`."""
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    return float(np.arctan2(extrinsic[1, 0], extrinsic[0, 0]))


def column_azimuths(width, extrinsic):
    """(W,) azimuth of each column in the LiDAR frame: `(2 (W - c - 0.5) / W - 1) pi - azimuth_correction`."""
    ratios = (np.arange(width, 0, -1, dtype=np.float64) - 0.5) / width
    return (ratios * 2.0 - 1.0) * np.pi - azimuth_correction(extrinsic)


def rotation_from_rpy(roll, pitch, yaw):
    """(..., 3, 3) rotations `Rz(yaw) @ Ry(pitch) @ Rx(roll)` (Waymo `transform_utils.get_rotation_matrix`)."""
    roll, pitch, yaw = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (roll, pitch, yaw)))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rows = [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
            sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
            -sp, cp * sr, cp * cr]
    return np.stack(rows, axis=-1).reshape(roll.shape + (3, 3))


def _pose_points(points, pixel_pose, rows, cols):
    """Move vehicle-frame points with their pixels' `(roll, pitch, yaw, x, y, z)` poses (per-point
    `Rz(yaw) Ry(pitch) Rx(roll) p + t`, without building N matrices).

    The TOP fires all beams of a column at once, so its poses are normally constant along each column: then the
    sines and cosines are computed once per column and gathered (several times faster than per point)."""
    per_column = bool(np.all(pixel_pose == pixel_pose[0:1]))
    pose = pixel_pose[0].astype(np.float64) if per_column else pixel_pose[rows, cols].astype(np.float64)
    index = cols if per_column else slice(None)
    trig = [f(pose[:, k])[index] for k in range(3) for f in (np.cos, np.sin)]
    translation = pose[index, 3:6] if per_column else pose[:, 3:6]
    cr, sr, cp, sp, cy, sy = trig
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    y, z = cr * y - sr * z, sr * y + cr * z
    x, z = cp * x + sp * z, -sp * x + cp * z
    x, y = cy * x - sy * y, sy * x + cy * y
    return np.stack([x, y, z], axis=1) + translation


def range_image_to_points(range_image, extrinsic, inclinations, pixel_pose=None, frame_pose=None,
                          return_pixel_index=False):
    """Points of one range image (one LiDAR, one return) in the vehicle frame.

    Args:
        range_image: (H, W, C >= 1) float array; channel 0 range (m), then intensity, elongation, is_in_nlz.
            Missing channels are written as 0 (intensity, elongation) / -1 (NLZ flag).
        extrinsic: (4, 4) laser -> vehicle.
        inclinations: (H,) row inclinations in radians, row 0 highest (`row_inclinations`).
        pixel_pose: optional (H, W, 6) `(roll, pitch, yaw, x, y, z)` vehicle -> global per pixel (TOP LiDAR).
        frame_pose: (4, 4) vehicle -> global of the frame; required with `pixel_pose`.
        return_pixel_index: also return the (N, 2) int64 `(row, col)` of every point.
    Returns:
        (N, 6) float32 `[x, y, z, intensity, elongation, nlz]` for the pixels with range > 0, row-major order.
    """
    range_image = np.asarray(range_image)
    if range_image.ndim == 2:
        range_image = range_image[..., None]
    height, width = range_image.shape[:2]
    inclinations = np.asarray(inclinations, dtype=np.float64)
    if inclinations.shape != (height,):
        raise ValueError(f'inclinations must have shape ({height},), got {inclinations.shape}')
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    rows, cols = np.nonzero(range_image[..., RANGE] > 0)
    distance = range_image[rows, cols, RANGE].astype(np.float64)

    azimuth = column_azimuths(width, extrinsic)
    cos_inc, sin_inc = np.cos(inclinations), np.sin(inclinations)
    horizontal = distance * cos_inc[rows]
    local = np.stack([horizontal * np.cos(azimuth)[cols], horizontal * np.sin(azimuth)[cols],
                      distance * sin_inc[rows]], axis=1)
    xyz = local @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    if pixel_pose is not None:
        if frame_pose is None:
            raise ValueError('frame_pose must be given with pixel_pose')
        pixel_pose = np.asarray(pixel_pose)
        if pixel_pose.shape != (height, width, 6):
            raise ValueError(f'pixel_pose must have shape ({height}, {width}, 6), got {pixel_pose.shape}')
        world = _pose_points(xyz, pixel_pose, rows, cols)
        vehicle_from_world = np.linalg.inv(np.asarray(frame_pose, dtype=np.float64))
        xyz = world @ vehicle_from_world[:3, :3].T + vehicle_from_world[:3, 3]

    points = np.empty((len(rows), NUM_POINT_FEATURES), dtype=np.float32)
    points[:, 0:3] = xyz
    channels = range_image.shape[2]
    points[:, 3] = range_image[rows, cols, INTENSITY] if channels > INTENSITY else 0.0
    points[:, 4] = range_image[rows, cols, ELONGATION] if channels > ELONGATION else 0.0
    points[:, 5] = range_image[rows, cols, NLZ] if channels > NLZ else -1.0
    if return_pixel_index:
        return points, np.stack([rows, cols], axis=1).astype(np.int64)
    return points
