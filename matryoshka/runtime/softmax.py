"""softmax(z / T) through onnxruntime's own Div and Softmax kernels (package data softmax.onnx).

docs/design.md, "The cascade as one graph": numpy's exp differs from onnxruntime's in the last bit
on about 40% of float32 inputs, so the levels engine and calibration's simulation run the very
kernels that cascade.onnx runs, and both engines give bit-identical probabilities.
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np
import onnxruntime as ort

GRAPH = "softmax.onnx"  # written by scripts/make_package_graphs.py from the exporter's builder
_session: ort.InferenceSession | None = None
_lock = threading.Lock()


def _get() -> ort.InferenceSession:
    global _session
    if _session is None:
        with _lock:
            if _session is None:
                data = resources.files("matryoshka.runtime").joinpath(GRAPH).read_bytes()
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1  # a few rows of a few classes: one thread
                _session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return _session


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over axis 1, as a new float32 array.

    >>> softmax(np.array([[0.0, 0.0]]))
    array([[0.5, 0.5]], dtype=float32)
    """
    z = np.ascontiguousarray(logits, dtype=np.float32)
    if z.size == 0:
        return z.copy()
    t = np.array([temperature], dtype=np.float32)
    return _get().run(None, {"z": z, "T": t})[0]
