"""Minimal deterministic PNG encoder (8-bit greyscale) for the placeholder map masks; no imaging library."""
import struct
import zlib

import numpy as np


def encode_gray_png(image):
    """(H, W) uint8 array -> PNG file bytes (colour type 0, bit depth 8, no interlace, filter 0 per row)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f'expected a (H, W) greyscale image, got shape {image.shape}')
    height, width = image.shape
    raw = b''.join(b'\x00' + row.tobytes() for row in image)
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) + _chunk(b'IDAT', zlib.compress(raw, 9)) + \
        _chunk(b'IEND', b'')


def _chunk(tag, data):
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)
