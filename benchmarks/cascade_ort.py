"""cascade.ort (onnxruntime's mobile format) against cascade.onnx: size, answers and speed.

    python benchmarks/cascade_ort.py [EXPORT_DIR] [--variant fp32] [--batches 1,32]
        [--iters 40] [--rounds 8] [--threads 2] [--json OUT]

The export's cascade graph of --variant is converted twice, as `mexport --ort` does it
(matryoshka.folder.cascades.write_ort):
  shared  every optimization but ConstantFolding: each branch slices the stored weights
          when it runs, so they are stored once (what mexport and bundle write)
  folded  every optimization, as onnxruntime's converter does by default: each branch's
          Slices folded into a copy of its own
Each file's size against cascade.onnx; labels, levels and probs of both against cascade.onnx
on every test row at the export's calibrated thresholds; and the time of one session.run at
each --batches size on the first test rows, the three sessions timed side by side in one
round-robin loop (runtime.timing.time_many), medians. An uncalibrated export sends every row
to the largest level.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.data.source import for_export
from matryoshka.folder.cascades import write_ort
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import read_manifest, read_named
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.runtime import Runtime
from matryoshka.runtime.timing import device_name, time_many


def run_all(session: ort.InferenceSession, x: np.ndarray, chunk: int = 64) -> dict:
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, {"x": x[i:i + chunk]}) for i in range(0, len(x), chunk)]
    return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", nargs="?", default="artifacts/minilm-demo/export")
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--data", default=None)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    folder = Path(a.export)
    m = read_manifest(folder)
    entry = m["cascade"][a.variant]
    dataset, _ = for_export(folder, m, a.data)
    x = check_input(dataset["test"][0], m["input"])
    out = {"device": device_name(), "export": str(folder), "variant": a.variant,
           "calibrated": entry["calibrated"], "rows": int(len(x))}
    with tempfile.TemporaryDirectory(prefix="cascade-ort-") as tmp:
        src = Path(tmp) / "cascade.onnx"
        src.write_bytes(read_named(folder, entry))
        files = {"onnx": src, "shared": Path(tmp) / "shared.ort",
                 "folded": Path(tmp) / "folded.ort"}
        write_ort(src, files["shared"])
        write_ort(src, files["folded"], fold=True)
        # weight8: its DequantizeLinear folded at load, as the runtime decides from the manifest
        rt = Runtime.from_manifest(folder, m, device="cpu", preload=False, variant=a.variant)
        fold = any(rt.fold_dequantize(level) for level in entry["levels"])
        sessions = {k: ort.InferenceSession(str(p), session_options(a.threads, fold),
                                            providers=["CPUExecutionProvider"])
                    for k, p in files.items()}
        out["bytes"] = {k: p.stat().st_size for k, p in files.items()}
        ref = run_all(sessions["onnx"], x)
        out["answers"] = {}
        for k in ("shared", "folded"):
            got = run_all(sessions[k], x)
            out["answers"][k] = {
                "labels_equal": bool(np.array_equal(got["labels"], ref["labels"])),
                "levels_equal": bool(np.array_equal(got["level"], ref["level"])),
                "max_probs_diff": float(np.abs(got["probs"] - ref["probs"]).max())}
        out["p50_ms"] = {}
        for b in (int(v) for v in a.batches.split(",")):
            xb = x[:b]
            calls = {k: (lambda s=s, xb=xb: s.run(None, {"x": xb})) for k, s in sessions.items()}
            t = time_many(calls, warmup=3, iters=a.iters, rounds=a.rounds)
            out["p50_ms"][str(b)] = {k: v["p50_ms"] for k, v in t.items()}
    state = "calibrated" if out["calibrated"] else "uncalibrated"
    print(f"{out['device']}: {folder} {a.variant} cascade ({state}), {out['rows']} test rows")
    base = out["bytes"]["onnx"]
    print(f"{'file':<8} {'MB':>8} {'x onnx':>7} {'labels':>7} {'levels':>7} {'max|dp|':>9}"
          + "".join(f" {'b' + b + ' ms':>9}" for b in out["p50_ms"]))
    for k in ("onnx", "shared", "folded"):
        ans = out["answers"].get(k, {"labels_equal": True, "levels_equal": True,
                                     "max_probs_diff": 0.0})
        print(f"{k:<8} {out['bytes'][k] / 1e6:8.2f} {out['bytes'][k] / base:7.3f} "
              f"{str(ans['labels_equal']):>7} {str(ans['levels_equal']):>7} "
              f"{ans['max_probs_diff']:9.1e}"
              + "".join(f" {t[k]:9.2f}" for t in out["p50_ms"].values()))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
