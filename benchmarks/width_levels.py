"""An imported encoder's width levels against its head levels, side by side on the CPU.

    python benchmarks/width_levels.py [--pretrained artifacts/pretrained/all-MiniLM-L6-v2]
        [--widths 96,192,288,384] [--heads 3] [--seqs 64,128] [--batches 1,32]
        [--iters 40] [--warmup 3] [--rounds 4] [--threads 1,2] [--export artifacts/minilm/export]
        [--data artifacts/data/spam.csv] [--json OUT]

levels: the encoder is imported (model/pretrained.py) and nested both ways, by its hidden width
  (nest_by_width: width 96 runs h[:96], 3 heads, 384 FFN neurons, a 96-column embedding) and
  by heads (nest_by_heads: h3 runs 3 heads and 384 neurons at the full width 384); the largest
  level is the encoder itself in both, so it is timed once. Every level is exported as
  mexport does (to_onnx, opset 17, onnxsim) and quantized (dynamic INT8, per-channel), and all
  of them are timed in one round-robin (runtime.timing.time_many) per sequence length, batch
  and precision, on random ids without padding, so every row pays for every position. A block
  is iters/rounds calls of one graph: switching graphs at every call would time cold caches
  (here 384's batch-1 call took 19 ms alternating with 96 against 10 ms alone). Speed
  and size depend on the shapes only, not on the weights, so untrained nestings are timed;
  the accuracies belong to the trained checkpoints (docs/pretrained-log.md).
cascade (with --export, a calibrated export of width levels): the test mails of --data (the
  toolkit's split) through the calibrated cascade (Runtime, cascade.onnx) and through the
  largest level alone, at batch 32, whole passes alternating; texts per second of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.exporter.graph import to_onnx
from matryoshka.model.pretrained import import_encoder, nest_by_heads, nest_by_width
from matryoshka.model.transformer import extract_level, flops_per_sample
from matryoshka.quantize import quantize_level
from matryoshka.runtime.plan import PRECISIONS
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.timing import device_name, time_many


def build(folder: Path, widths: tuple[int, ...], heads: tuple[int, ...], seq: int,
          tmp: Path) -> dict[str, dict]:
    """Every level's graphs (fp32 and INT8 paths), FLOPs and file sizes, by name: '96' ...
    for widths, 'h3' ... for heads; the largest width is the encoder itself."""
    model, _, _ = import_encoder(folder, n_classes=2, max_len=seq)
    full = model.config.d_model
    nested = {"width": nest_by_width(model, widths)}
    if heads:
        nested["heads"] = nest_by_heads(model, (*heads, full // model.config.head_dim))
    levels: dict[str, dict] = {}
    for kind, levels_of in (("width", widths), ("heads", heads)):
        for level in levels_of:
            name = nested[kind].config.level_name(level)
            fp32, int8 = tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx"
            print(f"exporting {kind} level {name} ...", file=sys.stderr, flush=True)
            to_onnx(extract_level(nested[kind], level), fp32, 17, True, {})
            quantize_level(fp32, int8, "dynamic-pc")
            levels[name] = {"kind": kind, "fp32": fp32, "int8": int8,
                            "flops_per_sample": flops_per_sample(nested[kind].config, level),
                            "fp32_bytes": fp32.stat().st_size,
                            "int8_bytes": int8.stat().st_size}
    return levels


def part_levels(levels: dict[str, dict], seq: int, batches: list[int], vocab: int,
                threads: int | None, warmup: int, iters: int, rounds: int) -> list[dict]:
    """Every level at one sequence length and intra-op thread count, each batch and
    precision timed in one round-robin."""
    rows = []
    names = list(levels)
    largest = names[len([n for n in names if levels[n]["kind"] == "width"]) - 1]
    smallest_heads = next((n for n in names if levels[n]["kind"] == "heads"), None)
    for precision in PRECISIONS:
        sessions = {n: ort.InferenceSession(str(lv[precision]), session_options(threads),
                                            providers=["CPUExecutionProvider"])
                    for n, lv in levels.items()}
        for b in batches:
            x = np.random.default_rng(0).integers(1, vocab, (b, seq), dtype=np.int64)
            t = time_many({n: (lambda s=s, x=x: s.run(None, {"x": x}))
                           for n, s in sessions.items()},
                          warmup, iters, rounds)
            for n in names:
                p50 = t[n]["p50_ms"]
                row = {"seq": seq, "batch": b, "threads": threads, "precision": precision,
                       "level": n, "p50_ms": p50, "x_vs_largest": t[largest]["p50_ms"] / p50}
                if smallest_heads:
                    row["x_vs_" + smallest_heads] = t[smallest_heads]["p50_ms"] / p50
                rows.append(row)
                print(f"{seq:>4} {b:>5} {threads or '-':>4} {precision:>5} {n:>6} {p50:>10.3f} "
                      f"{row['x_vs_largest']:>9.2f}"
                      + (f" {row['x_vs_' + smallest_heads]:>9.2f}" if smallest_heads else ""),
                      flush=True)
    return rows


def part_cascade(export: Path, data: Path, threads: int | None, passes: int) -> dict:
    from matryoshka.data.text import load_text
    from matryoshka.runtime import Runtime
    from matryoshka.runtime.timing import time_pair

    rt = Runtime.open(export, device="cpu", threads=threads, batch_size=32)
    if "calibration" not in rt.manifest:
        raise SystemExit(f"error: {export} is not calibrated: run `matryoshka calibrate "
                         f"{export}` first")
    texts = list(load_text(data).splits["test"][0])
    largest = rt.levels[-1]
    t_cascade, t_largest = time_pair(lambda: rt.predict(texts),
                                     lambda: rt.predict(texts, level=largest), 1, passes,
                                     rounds=passes)
    out = rt.predict(texts)
    share = {lv: float(np.mean(out.levels == lv)) for lv in rt.levels}
    res = {"texts": len(texts), "batch": 32, "largest_level": largest, "answered_by": share}
    for name, t in (("cascade", t_cascade), ("largest", t_largest)):
        res[name] = {"p50_s": t["p50_ms"] / 1e3, "texts_per_s": len(texts) / t["p50_ms"] * 1e3}
    res["x_throughput"] = res["cascade"]["texts_per_s"] / res["largest"]["texts_per_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path,
                    default=Path("artifacts/pretrained/all-MiniLM-L6-v2"))
    ap.add_argument("--widths", default="96,192,288,384")
    ap.add_argument("--heads", default="3", help="head levels besides the encoder [3]")
    ap.add_argument("--seqs", default="64,128")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--iters", type=int, default=40, help="timed calls of each graph")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4,
                    help="round-robin blocks: iters/rounds calls of a graph in a row, so that "
                    "its weights are in the cache as they are in a deployed level's session")
    ap.add_argument("--threads", default="",
                    help="ORT intra-op threads, one count or several (1,2: each timed; a small "
                    "level gains less from a second core than a large one) [ORT's default]")
    ap.add_argument("--export", type=Path,
                    help="a calibrated export: time its cascade too (on the last --threads count)")
    ap.add_argument("--data", type=Path, default=Path("artifacts/data/spam.csv"))
    ap.add_argument("--passes", type=int, default=5, help="timed passes of each, cascade")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    ints = {k: tuple(int(v) for v in getattr(args, k).split(",") if v.strip())
            for k in ("widths", "heads", "seqs", "batches", "threads")}
    threads = ints["threads"] or (None,)
    if not (args.pretrained / "config.json").is_file():
        print(f"error: no encoder at {args.pretrained}: run `bash scripts/fetch_pretrained.sh`",
              file=sys.stderr)
        return 2
    report: dict = {"machine": device_name(), "onnxruntime": ort.__version__,
                    "threads": list(threads), "iters": args.iters, "levels": [], "sizes": {}}
    print(f"{report['machine']} | onnxruntime {ort.__version__} | threads "
          f"{args.threads or 'default'}")
    with tempfile.TemporaryDirectory() as tmp:  # one graph per level: the length is dynamic
        levels = build(args.pretrained, ints["widths"], ints["heads"], max(ints["seqs"]),
                       Path(tmp))
        vocab = json.loads((args.pretrained / "config.json").read_text())["vocab_size"]
        print(f"\n{'level':>6} {'MFLOPs@' + str(max(ints['seqs'])):>12} {'fp32 MB':>8} "
              f"{'int8 MB':>8}")
        for n, lv in levels.items():
            report["sizes"][n] = {k: lv[k] for k in ("fp32_bytes", "int8_bytes",
                                                     "flops_per_sample")}
            print(f"{n:>6} {lv['flops_per_sample'] / 1e6:>12.1f} "
                  f"{lv['fp32_bytes'] / 1e6:>8.1f} {lv['int8_bytes'] / 1e6:>8.1f}")
        heads_col = f"x h{ints['heads'][0]}" if ints["heads"] else ""
        print(f"\n{'seq':>4} {'batch':>5} {'thr':>4} {'prec':>5} {'level':>6} {'p50 ms':>10} "
              f"{'x largest':>9} {heads_col:>9}")
        for seq in ints["seqs"]:
            for n_threads in threads:
                report["levels"] += part_levels(levels, seq, list(ints["batches"]), vocab,
                                                n_threads, args.warmup, args.iters,
                                                args.rounds)
    if args.export:
        r = report["cascade"] = part_cascade(args.export, args.data, threads[-1], args.passes)
        print(f"\ncascade of {args.export} on {r['texts']} test texts, batch 32: "
              f"{r['cascade']['texts_per_s']:.1f} texts/s against {r['largest']['texts_per_s']:.1f}"
              f" for level {r['largest_level']} alone (x{r['x_throughput']:.2f}); answered by "
              + ", ".join(f"{k} {v:.1%}" for k, v in r["answered_by"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
