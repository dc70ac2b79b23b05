"""Pure-Python install: `pip install -e .` compiles nothing.

Optional extras are imported lazily by the modules that need them:
  [spconv]  sparse-convolution teacher networks (GPICTURE Seal features)
  [waymo]   official Waymo metrics cross-check (pins TensorFlow: use a separate environment)
  [gsplat]  CUDA fast path of pcdet.ops.gaussian_splatting
  [dev]     test tools
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    reqs = []
    for line in lines:
        line = line.split('#', 1)[0].strip()
        if line and not line.startswith('-r'):
            reqs.append(line)
    return reqs


version = {}
exec((ROOT / 'pcdet' / 'version.py').read_text(), version)

setup(
    name='pcdet',
    version=version['__version__'],
    description='OpenPCDet-compatible LiDAR perception without a compile step: DSVT + GPICTURE pretraining',
    long_description=(ROOT / 'README.md').read_text() if (ROOT / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['pcdet', 'pcdet.*']),
    python_requires='>=3.9',
    install_requires=read_requirements('requirements.txt'),
    extras_require={
        'spconv': ['spconv-cu118>=2.3.6', 'cumm-cu118'],
        'waymo': ['waymo-open-dataset-tf-2-12-0'],
        'gsplat': ['gsplat'],
        'dev': ['pytest>=7.4', 'pytest-xdist>=3.6'],
    },
    license='Apache-2.0',
)
