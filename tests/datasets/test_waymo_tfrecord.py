"""TFRecord framing + CRC32C, the protobuf wire codec and the Waymo Frame schema (no TensorFlow needed).

Cross-checks against `google.protobuf` (dynamic descriptors built from our schemas) and against the official
`waymo_open_dataset` generated classes run only where those packages are importable.
"""
import io
import struct
import subprocess
import sys

import numpy as np
import pytest

from pcdet.datasets.waymo import frame_proto, tfrecord
from pcdet.datasets.waymo import protobuf_wire as pw
from pcdet.datasets.waymo.tfrecord import TFRecordError

# ---------------------------------------------------------------------------------------------------------------
# CRC32C


@pytest.mark.parametrize('data, expected', [
    (b'123456789', 0xE3069283),                 # the CRC catalogue check value
    (b'', 0x00000000),
    (bytes(32), 0x8A9136AA),                    # RFC 3720 B.4 test vectors
    (b'\xff' * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, expected):
    assert tfrecord.crc32c(data) == expected
    assert tfrecord.crc32c(np.frombuffer(data, dtype=np.uint8)) == expected


def test_crc32c_fast_path_matches_python_loop_and_continues():
    rng = np.random.default_rng(0)
    tables = tfrecord.crc32c_tables()
    for size in (1, 7, 8, 9, 63, 64, 65, 1000, 4099):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        reference = tfrecord._crc32c_update_python(0xFFFFFFFF, data, tables) ^ 0xFFFFFFFF
        assert tfrecord.crc32c(data) == reference
        assert tfrecord.crc32c(data[size // 3:], tfrecord.crc32c(data[:size // 3])) == reference


def test_masked_crc_round_trip_and_record_layout():
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tfrecord.unmask_crc(tfrecord.mask_crc(crc)) == crc
    record = tfrecord.encode_record(b'hello')
    length, length_crc = struct.unpack('<QI', record[:12])
    assert length == 5 and length_crc == tfrecord.masked_crc32c(record[:8])
    assert record[12:17] == b'hello'
    assert struct.unpack('<I', record[17:])[0] == tfrecord.masked_crc32c(b'hello')
    # masked = rotate right by 15 + 0xa282ead8, spelled out once independently of the implementation
    crc = 0xE3069283
    assert tfrecord.mask_crc(crc) == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2 ** 32


# ---------------------------------------------------------------------------------------------------------------
# TFRecord files


def _write(path, records):
    assert tfrecord.write_records(path, records) == len(records)
    return path


def test_tfrecord_round_trip_lazy_offsets_and_file_objects(tmp_path):
    records = [b'', b'a', bytes(range(256)) * 40, b'last']
    path = _write(tmp_path / 'x.tfrecord', records)
    iterator = tfrecord.iter_records(path)
    assert next(iterator) == b''  # lazy: a generator, one record at a time
    assert list(iterator) == records[1:]
    offsets = list(tfrecord.iter_record_offsets(path))
    assert [length for _, length in offsets] == [len(r) for r in records]
    assert offsets[0][0] == 0 and offsets[1][0] == 16 and offsets[2][0] == 16 + 17
    assert [tfrecord.read_record_at(path, offset) for offset, _ in offsets] == records
    with open(path, 'rb') as handle:
        assert list(tfrecord.iter_records(handle)) == records
    assert list(tfrecord.iter_records(io.BytesIO(path.read_bytes()))) == records
    assert not list(tmp_path.glob('.*.tmp'))  # atomic writer left no temporary file


def test_tfrecord_writer_is_atomic(tmp_path):
    path = tmp_path / 'partial.tfrecord'
    with pytest.raises(RuntimeError):
        with tfrecord.TFRecordWriter(path) as writer:
            writer.write(b'one')
            raise RuntimeError('interrupted')
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize('cut, where', [(3, 'header'), (12 + 5, 'record'), (12 + 100 + 2, 'record')])
def test_truncated_tfrecord_names_file_and_offset(tmp_path, cut, where):
    path = _write(tmp_path / 'cut.tfrecord', [b'x' * 50, b'y' * 100])
    data = path.read_bytes()
    second = 12 + 50 + 4
    path.write_bytes(data[:second + cut])
    message = rf'cut\.tfrecord: record at byte offset {second}: truncated {where}'
    with pytest.raises(TFRecordError, match=message) as info:
        list(tfrecord.iter_records(path))
    assert info.value.offset == second and info.value.path == str(path)
    with pytest.raises(TFRecordError, match=f'offset {second}'):
        list(tfrecord.iter_record_offsets(path))


def test_crc_mismatch_names_file_and_offset(tmp_path):
    path = _write(tmp_path / 'bad.tfrecord', [b'x' * 50, b'y' * 100, b'z'])
    data = bytearray(path.read_bytes())
    second = 12 + 50 + 4
    data[second + 12 + 7] ^= 0x01  # one bit of the second record's data
    path.write_bytes(bytes(data))
    records = tfrecord.iter_records(path)
    assert next(records) == b'x' * 50
    with pytest.raises(TFRecordError, match=rf'bad\.tfrecord: record at byte offset {second}: data CRC mismatch'):
        next(records)
    assert len(list(tfrecord.iter_records(path, verify=False))) == 3  # verify=False skips the data CRC
    data[second + 12 + 7] ^= 0x01
    data[second + 2] ^= 0x40  # the length field: caught by the header CRC, always checked
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=f'offset {second}: length CRC mismatch'):
        list(tfrecord.iter_records(path, verify=False))


# ---------------------------------------------------------------------------------------------------------------
# Protobuf wire format


def test_varints_match_the_protobuf_documentation():
    assert pw.encode_varint(1) == b'\x01'
    assert pw.encode_varint(150) == b'\x96\x01'
    assert pw.encode_varint(-1) == b'\xff' * 9 + b'\x01'  # int32 / int64 -1: 10 bytes
    assert pw.read_varint(b'\x96\x01', 0) == (150, 2)
    assert [pw.zigzag_encode(v) for v in (0, -1, 1, -2, 2147483647, -2147483648)] == \
        [0, 1, 2, 3, 4294967294, 4294967295]
    assert pw.zigzag_decode(4294967295) == -2147483648
    schema = pw.Message('Test', [pw.Field(1, 'a', 'int32'), pw.Field(2, 'b', 'string'),
                                 pw.Field(4, 'd', 'int32', repeated=True, packed=True)])
    assert pw.encode_message(schema, {'a': 150}) == bytes.fromhex('089601')
    assert pw.encode_message(schema, {'b': 'testing'}) == bytes.fromhex('120774657374696e67')
    assert pw.encode_message(schema, {'d': [3, 270, 86942]}) == bytes.fromhex('2206038e029ea705')
    assert pw.decode_message(schema, bytes.fromhex('2206038e029ea705'))['d'].tolist() == [3, 270, 86942]


def test_vectorised_varints_match_scalar_codec():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.integers(-2 ** 63, 2 ** 63 - 1, 200, dtype=np.int64),
                             rng.integers(-300, 300, 200), [0, 1, 127, 128, 16383, 16384, -1, 2 ** 63 - 1]])
    encoded = pw.encode_varints(values)
    assert encoded == b''.join(pw.encode_varint(int(v)) for v in values)
    assert pw.decode_varints(encoded).view(np.int64).tolist() == values.tolist()
    assert pw.decode_varints(b'').size == 0
    with pytest.raises(pw.ProtobufDecodeError, match='truncated'):
        pw.decode_varints(b'\x96')


ALL_KINDS = pw.Message('AllKinds', [
    pw.Field(1, 'f_double', 'double'), pw.Field(2, 'f_float', 'float'), pw.Field(3, 'f_int32', 'int32'),
    pw.Field(4, 'f_int64', 'int64'), pw.Field(5, 'f_uint32', 'uint32'), pw.Field(6, 'f_uint64', 'uint64'),
    pw.Field(7, 'f_sint32', 'sint32'), pw.Field(8, 'f_sint64', 'sint64'), pw.Field(9, 'f_bool', 'bool'),
    pw.Field(10, 'f_enum', 'enum'), pw.Field(11, 'f_string', 'string'), pw.Field(12, 'f_bytes', 'bytes'),
    pw.Field(13, 'f_fixed32', 'fixed32'), pw.Field(14, 'f_fixed64', 'fixed64'),
    pw.Field(15, 'f_sfixed32', 'sfixed32'), pw.Field(16, 'f_sfixed64', 'sfixed64'),
    pw.Field(17, 'r_double', 'double', repeated=True), pw.Field(18, 'r_float_packed', 'float', repeated=True,
                                                                 packed=True),
    pw.Field(19, 'r_int32_packed', 'int32', repeated=True, packed=True),
    pw.Field(20, 'r_sint64', 'sint64', repeated=True), pw.Field(21, 'r_string', 'string', repeated=True),
    pw.Field(22, 'child', 'message', message=lambda: CHILD), pw.Field(23, 'children', 'message', repeated=True,
                                                                       message=lambda: CHILD),
    pw.Field(300, 'big_number', 'int32')])
CHILD = pw.Message('Child', [pw.Field(1, 'x', 'double'), pw.Field(2, 'tags', 'int32', repeated=True)])

ALL_VALUES = {
    'f_double': -1.5e300, 'f_float': 0.25, 'f_int32': -123456, 'f_int64': -2 ** 62, 'f_uint32': 2 ** 32 - 1,
    'f_uint64': 2 ** 64 - 1, 'f_sint32': -7, 'f_sint64': -2 ** 40, 'f_bool': True, 'f_enum': -2,
    'f_string': 'héllo', 'f_bytes': b'\x00\xff', 'f_fixed32': 4000000000, 'f_fixed64': 2 ** 63 + 5,
    'f_sfixed32': -5, 'f_sfixed64': -(2 ** 50), 'r_double': [1.0, -2.5], 'r_float_packed': [0.5, 1.5, -3.0],
    'r_int32_packed': [-1, 0, 300], 'r_sint64': [-3, 3], 'r_string': ['a', ''], 'child': {'x': 2.0, 'tags': [1]},
    'children': [{'x': 1.0}, {}, {'tags': [5, 6]}], 'big_number': 42,
}


def _assert_decoded_equal(decoded, expected):
    assert set(decoded) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_decoded_equal(decoded[key], value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            assert len(decoded[key]) == len(value)
            for got, want in zip(decoded[key], value):
                _assert_decoded_equal(got, want)
        elif isinstance(value, list) and value and isinstance(value[0], (int, float)):
            np.testing.assert_array_equal(decoded[key], value)
        else:
            assert decoded[key] == value, key


def test_schema_round_trip_of_every_kind():
    data = pw.encode_message(ALL_KINDS, ALL_VALUES)
    _assert_decoded_equal(pw.decode_message(ALL_KINDS, data), ALL_VALUES)
    assert pw.decode_message(ALL_KINDS, data)['r_float_packed'].dtype == np.float32


def test_decoder_accepts_packed_and_unpacked_and_skips_unknown_fields():
    unpacked = pw.Message('U', [pw.Field(1, 'v', 'double', repeated=True), pw.Field(2, 'i', 'int32', repeated=True)])
    packed = pw.Message('P', [pw.Field(1, 'v', 'double', repeated=True, packed=True),
                              pw.Field(2, 'i', 'int32', repeated=True, packed=True)])
    value = {'v': [1.0, 2.0, 3.0], 'i': [-1, 2]}
    for writer in (unpacked, packed):
        for reader in (unpacked, packed):
            decoded = pw.decode_message(reader, pw.encode_message(writer, value))
            assert decoded['v'].tolist() == value['v'] and decoded['i'].tolist() == value['i']
    # unknown varint, fixed64, length-delimited, fixed32 fields and a group are skipped
    unknown = (pw.encode_key(7, 0) + pw.encode_varint(5) + pw.encode_key(8, 1) + b'\x00' * 8
               + pw.encode_key(9, 2) + b'\x02ab' + pw.encode_key(10, 5) + b'\x00' * 4
               + pw.encode_key(11, 3) + pw.encode_key(1, 0) + b'\x01' + pw.encode_key(11, 4))
    decoded = pw.decode_message(packed, unknown + pw.encode_message(packed, value))
    assert decoded['v'].tolist() == value['v']


def test_decode_errors_name_message_field_and_offset():
    schema = pw.Message('Outer', [pw.Field(1, 'inner', 'message', message=CHILD), pw.Field(2, 'n', 'int32')])
    with pytest.raises(pw.ProtobufDecodeError, match=r'Outer: n \(field 2\) at offset 0: wire type 1'):
        pw.decode_message(schema, pw.encode_key(2, 1) + b'\x00' * 8)
    with pytest.raises(pw.ProtobufDecodeError, match=r'Outer\.inner: .*truncated'):
        pw.decode_message(schema, pw.encode_key(1, 2) + b'\x02' + pw.encode_key(1, 1) + b'\x00')
    with pytest.raises(pw.ProtobufDecodeError, match='runs past the end'):
        pw.decode_message(schema, pw.encode_key(1, 2) + b'\x05ab')
    with pytest.raises(pw.ProtobufDecodeError, match='truncated varint'):
        pw.decode_message(schema, b'\x10\x96')


def test_lenient_schemas_skip_fields_with_unexpected_wire_types():
    strict = pw.Message('S', [pw.Field(1, 'a', 'double'), pw.Field(2, 'b', 'int32'),
                              pw.Field(3, 'c', 'message', message=CHILD)])
    lenient = pw.Message('L', strict.fields, strict=False)
    data = (pw.encode_key(1, 0) + pw.encode_varint(3) + pw.encode_key(2, 0) + pw.encode_varint(7)
            + pw.encode_key(3, 2) + b'\x01\xff')
    with pytest.raises(pw.ProtobufDecodeError, match='wire type 0, expected 1'):
        pw.decode_message(strict, data)
    assert pw.decode_message(lenient, data) == {'b': 7, '_wire_mismatch': ['a', 'c']}


# ---------------------------------------------------------------------------------------------------------------
# Waymo Frame schema


def test_frame_schema_field_numbers():
    """The numbers this codec puts on the wire (see the frame_proto docstring for sources and confidence)."""
    def numbers(message):
        return {f.name: f.number for f in message.fields}
    assert numbers(frame_proto.FRAME) == {'context': 1, 'timestamp_micros': 2, 'pose': 3, 'images': 4, 'lasers': 5,
                                          'laser_labels': 6}
    assert numbers(frame_proto.CONTEXT) == {'name': 1, 'camera_calibrations': 2, 'laser_calibrations': 3, 'stats': 4}
    assert numbers(frame_proto.LASER_CALIBRATION) == {'name': 1, 'beam_inclinations': 2, 'beam_inclination_min': 3,
                                                      'beam_inclination_max': 4, 'extrinsic': 5}
    assert numbers(frame_proto.LASER_MESSAGE) == {'name': 1, 'ri_return1': 2, 'ri_return2': 3}
    assert numbers(frame_proto.RANGE_IMAGE) == {'range_image': 1, 'range_image_compressed': 2,
                                                'camera_projection_compressed': 3, 'range_image_pose_compressed': 4,
                                                'range_image_flow_compressed': 5, 'segmentation_label_compressed': 6}
    assert numbers(frame_proto.BOX) == {'center_x': 1, 'center_y': 2, 'center_z': 3, 'width': 4, 'length': 5,
                                        'height': 6, 'heading': 7}
    assert numbers(frame_proto.METADATA) == {'speed_x': 1, 'speed_y': 2, 'accel_x': 3, 'accel_y': 4, 'speed_z': 5,
                                             'accel_z': 6}
    assert numbers(frame_proto.LABEL) == {'box': 1, 'metadata': 2, 'type': 3, 'id': 4,
                                          'detection_difficulty_level': 5, 'tracking_difficulty_level': 6,
                                          'num_lidar_points_in_box': 7, 'num_top_lidar_points_in_box': 13}
    assert numbers(frame_proto.MATRIX_FLOAT) == {'data': 1, 'shape': 2}
    assert frame_proto.MATRIX_FLOAT.by_name['data'].packed and not frame_proto.TRANSFORM.by_name['transform'].packed
    assert frame_proto.LASER_NAMES.index('TOP') == 1 and frame_proto.LASER_NAMES.index('REAR') == 5
    assert frame_proto.WAYMO_CLASSES == ('unknown', 'Vehicle', 'Pedestrian', 'Sign', 'Cyclist')


def test_matrix_float_codec_and_proto2_transform_encoding():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.5
    np.testing.assert_array_equal(frame_proto.decode_matrix(frame_proto.encode_matrix(array)), array)
    ints = np.array([[0, -1], [7, 2 ** 31 - 1]], dtype=np.int32)
    np.testing.assert_array_equal(frame_proto.decode_matrix(frame_proto.encode_matrix(ints, 'int32'), 'int32'), ints)
    assert frame_proto.decode_matrix(b'') is None
    # proto2 `repeated double transform = 1;` is unpacked: 16 x (key 0x09 + 8 bytes)
    encoded = pw.encode_message(frame_proto.TRANSFORM, frame_proto.matrix_to_transform(np.eye(4)))
    assert len(encoded) == 16 * 9 and encoded[0] == 0x09
    with pytest.raises(pw.ProtobufDecodeError, match='do not fill shape'):
        bad = pw.encode_message(frame_proto.MATRIX_FLOAT, {'data': [1.0, 2.0], 'shape': {'dims': [3]}})
        frame_proto.decode_matrix(__import__('zlib').compress(bad))


# ---------------------------------------------------------------------------------------------------------------
# Cross-checks with real protobuf implementations (skipped where not installed)

_PROTO_TYPES = {'double': 1, 'float': 2, 'int64': 3, 'uint64': 4, 'int32': 5, 'fixed64': 6, 'fixed32': 7,
                'bool': 8, 'string': 9, 'message': 11, 'bytes': 12, 'uint32': 13, 'enum': 14, 'sfixed32': 15,
                'sfixed64': 16, 'sint32': 17, 'sint64': 18}


def _dynamic_classes(roots, package):
    """google.protobuf message classes built from our schemas (enums become int32 fields; proto2)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file_proto = descriptor_pb2.FileDescriptorProto(name=f'{package}.proto', package=package, syntax='proto2')
    seen = {}

    def add(schema):
        type_name = schema.name.replace('.', '_')
        if type_name in seen:
            return type_name
        seen[type_name] = schema
        message = file_proto.message_type.add(name=type_name)
        for field in schema.fields:
            proto_field = message.field.add(name=field.name, number=field.number,
                                            type=_PROTO_TYPES['int32' if field.kind == 'enum' else field.kind],
                                            label=3 if field.repeated else 1)
            if field.packed:
                proto_field.options.packed = True
            if field.kind == 'message':
                proto_field.type_name = f'.{package}.{add(field.schema)}'
        return type_name

    names = [add(schema) for schema in roots]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return [message_factory.GetMessageClass(pool.FindMessageTypeByName(f'{package}.{name}')) for name in names]


def test_wire_codec_against_google_protobuf():
    pytest.importorskip('google.protobuf')
    from google.protobuf import json_format

    (cls,) = _dynamic_classes([ALL_KINDS], 'pcdet_test_all')
    ours = pw.encode_message(ALL_KINDS, ALL_VALUES)
    parsed = cls.FromString(ours)
    assert parsed.SerializeToString(deterministic=True) == ours  # byte-identical canonical encoding
    assert parsed.f_sint64 == -2 ** 40 and parsed.f_enum == -2 and list(parsed.r_int32_packed) == [-1, 0, 300]
    assert json_format.MessageToDict(parsed)['fString'] == 'héllo'
    _assert_decoded_equal(pw.decode_message(ALL_KINDS, parsed.SerializeToString()), ALL_VALUES)


def test_synthetic_frame_bytes_are_canonical_protobuf():
    """A whole synthetic Frame: our encoder's bytes are what protobuf itself serializes for the same schema."""
    pytest.importorskip('google.protobuf')
    from pcdet.datasets.synthetic import waymo_writer

    (frame_cls,) = _dynamic_classes([frame_proto.FRAME], 'pcdet_test_waymo')
    config = waymo_writer.SyntheticWaymoConfig(root='unused', num_sequences=2, frames_per_sequence=1, top_columns=32,
                                               side_beams=4, side_columns=16, num_objects=6)
    sim = waymo_writer.simulate_sequence(waymo_writer.plan_sequences(config)[0], config)
    data = frame_proto.encode_frame(waymo_writer.build_frame(sim, 0).message)
    parsed = frame_cls.FromString(data)
    assert parsed.SerializeToString(deterministic=True) == data
    assert len(parsed.lasers) == 5 and parsed.context.name == sim.plan.name
    assert list(parsed.context.laser_calibrations[0].extrinsic.transform) == \
        frame_proto.decode_frame(data)['context']['laser_calibrations'][0]['extrinsic']['transform'].tolist()


def test_schema_matches_the_official_waymo_package():
    """Field numbers and types of every schema agree with waymo-open-dataset's generated classes, and a synthetic
    frame parses with them (runs only where the optional package is installed)."""
    pytest.importorskip('waymo_open_dataset')
    from waymo_open_dataset import dataset_pb2, label_pb2

    from pcdet.datasets.synthetic import waymo_writer

    official = {
        frame_proto.FRAME: dataset_pb2.Frame, frame_proto.CONTEXT: dataset_pb2.Context,
        frame_proto.STATS: dataset_pb2.Context.Stats, frame_proto.OBJECT_COUNT: dataset_pb2.Context.Stats.ObjectCount,
        frame_proto.CAMERA_CALIBRATION: dataset_pb2.CameraCalibration,
        frame_proto.LASER_CALIBRATION: dataset_pb2.LaserCalibration, frame_proto.TRANSFORM: dataset_pb2.Transform,
        frame_proto.LASER_MESSAGE: dataset_pb2.Laser, frame_proto.RANGE_IMAGE: dataset_pb2.RangeImage,
        frame_proto.CAMERA_IMAGE: dataset_pb2.CameraImage, frame_proto.VELOCITY: dataset_pb2.Velocity,
        frame_proto.MATRIX_FLOAT: dataset_pb2.MatrixFloat, frame_proto.MATRIX_INT32: dataset_pb2.MatrixInt32,
        frame_proto.MATRIX_SHAPE: dataset_pb2.MatrixShape, frame_proto.LABEL: label_pb2.Label,
        frame_proto.BOX: label_pb2.Label.Box, frame_proto.METADATA: label_pb2.Label.Metadata,
    }
    for schema, cls in official.items():
        fields = cls.DESCRIPTOR.fields_by_name
        for field in schema.fields:
            assert field.name in fields, f'{schema.name}.{field.name} not in {cls.DESCRIPTOR.full_name}'
            descriptor = fields[field.name]
            assert descriptor.number == field.number, f'{schema.name}.{field.name}'
            assert descriptor.type == _PROTO_TYPES[field.kind], f'{schema.name}.{field.name}'
            assert (descriptor.label == descriptor.LABEL_REPEATED) == field.repeated, f'{schema.name}.{field.name}'
    assert [dataset_pb2.LaserName.Name.Name(i) for i in range(6)] == list(frame_proto.LASER_NAMES)
    assert [label_pb2.Label.Type.Name(i) for i in range(5)] == list(frame_proto.LABEL_TYPES)

    config = waymo_writer.SyntheticWaymoConfig(root='unused', num_sequences=2, frames_per_sequence=1, top_columns=32,
                                               side_beams=4, side_columns=16, num_objects=6)
    sim = waymo_writer.simulate_sequence(waymo_writer.plan_sequences(config)[0], config)
    frame = waymo_writer.build_frame(sim, 0)
    parsed = dataset_pb2.Frame.FromString(frame_proto.encode_frame(frame.message))
    boxes = frame.truth['labels']['box']
    assert [[b.box.length, b.box.width] for b in parsed.laser_labels] == boxes[:, 3:5].tolist()
    assert parsed.SerializeToString(deterministic=True) == frame_proto.encode_frame(frame.message)


def test_importing_the_reader_is_cheap():
    """No TensorFlow / waymo package / protobuf, and numba only once a CRC is computed (torch comes with the parent
    `pcdet.datasets` package, not from here)."""
    code = ('import sys, pcdet.datasets.waymo as w; w.read_frames; import pcdet.datasets.waymo.frame_reader\n'
            'print(",".join(m for m in ("tensorflow", "waymo_open_dataset", "numba", "google.protobuf") '
            'if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ''
