"""Input checks against the manifest's `input` spec, before onnxruntime sees the data.

docs/design.md, "Errors": a wrong rank or shape, an unsafe dtype, NaN/inf and token ids out of
range each get their own message. numpy only.
"""

from __future__ import annotations

import numpy as np

from matryoshka.errors import DataError


class InputError(DataError):
    """An input that does not fit the exported graphs."""


def as_array(x) -> np.ndarray:
    """np.asarray(x), or InputError naming the row shapes when x is ragged (rows of different
    lengths) or otherwise not one array."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        try:
            rows = list(x)
        except TypeError:
            raise InputError(f"input of type {type(x).__name__} cannot be made one array "
                             f"({e})") from None
        shapes = []
        for row in rows[:8]:
            try:
                shapes.append(str(np.shape(row)))
            except (ValueError, TypeError):  # a row that is itself ragged
                shapes.append(f"ragged {type(row).__name__}")
        more = f", ... ({len(rows)} rows)" if len(rows) > 8 else ""
        raise InputError(f"input rows differ in shape ({', '.join(shapes)}{more}); every row "
                         "must have the same shape (pad token ids to one length, or pass "
                         "strings to a text export)") from None


def check_input(x, spec: dict, finite: bool = True) -> np.ndarray:
    """Return x as the dtype the graphs take, or raise InputError saying what is wrong.

    finite=False leaves out the pass over the data that looks for NaN and inf: for a caller
    that learns it from the graph itself (cascade.onnx's `row_check`) and then raises
    `nonfinite_error`.

    >>> check_input(np.zeros((2, 8, 8), np.uint8), {"dtype": "float32",
    ...     "shape": ["batch", 8, 8], "kind": "image"}).dtype
    dtype('float32')
    """
    x = as_array(x)
    shape = spec["shape"]
    want = np.dtype(spec["dtype"])
    kind = x.dtype.kind  # b: bool, i/u: integers, f: floats, c: complex; dtype.kind is cheap
    if kind not in "biufc":
        raise InputError(f"input dtype {x.dtype} cannot be converted to {want}")
    if x.ndim != len(shape):
        hint = " (one sample? add a batch axis: x[None])" if x.ndim == len(shape) - 1 else ""
        raise InputError(f"input must have rank {len(shape)} with shape "
                         f"{_fmt(shape)}; got shape {x.shape}{hint}")
    for axis, (got, expected) in enumerate(zip(x.shape, shape)):
        if isinstance(expected, int) and got != expected:
            raise InputError(f"input axis {axis} must be {expected} (shape {_fmt(shape)}); "
                             f"got shape {x.shape}")
    if x.ndim >= 2 and x.shape[1] == 0 and spec.get("kind") in ("tokens", "text"):
        raise InputError("sequences must hold at least one token")
    if want.kind == "f":
        if kind == "c":
            raise InputError(f"input dtype {x.dtype} cannot be converted to {want} safely")
        # Check after the cast: a finite float64 such as 1e300 becomes inf in float32.
        with np.errstate(over="ignore", invalid="ignore"):
            cast = np.ascontiguousarray(x, dtype=want)
        if finite and not np.isfinite(cast).all():
            raise nonfinite_error(int((~np.isfinite(cast)).reshape(len(cast), -1)
                                      .any(axis=1).sum()))
        return cast
    # integer token ids
    if kind not in "iu" or not np.can_cast(x.dtype, want, "safe"):
        raise InputError(f"token ids must be integers that fit {want}; got dtype {x.dtype}")
    if spec.get("max_len") and x.ndim >= 2 and x.shape[1] > spec["max_len"]:
        raise InputError(f"sequence length {x.shape[1]} exceeds max_len {spec['max_len']}")
    vocab = spec.get("vocab_size")
    if vocab and x.size and (x.min() < 0 or x.max() >= vocab):
        raise InputError(f"token ids must be in [0, {vocab}); got ids from {int(x.min())} "
                         f"to {int(x.max())}")
    if spec.get("kind") == "text" and x.size:
        empty = np.flatnonzero((x == spec.get("pad_id", 0)).all(axis=1))
        if len(empty):
            raise InputError(f"{len(empty)} row(s) hold only padding (first: row {empty[0]}); "
                             "every text needs at least one token")
    return np.ascontiguousarray(x, dtype=want)


def nonfinite_error(rows: int) -> InputError:
    """The error for an input with NaN or inf in `rows` rows (after its cast to float32)."""
    return InputError(f"input holds NaN or inf in {rows} row(s) (after the conversion to "
                      "float32, whose largest value is about 3.4e38)")


def _fmt(shape: list) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"
