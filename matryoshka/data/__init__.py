"""Data sets as numpy arrays: the built-in demo (handwritten digits) or a user's .npz.

A data set is {"train": (x, y), "val": (x, y), "test": (x, y)} with x the raw input that the
exported graph will take. Needs numpy only, so calibration and bench can use it without torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from matryoshka.errors import DataError, not_a_file

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{p}_{s}" for s in SPLITS for p in ("x", "y"))
DEMO_FILE = Path(__file__).with_name("digits.npz")

Dataset = dict[str, tuple[np.ndarray, np.ndarray]]


def load_dataset(name_or_path: str | Path) -> Dataset:
    """Load "demo" or a .npz with x_train, y_train, x_val, y_val, x_test, y_test.

    >>> data = load_dataset("demo")
    >>> data["train"][0].shape[1:], len(data["val"][0]) >= 300
    ((8, 8), True)
    """
    path = DEMO_FILE if str(name_or_path) == "demo" else Path(name_or_path)
    if not path.is_file():
        raise not_a_file(path, "data file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; a data file "
                                f"needs {', '.join(KEYS)}")
            data = {s: (f[f"x_{s}"], f[f"y_{s}"]) for s in SPLITS}
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    for s, (x, y) in data.items():
        _check_split(path, s, x, y)
    shapes = {x.shape[1:] for x, _ in data.values()}
    if len(shapes) != 1:
        raise DataError(f"{path}: the splits have different sample shapes {sorted(shapes)}")
    return data


def _check_split(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{path}: x_{split} must be a non-empty array of samples, got shape "
                        f"{x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{path}: y_{split} must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise DataError(f"{path}: y_{split} must hold non-negative integer class labels")
    if not (np.issubdtype(x.dtype, np.number)):
        raise DataError(f"{path}: x_{split} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{path}: x_{split} holds NaN or inf")
