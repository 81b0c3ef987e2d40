"""Overhead of Runtime.predict(level=64) at batch 1 over a bare InferenceSession.run.

    python benchmarks/runtime_overhead.py [EXPORT_DIR] [--rounds 20] [--iters 200]

Both run the same graph file with the same session options, interleaved round by round so
that the machine's noise hits both alike; the report is the median of per-round medians and
their ratio. Target (issue 4): overhead <= 10%.

With onnxruntime's default thread pool, a gap between two runs (the runtime's own numpy work)
lets the pool's spinning worker go to sleep, and waking it costs more than the work itself;
back-to-back bare runs never pay that. --threads 1 removes the pool and isolates the Python
cost of predict().
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from matryoshka.data import load_dataset
from matryoshka.runtime import Runtime
from matryoshka.runtime.providers import session_options


def median_ms(fn, iters: int) -> float:
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir", nargs="?", default="artifacts/demo/export")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--level", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads of both sessions [onnxruntime's default]")
    args = ap.parse_args()

    rt = Runtime.open(args.export_dir, device="cpu", threads=args.threads)
    level = args.level or rt.levels[0]
    bare = ort.InferenceSession(str(rt.file(level)), session_options(args.threads),
                                providers=["CPUExecutionProvider"])
    x_raw = load_dataset("demo")["test"][0][:1]  # what an application has: raw uint8 pixels
    x32 = x_raw.astype(np.float32)
    name = rt.input_spec["name"]

    def run_bare():
        return bare.run(None, {name: x32})

    def run_runtime():
        return rt.predict(x_raw, level=level)

    for fn in (run_bare, run_runtime):  # warm up both
        median_ms(fn, 50)
    bare_ms, rt_ms = [], []
    for _ in range(args.rounds):
        bare_ms.append(median_ms(run_bare, args.iters))
        rt_ms.append(median_ms(run_runtime, args.iters))
    b, r = float(np.median(bare_ms)), float(np.median(rt_ms))
    threads = args.threads or "onnxruntime default"
    print(f"level {level}, batch 1, threads {threads}, {args.rounds} rounds x {args.iters} "
          "calls, interleaved")
    print(f"bare InferenceSession.run: p50 {b * 1e3:.1f} us")
    print(f"Runtime.predict(level={level}): p50 {r * 1e3:.1f} us")
    print(f"overhead: {r - b:+.4f} ms ({(r / b - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
