"""A BERT-small-shape text model on the CPU: onnxruntime fp32 vs its INT8 and 4-bit graphs,
vs torch eager, timed side by side; optionally the accuracy each quantization costs.

    python benchmarks/int8_shapes.py [--levels 64,128,256,512] [--batches 1,8] [--iters 40]
        [--warmup 5] [--rounds 8] [--threads N] [--seq 128]
        [--contenders fp32,fp32-ort-opt,dynamic,dynamic-pc,static,weight4,torch]
        [--checkpoint artifacts/text/checkpoint] [--json OUT]

The model is benchmarks/text_shapes.py's: randomly initialised (torch.manual_seed(0)) with
BERT-small's shape (d_model 512, 4 blocks, 64-wide heads, FFN 2048, 128 tokens, vocabulary
8000); each level is exported with to_onnx (opset 17, onnxsim). Speed does not depend on the
weights.

Contenders, per level and batch, on one array of random ids [batch, seq] in 2..7999 (every
position a real token, no padding):
  fp32          the exported graph, session_options(threads)
  fp32-ort-opt  the same graph and options plus the session config entry
                session.intra_op.allow_spinning = 0: the intra-op pool's idle workers sleep
                instead of busy-waiting for work, which matters on a small or shared CPU
  dynamic, dynamic-pc, static, weight4
                matryoshka.quantize.quantize_level of the fp32 graph with that method (static:
                calibrated on 64 random id rows); same session options as fp32
  torch         torch eager, the NESTED full model at that level under torch.no_grad()
                (torch.set_num_threads(--threads) when given)

Timing: all contenders of one (level, batch) run in one loop of --rounds round-robin blocks of
iters/rounds calls each, the starting contender rotating every round, so that the machine's
slow and fast moments fall on all alike. The table gives the p50 of each and fp32/contender
(a speed-up when > 1), the achieved GFLOP/s (model.flops_terms at --seq: per_token * seq +
per_pair * seq**2 + per_sample per sample) against the fp32 and INT8 MatMul peaks of this CPU,
and max|logits - torch| on the timed ids. The peaks are runtime.timing.matmul_peak's (fp32
MatMul, INT8 MatMulInteger), measured before and after the loop, the better kept. Absolute
times on a shared VM drift from run to run; the ratios are
what count. On a CPU that other work also uses, torch's default OpenMP pool (one thread per
core) can be an order of magnitude slower than with one thread: compare with --threads 1.

Accuracy (only with a trained checkpoint, --checkpoint, default artifacts/text/checkpoint when
it exists): every trained level of it is exported to fp32 ONNX and quantized with each selected
method (static calibrated on the val split); test accuracy of each, and the change from fp32 in
points. One pass each, no timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_shapes import CONFIG, LEVELS, SEQ, VOCAB, build  # noqa: E402

from matryoshka.exporter.graph import INPUT, to_onnx  # noqa: E402
from matryoshka.model import extract_level, flops_terms  # noqa: E402
from matryoshka.quantize import QUANTIZE_METHODS, quantize_level  # noqa: E402
from matryoshka.runtime.providers import CPU, session_options  # noqa: E402
from matryoshka.runtime.timing import device_name, matmul_peak, time_many  # noqa: E402

QUANT = tuple(QUANTIZE_METHODS)  # dynamic, dynamic-pc, static, weight4
CONTENDERS = ("fp32", "fp32-ort-opt", *QUANT, "torch")
OPT_KNOB = ("session.intra_op.allow_spinning", "0")
CALIBRATION_ROWS = 64
DEFAULT_CHECKPOINT = Path("artifacts/text/checkpoint")


def peaks(threads: int | None) -> dict:
    """The fp32 (GFLOP/s) and INT8 (GOP/s) MatMul peaks of runtime.timing.matmul_peak."""
    return {p: float(matmul_peak(p, [CPU], threads)) for p in ("fp32", "int8")}


# -- sessions ------------------------------------------------------------------------------------
def cpu_session(path: Path, threads: int | None, opt: bool = False) -> ort.InferenceSession:
    so = session_options(threads)
    if opt:
        so.add_session_config_entry(*OPT_KNOB)
    return ort.InferenceSession(str(path), so, providers=[CPU])


def quantize_all(src: Path, methods: list[str], calibration: np.ndarray, failures: list[str],
                 label: str) -> dict[str, Path]:
    """Each method's graph of `src`; a method that fails is reported, not raised."""
    out = {}
    for method in methods:
        dst = src.with_name(f"{src.stem}.{method}.onnx")
        t0 = time.perf_counter()
        try:
            quantize_level(src, dst, method, calibration=(INPUT, calibration))
        except Exception as e:  # report the exact error; the others still run
            msg = f"{label} {method}: {type(e).__name__}: {e}"
            print(f"QUANTIZATION FAILED: {msg}", file=sys.stderr, flush=True)
            failures.append(msg)
            continue
        print(f"  {label} {method}: {dst.stat().st_size / 2**20:.1f} MiB in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        out[method] = dst
    return out


# -- speed ---------------------------------------------------------------------------------------
def part_speed(args, contenders: list[str], peak: dict, tmp: Path, failures: list[str]
               ) -> list[dict]:
    model, fp32 = build(args.levels, args.threads, tmp)
    rng = np.random.default_rng(0)
    x_cal = rng.integers(2, VOCAB, (CALIBRATION_ROWS, args.seq), dtype=np.int64)
    rows = []
    for dim in args.levels:
        src = tmp / f"{dim}.onnx"  # where text_shapes.build wrote the level
        sessions = {}
        if "fp32" in contenders:
            sessions["fp32"] = fp32[dim]
        if "fp32-ort-opt" in contenders:
            sessions["fp32-ort-opt"] = cpu_session(src, args.threads, opt=True)
        methods = [m for m in QUANT if m in contenders]
        for method, path in quantize_all(src, methods, x_cal, failures, f"level {dim}").items():
            sessions[method] = cpu_session(path, args.threads)
        terms = flops_terms(CONFIG, dim)
        flops = terms["per_token"] * args.seq + terms["per_pair"] * args.seq**2 \
            + terms["per_sample"]
        for b in args.batches:
            x = np.random.default_rng(b).integers(2, VOCAB, (b, args.seq), dtype=np.int64)
            xt = torch.from_numpy(x)  # the same memory: all see exactly the same ids
            fns: dict[str, Callable[[], object]] = {}
            for name in contenders:  # the order of --contenders
                if name in sessions:
                    fns[name] = lambda s=sessions[name], x=x: s.run(None, {INPUT: x})
                elif name == "torch":
                    fns[name] = lambda d=dim, xt=xt: model(xt, level=d)
            with torch.no_grad():  # once around the loop, not a context per call
                ref = model(xt, level=dim).numpy()
                diffs = {n: float(np.abs(np.asarray(
                    fn()[0] if n in sessions else fn().numpy()) - ref).max())
                    for n, fn in fns.items()}
                timed = time_many(fns, args.warmup, args.iters, args.rounds)
            base = timed.get("fp32", {}).get("p50_ms")
            for name, t in timed.items():
                gflops = flops * b / (t["p50_ms"] / 1e3) / 1e9
                row = {"level": dim, "batch": b, "seq": args.seq, "contender": name, **t,
                       "speedup_vs_fp32": base / t["p50_ms"] if base else None,
                       "flops_per_sample": flops, "gflops": gflops,
                       "of_fp32_peak": gflops / peak["fp32"],
                       "of_int8_peak": gflops / peak["int8"],
                       "max_abs_diff_vs_torch": diffs[name]}
                rows.append(row)
                print(f"  level {dim} batch {b} {name}: p50 {t['p50_ms']:.3f} ms",
                      file=sys.stderr, flush=True)
        del sessions
    return rows


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def speed_table(rows: list[dict]) -> str:
    lines = ["| level | batch | contender | p50 ms | p90 ms | fp32/this | GFLOP/s | of fp32 peak "
             "| of int8 peak | max\\|Δ\\| vs torch |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sp = "" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}"
        lines.append(f"| {r['level']} | {r['batch']} | {r['contender']} | {r['p50_ms']:.3f} | "
                     f"{r['p90_ms']:.3f} | {sp} | {r['gflops']:.1f} | "
                     f"{_pct(r['of_fp32_peak'])} | {_pct(r['of_int8_peak'])} | "
                     f"{r['max_abs_diff_vs_torch']:.1e} |")
    return "\n".join(lines)


# -- accuracy ------------------------------------------------------------------------------------
def _accuracy(path: Path, x: np.ndarray, y: np.ndarray, threads: int | None,
              batch: int = 64) -> float:
    sess = cpu_session(path, threads)
    logits = np.concatenate([sess.run(None, {INPUT: x[i:i + batch]})[0]
                             for i in range(0, len(x), batch)])
    return float((logits.argmax(-1) == y).mean())


def part_accuracy(checkpoint: Path, methods: list[str], threads: int | None, tmp: Path,
                  failures: list[str]) -> dict:
    """Test accuracy of every trained level: fp32 ONNX and each method (as mexport loads the
    checkpoint, its tokenizer and its recorded data)."""
    from matryoshka.data.source import as_input, resolve
    from matryoshka.model.checkpoint import checkpoint_tokenizer, load_checkpoint
    from matryoshka.runtime.text import load_tokenizer

    model, metrics = load_checkpoint(checkpoint)
    cfg = model.config
    tokenizer_json = checkpoint_tokenizer(checkpoint, cfg)
    tokenizer = (None if tokenizer_json is None
                 else load_tokenizer(tokenizer_json, cfg.long_texts()))
    dataset, record = resolve(None, metrics.get("data") or "demo", tokenizer, cfg.pad_id)
    x_val = as_input(dataset["val"][0], cfg.input_kind)
    x_test, y_test = as_input(dataset["test"][0], cfg.input_kind), dataset["test"][1]
    res = {"checkpoint": str(checkpoint), "data": record, "n_test": int(len(y_test)),
           "n_calibration": int(len(x_val)), "levels": []}
    for dim in cfg.levels:
        src = tmp / f"acc-{dim}.onnx"
        to_onnx(extract_level(model, dim), src, 17, True, {"matryoshka.dim": str(dim)})
        row = {"level": dim, "fp32": _accuracy(src, x_test, y_test, threads)}
        for method, path in quantize_all(src, methods, x_val, failures,
                                         f"accuracy level {dim}").items():
            row[method] = _accuracy(path, x_test, y_test, threads)
        res["levels"].append(row)
    return res


def accuracy_table(acc: dict, methods: list[str]) -> str:
    head = "| level | fp32 | " + " | ".join(f"{m} | Δ pts" for m in methods) + " |"
    lines = [head, "|---:|---:|" + "---:|---:|" * len(methods)]
    for r in acc["levels"]:
        cells = [f"{r['fp32']:.4f}"]
        for m in methods:
            cells += ([f"{r[m]:.4f}", f"{100 * (r[m] - r['fp32']):+.2f}"] if m in r
                      else ["failed", ""])
        lines.append(f"| {r['level']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)),
                    help=f"levels to time [{','.join(map(str, LEVELS))}]")
    ap.add_argument("--batches", default="1,8", help="batch sizes [1,8]")
    ap.add_argument("--iters", type=int, default=40, help="timed calls of each contender [40]")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls of each [5]")
    ap.add_argument("--rounds", type=int, default=8, help="round-robin blocks [8]")
    ap.add_argument("--threads", type=int, default=None,
                    help="ORT intra-op threads and torch.set_num_threads [each one's default]")
    ap.add_argument("--seq", type=int, default=SEQ, help=f"ids per row, 1..{SEQ} [{SEQ}]")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help=f"a comma list of {', '.join(CONTENDERS)} [all]")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help=f"a trained model for the accuracy part [{DEFAULT_CHECKPOINT} if it "
                         "exists]")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.levels, args.batches = _ints(args.levels), _ints(args.batches)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    bad += [f"level {d}" for d in args.levels if d not in LEVELS]
    bad += [f"batch {b}" for b in args.batches if b < 1]
    if not 1 <= args.seq <= SEQ:
        bad.append(f"--seq {args.seq}")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        bad.append("--iters and --rounds must be >= 1, --warmup >= 0")
    if bad or not contenders or not args.levels or not args.batches:
        ap.error(f"invalid: {', '.join(bad) or 'empty list'} (contenders: "
                 f"{', '.join(CONTENDERS)}; levels: {', '.join(map(str, LEVELS))})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    methods = [m for m in QUANT if m in contenders]

    report: dict = {"machine": device_name(), "onnxruntime": ort.__version__,
                    "torch": torch.__version__, "threads": args.threads,
                    "torch_threads": torch.get_num_threads(), "seq": args.seq,
                    "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
                    "fp32_ort_opt": f"{OPT_KNOB[0]} = {OPT_KNOB[1]}", "failures": []}
    peak = report["peak_gflops"] = peaks(args.threads)
    failures = report["failures"]
    print(f"# int8_shapes: {report['machine']} | onnxruntime {ort.__version__} | torch "
          f"{torch.__version__} | threads {args.threads or 'defaults'} (torch uses "
          f"{torch.get_num_threads()})\n")

    with tempfile.TemporaryDirectory(prefix="int8-shapes-") as tmp:
        rows = report["speed"] = part_speed(args, contenders, peak, Path(tmp), failures)
    # A peak is a best rate: measure it again after the loop and keep the better of the two,
    # so that one slow moment of a shared CPU does not make it look too low.
    again = peaks(args.threads)
    peak["before"] = {k: peak[k] for k in ("fp32", "int8")}
    peak["after"] = dict(again)
    for k in ("fp32", "int8"):
        peak[k] = max(peak[k], again[k])
        for r in rows:
            r[f"of_{k}_peak"] = r["gflops"] / peak[k]
    print(f"MatMul peaks (the better of before and after the loop): fp32 {peak['fp32']:.1f} "
          f"GFLOP/s, int8 {peak['int8']:.1f} GOP/s\n")
    print(f"## speed: seq {args.seq}, {args.iters} calls each in {args.rounds} round-robin "
          f"rounds, {args.warmup} warmup; fp32-ort-opt = fp32 + {OPT_KNOB[0]}={OPT_KNOB[1]}\n")
    print(speed_table(rows))
    top = [r for r in rows if r["level"] == 512 and r["batch"] == 8]
    if top:
        print("\nlevel 512, batch 8: " + "; ".join(
            f"{r['contender']} {r['gflops']:.1f} GFLOP/s ({_pct(r['of_fp32_peak'])} of fp32, "
            f"{_pct(r['of_int8_peak'])} of int8 peak)" for r in top))

    checkpoint = args.checkpoint
    if checkpoint is None and DEFAULT_CHECKPOINT.is_dir():
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is None:
        report["accuracy"] = {"skipped": f"no --checkpoint and no {DEFAULT_CHECKPOINT}"}
        print(f"\naccuracy: skipped (no --checkpoint and no {DEFAULT_CHECKPOINT}; train one "
              "with the text demo)")
    elif not methods:
        report["accuracy"] = {"skipped": "no quantization method among --contenders"}
        print("\naccuracy: skipped (no quantization method among --contenders)")
    else:
        with tempfile.TemporaryDirectory(prefix="int8-acc-") as tmp:
            acc = report["accuracy"] = part_accuracy(checkpoint, methods, args.threads,
                                                     Path(tmp), failures)
        print(f"\n## accuracy: {checkpoint}, {acc['n_test']} test samples, static calibrated "
              f"on {acc['n_calibration']} val samples\n")
        print(accuracy_table(acc, methods))

    report["seconds"] = time.perf_counter() - start
    print(f"\n{len(failures)} quantization failure(s); {report['seconds']:.0f} s in all")
    for msg in failures:
        print(f"- {msg}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
