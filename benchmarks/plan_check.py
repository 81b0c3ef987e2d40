"""Is the precision plan of an export worth following? Two side-by-side checks on this device.

    python benchmarks/plan_check.py EXPORT_DIR [--iters 60] [--passes 7] [--threads N]
        [--data PATH] [--json OUT]

levels:   at every (level, batch) that `matryoshka tune` measured, fp32 and INT8 are timed again,
          side by side (runtime.timing.time_many), and the plan's choice at that batch (the
          plan's `by_batch`) is compared with the faster of the two: chosen / fastest p50.
cascades: the calibrated fp32, INT8 and planned (`auto`) cascades each run whole passes over
          the test split in chunks of the plan's batch, the three passes rotating, --passes
          times; median ms per sample, accuracy, and disagreement with the largest fp32 level.

The export needs int8 graphs, a plan (matryoshka tune) and the three calibrations
(matryoshka calibrate --variant fp32 / int8 / auto); scripts/demo.sh makes all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from matryoshka.data.source import for_export
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import read_manifest
from matryoshka.runtime.text import trim
from matryoshka.runtime.timing import batch_of, device_name, time_many

VARIANTS = ("fp32", "int8", "auto")


def check_levels(runtimes: dict, plan: dict, x: np.ndarray, pad, iters: int) -> list[dict]:
    rows = []
    levels = runtimes["fp32"].levels
    for b in sorted({t["batch"] for t in plan["timings"]}):
        xb = batch_of(x, b, pad)
        for i, dim in enumerate(levels):
            t = time_many({p: (lambda p=p, d=dim, xb=xb: runtimes[p].run_level(d, xb))
                           for p in ("fp32", "int8")}, 5, iters)
            choice = plan["by_batch"][str(b)][i]
            fastest = min(t[p]["p50_ms"] for p in t)
            rows.append({"level": dim, "batch": b, "choice": choice,
                         "fp32_ms": t["fp32"]["p50_ms"], "int8_ms": t["int8"]["p50_ms"],
                         "chosen_over_fastest": t[choice]["p50_ms"] / fastest})
    return rows


def check_cascades(runtimes: dict, x: np.ndarray, y: np.ndarray, batch: int, pad,
                   passes: int) -> dict:
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    if pad is not None:
        chunks = [trim(c, pad) for c in chunks]
    largest = runtimes["fp32"].predict(x, level=runtimes["fp32"].levels[-1]).labels

    def one_pass(rt):
        return np.concatenate([rt.predict(c).labels for c in chunks])

    t = time_many({v: (lambda v=v: one_pass(runtimes[v])) for v in VARIANTS}, 1, passes,
                  rounds=passes)
    out = {}
    for v in VARIANTS:
        labels = one_pass(runtimes[v])
        out[v] = {"ms_per_sample": t[v]["p50_ms"] / len(x),
                  "accuracy": float((labels == y).mean()),
                  "disagreement_with_fp32_largest": float((labels != largest).mean()),
                  "certified_epsilon": runtimes[v].calibration()["epsilon"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    manifest = read_manifest(args.export)
    plan = manifest.get("plan")
    if plan is None:
        print(f"error: {args.export} has no plan; run matryoshka tune first", file=sys.stderr)
        return 2
    runtimes = {v: Runtime.open(args.export, device="cpu", threads=args.threads, variant=v)
                for v in VARIANTS}
    dataset, _ = for_export(args.export, manifest, args.data)
    spec = manifest["input"]
    pad = spec.get("pad_id", 0) if spec.get("kind") == "text" else None
    x_test, y_test = check_input(dataset["test"][0], spec), dataset["test"][1]
    levels = check_levels(runtimes, plan, x_test, pad, args.iters)
    cascades = check_cascades(runtimes, x_test, y_test, plan["batch"], pad, args.passes)

    print(f"# plan check: {args.export} on {device_name()} (plan made on {plan['device']}, "
          f"for batch {plan['batch']}: {', '.join(plan['precisions'])})\n")
    print("| level | batch | fp32 p50 ms | INT8 p50 ms | plan's choice | chosen / fastest |")
    print("|---:|---:|---:|---:|---|---:|")
    for r in levels:
        print(f"| {r['level']} | {r['batch']} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | "
              f"{r['choice']} | {r['chosen_over_fastest']:.2f} |")
    within = sum(r["chosen_over_fastest"] <= 1.05 for r in levels)
    print(f"\nthe plan's choice is within 5% of the faster precision at {within} of "
          f"{len(levels)} (level, batch) pairs; the slowest is "
          f"{max(r['chosen_over_fastest'] for r in levels):.2f}x the faster\n")
    print(f"| cascade, batch {plan['batch']} | ms/sample | accuracy | disagreement with the "
          "largest fp32 level | certified ε |")
    print("|---|---:|---:|---:|---:|")
    for v, c in cascades.items():
        print(f"| {v} | {c['ms_per_sample']:.4f} | {c['accuracy']:.4f} | "
              f"{c['disagreement_with_fp32_largest']:.4f} | {c['certified_epsilon']:g} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(), "plan": plan["precisions"],
                                         "levels": levels, "cascades": cascades}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
