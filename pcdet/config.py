"""YAML + EasyDict configuration with OpenPCDet's `_BASE_CONFIG_` and `--set` semantics.

Differences from OpenPCDet, on purpose:
- No module-level config singleton is needed: every function takes and returns a config object.
  (`cfg` still exists as a convenience for scripts that want OpenPCDet's `from pcdet.config import cfg`.)
- `_BASE_CONFIG_` is resolved relative to the file that includes it, falling back to the current working
  directory (so OpenPCDet configs that say `cfgs/dataset_configs/...` still work when run from `tools/`),
  then to the repository root. Bases may themselves have bases (resolved recursively, cycles rejected).
- Errors name the file or key and say what was expected.
"""
import ast
from pathlib import Path

import yaml
from easydict import EasyDict

ROOT_DIR = Path(__file__).resolve().parent.parent
BASE_KEY = '_BASE_CONFIG_'


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file or key."""


def _load_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'Config file not found: {path}')
    try:
        with open(path, 'r') as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ConfigError(f'Config file {path} is not valid YAML: {err}') from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f'Config file {path} must contain a mapping at top level, got {type(content).__name__}')
    return content


def resolve_config_path(path, base_dir=None, what=BASE_KEY):
    """Find an included config: relative to `base_dir` (the including file's folder), then CWD, then the repo root
    and `tools/` (OpenPCDet configs name bases as `cfgs/...` relative to `tools/`). `what` names the path in the
    error (`'Config file'` for a `--cfg_file`)."""
    path = Path(path)
    if path.is_absolute():
        return path
    candidates = []
    if base_dir is not None:
        candidates.append(Path(base_dir) / path)
    candidates += [Path.cwd() / path, ROOT_DIR / path, ROOT_DIR / 'tools' / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ', '.join(str(c) for c in candidates)
    raise ConfigError(f'{what} {path} not found (tried: {tried})')


def merge_new_config(config, new_config, base_dir=None, _chain=()):
    """Merge `new_config` (a dict) into `config` (an EasyDict) in place and return `config`.

    A `_BASE_CONFIG_` key at any level loads that file first (into the same level); scalar and list values
    replace, dicts merge recursively. The `_BASE_CONFIG_` key itself is kept, as in OpenPCDet.
    """
    if BASE_KEY in new_config:
        base_path = resolve_config_path(new_config[BASE_KEY], base_dir)
        if base_path in _chain:
            cycle = ' -> '.join(str(p) for p in (*_chain, base_path))
            raise ConfigError(f'{BASE_KEY} cycle: {cycle}')
        base_config = EasyDict()
        merge_new_config(base_config, _load_yaml(base_path), base_path.parent, (*_chain, base_path))
        config.update(base_config)

    for key, value in new_config.items():
        if isinstance(value, dict):
            if not isinstance(config.get(key), dict):
                config[key] = EasyDict()
            merge_new_config(config[key], value, base_dir, _chain)
        else:
            config[key] = value
    return config


def cfg_from_yaml_file(cfg_file, config=None):
    """Load `cfg_file` (with its `_BASE_CONFIG_` chain) into `config` (a new EasyDict by default) and return it."""
    cfg_file = Path(cfg_file)
    config = EasyDict() if config is None else config
    config.setdefault('ROOT_DIR', ROOT_DIR)
    config.setdefault('LOCAL_RANK', 0)
    merge_new_config(config, _load_yaml(cfg_file), cfg_file.resolve().parent, (cfg_file.resolve(),))
    return config


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _cast_like(value, reference, key):
    """Cast string `value` to the type of `reference` (used for list elements and dict sub-keys)."""
    if isinstance(reference, bool):
        if str(value).lower() in ('true', '1'):
            return True
        if str(value).lower() in ('false', '0'):
            return False
        raise ConfigError(f'--set {key}: cannot read {value!r} as a bool')
    try:
        return type(reference)(_parse_value(value) if not isinstance(reference, str) else value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'--set {key}: cannot cast {value!r} to {type(reference).__name__}') from err


def _override_value(old_value, raw_value, key):
    """Typed override following OpenPCDet's `cfg_from_list` rules."""
    new_value = _parse_value(raw_value) if isinstance(raw_value, str) else raw_value
    if isinstance(old_value, dict) and isinstance(new_value, str):
        updated = EasyDict(old_value)
        for item in new_value.split(','):
            if ':' not in item:
                raise ConfigError(f'--set {key}: expected "k1:v1,k2:v2", got {raw_value!r}')
            sub_key, sub_value = item.split(':', 1)
            if sub_key not in old_value:
                raise ConfigError(f'--set {key}: unknown sub-key {sub_key!r} (known: {sorted(old_value)})')
            updated[sub_key] = _cast_like(sub_value, old_value[sub_key], f'{key}.{sub_key}')
        return updated
    if isinstance(old_value, list) and isinstance(new_value, str):
        items = [item for item in new_value.split(',') if item != '']
        return [_cast_like(item, old_value[0], key) if old_value else _parse_value(item) for item in items]
    if isinstance(old_value, list) and isinstance(new_value, tuple):
        new_value = list(new_value)
    if old_value is None:
        return new_value
    if isinstance(old_value, float) and type(new_value) is int:
        return float(new_value)  # `--set LR 1` on a float field is unambiguous
    if type(new_value) is not type(old_value):
        raise ConfigError(f'--set {key}: type mismatch, the config has {type(old_value).__name__} '
                          f'({old_value!r}) but got {type(new_value).__name__} ({raw_value!r})')
    return new_value


def cfg_from_list(cfg_list, config):
    """Apply `--set K1 V1 K2 V2 ...` overrides (dotted keys that must already exist) to `config` in place."""
    if len(cfg_list) % 2 != 0:
        raise ConfigError(f'--set expects KEY VALUE pairs, got an odd number of items: {cfg_list}')
    for dotted_key, raw_value in zip(cfg_list[0::2], cfg_list[1::2]):
        parts = dotted_key.split('.')
        node = config
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f'--set {dotted_key}: key {".".join(parts[:depth + 1])} not found in the config')
            node = node[part]
        leaf = parts[-1]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f'--set {dotted_key}: key not found in the config')
        node[leaf] = _override_value(node[leaf], raw_value, dotted_key)
    return config


def require_keys(config, keys, section='config'):
    """Raise a ConfigError naming the section and each missing key."""
    missing = [key for key in keys if key not in config]
    if missing:
        raise ConfigError(f'{section} is missing required key(s): {", ".join(missing)}')


def _to_plain(value):
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_yaml(config):
    """The resolved config as YAML text (paths as strings)."""
    return yaml.safe_dump(_to_plain(config), sort_keys=False, default_flow_style=None)


def save_config_to_file(config, path):
    """Write the resolved config to `path` atomically (the output folder keeps what actually ran)."""
    from .utils.file_utils import atomic_save_text
    atomic_save_text(config_to_yaml(config), path)


def log_config_to_file(config, pre='cfg', logger=None):
    """Log every leaf as `pre.A.B: value`, with a banner per sub-dict (OpenPCDet's format)."""
    for key, value in config.items():
        if isinstance(value, dict):
            logger.info(f'----------- {key} -----------')
            log_config_to_file(value, pre=f'{pre}.{key}', logger=logger)
        else:
            logger.info(f'{pre}.{key}: {value}')


cfg = EasyDict(ROOT_DIR=ROOT_DIR, LOCAL_RANK=0)
"""OpenPCDet-style convenience object for scripts; library code never reads it."""
