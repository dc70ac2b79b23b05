"""Synthetic LiDAR scenes and writers for official dataset formats (no download needed).

* `scene`: dataset-agnostic scene model (ego trajectory, moving / static objects, clutter), `simulate_scene`.
* `lidar`: spinning multi-beam LiDAR ray caster, `cast_scan`.
* `occupancy`: semantic occupancy of a scene on a voxel grid, `semantic_occupancy`.
* `nuscenes_writer` (+ `nuscenes` CLI): the official nuScenes on-disk format, readable by nuscenes-devkit, with
  nuScenes-lidarseg labels and nuScenes-Occupancy (OpenOccupancy) ground truth (`nuscenes_occupancy`).

The modules here import only numpy (tqdm and nuscenes-devkit are imported inside the writer functions that
use them), so the simulator can be reused by any dataset writer.
"""
from .lidar import LidarConfig, LidarScan, cast_scan
from .nuscenes_lidarseg import load_point_labels
from .nuscenes_writer import SyntheticNuScenesConfig, generate_nuscenes
from .occupancy import VoxelGrid, semantic_occupancy
from .scene import Scene, SceneConfig, simulate_scene

__all__ = ['LidarConfig', 'LidarScan', 'cast_scan', 'Scene', 'SceneConfig', 'simulate_scene',
           'SyntheticNuScenesConfig', 'generate_nuscenes', 'load_point_labels', 'VoxelGrid', 'semantic_occupancy']
