"""The calibrated cascade's time per text against its largest level's, for the levels engine
with onnxruntime's intra-op spinning on (its default) and off, and for cascade.onnx.

    python benchmarks/spinning.py EXPORT --data artifacts/data/reviews [--texts 128]
        [--batches 1,32] [--threads 2] [--repeats 3]

The levels engine runs one onnxruntime session per level and alternates between them; each
session has its own intra-op thread pool, whose threads spin for a while after a run. On a
machine with few cores the pool of the level that just ran takes the cores from the next
one. Every configuration answers the first --texts test texts (raw text in, tokenization
included) at each level alone and as the calibrated cascade, in one process, one
configuration after the other; each figure is the median of --repeats passes, in ms per text.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import matryoshka.runtime.runtime as runtime
from matryoshka.data.text import load_text
from matryoshka.runtime import Runtime

SPIN = "session.intra_op.allow_spinning"


def with_spinning(plain, on: bool):
    """`plain` (the runtime's session_options) with the intra-op pool's spinning on or off."""
    def options(threads, fold_dequantize=False):
        opts = plain(threads, fold_dequantize)
        opts.add_session_config_entry(SPIN, "1" if on else "0")
        return opts
    return options


def per_text(rt: Runtime, texts: list[str], level, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.predict(texts, level=level)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000 / len(texts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the export's text data")
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.export / "manifest.json").is_file() or not args.data.exists():
        print(f"error: need an export folder and its data; got {args.export}, {args.data}",
              file=sys.stderr)
        return 2
    texts = list(load_text(args.data).splits["test"][0])[:args.texts]
    plain = runtime.session_options
    print(f"{'configuration':28} {'batch':>5} " + " ".join(f"{n:>9}" for n in
          ("smallest", "largest", "cascade", "x largest")))
    for name, engine, spin in (("levels, spinning on", "levels", True),
                               ("levels, spinning off", "levels", False),
                               ("cascade.onnx, spinning on", "graph", True)):
        runtime.session_options = with_spinning(plain, spin)
        try:
            for b in (int(v) for v in args.batches.split(",")):
                rt = Runtime.open(args.export, device="cpu", threads=args.threads,
                                  engine=engine)
                rt.batch_size = b
                small, large = (per_text(rt, texts, rt.levels[i], args.repeats) for i in (0, -1))
                cascade = per_text(rt, texts, None, args.repeats)
                print(f"{name:28} {b:>5} {small:>9.3f} {large:>9.3f} {cascade:>9.3f} "
                      f"{large / cascade:>8.2f}x")
        finally:
            runtime.session_options = plain
    return 0


if __name__ == "__main__":
    sys.exit(main())
