"""cascade.onnx against the graphs it is built from, side by side in one run (issue 20's targets).

    python benchmarks/cascade_graph.py [EXPORT_DIR] [--iters 2000] [--threads N] [--json OUT]

1. Batch 1, every row answering at the first level (thresholds 0): a bare InferenceSession.run
   of that level's graph, a bare run of cascade.onnx, Runtime.predict through the graph engine,
   and through the levels engine. Targets: the graph <= 1.25x the bare level, predict through
   the graph <= 1.3x.
2. The calibrated thresholds over the test split, batch 1 and 32 (and 256): the graph engine
   against the levels engine, each a full pass of Runtime.predict. Target: the graph is not
   slower at batch 32.

Every contender of a part is timed by runtime.timing.time_many: round-robin blocks with a
rotating first, so that the machine's slow and fast moments fall on all alike; medians. The
export must be calibrated (matryoshka calibrate) and have cascade.onnx (mexport writes it).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort

from matryoshka.data.source import for_export
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.timing import device_name, time_many


def part_exit_at_first(folder, x, threads, iters) -> dict:
    graph = Runtime.open(folder, device="cpu", threads=threads, engine="graph")
    levels = Runtime.open(folder, device="cpu", threads=threads, engine="levels")
    first = graph.levels[0]
    k = len(graph.levels)
    zeros = [0.0] * (k - 1)
    name = graph.input_spec["name"]
    x1 = check_input(x[:1], graph.input_spec)
    bare_level = ort.InferenceSession(graph.graph_bytes(first), session_options(threads),
                                      providers=["CPUExecutionProvider"])
    opts = session_options(threads)
    opts.log_severity_level = 3
    bare_graph = ort.InferenceSession(str(folder / graph.manifest["cascade"]["fp32"]["file"]),
                                      opts, providers=["CPUExecutionProvider"])
    feed = {name: x1, "thresholds": np.zeros(k - 1, np.float32),
            "temperatures": np.asarray(graph.temperatures(), np.float32)}
    assert (graph.predict(x1, thresholds=zeros).levels == first).all()
    fns = {
        f"bare level {first}": lambda: bare_level.run(None, {name: x1}),
        "bare cascade.onnx": lambda: bare_graph.run(None, feed),
        "Runtime.predict, engine graph": lambda: graph.predict(x1, thresholds=zeros),
        "Runtime.predict, engine levels": lambda: levels.predict(x1, thresholds=zeros),
    }
    t = time_many(fns, warmup=200, iters=iters, rounds=max(10, iters // 100))
    base = t[f"bare level {first}"]["p50_ms"]
    return {n: {"p50_us": v["p50_ms"] * 1e3, "x_bare": v["p50_ms"] / base} for n, v in t.items()}


def part_calibrated(folder, x, threads, batches, repeats) -> list[dict]:
    engines = {e: Runtime.open(folder, device="cpu", threads=threads, engine=e)
               for e in ("graph", "levels")}
    x = check_input(x, engines["graph"].input_spec)
    rows = []
    for b in batches:
        chunks = [x[i:i + b] for i in range(0, len(x), b)]
        fns = {e: (lambda rt=rt, cs=chunks: [rt.predict(c) for c in cs])
               for e, rt in engines.items()}
        t = time_many(fns, warmup=1, iters=repeats, rounds=repeats)
        g, lv = t["graph"]["p50_ms"], t["levels"]["p50_ms"]
        rows.append({"batch": b, "graph_ms_per_pass": g, "levels_ms_per_pass": lv,
                     "graph_us_per_row": g * 1e3 / len(x), "levels_us_per_row": lv * 1e3 / len(x),
                     "graph_faster_by": lv / g})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", nargs="?", default="artifacts/demo/export")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=20, help="timed passes per batch size")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from pathlib import Path

    folder = Path(args.export_dir)
    rt = Runtime.open(folder, device="cpu", engine="graph")
    if not (rt.calibration() or {}).get("thresholds"):
        raise SystemExit(f"error: {folder} has no certified thresholds; run matryoshka "
                         "calibrate first")
    x = for_export(folder, rt.manifest, None)[0]["test"][0]
    first = part_exit_at_first(folder, x, args.threads, args.iters)
    batches = [int(b) for b in args.batches.split(",")]
    calibrated = part_calibrated(folder, x, args.threads, batches, args.repeats)
    threads = args.threads or "onnxruntime default"
    print(f"{device_name()}, onnxruntime {ort.__version__}, threads {threads}, {folder}")
    print(f"\nbatch 1, every row answers at level {rt.levels[0]} ({args.iters} calls each, "
          "medians)")
    print(f"{'':34} {'p50 us':>8} {'x bare':>7}")
    for name, r in first.items():
        print(f"{name:34} {r['p50_us']:>8.1f} {r['x_bare']:>7.2f}")
    print(f"\ncalibrated thresholds over the test split ({len(x)} rows; a pass = predict on "
          "every batch)")
    print(f"{'batch':>5} {'graph us/row':>13} {'levels us/row':>14} {'graph faster by':>16}")
    for r in calibrated:
        print(f"{r['batch']:>5} {r['graph_us_per_row']:>13.1f} {r['levels_us_per_row']:>14.1f} "
              f"{r['graph_faster_by']:>15.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(),
                                               "onnxruntime": ort.__version__,
                                               "threads": args.threads, "exit_at_first": first,
                                               "calibrated": calibrated}, indent=1))


if __name__ == "__main__":
    main()
