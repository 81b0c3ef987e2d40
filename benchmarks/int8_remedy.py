"""What INT8 weights that never saturate cost: every level of an export in fp32 and, per
method, in onnxruntime's default 8-bit INT8 (whose u8 x s8 pair sums saturate on x86 without
VNNI), its 7-bit `reduce_range`, matryoshka's pair-fitted weights and uint8 weights (U8U8),
timed side by side, scored on the test split and checked against exact integer arithmetic on
this CPU.

    python benchmarks/int8_remedy.py artifacts/demo/export [--methods dynamic,dynamic-pc,static]
        [--weights 8bit,7bit,pairs,u8u8] [--levels 64,512] [--batches 1,32] [--iters 200]
        [--rounds 10] [--threads 1] [--json OUT] [--no-time]
    bash scripts/avx2.sh .venv/bin/python benchmarks/int8_remedy.py EXPORT --no-time

Per level and batch, fp32 and each method's 8-bit and 7-bit graphs run in one loop of
--rounds round-robin blocks (runtime.timing.time_many, the first contender rotating every
round) on the first rows of the test split; the table gives p50 ms and fp32/contender (a
speed-up when above 1). Accuracy is on the whole test split, as this CPU's kernels give it
and as onnxruntime's exact integer kernels do (the answers of a CPU that accumulates in
int32: VNNI, AMX, ARM, wasm); "max |d|" and "mean |d|" are the
logits' distance from the graph's exact twin (int8_check.run_three) on it, "kernels" their
distance from the same graph on onnxruntime's exact U8U8 kernels, and "check" whether
int8_check's checks pass. Under an emulator (scripts/avx2.sh) timings
mean nothing: pass --no-time there, for the accuracy and the check on an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matryoshka import quantize  # noqa: E402
from matryoshka.data.source import for_export  # noqa: E402
from matryoshka.errors import ValidationError  # noqa: E402
from matryoshka.int8_check import (  # noqa: E402
    compare_kernels,
    compare_logits,
    pair_sums,
    run_three,
)
from matryoshka.runtime.cpu import describe  # noqa: E402
from matryoshka.runtime.inputs import check_input  # noqa: E402
from matryoshka.runtime.manifest import level_name, read_manifest  # noqa: E402
from matryoshka.runtime.providers import session_options  # noqa: E402
from matryoshka.runtime.timing import device_name, time_many  # noqa: E402

METHODS = ("dynamic", "dynamic-pc", "static")


# onnxruntime's default 8-bit; its 7-bit reduce_range; matryoshka's (each scale from the
# largest pair sum, pair_scale.py); uint8 weights with a zero point (onnxruntime's U8U8)
WEIGHTS = ("8bit", "7bit", "pairs", "u8u8")


def make(src: Path, dst: Path, method: str, weights: str, x_cal: np.ndarray,
         name: str) -> Path:
    """quantize_level with the weights of kind `weights` (WEIGHTS)."""
    from onnxruntime.quantization import QuantType

    old = quantize.FIT_PAIRS, quantize.REDUCE_RANGE, quantize.WEIGHT_TYPE
    quantize.FIT_PAIRS = weights == "pairs"
    quantize.REDUCE_RANGE = weights == "7bit"
    quantize.WEIGHT_TYPE = QuantType.QUInt8 if weights == "u8u8" else QuantType.QInt8
    try:
        quantize.quantize_level(src, dst, method, (name, x_cal) if method == "static" else None)
    finally:
        quantize.FIT_PAIRS, quantize.REDUCE_RANGE, quantize.WEIGHT_TYPE = old
    return dst


def score(path: Path, x: np.ndarray, y: np.ndarray, name: str) -> dict:
    model = onnx.load(str(path))
    fast, exact, twin = run_three(model, x)
    out = {"accuracy": float((fast.argmax(1) == y).mean()),
           "exact_accuracy": float((exact.argmax(1) == y).mean()),
           "kernel_max_abs": float(np.abs(fast - exact).max()),
           "max_abs": float(np.abs(fast - twin).max()),
           "mean_abs": float(np.abs(fast - twin).mean()),
           "pair_sum_max": pair_sums(model)["max"], "bytes": path.stat().st_size}
    try:
        compare_kernels(fast, exact, name)
        compare_logits(fast, twin, name)
        out["check"] = "pass"
    except ValidationError:
        out["check"] = "MISS"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--levels", help="level names to measure [every level]")
    ap.add_argument("--weights", default=",".join(WEIGHTS),
                    help=f"weight kinds, among {', '.join(WEIGHTS)} [all]")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-time", action="store_true", help="accuracy and the check only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        print(f"error: --methods must be among {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if any(w not in WEIGHTS for w in args.weights.split(",")):
        print(f"error: --weights must be among {', '.join(WEIGHTS)}", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    m = read_manifest(args.export_dir)
    data = for_export(args.export_dir, m, None)[0]
    x, y = check_input(data["test"][0], m["input"]), data["test"][1]
    x_cal = check_input(data["val"][0], m["input"])
    name = m["input"]["name"]
    print(f"{device_name()}: {describe()}; onnxruntime {ort.__version__}, threads "
          f"{args.threads}", flush=True)
    rows, quality = [], {}
    wanted = args.levels.split(",") if args.levels else [level_name(lv) for lv in m["levels"]]
    unknown = set(wanted) - {level_name(lv) for lv in m["levels"]}
    if unknown:
        print(f"error: no level {', '.join(sorted(unknown))} in {args.export_dir}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="int8-remedy-") as tmp:
        for lv in m["levels"]:
            level = level_name(lv)
            if level not in wanted:
                continue
            src = args.export_dir / lv["file"]
            graphs = {"fp32": src}
            for method in methods:
                for weights in args.weights.split(","):
                    graphs[f"{method} {weights}"] = make(src, Path(tmp) / f"{level}-{method}-"
                                                         f"{weights}.onnx", method, weights,
                                                         x_cal, name)
            fp32_acc = float((ort.InferenceSession(str(src), providers=[
                "CPUExecutionProvider"]).run(None, {name: x})[0].argmax(1) == y).mean())
            quality[level] = {"fp32": {"accuracy": fp32_acc}}
            for key, path in graphs.items():
                if key != "fp32":
                    quality[level][key] = score(path, x, y, f"level {level} {key}")
                    q = quality[level][key]
                    print(f"  level {level} {key:>16}: accuracy {q['accuracy']:.4f} (exact "
                          f"kernels {q['exact_accuracy']:.4f}, fp32 {fp32_acc:.4f}), kernels "
                          f"{q['kernel_max_abs']:.3g}, max |d| {q['max_abs']:.3g}, mean |d| "
                          f"{q['mean_abs']:.3g}, pair sum {q['pair_sum_max']}, check "
                          f"{q['check']}", flush=True)
            if args.no_time:
                continue
            sessions = {k: ort.InferenceSession(str(p), session_options(args.threads),
                                                providers=["CPUExecutionProvider"])
                        for k, p in graphs.items()}
            for b in batches:
                xb = x[:b]
                timed = time_many({k: (lambda s=s, xb=xb: s.run(None, {name: xb}))
                                   for k, s in sessions.items()}, args.warmup, args.iters,
                                  args.rounds)
                base = timed["fp32"]["p50_ms"]
                for k, t in timed.items():
                    t.pop("blocks_ms")
                    rows.append({"level": level, "batch": b, "graph": k, **t,
                                 "speedup_vs_fp32": base / t["p50_ms"]})
                print("  " + "; ".join(f"{k} {t['p50_ms']:.3f} ms" for k, t in timed.items())
                      + f" (level {level}, batch {b})", flush=True)
    if rows:
        keys = list(dict.fromkeys(r["graph"] for r in rows))
        print("\n| level | batch | " + " | ".join(keys) + " |")
        print("|---:|---:|" + "---:|" * len(keys))
        for level in dict.fromkeys(r["level"] for r in rows):
            for b in batches:
                cells = {r["graph"]: r for r in rows if r["level"] == level and r["batch"] == b}
                print(f"| {level} | {b} | " + " | ".join(
                    f"{cells[k]['p50_ms']:.3f}" + ("" if k == "fp32" else
                                                   f" ({cells[k]['speedup_vs_fp32']:.2f}x)")
                    for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(), "cpu": describe(),
                                         "onnxruntime": ort.__version__,
                                         "threads": args.threads, "timings": rows,
                                         "quality": quality}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
