"""Peak memory of `matryoshka predict` on a large input: arrays by --batch-size, or a text
file by its number of lines.

    python benchmarks/predict_memory.py [EXPORT_DIR] [--rows 100000] [--level 512]
    python benchmarks/predict_memory.py TEXT_EXPORT --texts CSV [--lines 2000,20000,100000]

Each run is its own process, whose peak resident set size (VmHWM, which the kernel resets at
exec) it reports as it exits, so nothing in this process is counted.
- Arrays: `matryoshka predict EXPORT_DIR x.npy --level L --batch-size B --json` on `--rows`
  real test digits, repeated. The last row of the table, one chunk as large as the whole
  input, is what predict did before it ran in chunks.
- Texts: `matryoshka predict TEXT_EXPORT --input-file F --json` (the calibrated cascade) on
  files of 2,000 to 100,000 lines, each a text of CSV's `text` column drawn at random (so
  that every file has the same mix of lengths), its whitespace collapsed to spaces. Predict
  streams the file a window of lines at a time, so the peak should not grow with the lines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from memory_child import peak_mb

from matryoshka.data import load_dataset


def texts_table(export_dir: str, csv_path: str, counts: list[int]) -> None:
    """Peak RSS of predict --input-file by the file's number of lines."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as f:
        texts = [" ".join(row["text"].split())[:2000] for row in csv.DictReader(f)]
    texts = [t for t in texts if t]
    exe = ["predict", export_dir, "--device", "cpu", "--json", "--input-file"]
    rng = np.random.default_rng(0)
    print(f"predict --input-file on {export_dir}; lines drawn at random from {csv_path}")
    print(f"{'lines':>8} {'file MiB':>9} {'peak RSS MiB':>13} {'vs first':>9}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            path = Path(tmp) / f"texts-{n}.txt"
            with open(path, "w", encoding="utf-8") as f:  # every file: the corpus's length mix
                for i in rng.integers(0, len(texts), n):
                    f.write(texts[i] + "\n")
            mb, out = peak_mb([*exe, str(path)])
            if len(json.loads(out)["labels"]) != n:
                raise SystemExit(f"predict answered the wrong number of lines for {n}")
            first = mb if first is None else first
            print(f"{n:>8} {path.stat().st_size / 2**20:>9.1f} {mb:>13.1f} {mb - first:>+9.1f}")
            path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", nargs="?", default="artifacts/demo/export")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--level", type=int, default=512)
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--texts", default=None, help="a CSV with a text column: time a text export")
    ap.add_argument("--lines", default="2000,20000,100000")
    args = ap.parse_args()
    if args.texts:
        texts_table(args.export_dir, args.texts, [int(v) for v in args.lines.split(",")])
        return
    x = load_dataset("demo")["test"][0]
    x = np.ascontiguousarray(x[np.arange(args.rows) % len(x)])
    exe = ["predict"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        print(f"input: {args.rows} rows, {path.stat().st_size / 2**20:.1f} MiB on disk; "
              f"level {args.level} of {args.export_dir}")
        print(f"{'batch size':>10} {'peak RSS MiB':>13}")
        labels = None
        for b in [int(v) for v in args.batches.split(",")] + [args.rows]:
            mb, out = peak_mb([*exe, args.export_dir, str(path), "--level", str(args.level),
                               "--batch-size", str(b), "--device", "cpu", "--json"])
            got = json.loads(out)["labels"]
            same = "" if labels is None else ("  same labels" if got == labels else "  DIFFER")
            labels = labels or got
            note = "  (one chunk: the whole input)" if b == args.rows else ""
            print(f"{b:>10} {mb:>13.0f}{same}{note}")


if __name__ == "__main__":
    main()
