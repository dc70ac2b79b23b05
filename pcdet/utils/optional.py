"""Lazy imports of optional extras with an error that says which extra to install.

Modules that need spconv or the Waymo package call `import_optional(...)` inside the function that needs it,
never at module import, so `import pcdet.*` works on a machine without the extras.
"""
import importlib

EXTRA_HINTS = {
    'spconv': 'spconv',
    'cumm': 'spconv',
    'waymo_open_dataset': 'waymo',
    'tensorflow': 'waymo',
}


class MissingOptionalDependency(ImportError):
    """An optional extra is needed for this feature and is not installed."""


def import_optional(module_name, feature, extra=None):
    """Import `module_name` or raise MissingOptionalDependency naming the feature and the pip extra to install."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        extra = extra or EXTRA_HINTS.get(module_name.split('.')[0])
        hint = f"pip install -e '.[{extra}]'" if extra else f'pip install {module_name.split(".")[0]}'
        raise MissingOptionalDependency(
            f'{feature} needs the optional package {module_name!r}, which is not installed ({err}). '
            f'Install it with: {hint}') from err
