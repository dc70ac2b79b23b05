"""Config schemas: every key a module reads is declared once, next to the module, with its default.

A `Schema` maps each key of one config block to its default (or `REQUIRED`, or a nested block). The same object
1. fills defaults where the module reads: `SCHEMA.get(cfg, 'KEY')` returns the value or the declared default, and
   reading a key the schema does not declare is itself an error (`UndeclaredKeyError`), so the schema and the
   defaults cannot drift;
2. validates a whole resolved config up front (`validate_config`): unknown keys are reported with their path and
   the closest known key, missing required keys with their path, before any dataset or model is built.

Value kinds in a schema:
    plain value       optional key, this is its default (dicts and lists are opaque values, not descended into)
    REQUIRED          required key
    Schema(...)       nested block, validated recursively (absent = all defaults unless `required=True`)
    Select(resolve)   nested block whose schema is picked by one of its keys (`NAME` by default): model slots,
                      `DATA_CONFIG` by `DATASET`, `TEACHER_FEATURES` by `NAME`
    SelectList(...)   list of blocks, each picked by its `NAME` (`AUG_CONFIG_LIST`, `DATA_PROCESSOR`)
    MapOf(schema)     mapping with free keys whose values follow `schema` (`SEPARATE_HEAD_CFG.HEAD_DICT`)
    Ignored(reason)   written by OpenPCDet configs, accepted, never read here (reading it is an error)

User keys: any key starting with `_` (e.g. `_NOTES`, `_MY_SWEEP_TAG`) is skipped by validation at every level
(`_BASE_CONFIG_` included). A key a module should read goes into that module's schema.
"""
import difflib

from easydict import EasyDict

from .config import ConfigError


class _Required:
    def __repr__(self):
        return 'REQUIRED'


REQUIRED = _Required()


class UndeclaredKeyError(LookupError):
    """Code read a config key its schema does not declare (a bug in the module, not in the config)."""


class Ignored:
    """A key OpenPCDet configs carry that pcdet accepts and never reads; `reason` says why."""

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return f'Ignored({self.reason!r})'


class Schema:
    """The keys of one config block: key -> default | REQUIRED | Schema | Select | SelectList | MapOf | Ignored.

    `section` names the block in messages (e.g. 'DENSE_HEAD (CenterHead)'); `required` applies when the block is
    itself a value of a parent schema."""

    def __init__(self, section, keys, required=False, absent=None):
        self.section = section
        self.keys = dict(keys)
        self.required = required
        self.absent = absent  # 'none': an absent block reads as None (a switch), not as its defaults

    def extend(self, section, keys):
        """A new schema with this one's keys plus `keys` (later wins): a subclass's schema."""
        return Schema(section, {**self.keys, **keys}, required=self.required, absent=self.absent)

    def __repr__(self):
        return f'Schema({self.section!r}, {sorted(self.keys)})'

    def _spec(self, key):
        if key not in self.keys:
            raise UndeclaredKeyError(f'{self.section}: code reads key {key!r}, which the schema does not declare '
                                     f'(declared: {sorted(self.keys)})')
        spec = self.keys[key]
        if isinstance(spec, Ignored):
            raise UndeclaredKeyError(f'{self.section}: code reads key {key!r}, declared as ignored ({spec.reason})')
        return spec

    def get(self, cfg, key):
        """The value of `key` in `cfg` (None counts as an empty block), else its declared default; a missing
        REQUIRED key is a ConfigError, an undeclared key an UndeclaredKeyError."""
        spec = self._spec(key)
        if cfg is not None and key in cfg:
            value = cfg[key]
            return default_of(spec) if value is None and isinstance(spec, Schema) else value
        if spec is REQUIRED or getattr(spec, 'required', False):
            raise ConfigError(f'{self.section}: required key {key} is missing')
        return default_of(spec)

    def need(self, cfg, key, purpose):
        """`get` for a key that is optional in the schema (validation passes without it) but that one use needs,
        e.g. DATA_PATH to build a dataset, not to run a model on files: a None value is a ConfigError naming
        `purpose` ('to build the dataset')."""
        value = self.get(cfg, key)
        if value is None:
            raise ConfigError(f'{self.section}: key {key} is needed {purpose} and is not set')
        return value

    def fill(self, cfg):
        """`cfg` (a dict or None) with every declared default filled in, recursively for nested `Schema` blocks:
        an EasyDict. Unknown keys are kept (validation reports them); missing REQUIRED keys are an error."""
        cfg = {} if cfg is None else cfg
        out = EasyDict(dict(cfg))
        for key, spec in self.keys.items():
            if isinstance(spec, Ignored):
                continue
            if isinstance(spec, Schema) and spec.absent != 'none':
                if key in cfg or not spec.required:
                    out[key] = spec.fill(cfg.get(key))
                    continue
            if key not in cfg:
                out[key] = self.get(cfg, key)
        return out


class Select:
    """A block whose schema `resolve(value)` picks from its `by` key (ConfigError/KeyError for unknown values)."""

    def __init__(self, resolve, by='NAME', required=False):
        self.resolve, self.by, self.required = resolve, by, required


class SelectList:
    """A list of blocks, each validated by `resolve(entry[by])`."""

    def __init__(self, resolve, by='NAME', default=()):
        self.resolve, self.by, self.default = resolve, by, list(default)


class MapOf:
    """A mapping with free keys whose values follow `schema`."""

    def __init__(self, schema, default=None):
        self.schema, self.default = schema, default


def default_of(spec):
    """The value a module gets for an absent key declared as `spec`."""
    if isinstance(spec, Schema):
        return None if spec.absent == 'none' else spec.fill(None)
    if isinstance(spec, Select):
        return None
    if isinstance(spec, (SelectList, MapOf)):
        return spec.default if not isinstance(spec.default, list) else list(spec.default)
    return spec


def schema_of(cls):
    """`cls.CONFIG_SCHEMA`; a class without one is a ConfigError (every registered module declares its keys)."""
    schema = getattr(cls, 'CONFIG_SCHEMA', None)
    if not isinstance(schema, Schema):
        raise ConfigError(f'{cls.__name__} declares no CONFIG_SCHEMA, so its config keys cannot be checked')
    return schema


def closest_key(key, known):
    """The known key closest to `key` (difflib), or None."""
    by_upper = {k.upper(): k for k in known}
    match = difflib.get_close_matches(key.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[match[0]] if match else None


def _unknown_message(path, key, schema):
    known = [k for k in schema.keys]
    guess = closest_key(key, known)
    hint = f'did you mean {guess}?' if guess else f'known keys: {sorted(known)}'
    return f'{path}: unknown key in {schema.section}; {hint}'


def _validate_spec(value, spec, path, errors):
    if isinstance(spec, Schema):
        if not isinstance(value, dict):
            errors.append(f'{path}: expected a mapping ({spec.section}), got {type(value).__name__}')
        else:
            validate_block(value, spec, path, errors)
    elif isinstance(spec, Select):
        if value is not None:
            _validate_selected(value, spec, path, errors)
    elif isinstance(spec, SelectList):
        if not isinstance(value, (list, tuple)):
            errors.append(f'{path}: expected a list of blocks, got {type(value).__name__}')
            return
        for index, entry in enumerate(value):
            _validate_selected(entry, spec, f'{path}[{index}]', errors)
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            errors.append(f'{path}: expected a mapping, got {type(value).__name__}')
            return
        for key, entry in value.items():
            _validate_spec(entry, spec.schema, f'{path}.{key}', errors)


def _validate_selected(value, spec, path, errors):
    if not isinstance(value, dict):
        errors.append(f'{path}: expected a mapping with {spec.by}, got {type(value).__name__}')
        return
    if spec.by not in value:
        errors.append(f'{path}.{spec.by}: required key is missing')
        return
    try:
        schema = spec.resolve(value[spec.by])
    except (ConfigError, KeyError, ImportError) as err:
        message = err.args[0] if err.args else str(err)
        errors.append(f'{path}.{spec.by}: {message}')
        return
    validate_block(value, schema, path, errors)


def validate_block(cfg, schema, path, errors):
    """Append to `errors` one line per unknown key, missing required key or malformed block under `cfg`."""
    for key, value in cfg.items():
        key = str(key)
        sub_path = f'{path}.{key}' if path else key
        if key.startswith('_'):
            continue
        if key not in schema.keys:
            errors.append(_unknown_message(sub_path, key, schema))
            continue
        _validate_spec(value, schema.keys[key], sub_path, errors)
    for key, spec in schema.keys.items():
        if key not in cfg and (spec is REQUIRED or getattr(spec, 'required', False)):
            errors.append(f'{path + "." if path else ""}{key}: required key is missing ({schema.section})')
    return errors


def check_block(cfg, schema, path):
    """Raise a ConfigError listing the problems of one block `cfg` (None = empty) at `path`: the same check
    `validate_config` runs, for modules built directly from a config fragment."""
    errors = validate_block({} if cfg is None else cfg, schema, path, [])
    if errors:
        raise ConfigError('; '.join(errors))


def pick(registry, name, what, path):
    """`registry[name]`, else a ConfigError naming `path`, the closest known name and all known names."""
    if name in registry:
        return registry[name]
    guess = closest_key(str(name), list(registry))
    hint = f'did you mean {guess!r}? ' if guess else ''
    raise ConfigError(f'unknown {what} {name!r} at {path}; {hint}known: {sorted(registry)}')
