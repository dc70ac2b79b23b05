"""requirements-lock.txt (what setup_env.sh and CI install) matches the ranges of requirements*.txt.

It catches a requirement changed without regenerating the lock (tools/scripts/lock_requirements.sh).
"""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _requirement_lines(name):
    for line in (ROOT / name).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line and not line.startswith('-'):
            yield line


def _lock_pins():
    pins = {}
    for line in _requirement_lines('requirements-lock.txt'):
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == '==', f'lock entry is not an exact pin: {line}'
        pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def test_lock_pins_every_requirement_within_its_range():
    pins = _lock_pins()
    for name in ('requirements.txt', 'requirements-dev.txt'):
        for line in _requirement_lines(name):
            requirement = Requirement(line)
            key = canonicalize_name(requirement.name)
            assert key in pins, f'{requirement.name} ({name}) is not in requirements-lock.txt: regenerate it ' \
                                f'with tools/scripts/lock_requirements.sh'
            assert requirement.specifier.contains(pins[key], prereleases=True), \
                f'requirements-lock.txt pins {requirement.name}=={pins[key]}, outside {line!r} ({name}): ' \
                f'regenerate it with tools/scripts/lock_requirements.sh'


def test_lock_pulls_no_cuda_packages_and_keeps_the_plain_torch_pin():
    pins = _lock_pins()
    cuda = sorted(name for name in pins if name.startswith('nvidia-') or name == 'triton')
    assert cuda == [], f'the lock pulls CUDA packages (resolved without the CPU torch wheel?): {cuda}'
    # `+cpu` is not on PyPI; the plain pin is satisfied by the local CPU wheel and by a CUDA build alike.
    assert pins['torch'] == Version('2.13.0') and not pins['torch'].local
