"""Parity of an exported graph with the torch nested forward; a miss fails the export.

docs/design.md, "Conventions": |ort - torch| <= atol + rtol * |torch| everywhere, on real inputs,
at the full sample count, at batch 1 and at an odd batch size. Optimum's exporter only warns
on a miss; ours raises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from matryoshka.errors import ValidationError
from matryoshka.exporter.graph import INPUT
from matryoshka.model import Level, MatryoshkaTransformer

ODD_BATCH = 7


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_graph(session: ort.InferenceSession, x: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


@torch.no_grad()
def torch_logits(model: MatryoshkaTransformer, x: np.ndarray, level: Level,
                 batch: int = 512) -> np.ndarray:
    xt = torch.as_tensor(x)
    return torch.cat([model(xt[i:i + batch], level=level)
                      for i in range(0, len(xt), batch)]).numpy()


def compare(ort_out: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict:
    """Max absolute and relative error, and whether every element is within tolerance."""
    diff = np.abs(ort_out.astype(np.float64) - ref.astype(np.float64))
    scale = np.abs(ref.astype(np.float64))
    rel = diff / np.maximum(scale, 1e-12)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float(rel.max(initial=0.0)),
        "ok": bool((diff <= atol + rtol * scale).all()),
    }


def validate_level(model: MatryoshkaTransformer, level: Level, path: Path, x: np.ndarray,
                   atol: float, rtol: float,
                   name: str | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Check the graph at `path` against model(x, level=level) (a width or a Spec; `name`
    names it in the error).

    Returns the parity record for the manifest and both logit arrays (ORT, torch) on x.
    Raises ValidationError on any miss.
    """
    if len(x) < 64:
        raise ValidationError(f"validation needs at least 64 real samples, got {len(x)}")
    session = cpu_session(path)
    ref = torch_logits(model, x, level)
    got = run_graph(session, x)
    worst = compare(got, ref, atol, rtol)
    for n in (1, ODD_BATCH):  # the batch axis must really be dynamic
        part = compare(session.run(None, {INPUT: x[:n]})[0], ref[:n], atol, rtol)
        worst = {"max_abs": max(worst["max_abs"], part["max_abs"]),
                 "max_rel": max(worst["max_rel"], part["max_rel"]),
                 "ok": worst["ok"] and part["ok"]}
    parity = {"max_abs": worst["max_abs"], "max_rel": worst["max_rel"], "atol": atol,
              "rtol": rtol, "n": int(len(x)), "batches": [int(len(x)), 1, ODD_BATCH]}
    if not worst["ok"]:
        raise ValidationError(
            f"level {name or level}: ONNX output differs from torch beyond atol={atol:g} + "
            f"rtol={rtol:g}*|torch| (max abs error {worst['max_abs']:.3g}); the export is not "
            "written")
    return parity, got, ref
