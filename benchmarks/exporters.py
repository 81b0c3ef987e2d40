"""TorchScript vs dynamo exporter for one level: export time, opset, node count, ORT speed.

    python benchmarks/exporters.py [--checkpoint artifacts/demo/checkpoint] [--level 512]

Both graphs are simplified with the same onnxsim settings as mexport, then timed in one run,
interleaved round by round, at batch 32 on the CPU provider. This is the measurement behind
docs/internals.md, "The exporter: why TorchScript".
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import torch

from matryoshka.exporter.graph import PORTABLE_SKIPS
from matryoshka.model import extract_level
from matryoshka.model.checkpoint import load_checkpoint


def export(module, path: Path, dynamo: bool) -> float:
    x = torch.zeros(2, 8, 8)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), str(path), input_names=["x"],
                              output_names=["logits"], opset_version=17, dynamo=True,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(module, (x,), str(path), input_names=["x"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    graph, _ = onnxsim.simplify(onnx.load(str(path)), skipped_optimizers=list(PORTABLE_SKIPS))
    onnx.save(graph, str(path))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="artifacts/demo/checkpoint")
    ap.add_argument("--level", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    model, _ = load_checkpoint(args.checkpoint)
    small = extract_level(model, args.level).eval()
    tmp = Path(tempfile.mkdtemp())
    sessions, xb = {}, np.random.default_rng(0).uniform(0, 16, (32, 8, 8)).astype(np.float32)
    for name, dynamo in (("torchscript", False), ("dynamo", True)):
        path = tmp / f"{name}.onnx"
        seconds = export(small, path, dynamo)
        g = onnx.load(str(path))
        ops = Counter(n.op_type for n in g.graph.node)
        print(f"{name}: export+onnxsim {seconds:.2f} s, opset {g.opset_import[0].version}, "
              f"{len(g.graph.node)} nodes {dict(ops)}")
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    times = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            for _ in range(3):
                s.run(None, {"x": xb})
            for _ in range(30):
                t0 = time.perf_counter()
                s.run(None, {"x": xb})
                times[name].append(time.perf_counter() - t0)
    for name, v in times.items():
        print(f"{name}: ORT p50 at batch 32 {np.median(v) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
