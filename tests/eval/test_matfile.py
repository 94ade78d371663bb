"""reidfast.eval.matfile against MAT-files written by scipy.io.savemat (tests/eval/data, made by
make_mat_fixtures.py), and the storage rules of MathWorks' MAT-file format that scipy does not exercise."""
import struct
from pathlib import Path

import numpy as np
import pytest

from reidfast.eval.matfile import MatFileError, read_mat
from tests.eval.data.make_mat_fixtures import fixture_arrays, skipped_variables

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["features.mat", "features_compressed.mat"])
def test_reads_what_scipy_wrote(name):
    got = read_mat((DATA / name).read_bytes())
    want = fixture_arrays()
    assert sorted(got) == sorted(want)  # strings, structs, cells and complex arrays are skipped
    assert not set(got) & set(skipped_variables())
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert np.array_equal(got[key], value), key  # column-major storage: the 2x3x4 cube checks the order
        assert got[key].flags.writeable, key


def _element(kind: int, payload: bytes) -> bytes:
    """A data element: 8-byte tag, then the payload padded to 8 bytes."""
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _small_element(kind: int, payload: bytes) -> bytes:
    """A small data element: type and size in the tag's first word, up to 4 payload bytes in its second."""
    return struct.pack("<HH", kind, len(payload)) + payload.ljust(4, b"\0")


def _header(endian: bytes = b"IM") -> bytes:
    return b"MATLAB 5.0 MAT-file, written by hand".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + endian


def test_narrowed_storage_is_converted_to_the_class():
    # MATLAB stores a double array of small integers as uint8 data (storage type miUINT8 = 2) under class
    # mxDOUBLE (6); the name "ab" fits a small element.
    flags = _element(6, struct.pack("<II", 6, 0))
    dims = _element(5, struct.pack("<ii", 2, 2))
    data = _element(2, bytes([1, 2, 3, 4]))  # column-major: [[1, 3], [2, 4]]
    matrix = _element(14, flags + dims + _small_element(1, b"ab") + data)
    got = read_mat(_header() + matrix)
    assert got["ab"].dtype == np.float64
    assert got["ab"].tolist() == [[1.0, 3.0], [2.0, 4.0]]


def test_files_it_cannot_read_are_named_errors():
    fixture = (DATA / "features.mat").read_bytes()
    with pytest.raises(MatFileError, match="v7.3"):
        read_mat(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" "))
    with pytest.raises(MatFileError, match="big-endian"):
        read_mat(_header(b"MI"))
    with pytest.raises(MatFileError, match="not a MATLAB 5.0 MAT-file"):
        read_mat(b"\0" * 200)
    with pytest.raises(MatFileError, match="shorter than"):
        read_mat(fixture[:100])
    with pytest.raises(MatFileError, match="runs past the end"):
        read_mat(fixture[:750])  # inside the variable that starts at byte 696
    with pytest.raises(MatFileError, match="too few for a data element"):
        read_mat(fixture[:700])  # inside its tag
