"""The package imports on a CPU-only machine without optional extras, and optional extras fail helpfully."""
import subprocess
import sys

import pytest

from pcdet.utils.optional import MissingOptionalDependency, import_optional

HEAVY_OR_OPTIONAL = ['spconv', 'cumm', 'tensorflow', 'waymo_open_dataset', 'nuscenes', 'torch_scatter']


def test_core_subpackages_import_without_extras_or_devkit():
    code = ('import sys, pcdet, pcdet.datasets, pcdet.models, pcdet.ops, pcdet.config, pcdet.utils.box_utils\n'
            f'loaded = [m for m in {HEAVY_OR_OPTIONAL!r} if m in sys.modules]\n'
            'print(",".join(loaded))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '', f'imported at package import time: {result.stdout.strip()}'


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingOptionalDependency, match=r"pip install -e '\.\[spconv\]'"):
        import_optional('spconv_definitely_missing_module', 'The Seal teacher', extra='spconv')
    with pytest.raises(MissingOptionalDependency, match='waymo'):
        import_optional('waymo_open_dataset.not_here', 'The official Waymo metrics cross-check')


def test_present_module_is_returned():
    assert import_optional('json', 'json support').dumps([1]) == '[1]'


def test_install_compiles_nothing():
    """setup.py declares no extension modules and the package ships no C/C++/CUDA sources."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    setup_text = (root / 'setup.py').read_text()
    assert 'ext_modules' not in setup_text and 'CUDAExtension' not in setup_text
    compiled_sources = [p for p in (root / 'pcdet').rglob('*') if p.suffix in {'.c', '.cc', '.cpp', '.cu', '.pyx'}]
    assert compiled_sources == []
