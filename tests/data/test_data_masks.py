import logging

import numpy as np
import pytest
from PIL import Image

from reidfast.data import MaskNotFoundError, MaskReader


def write(path, array, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def test_parallel_folder_sibling_and_value_conventions(tmp_path):
    image = write(tmp_path / "query" / "0001_c1s1_000001_01.jpg", np.zeros((8, 4, 3)), "RGB")
    mask = np.zeros((8, 4))
    mask[2:6, 1:3] = 255
    write(tmp_path / "masks" / "query" / "0001_c1s1_000001_01.png", mask)
    got = MaskReader(tmp_path / "masks").read(image)
    assert got.dtype == np.uint8 and got.sum() == 8 and got[3, 1] == 1
    assert MaskReader(tmp_path / "masks").read(image, size=(16, 8)).sum() == 32  # nearest resize
    # next to the image, stored as 0/1
    write(tmp_path / "query" / "0001_c1s1_000001_01_mask.png", mask / 255)
    assert MaskReader().read(image).sum() == 8


def test_missing_mask_error_or_logged_all_ones(tmp_path, caplog):
    image = write(tmp_path / "query" / "a.jpg", np.zeros((8, 4, 3)), "RGB")
    with pytest.raises(MaskNotFoundError, match="a_mask.png"):
        MaskReader(tmp_path / "masks").read(image)
    reader = MaskReader(tmp_path / "masks", missing="ones")
    with caplog.at_level(logging.WARNING):
        ones = reader.read(image)
        reader.read(image)
    assert ones.shape == (8, 4) and ones.all()
    assert caplog.text.count("no mask for") == 1  # warned once, not per image
    with pytest.raises(ValueError, match="missing"):
        MaskReader(missing="zeros")
