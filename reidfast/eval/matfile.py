"""Reading the numeric arrays of a MATLAB Level 5 MAT-file (what ``scipy.io.savemat`` and MATLAB's ``save -v7``
write, e.g. DG-Net's ``pytorch_result.mat``), without scipy.

The layout, from MathWorks' "MAT-File Format" document: a 128-byte header (text, subsystem offset, version 0x0100,
endian indicator "IM" for little-endian), then data elements. Each element is an 8-byte tag (uint32 type, uint32
byte count) and its data padded to 8 bytes, or, when the tag's upper 16 bits are non-zero, a "small element": type in
the low 16 bits, count in the high 16, data in the next 4 bytes. A variable is an miMATRIX element holding array
flags (class in the low byte, complex flag 0x0800), dimensions (int32), a name (int8) and the real part, stored in
column-major order in any numeric type (MATLAB may narrow the storage type: the class says what to convert to).
miCOMPRESSED elements hold one zlib-compressed element.

Read: real numeric and logical arrays of any rank. Skipped: characters, cells, structs, objects, sparse and complex
arrays (feature files do not need them). Refused with a MatFileError: big-endian files and v7.3 files (HDF5).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

MI_INT8, MI_UINT32, MI_INT32, MI_MATRIX, MI_COMPRESSED = 1, 6, 5, 14, 15
# storage types of numeric data
MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# array classes that hold numbers, and their dtypes
MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
FLAG_COMPLEX, FLAG_LOGICAL = 0x0800, 0x0200


class MatFileError(ValueError):
    """Not a MAT-file this reader handles; the message says why."""


def read_mat(data: bytes) -> dict[str, np.ndarray]:
    """The real numeric and logical variables of a Level 5 MAT-file's bytes, by name."""
    if len(data) < 128:
        raise MatFileError(f"{len(data)} bytes: shorter than a MAT-file's 128-byte header")
    if data[:19] == b"MATLAB 7.3 MAT-file" or data[128:132] == b"\x89HDF":
        raise MatFileError("a MATLAB v7.3 (HDF5) MAT-file: save with -v7, or as .npz")
    if not data.startswith(b"MATLAB 5.0 MAT-file"):
        raise MatFileError("not a MATLAB 5.0 MAT-file (its header text does not start with 'MATLAB 5.0 MAT-file')")
    endian = data[126:128]
    if endian == b"MI":
        raise MatFileError("a big-endian MAT-file: not supported; save it on a little-endian machine or as .npz")
    if endian != b"IM":
        raise MatFileError(f"unknown endian indicator {endian!r} at byte 126")
    out = {}
    for kind, body in _elements(data, 128):
        if kind == MI_COMPRESSED:
            kind, body = next(_elements(zlib.decompress(body), 0), (None, b""))
        if kind == MI_MATRIX:
            variable = _matrix(body)
            if variable is not None:
                out[variable[0]] = variable[1]
    return out


def _elements(data: bytes, pos: int):
    """(type, bytes) of each data element from pos to the end."""
    while pos + 8 <= len(data):
        kind, count = struct.unpack_from("<II", data, pos)
        if kind >> 16:  # small element: 2-byte type, 2-byte count, data in the tag's second word
            kind, count = kind & 0xFFFF, kind >> 16
            if count > 4:
                raise MatFileError(f"byte {pos}: a small data element of {count} bytes (at most 4)")
            yield kind, data[pos + 4:pos + 4 + count]
            pos += 8
            continue
        end = pos + 8 + count
        if end > len(data):
            raise MatFileError(f"byte {pos}: a data element of {count} bytes runs past the end (truncated file?)")
        yield kind, data[pos + 8:end]
        # compressed elements are not padded; the others end on an 8-byte boundary
        pos = end if kind == MI_COMPRESSED else end + (-count % 8)
    if pos < len(data):
        raise MatFileError(f"byte {pos}: {len(data) - pos} bytes left, too few for a data element (truncated file?)")


def _matrix(body: bytes):
    """(name, array) of an miMATRIX element's contents, or None for what this reader skips."""
    parts = _elements(body, 0)
    try:
        (flags_type, flags), (dims_type, dims), (name_type, name) = next(parts), next(parts), next(parts)
    except StopIteration:
        return None  # an empty matrix element (an empty cell's slot)
    if flags_type != MI_UINT32 or dims_type != MI_INT32 or name_type != MI_INT8:
        raise MatFileError("an array whose flags, dimensions or name are not stored as uint32, int32, int8")
    flags = struct.unpack_from("<I", flags)[0]
    mx_class = flags & 0xFF
    if mx_class not in MX_DTYPES or flags & FLAG_COMPLEX:
        return None
    shape = tuple(int(d) for d in np.frombuffer(dims, "<i4"))
    real_type, real = next(parts, (None, b""))
    if real_type not in MI_DTYPES:
        raise MatFileError(f"array {name.decode('latin-1')!r}: numeric data of unknown storage type {real_type}")
    values = np.frombuffer(real, "<" + MI_DTYPES[real_type])
    if values.size != int(np.prod(shape)):
        raise MatFileError(f"array {name.decode('latin-1')!r}: {values.size} values for dimensions {shape}")
    dtype = bool if flags & FLAG_LOGICAL else np.dtype(MX_DTYPES[mx_class])
    return name.decode("latin-1"), values.astype(dtype).reshape(shape, order="F")
