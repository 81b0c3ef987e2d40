"""Where a level's time goes: onnxruntime's own profile of width and head levels, by operator.

    python benchmarks/op_profile.py [--pretrained artifacts/pretrained/all-MiniLM-L6-v2]
        [--widths 96,384] [--heads 3] [--seq 128] [--batch 1] [--threads 1]
        [--precisions fp32,int8] [--iters 200] [--warmup 20] [--json OUT]

The levels are benchmarks/width_levels.py's: the encoder imported and nested by width (the
last width is the encoder's own) and by heads, each level exported as mexport does and
quantized dynamic-pc; random ids, no padding. Each graph runs alone in a session with
onnxruntime's profiler on (`enable_profiling`), so the operators are those of the graph
onnxruntime optimized at load (its Gelu, SkipLayerNormalization, DynamicQuantizeMatMul ...);
every node's kernel time is summed by operator type over the timed runs (the warm-up runs'
are left out) and divided by their number. A MatMul counts as one of weights (a linear layer)
or of activations (attention's products).

Two tables per precision: milliseconds per run by operator type, and by part (PARTS: linear
layers; attention's products and softmax; GELU; LayerNorms and residual adds; reshapes and
transposes with their shape arithmetic, mostly the heads' split and merge; the rest), one
column per level, and how many times faster the first width level is than the first head
level. Where that is near 1 the two levels do the same work (both run 3 heads of 32 and 384
FFN neurons at --heads 3), and that shared time bounds the whole level's ratio (Amdahl). The
profiler adds its own cost to every node: these times are for comparing parts;
benchmarks/width_levels.py times latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from width_levels import build  # noqa: E402

from matryoshka.errors import MatryoshkaError  # noqa: E402
from matryoshka.runtime.providers import session_options  # noqa: E402
from matryoshka.runtime.timing import device_name  # noqa: E402


def profile(graph: Path, x: np.ndarray, threads: int | None, warmup: int, iters: int,
            prefix: Path) -> dict[str, float]:
    """Milliseconds per run spent in each operator type of `graph` on input x, over `iters`
    runs after `warmup` (whose events are left out)."""
    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix)
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup + iters):
        sess.run(None, {"x": x})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = sorted(ev["ts"] for ev in events if ev.get("name") == "model_run")
    start = runs[warmup]
    per_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if (ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time")
                and ev["ts"] >= start):
            per_op[op_type(ev["args"])] += ev["dur"] / 1e3 / iters
    return dict(per_op)


def op_type(args: dict) -> str:
    """The node's operator type; a MatMul is told apart by its inputs: of a weight (the
    linear layers, which width nesting shrinks; the profile lists no shape for an
    initializer) or of two activations (attention's products, the same size in a width level
    and a head level of as many heads)."""
    op = args["op_name"]
    if op in ("MatMul", "FusedMatMul"):
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        kind = "activations" if len(shapes) == 2 and min(map(len, shapes)) >= 3 else "weights"
        return f"{op} ({kind})"
    return op


# Operator types grouped by what they compute, for the summary table; the rest is "other"
# (the token lookup, the mask's arithmetic, casts). Quantization's own operators count with
# the linear layers they feed.
PARTS = {
    "linear layers": ("Gemm", "MatMul (weights)", "FusedMatMul (weights)",
                      "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
                      "DequantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul"),
    "attention products, softmax": ("MatMul (activations)", "FusedMatMul (activations)",
                                    "Softmax"),
    "GELU": ("Gelu", "BiasGelu", "FastGelu", "Erf"),
    "LayerNorms, residual adds": ("SkipLayerNormalization", "LayerNormalization", "Add"),
    "reshapes, transposes": ("Transpose", "Reshape", "Concat", "Slice", "Shape", "Unsqueeze",
                             "Squeeze"),
}


def by_part(per_op: dict[str, float]) -> dict[str, float]:
    """The operator types' times summed into PARTS (and "other")."""
    part_of = {op: part for part, ops in PARTS.items() for op in ops}
    out = dict.fromkeys([*PARTS, "other"], 0.0)
    for op, ms in per_op.items():
        out[part_of.get(op, "other")] += ms
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", default="artifacts/pretrained/all-MiniLM-L6-v2")
    ap.add_argument("--widths", default="96,384")
    ap.add_argument("--heads", default="3")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not Path(args.pretrained, "config.json").is_file():
        print(f"error: no encoder at {args.pretrained}: run `bash scripts/fetch_pretrained.sh`",
              file=sys.stderr)
        return 2
    widths = tuple(int(w) for w in args.widths.split(","))
    heads = tuple(int(h) for h in args.heads.split(",") if h)
    precisions = args.precisions.split(",")
    print(f"device: {device_name()}; onnxruntime {ort.__version__}; seq {args.seq}, "
          f"batch {args.batch}, {args.threads} thread(s), {args.iters} profiled runs")
    results, parts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            levels = build(Path(args.pretrained), widths, heads, args.seq, Path(tmp))
        except MatryoshkaError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        vocab = json.loads(Path(args.pretrained, "config.json").read_text())["vocab_size"]
        x = np.random.default_rng(0).integers(1, vocab, (args.batch, args.seq), dtype=np.int64)
        for precision in precisions:
            per_level = {n: profile(lv[precision], x, args.threads, args.warmup, args.iters,
                                    Path(tmp) / f"{n}-{precision}")
                         for n, lv in levels.items()}
            results[precision] = per_level
            parts[precision] = {n: by_part(p) for n, p in per_level.items()}
            _print_table(f"{precision}: ms per run by operator type", per_level)
            _print_table(f"{precision}: ms per run by part", parts[precision], order=False)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"seq": args.seq, "batch": args.batch, "threads": args.threads,
             "ms_per_run": results, "ms_per_part": parts}, indent=1))
    return 0


def _print_table(title: str, per_level: dict[str, dict[str, float]], order: bool = True
                 ) -> None:
    """One row per key (operator type or part; by the largest time when `order`), one column
    per level, and the first head level's time over the first width level's."""
    names = list(per_level)
    width = next(n for n in names if n[0].isdigit())
    head = next((n for n in names if n.startswith("h")), None)
    ops = list(dict.fromkeys(op for p in per_level.values() for op in p))
    if order:
        ops.sort(key=lambda op: -max(p.get(op, 0.0) for p in per_level.values()))
    print(f"\n{title}" + (f"; x = {head} / {width}" if head else ""))
    print(f"{'op':<28}" + "".join(f"{n:>9}" for n in names) + ("        x" if head else ""))
    for op in ops + ["total"]:
        vals = ([sum(per_level[n].values()) for n in names] if op == "total"
                else [per_level[n].get(op, 0.0) for n in names])
        ratio = ""
        if head:
            a, b = per_level[head], per_level[width]
            num = sum(a.values()) if op == "total" else a.get(op, 0.0)
            den = sum(b.values()) if op == "total" else b.get(op, 0.0)
            ratio = f"{num / den:>9.2f}" if den else f"{'-':>9}"
        print(f"{op:<28}" + "".join(f"{v:>9.3f}" for v in vals) + ratio)


if __name__ == "__main__":
    sys.exit(main())
