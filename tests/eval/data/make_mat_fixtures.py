"""Writes the MAT-file fixtures of tests/eval/test_matfile.py with scipy (the reference writer; reidfast reads them
without it): python tests/eval/data/make_mat_fixtures.py, with scipy installed. The arrays are fixture_arrays()."""
from pathlib import Path

import numpy as np


def fixture_arrays() -> dict:
    """A DG-Net-style feature file (labels and cameras as (1, N) rows, distractor ids -1 and 0), plus arrays of
    other classes and ranks to check storage types and column-major order."""
    return {
        "query_f": (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 7,
        "gallery_f": np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4),
        "query_label": np.array([[7, 12, 3]], dtype=np.int64),
        "gallery_label": np.array([[7, -1, 0, 12, 3]], dtype=np.int64),
        "query_cam": np.array([[1, 2, 6]], dtype=np.int64),
        "gallery_cam": np.array([[2, 1, 1, 3, 6]], dtype=np.int64),
        "cube": np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 0.5,
        "small_ints": np.array([[-3, 0, 250]], dtype=np.int16),
        "flags": np.array([[True, False, True]]),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def skipped_variables() -> dict:
    """Variables a feature reader does not need: a string, a struct, a cell, a complex array."""
    return {"note": "made by scipy", "meta": {"a": 1.0}, "names": np.array(["x", "yz"], dtype=object),
            "z": np.array([[1 + 2j]])}


if __name__ == "__main__":
    import scipy.io
    here = Path(__file__).parent
    everything = {**fixture_arrays(), **skipped_variables()}
    scipy.io.savemat(here / "features.mat", everything)
    scipy.io.savemat(here / "features_compressed.mat", everything, do_compression=True)
    print("wrote", here / "features.mat", here / "features_compressed.mat")
