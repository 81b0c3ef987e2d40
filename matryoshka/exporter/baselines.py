"""Baselines for `matryoshka bench`, timed side by side with the sliced graphs (alternating
blocks of calls in the same run).

- torch: the PyTorch eager nested forward model(x, level=d), where torch is installed.
- padded: the obvious alternative to slicing, the full-width graph with every weight outside
  level d's prefix set to zero. It computes at full width whatever d is, which is the point.
These need torch or onnx, so they live here and not in the runtime.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from matryoshka.runtime.providers import session_options


def torch_baseline(checkpoint: str | Path, threads: int | None):
    """A timer of the eager nested forward, or a string saying why there is none."""
    try:
        import torch
    except ImportError:
        return "torch baseline skipped: torch is not installed"
    from matryoshka.errors import MatryoshkaError
    from matryoshka.model.checkpoint import load_checkpoint

    try:
        model, _ = load_checkpoint(checkpoint)
    except MatryoshkaError as e:
        return f"torch baseline skipped: {e}"
    if threads is not None:
        torch.set_num_threads(threads)

    def prepare(dim: int, x: np.ndarray):
        xt = torch.from_numpy(np.ascontiguousarray(x))

        def call():
            with torch.inference_mode():
                return model(xt, level=dim)

        return call

    return prepare


def masked_full_graph(full_path: Path, manifest: dict, dim: int, out: Path) -> Path:
    """Write the full-width graph with every weight outside level dim's prefix zeroed."""
    import onnx
    from onnx import numpy_helper

    cfg = manifest["model"]
    d_model, d_mid = cfg["d_model"], cfg["d_mid"]
    m_dim = d_mid * dim // d_model if cfg["ffn_nesting"] == "proportional" else d_mid
    graph = onnx.load(str(full_path))
    for init in graph.graph.initializer:
        w = numpy_helper.to_array(init)
        if not np.issubdtype(w.dtype, np.floating):
            continue
        keep = tuple(slice(0, dim) if s == d_model else
                     slice(0, m_dim) if s == d_mid and d_mid != d_model else slice(None)
                     for s in w.shape)
        masked = np.zeros_like(w)
        masked[keep] = w[keep]
        init.CopyFrom(numpy_helper.from_array(masked, init.name))
    onnx.save(graph, str(out))
    return out


def padded_baseline(folder: str | Path, manifest: dict, providers: list[str],
                    threads: int | None):
    """A timer of the masked full-width graph per level, or a string saying why there is none."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return "padded baseline skipped: the onnx package is not installed"
    folder = Path(folder)
    full = folder / manifest["levels"][-1]["file"]
    tmp = Path(tempfile.mkdtemp(prefix="matryoshka-padded-"))
    sessions: dict[int, object] = {}

    def prepare(dim: int, x: np.ndarray):
        if dim not in sessions:
            path = masked_full_graph(full, manifest, dim, tmp / f"padded-{dim:04d}.onnx")
            sessions[dim] = ort.InferenceSession(str(path), session_options(threads),
                                                 providers=providers)
        name, session = manifest["input"]["name"], sessions[dim]
        return lambda: session.run(None, {name: x})

    prepare.cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)
    return prepare
