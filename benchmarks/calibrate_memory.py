"""Peak memory of `matryoshka calibrate` on a text export, against the size of its data.

    python benchmarks/calibrate_memory.py EXPORT_DIR DATA.csv [--scales 1,4]

For each scale s, DATA.csv's rows are written s times over (so every split, the calibration
and the test split included, is s times as large), a copy of EXPORT_DIR is calibrated on it
(`matryoshka calibrate COPY --data SCALED.csv`, the default epsilon 0.02 and delta 0.1), and
the command's own peak resident set size (VmHWM) is reported. Calibrate runs every level in
chunks and keeps only their logits, so the peak should not grow with the rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

from memory_child import peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir")
    ap.add_argument("data")
    ap.add_argument("--scales", default="1,4")
    args = ap.parse_args()
    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    print(f"calibrate {args.export_dir} on {args.data} ({len(body)} rows), scaled")
    print(f"{'scale':>5} {'rows':>7} {'cal n':>6} {'test n':>6} {'peak RSS MiB':>13} "
          f"{'vs first':>9} {'wall s':>7}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for scale in [int(v) for v in args.scales.split(",")]:
            data = Path(tmp) / f"data-x{scale}.csv"
            with open(data, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(head)
                for _ in range(scale):
                    w.writerows(body)
            folder = Path(tmp) / f"export-x{scale}"
            shutil.copytree(args.export_dir, folder)
            t0 = time.perf_counter()
            mb, _ = peak_mb(["calibrate", str(folder), "--data", str(data), "--no-progress"])
            wall = time.perf_counter() - t0
            rec = json.loads((folder / "manifest.json").read_text())["calibration"]["fp32"]
            first = mb if first is None else first
            print(f"{scale:>5} {len(body) * scale:>7} {rec['n']:>6} {rec['test']['n']:>6} "
                  f"{mb:>13.0f} {mb - first:>+9.0f} {wall:>7.0f}")
            shutil.rmtree(folder)
            data.unlink()


if __name__ == "__main__":
    main()
