"""Minimal protobuf wire-format codec (no protoc, no `protobuf` package), driven by hand-written schemas.

Wire format (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of fields, each a
varint key `(field_number << 3) | wire_type` followed by the payload:

| wire type | name  | payload                           | kinds                                             |
|-----------|-------|-----------------------------------|---------------------------------------------------|
| 0         | VARINT| base-128 varint, little-endian     | int32 int64 uint32 uint64 sint32 sint64 bool enum |
| 1         | I64   | 8 bytes little-endian              | double fixed64 sfixed64                           |
| 2         | LEN   | varint length + bytes              | string bytes message, packed repeated scalars     |
| 3 / 4     | SGROUP / EGROUP (deprecated groups: skipped when unknown, rejected when declared)           |
| 5         | I32   | 4 bytes little-endian              | float fixed32 sfixed32                            |

Negative int32 / int64 / enum values are varints of their 64-bit two's complement (10 bytes); sint* use zigzag.
Repeated scalar fields may arrive packed (one LEN field holding the concatenated payloads) or unpacked (one field
per element), and a parser must accept both (proto2 `repeated double x = 1;` is unpacked on the wire unless
`[packed = true]`); `Field.packed` only chooses how the ENCODER writes them, so re-encoding a decoded message gives
the bytes the official serializer would give when fields are written in field-number order.

Schema API:
    Field(number, name, kind, repeated=False, packed=False, message=None)
    Message(name, fields, strict=True)          # `message` of a 'message' field: a Message or a zero-arg callable
    decode_message(schema, data) -> dict        # name -> value; absent optional fields are absent keys
    encode_message(schema, value_dict) -> bytes

Decoded values: ints / floats / bool / str / bytes for singular scalars, dicts for messages; repeated numeric
fields become numpy arrays (float32 for `float`, float64 for `double`, int64/uint64 for integer kinds, bool),
repeated strings / bytes / messages become lists. Unknown fields are skipped. Errors raise `ProtobufDecodeError`
naming the message path and the byte offset inside that message.

Vectorised helpers for large packed payloads: `decode_varints`, `encode_varints` (numpy, no Python loop per value).
"""
import struct
from dataclasses import dataclass

import numpy as np

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_SGROUP, WIRE_EGROUP, WIRE_I32 = 0, 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1

_VARINT_KINDS = frozenset({'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64', 'bool', 'enum'})
_I64_KINDS = {'double': '<d', 'fixed64': '<Q', 'sfixed64': '<q'}
_I32_KINDS = {'float': '<f', 'fixed32': '<I', 'sfixed32': '<i'}
_LEN_KINDS = frozenset({'string', 'bytes', 'message'})
_ARRAY_DTYPES = {'double': '<f8', 'float': '<f4', 'fixed64': '<u8', 'sfixed64': '<i8', 'fixed32': '<u4',
                 'sfixed32': '<i4', 'int32': np.int64, 'int64': np.int64, 'sint32': np.int64, 'sint64': np.int64,
                 'enum': np.int64, 'uint32': np.uint64, 'uint64': np.uint64, 'bool': bool}
KINDS = _VARINT_KINDS | set(_I64_KINDS) | set(_I32_KINDS) | _LEN_KINDS


class ProtobufDecodeError(ValueError):
    """Malformed protobuf bytes (truncated, bad varint, wire type that does not match the schema...)."""


@dataclass(frozen=True)
class Field:
    """One field of a message schema.

    Attributes:
        number: field number (the official one: it is what goes on the wire).
        name: key in decoded dicts.
        kind: protobuf scalar type name ('double', 'int32', 'enum', 'string', ...) or 'message'.
        repeated: a repeated field.
        packed: how the encoder writes a repeated scalar (the decoder accepts both encodings).
        message: schema of a 'message' field: a `Message`, or a zero-argument callable returning one (recursion).
    """
    number: int
    name: str
    kind: str
    repeated: bool = False
    packed: bool = False
    message: object = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'field {self.name}: unknown kind {self.kind!r}')
        if (self.kind == 'message') != (self.message is not None):
            raise ValueError(f'field {self.name}: a message schema is needed exactly for kind "message"')
        if self.packed and (not self.repeated or self.kind in _LEN_KINDS):
            raise ValueError(f'field {self.name}: only repeated scalar numeric fields can be packed')
        if not 1 <= self.number < (1 << 29) or 19000 <= self.number <= 19999:
            raise ValueError(f'field {self.name}: invalid field number {self.number}')

    @property
    def schema(self):
        """The nested message schema (resolves a callable)."""
        return self.message if isinstance(self.message, Message) else self.message()

    @property
    def wire_type(self):
        if self.kind in _VARINT_KINDS:
            return WIRE_VARINT
        if self.kind in _I64_KINDS:
            return WIRE_I64
        if self.kind in _I32_KINDS:
            return WIRE_I32
        return WIRE_LEN


class Message:
    """A message schema: a name and its fields (only the fields a reader needs; others are skipped).

    `strict=False` marks a schema whose field types are less certain: a field arriving with another wire type
    is then skipped (its name is listed under the decoded dict's `'_wire_mismatch'` key) instead of failing the
    whole decode, so a wrong guess in an optional corner never makes real files unreadable.
    """

    def __init__(self, name, fields, strict=True):
        self.name = name
        self.strict = strict
        self.fields = tuple(sorted(fields, key=lambda f: f.number))
        self.by_number = {f.number: f for f in self.fields}
        self.by_name = {f.name: f for f in self.fields}
        if len(self.by_number) != len(self.fields) or len(self.by_name) != len(self.fields):
            raise ValueError(f'message {name}: duplicate field numbers or names')

    def __repr__(self):
        return f'Message({self.name}, {[f"{f.name}={f.number}" for f in self.fields]})'


# ---------------------------------------------------------------------------------------------------------------
# Scalars


def read_varint(data, pos):
    """Decode the varint at `data[pos:]` -> (value as an unsigned 64-bit int, position after it)."""
    try:
        byte = data[pos]
    except IndexError:
        raise ProtobufDecodeError(f'truncated varint at offset {pos}') from None
    if byte < 0x80:
        return byte, pos + 1
    result, shift, start = byte & 0x7F, 7, pos
    pos += 1
    while True:
        try:
            byte = data[pos]
        except IndexError:
            raise ProtobufDecodeError(f'truncated varint at offset {start}') from None
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ProtobufDecodeError(f'varint longer than 10 bytes at offset {start}')


def encode_varint(value):
    """Varint bytes of an int (negative values as 64-bit two's complement, like int32 / int64 / enum)."""
    value = int(value) & _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag_encode(value):
    value = int(value)
    return ((value << 1) ^ (value >> 63)) & _MASK64


def zigzag_decode(value):
    return (value >> 1) ^ -(value & 1)


def _to_signed(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _varint_to_kind(value, kind):
    if kind in ('int32', 'enum'):
        return _to_signed(value, 32)
    if kind == 'int64':
        return _to_signed(value, 64)
    if kind == 'uint32':
        return value & 0xFFFFFFFF
    if kind == 'uint64':
        return value
    if kind in ('sint32', 'sint64'):
        return zigzag_decode(value)
    return bool(value)  # 'bool'


def _kind_to_varint(value, kind):
    if kind in ('sint32', 'sint64'):
        return zigzag_encode(value)
    if kind == 'bool':
        return 1 if value else 0
    return int(value) & _MASK64


def encode_key(number, wire_type):
    return encode_varint((number << 3) | wire_type)


# ---------------------------------------------------------------------------------------------------------------
# Vectorised packed varints


def decode_varints(data):
    """All varints of a packed payload -> (N,) uint64 array (numpy-vectorised)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if raw[-1] & 0x80:
        raise ProtobufDecodeError('truncated varint at the end of a packed field')
    if not (raw & 0x80).any():
        return raw.astype(np.uint64)
    ends = np.flatnonzero(raw < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ProtobufDecodeError('varint longer than 10 bytes in a packed field')
    shifts = ((np.arange(raw.size) - np.repeat(starts, lengths)) * 7).astype(np.uint64)
    groups = (raw & 0x7F).astype(np.uint64) << shifts
    return np.bitwise_or.reduceat(groups, starts)


def encode_varints(values):
    """Concatenated varints of integer values (negative ones as 64-bit two's complement) -> bytes."""
    values = np.asarray(values)
    if values.size == 0:
        return b''
    if values.dtype.kind == 'b':
        values = values.astype(np.uint64)
    unsigned = values.astype(np.int64).view(np.uint64) if values.dtype.kind == 'i' else values.astype(np.uint64)
    unsigned = unsigned.ravel()
    largest = int(unsigned.max())
    if largest < 0x80:  # one byte each (e.g. all-zero camera projections)
        return unsigned.astype(np.uint8).tobytes()
    num_bytes = np.ones(unsigned.size, dtype=np.int64)
    for k in range(1, (largest.bit_length() + 6) // 7):
        num_bytes += unsigned >= np.uint64(1 << (7 * k))
    offsets = np.cumsum(num_bytes) - num_bytes
    out = np.empty(int(num_bytes.sum()), dtype=np.uint8)
    for k in range(10):
        active = num_bytes > k
        if not active.any():
            break
        group = (unsigned[active] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (num_bytes[active] > k + 1).astype(np.uint64) << np.uint64(7)
        out[offsets[active] + k] = (group | more).astype(np.uint8)
    return out.tobytes()


def _packed_to_array(payload, kind):
    if kind in _I64_KINDS or kind in _I32_KINDS:
        dtype = np.dtype(_ARRAY_DTYPES[kind])
        if len(payload) % dtype.itemsize:
            raise ProtobufDecodeError(f'packed {kind} payload of {len(payload)} bytes is not a multiple of '
                                      f'{dtype.itemsize}')
        return np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder('='))
    raw = decode_varints(payload)
    if kind in ('int32', 'enum'):
        return (raw & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)
    if kind == 'int64':
        return raw.view(np.int64)
    if kind == 'uint32':
        return raw & np.uint64(0xFFFFFFFF)
    if kind == 'uint64':
        return raw
    if kind in ('sint32', 'sint64'):
        return (raw >> np.uint64(1)).view(np.int64) ^ -(raw & np.uint64(1)).view(np.int64)
    return raw.astype(bool)


def _array_to_packed(values, kind):
    if kind in _I64_KINDS or kind in _I32_KINDS:
        return np.ascontiguousarray(values, dtype=_ARRAY_DTYPES[kind]).tobytes()
    values = np.asarray(values)
    if kind in ('sint32', 'sint64'):
        signed = values.astype(np.int64)
        return encode_varints((signed.view(np.uint64) << np.uint64(1)) ^ (signed >> 63).view(np.uint64))
    if kind == 'bool':
        return encode_varints(values.astype(bool).astype(np.uint64))
    return encode_varints(values.astype(np.uint64) if kind in ('uint32', 'uint64') else values.astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------
# Field iteration


def iter_fields(data):
    """Yield `(field_number, wire_type, value, offset)` for every field of a serialized message.

    `value` is the varint as an unsigned int (VARINT), the raw 8 / 4 payload bytes (I64 / I32), the payload
    bytes (LEN) or None (a skipped group). `offset` is where the field's key starts.
    """
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufDecodeError(f'field number 0 at offset {start}')
        if wire_type == WIRE_VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = read_varint(data, pos)
            if pos + length > end:
                raise ProtobufDecodeError(f'field {number} at offset {start}: length {length} runs past the end '
                                          f'of the message ({end - pos} bytes left)')
            value = data[pos:pos + length]
            pos += length
        elif wire_type in (WIRE_I64, WIRE_I32):
            size = 8 if wire_type == WIRE_I64 else 4
            if pos + size > end:
                raise ProtobufDecodeError(f'field {number} at offset {start}: truncated {size}-byte value')
            value = data[pos:pos + size]
            pos += size
        elif wire_type == WIRE_SGROUP:
            pos = _skip_group(data, pos, number, start)
            value = None
        else:
            raise ProtobufDecodeError(f'field {number} at offset {start}: invalid wire type {wire_type}')
        yield number, wire_type, value, start


def _skip_group(data, pos, number, start):
    """Position after the END_GROUP matching a START_GROUP of field `number` (nested groups allowed)."""
    end = len(data)
    while pos < end:
        key, pos = read_varint(data, pos)
        inner, wire_type = key >> 3, key & 7
        if wire_type == WIRE_EGROUP:
            if inner != number:
                raise ProtobufDecodeError(f'group {number} at offset {start}: mismatched end group {inner}')
            return pos
        if wire_type == WIRE_VARINT:
            _, pos = read_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = read_varint(data, pos)
            pos += length
        elif wire_type in (WIRE_I64, WIRE_I32):
            pos += 8 if wire_type == WIRE_I64 else 4
        elif wire_type == WIRE_SGROUP:
            pos = _skip_group(data, pos, inner, pos)
        else:
            raise ProtobufDecodeError(f'group {number} at offset {start}: invalid wire type {wire_type}')
    raise ProtobufDecodeError(f'group {number} at offset {start} has no end group')


# ---------------------------------------------------------------------------------------------------------------
# Schema-driven decode / encode


def decode_message(schema, data, _path=None):
    """Decode serialized `data` (bytes-like) with `schema` into a dict (see the module docstring)."""
    path = _path or schema.name
    out = {}
    repeated_scalars = {}
    by_number = schema.by_number
    try:
        for number, wire_type, value, offset in iter_fields(data):
            field = by_number.get(number)
            if field is None:
                continue
            kind = field.kind
            if wire_type == WIRE_LEN and kind not in _LEN_KINDS:
                if not field.repeated and not schema.strict:
                    out.setdefault('_wire_mismatch', []).append(field.name)
                    continue
                if not field.repeated:
                    raise ProtobufDecodeError(f'{field.name} (field {number}) at offset {offset}: packed payload '
                                              f'for a singular {kind}')
                repeated_scalars.setdefault(field.name, []).append(_packed_to_array(value, kind))
                continue
            if wire_type != field.wire_type:
                if not schema.strict:
                    out.setdefault('_wire_mismatch', []).append(field.name)
                    continue
                raise ProtobufDecodeError(f'{field.name} (field {number}) at offset {offset}: wire type '
                                          f'{wire_type}, expected {field.wire_type} for {kind}')
            if kind == 'message':
                try:
                    value = decode_message(field.schema, value, f'{path}.{field.name}')
                except ProtobufDecodeError:
                    if schema.strict:
                        raise
                    out.setdefault('_wire_mismatch', []).append(field.name)
                    continue
            elif kind == 'string':
                try:
                    value = bytes(value).decode('utf-8')
                except UnicodeDecodeError as err:
                    if not schema.strict:
                        out.setdefault('_wire_mismatch', []).append(field.name)
                        continue
                    raise ProtobufDecodeError(f'{field.name} at offset {offset}: invalid UTF-8 ({err})') from None
            elif kind == 'bytes':
                value = bytes(value)
            elif wire_type == WIRE_VARINT:
                value = _varint_to_kind(value, kind)
            else:
                value = struct.unpack(_I64_KINDS[kind] if wire_type == WIRE_I64 else _I32_KINDS[kind], value)[0]
            if not field.repeated:
                out[field.name] = value  # last one wins (protobuf merge semantics for scalars)
            elif kind in _LEN_KINDS:
                out.setdefault(field.name, []).append(value)
            else:
                repeated_scalars.setdefault(field.name, []).append(value)
    except ProtobufDecodeError as err:
        if getattr(err, 'message_path', None) is not None:
            raise
        located = ProtobufDecodeError(f'{path}: {err}')
        located.message_path = path
        raise located from None
    for name, chunks in repeated_scalars.items():
        dtype = np.dtype(_ARRAY_DTYPES[schema.by_name[name].kind]).newbyteorder('=')
        if not any(isinstance(chunk, np.ndarray) for chunk in chunks):
            out[name] = np.array(chunks, dtype=dtype)
        else:
            out[name] = np.concatenate([chunk.astype(dtype, copy=False) if isinstance(chunk, np.ndarray)
                                        else np.array([chunk], dtype=dtype) for chunk in chunks])
    return out


def encode_message(schema, value):
    """Serialize a dict with `schema` (fields in field-number order; None / missing fields are not written)."""
    parts = []
    for field in schema.fields:
        item = value.get(field.name)
        if item is None:
            continue
        number, kind = field.number, field.kind
        if field.repeated:
            if kind in _LEN_KINDS:
                for element in item:
                    parts.append(_encode_len_field(field, element))
            elif field.packed:
                if len(item):
                    payload = _array_to_packed(item, kind)
                    parts += [encode_key(number, WIRE_LEN), encode_varint(len(payload)), payload]
            else:
                for element in np.asarray(item).ravel().tolist():
                    parts.append(_encode_scalar_field(field, element))
        elif kind in _LEN_KINDS:
            parts.append(_encode_len_field(field, item))
        else:
            parts.append(_encode_scalar_field(field, item))
    return b''.join(parts)


def _encode_len_field(field, element):
    if field.kind == 'message':
        payload = encode_message(field.schema, element)
    elif field.kind == 'string':
        payload = element.encode('utf-8')
    else:
        payload = bytes(element)
    return encode_key(field.number, WIRE_LEN) + encode_varint(len(payload)) + payload


def _encode_scalar_field(field, element):
    kind = field.kind
    if kind in _VARINT_KINDS:
        return encode_key(field.number, WIRE_VARINT) + encode_varint(_kind_to_varint(element, kind))
    if kind in _I64_KINDS:
        return encode_key(field.number, WIRE_I64) + struct.pack(_I64_KINDS[kind], element)
    return encode_key(field.number, WIRE_I32) + struct.pack(_I32_KINDS[kind], element)
