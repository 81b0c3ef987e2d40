import numpy as np
import pytest

from matryoshka.data import KEYS, load_dataset
from matryoshka.errors import DataError, MissingArtifactError


def test_demo_is_real_digits_with_a_fixed_split(demo_data):
    sizes = {s: len(x) for s, (x, _) in demo_data.items()}
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    x, y = demo_data["train"]
    assert x.shape[1:] == (8, 8) and x.dtype == np.uint8 and x.max() == 16
    assert set(np.unique(y)) == set(range(10))
    again = load_dataset("demo")
    assert np.array_equal(again["test"][0], demo_data["test"][0])


def test_missing_file(tmp_path):
    with pytest.raises(MissingArtifactError, match="data file not found"):
        load_dataset(tmp_path / "nope.npz")


def test_missing_keys_are_named(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((3, 8, 8)), y_train=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match="lacks the key.*x_val, y_val, x_test, y_test"):
        load_dataset(p)


def test_mismatched_labels_and_nan(tmp_path):
    arrays = {k: (np.zeros((4, 8, 8), np.float32) if k[0] == "x" else np.zeros(4, np.int64))
              for k in KEYS}
    p = tmp_path / "d.npz"
    np.savez(p, **{**arrays, "y_val": np.zeros(3, np.int64)})
    with pytest.raises(DataError, match=r"y_val must have shape \(4,\)"):
        load_dataset(p)
    bad = arrays["x_test"].copy()
    bad[0, 0, 0] = np.nan
    np.savez(p, **{**arrays, "x_test": bad})
    with pytest.raises(DataError, match="x_test holds NaN"):
        load_dataset(p)


def test_not_an_npz(tmp_path):
    p = tmp_path / "d.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(p)
