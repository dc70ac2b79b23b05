"""Offline per-point teacher (Seal) features for a pretraining config: a thin wrapper of
`pcdet.datasets.teachers.prepare` (see its module doc for what is computed and stored).

    python tools/prepare_seal_features.py --cfg_file <pretraining or dataset yaml> [--split train|val|both]
        [--num_sweeps N] [--workers W] [--limit K] [--quiet]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from pcdet.config import ConfigError  # noqa: E402
from pcdet.datasets.teachers import prepare  # noqa: E402
from pcdet.datasets.teachers.feature_store import FeatureStoreError  # noqa: E402


def main(argv=None):
    """Returns the report dict of `prepare.prepare_teacher_features`."""
    return prepare.main(argv)


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ConfigError, FeatureStoreError, ValueError) as err:
        raise SystemExit(f'error: {err}')
