"""Peak memory of `matryoshka predict` on a large input, by --batch-size (issue 11, defect 7).

    python benchmarks/predict_memory.py [EXPORT_DIR] [--rows 100000] [--level 512]

Each run is its own process, `matryoshka predict EXPORT_DIR x.npy --level L --batch-size B
--json`; its peak resident set size comes from the kernel (wait4's ru_maxrss), so nothing in
this process is counted. The input is `--rows` real test digits, repeated. The last row of the
table, one chunk as large as the whole input, is what predict did before it ran in chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from matryoshka.data import load_dataset


def peak_mb(cmd: list[str]) -> tuple[float, str]:
    """Run cmd to completion; its peak RSS in MiB and its stdout."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode()
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed: {err}")
        out.seek(0)
        return usage.ru_maxrss / 1024.0, out.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", nargs="?", default="artifacts/demo/export")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--level", type=int, default=512)
    ap.add_argument("--batches", default="64,256,1024")
    args = ap.parse_args()
    x = load_dataset("demo")["test"][0]
    x = np.ascontiguousarray(x[np.arange(args.rows) % len(x)])
    exe = [sys.executable, "-m", "matryoshka", "predict"]
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
