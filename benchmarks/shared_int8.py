"""Shared INT8 against each level's own quantization: accuracy per level and file sizes.

    python benchmarks/shared_int8.py CHECKPOINT [--data PATH] [--levels 64,128,256,512]
        [--methods dynamic,dynamic-shared,dynamic-pc,dynamic-pc-shared] [--static]
        [--json OUT]

Each method exports the checkpoint's levels into a temporary folder (mexport --quantize METHOD);
--static also calibrates a copy of the fp32 export with --int8 static and --int8 static-shared.
A "-shared" method quantizes every level as its own method does, then replaces each smaller
level's quantized weights by the leading corner of the largest level's
(matryoshka/folder/shared_int8.py), so cascade.int8.onnx stores them once. Reported per
method: each level's test accuracy (and, shared, that of its own quantization), the size of
cascade.int8.onnx against the largest INT8 level and against the sum of the INT8 levels.
Accuracy only: nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from matryoshka.calibration import calibrate
from matryoshka.exporter import export
from matryoshka.model import parse_levels
from matryoshka.runtime.manifest import level_name, read_manifest

METHODS = ("dynamic", "dynamic-shared", "dynamic-pc", "dynamic-pc-shared")


def summary(folder: Path, method: str) -> dict:
    m = read_manifest(folder)
    levels = m["levels"]
    sizes = {"cascade_int8": m["cascade"]["int8"]["bytes"],
             "largest_int8": levels[-1]["int8"]["bytes"],
             "sum_int8": sum(lv["int8"]["bytes"] for lv in levels),
             "cascade_fp32": m["cascade"]["fp32"]["bytes"], "largest_fp32": levels[-1]["bytes"]}
    return {"method": method, **sizes,
            "levels": [{"level": level_name(lv), "fp32": lv["accuracy"]["onnx"],
                        "int8": lv["int8"]["accuracy"],
                        "int8_own": lv["int8"].get("accuracy_own", lv["int8"]["accuracy"])}
                       for lv in levels]}


def table(results: list[dict]) -> str:
    lines = ["| method | level | fp32 | INT8 own | INT8 used | change |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        for lv in r["levels"]:
            lines.append(f"| {r['method']} | {lv['level']} | {lv['fp32']:.4f} | "
                         f"{lv['int8_own']:.4f} | {lv['int8']:.4f} | "
                         f"{lv['int8'] - lv['int8_own']:+.4f} |")
    lines += ["", "| method | cascade.int8.onnx | largest INT8 | ratio | sum of INT8 levels |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['cascade_int8']:,} | {r['largest_int8']:,} | "
                     f"{r['cascade_int8'] / r['largest_int8']:.3f}x | {r['sum_int8']:,} |")
    r = results[0]
    lines.append(f"\ncascade.onnx (fp32) {r['cascade_fp32']:,} B = "
                 f"{r['cascade_fp32'] / r['largest_fp32']:.3f}x the largest fp32 level "
                 f"({r['largest_fp32']:,} B)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="test data [the checkpoint's own]")
    p.add_argument("--levels", default=None, help="levels to export [the checkpoint's]")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--static", action="store_true",
                   help="also calibrate --int8 static and static-shared (slower)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    levels = parse_levels(a.levels) if a.levels else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in a.methods.split(","):
            out = Path(tmp) / method
            export(a.checkpoint, out, levels=levels, quantize=method, data=a.data,
                   progress=False)
            results.append(summary(out, method))
            print(f"exported {method}", file=sys.stderr, flush=True)
        if a.static:
            base = Path(tmp) / "fp32"
            export(a.checkpoint, base, levels=levels, data=a.data, progress=False)
            for method in ("static", "static-shared"):
                out = Path(tmp) / method
                shutil.copytree(base, out)
                calibrate(out, data=a.data, int8=method, variant="int8", progress=False)
                results.append(summary(out, method))
                print(f"calibrated {method}", file=sys.stderr, flush=True)
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
