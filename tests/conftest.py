"""Shared fixtures: a small synthetic nuScenes-format dataset generated once per test session.

The generation arguments live in `SYNTHETIC_NUSCENES_TEST_ARGS` (one place); the `synthetic_nuscenes_config`
fixture turns them into a `SyntheticNuScenesConfig` for tests that need the values (scene count, key frames...).
Under pytest-xdist all workers share one copy (generated under a file lock in the session's shared temp root).
"""
import os

import pytest

SYNTHETIC_NUSCENES_VERSION = 'v1.0-mini'

# The 10 official mini scenes (8 mini_train + 2 mini_val), 3 key frames each with the 9 sweeps between key frames
# and 9 before the first, a coarse 256-step azimuth grid: a few seconds to generate.
SYNTHETIC_NUSCENES_TEST_ARGS = dict(
    version=SYNTHETIC_NUSCENES_VERSION, num_scenes=10, samples_per_scene=3, sweeps_before_first=9,
    azimuth_steps=256, num_objects=16, seed=0, val_fraction=0.2,
)


def _shared_tmp_root(tmp_path_factory):
    """A temp folder shared by all xdist workers of this run (the per-worker base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def synthetic_nuscenes_version():
    return SYNTHETIC_NUSCENES_VERSION


@pytest.fixture(scope='session')
def synthetic_nuscenes_config(tmp_path_factory):
    """The `SyntheticNuScenesConfig` of the shared test dataset (its `root` is the dataroot)."""
    from pcdet.datasets.synthetic.nuscenes_writer import SyntheticNuScenesConfig
    root = _shared_tmp_root(tmp_path_factory) / 'synthetic_nuscenes' / SYNTHETIC_NUSCENES_VERSION
    return SyntheticNuScenesConfig(root=str(root), **SYNTHETIC_NUSCENES_TEST_ARGS)


@pytest.fixture(scope='session')
def synthetic_nuscenes_root(synthetic_nuscenes_config, tmp_path_factory):
    """Dataroot (pathlib.Path) holding `v1.0-mini/`, `samples/`, `sweeps/`, `lidarseg/`, `maps/`.

    Shared and generated once: treat it as READ-ONLY. Tests that write next to the data (infos, GT database)
    should use `synthetic_nuscenes_workdir`.
    """
    from filelock import FileLock  # a torch dependency, so always installed

    from pcdet.datasets.synthetic.nuscenes_writer import generate_nuscenes
    lock_path = _shared_tmp_root(tmp_path_factory) / 'synthetic_nuscenes.lock'
    with FileLock(str(lock_path)):
        # Skips when another worker already wrote an identical complete dataset (manifest check).
        generate_nuscenes(synthetic_nuscenes_config, progress=False)
    from pathlib import Path
    return Path(synthetic_nuscenes_config.root)


@pytest.fixture
def synthetic_nuscenes_workdir(synthetic_nuscenes_root, tmp_path):
    """A private dataroot for tests that write derived files (infos, GT database) next to the data: a fresh
    folder whose entries are symlinks to the shared dataset's top-level entries."""
    workdir = tmp_path / 'nuscenes_dataroot'
    workdir.mkdir()
    for entry in synthetic_nuscenes_root.iterdir():
        (workdir / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return workdir


@pytest.fixture(scope='session')
def synthetic_nuscenes_data_path(synthetic_nuscenes_root, synthetic_nuscenes_version, tmp_path_factory):
    """A `DATA_PATH` whose `<VERSION>/` folder links to the shared dataset and holds freshly created 10-sweep
    infos (no GT database). Read-only for tests, like the dataset itself."""
    from pathlib import Path

    from pcdet.datasets.nuscenes.nuscenes_utils import create_nuscenes_info
    data_path = tmp_path_factory.mktemp('nuscenes_data_path')
    dataroot = data_path / synthetic_nuscenes_version
    dataroot.mkdir()
    for entry in Path(synthetic_nuscenes_root).iterdir():
        if not entry.name.startswith(('nuscenes_', 'gt_database', '.')):
            (dataroot / entry.name).symlink_to(entry.resolve())
    create_nuscenes_info(synthetic_nuscenes_version, dataroot, max_sweeps=10)
    return data_path


def pytest_collection_modifyitems(config, items):
    """Run the slow end-to-end tests first (a stable sort keeps every other order): under `-n 2 --dist loadfile
    --no-loadscope-reorder` (run_tests.sh; xdist's default reorder would sort files by test count and start the
    single-test e2e files last) each xdist worker then starts with one e2e file, so the minutes-long runs overlap
    from the start instead of waiting behind the unit tests (CI wall time)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker('slow') else 1)
