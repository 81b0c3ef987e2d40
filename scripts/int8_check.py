"""Every INT8 graph of an export folder (or a bundle) against exact integer arithmetic, on this
CPU: the check mexport, calibrate --int8, tune and bundle run (matryoshka/int8_check.py), run
again on demand. On an emulated AVX2-only CPU it tells whether the graphs answer the same there:

    python scripts/int8_check.py artifacts/demo/export [--data PATH]
    bash scripts/avx2.sh .venv/bin/python scripts/int8_check.py artifacts/demo/export

Prints one row per INT8 graph: the largest logit difference of this CPU's kernels from
onnxruntime's exact integer kernels ("kernels") and from the graph's exact twin ("twin"), and
the largest pair sum of its weights; exit 0 when every graph passes, 1 when one misses (its
line says by how much), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matryoshka.data.source import for_export  # noqa: E402
from matryoshka.errors import MatryoshkaError, ValidationError  # noqa: E402
from matryoshka.int8_check import check_entry  # noqa: E402
from matryoshka.runtime.cpu import describe  # noqa: E402
from matryoshka.runtime.inputs import check_input  # noqa: E402
from matryoshka.runtime.manifest import level_name, read_manifest  # noqa: E402


def int8_entries(manifest: dict) -> list[tuple[dict, dict]]:
    """(level entry, the entry of its INT8 graph) for every level that has one: an export's
    `int8`, or a bundle level whose one graph is INT8."""
    out = []
    for lv in manifest["levels"]:
        if "int8" in lv:
            out.append((lv, lv["int8"]))
        elif lv.get("precision") == "int8":
            out.append((lv, lv))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--data", help="the data to check on [the data the export was made from]")
    args = ap.parse_args()
    try:
        manifest = read_manifest(args.export_dir)
        dataset = for_export(args.export_dir, manifest, args.data)[0]
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entries = int8_entries(manifest)
    if not entries:
        print(f"error: {args.export_dir} has no INT8 graph", file=sys.stderr)
        return 2
    split = "val" if len(dataset["val"][0]) else "test"
    x = check_input(dataset[split][0], manifest["input"])
    print(f"{args.export_dir}: {len(entries)} INT8 graph(s) on {split} rows, on {describe()}")
    print(f"{'level':>10} {'method':>22} {'rows':>5} {'kernels':>9} {'twin max':>9} "
          f"{'twin mean':>9} {'pair sum':>8}  verdict")
    misses = 0
    for lv, entry in entries:
        name = level_name(lv)
        method = entry.get("method") or entry.get("int8_method") or "?"
        try:
            r = check_entry(args.export_dir, name, entry, lv.get("flops_per_sample") or 0, x)
        except ValidationError as e:
            misses += 1
            print(f"{name:>10} {method:>22}  MISS: {e}")
            continue
        print(f"{name:>10} {method:>22} {r['rows']:>5} {r['kernel_max_abs']:>9.2g} "
              f"{r['max_abs']:>9.2g} {r['mean_abs']:>9.2g} {r['pair_sum_max']:>8}  pass")
    if misses:
        print(f"error: {misses} of {len(entries)} INT8 graph(s) failed the check on "
              f"{describe()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
