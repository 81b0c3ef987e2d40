"""The token table in INT8, and 4-bit: size, test accuracy and speed of every level of a text
export, each quantization against the fp32 graph and against INT8 that leaves the table fp32.

    python benchmarks/embedding_int8.py [EXPORT] [--data artifacts/data/spam.csv]
        [--method dynamic-pc] [--seqs 64,128] [--batches 1,32] [--iters 12] [--rounds 4]
        [--threads 2] [--json OUT]

EXPORT (default artifacts/minilm-demo/export, the main job's) is a text export's folder; only
its fp32 level graphs are read. Each one is quantized into a temporary folder three ways with
matryoshka.quantize.quantize_level:
  int8-table-fp32  --method with op_types MatMul, Gemm: the weights only, as before the table
                   was quantized (the Gather of the 30522-row table stays fp32)
  int8             --method as mexport does it now: the table too (uint8, one scale)
  weight8          int8 weights per output channel behind DequantizeLinear, fp32 compute,
                   loaded with its DequantizeLinear folded (as the runtime loads it)
  weight4          4-bit blocks of 32 (MatMulNBits and GatherBlockQuantized)
Each graph's file size; its batch dependence (the largest probability difference on the
first 32 test mails, padded to their longest, run as one batch against one at a time); its
test accuracy on the whole test split of --data (the export's own tokenizer, batches of 32,
each padded to its longest mail), and the change from fp32 in points;
and its latency on the first test mails padded or cut to each --seqs length, at each --batches
size: all graphs of one (seq, batch) are timed in one round-robin loop
(runtime.timing.time_many), so the machine's slow and fast moments fall on all alike; medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.quantize import quantize_level
from matryoshka.runtime.manifest import level_name, read_manifest
from matryoshka.runtime.providers import CPU, session_options
from matryoshka.runtime.reading import Reading
from matryoshka.runtime.text import encode, load_tokenizer, pad
from matryoshka.runtime.timing import device_name, time_many

VARIANTS = ("fp32", "int8-table-fp32", "int8", "weight8", "weight4")


def build(folder: Path, lv: dict, method: str, tmp: Path) -> dict[str, Path]:
    """The level's fp32 graph and its four quantizations, by variant."""
    src = folder / lv["file"]
    name = level_name(lv)
    out = {"fp32": src}
    for variant, how, ops in (("int8-table-fp32", method, ("MatMul", "Gemm")),
                              ("int8", method, None), ("weight8", "weight8", None),
                              ("weight4", "weight4", None)):
        dst = tmp / f"{name}.{variant}.onnx"
        print(f"quantizing level {name}: {variant}", file=sys.stderr, flush=True)
        if ops is None:
            quantize_level(src, dst, how)
        else:
            quantize_level(src, dst, how, op_types=ops)
        out[variant] = dst
    return out


def logits(session: ort.InferenceSession, rows: list[np.ndarray], batch: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: pad(rows[i:i + batch])})[0]
                           for i in range(0, len(rows), batch)])


def batch_dependence(session: ort.InferenceSession, rows: list[np.ndarray]) -> float:
    """max |p(batch) - p(alone)| over the rows, all padded to the longest of them."""
    name = session.get_inputs()[0].name
    x = pad(rows)

    def probs(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    batch = probs(session.run(None, {name: x})[0])
    alone = probs(np.concatenate([session.run(None, {name: x[i:i + 1]})[0]
                                  for i in range(len(x))]))
    return float(np.abs(batch - alone).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", nargs="?", type=Path, default=Path("artifacts/minilm-demo/export"))
    ap.add_argument("--data", type=Path, default=Path("artifacts/data/spam.csv"))
    ap.add_argument("--method", default="dynamic-pc", choices=("dynamic", "dynamic-pc"))
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not (args.export / "manifest.json").is_file():
        print(f"error: no export at {args.export} (no manifest.json): run the main job or "
              "mexport first", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"error: no data at {args.data}: run `bash scripts/fetch_text_demo.sh`",
              file=sys.stderr)
        return 2
    manifest = read_manifest(args.export)
    if manifest["input"].get("kind") != "text" or not manifest.get("tokenizer"):
        print(f"error: {args.export} is not a text export (no tokenizer)", file=sys.stderr)
        return 2
    from matryoshka.data.text import load_text

    texts, y = load_text(args.data).splits["test"]
    tokenizer = load_tokenizer((args.export / manifest["tokenizer"]["file"]).read_bytes(),
                               Reading.of(manifest["input"]))
    rows, y = encode(tokenizer, list(texts)), np.asarray(y)
    seqs = [int(s) for s in args.seqs.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="matryoshka-embedding-int8-") as tmp:
        sessions, table = {}, []
        for lv in manifest["levels"]:
            name = level_name(lv)
            fp32 = None
            for variant, path in build(args.export, lv, args.method, Path(tmp)).items():
                s = ort.InferenceSession(str(path), session_options(
                    args.threads, fold_dequantize=variant == "weight8"), providers=[CPU])
                acc = float((logits(s, rows).argmax(-1) == y).mean())
                fp32 = acc if fp32 is None else fp32
                sessions[(name, variant)] = s
                table.append({"level": name, "variant": variant, "bytes": path.stat().st_size,
                              "accuracy": acc, "points_vs_fp32": 100 * (acc - fp32),
                              "batch_dependence": batch_dependence(s, rows[:32])})
        for seq in seqs:
            for b in batches:
                x = pad(rows[:b], seq)
                fns = {f"{n}/{v}": (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
                       for (n, v), s in sessions.items()}
                print(f"timing {len(fns)} graphs at seq {seq}, batch {b}", file=sys.stderr,
                      flush=True)
                t = time_many(fns, 2, args.iters, rounds=args.rounds)
                for (n, v) in sessions:
                    results.append({"level": n, "variant": v, "seq": seq, "batch": b,
                                    "p50_ms": t[f"{n}/{v}"]["p50_ms"]})
    print(f"# {device_name()}, {args.threads} threads, {args.export}, --method {args.method}")
    print(f"{'level':>6} {'variant':>16} {'MB':>7} {'test acc':>9} {'pts':>6} {'batch dep':>9}  "
          + "  ".join(
        f"{f's{s} b{b} ms':>12}" for s in seqs for b in batches))
    for row in table:
        ms = {(r["seq"], r["batch"]): r["p50_ms"] for r in results
              if r["level"] == row["level"] and r["variant"] == row["variant"]}
        row["p50_ms"] = {f"seq{s}_batch{b}": ms[(s, b)] for s in seqs for b in batches}
        print(f"{row['level']:>6} {row['variant']:>16} {row['bytes'] / 1e6:>7.2f} "
              f"{row['accuracy']:>9.4f} {row['points_vs_fp32']:>+6.2f} "
              f"{row['batch_dependence']:>9.1e}  " + "  ".join(
                  f"{ms[(s, b)]:>12.2f}" for s in seqs for b in batches))
    if args.json:
        args.json.write_text(json.dumps({"machine": device_name(), "threads": args.threads,
                                         "method": args.method, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
