"""A BERT-small-shape text model on the CPU: onnxruntime fp32 vs torch eager, and length
bucketing vs pad-to-longest on real texts.

    python benchmarks/text_shapes.py [--part shape|buckets|all] [--iters 50] [--pass-iters 5]
        [--warmup 5] [--threads N] [--batches 1,8] [--level 512]
        [--data artifacts/data/spam.csv] [--json OUT]

The model is randomly initialised (torch.manual_seed(0)) with BERT-small's shape: d_model 512,
4 blocks, 64-wide heads, FFN 2048, 128 tokens, vocabulary 8000; speed does not depend on the
weights, and parity is checked on the same weights.

shape: per level and batch, the level's exported graph (to_onnx, opset 17, onnxsim) in an
  onnxruntime CPU session against torch eager running the NESTED full model at that level (what a
  torch user would run), on one array of random ids [batch, 128]. Also max|ORT - torch|.
buckets: the test texts of --data at batch 32, one full pass (every batch, session.run each)
  with texts in input order, each batch padded to its own longest row, against
  runtime.text.buckets (sorted by length), each bucket padded to its longest. The logits of
  both are compared per text.

Both parts time their two contenders with runtime.timing.time_pair: alternating blocks of calls,
so that the machine's slow and fast moments fall on both alike; the table gives medians and the
ratio of medians. Absolute times on this VM drift from run to run; the ratios are what count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from matryoshka.exporter.graph import to_onnx
from matryoshka.model import MatryoshkaTransformer, extract_level
from matryoshka.model.config import MatryoshkaConfig
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.text import buckets, encode, pad
from matryoshka.runtime.timing import device_name, time_pair

LEVELS = (64, 128, 256, 512)
SEQ, VOCAB, BATCH = 128, 8000, 32
CONFIG = MatryoshkaConfig(d_model=512, levels=LEVELS, n_layers=4, head_dim=64, d_mid=2048,
                          ffn_nesting="proportional", input_kind="text", vocab_size=VOCAB,
                          max_len=SEQ, n_classes=2, name="bert-small-shape")


def build(levels: list[int], threads: int | None, tmp: Path
          ) -> tuple[MatryoshkaTransformer, dict[int, ort.InferenceSession]]:
    """The seeded nested model and one CPU session per exported level."""
    torch.manual_seed(0)
    model = MatryoshkaTransformer(CONFIG).eval()
    sessions = {}
    for dim in levels:
        path = tmp / f"{dim}.onnx"
        to_onnx(extract_level(model, dim), path, 17, True, {"matryoshka.dim": str(dim)})
        sessions[dim] = ort.InferenceSession(str(path), session_options(threads),
                                             providers=["CPUExecutionProvider"])
    return model, sessions


def part_shape(model: MatryoshkaTransformer, sessions: dict[int, ort.InferenceSession],
               batches: list[int], warmup: int, iters: int) -> list[dict]:
    rows = []
    for dim, sess in sessions.items():
        for b in batches:
            # ids >= 1: no padding, so both pay for every one of the 128 positions
            x = np.random.default_rng(0).integers(1, VOCAB, (b, SEQ), dtype=np.int64)
            xt = torch.from_numpy(x)  # the same memory: both see exactly the same ids
            with torch.inference_mode():  # once around the loop, not a context per call
                ort_t, torch_t = time_pair(lambda s=sess, x=x: s.run(None, {"x": x}),
                                           lambda d=dim, xt=xt: model(xt, level=d),
                                           warmup, iters)
                diff = float(np.abs(sess.run(None, {"x": x})[0]
                                    - model(xt, level=dim).numpy()).max())
            row = {"level": dim, "batch": b, "ort_p50_ms": ort_t["p50_ms"],
                   "torch_p50_ms": torch_t["p50_ms"],
                   "ratio": torch_t["p50_ms"] / ort_t["p50_ms"], "max_abs_diff": diff}
            print(f"{dim:>6} {b:>5} {row['ort_p50_ms']:>10.3f} {row['torch_p50_ms']:>10.3f} "
                  f"{row['ratio']:>11.2f} {diff:>12.2e}", flush=True)
            rows.append(row)
    return rows


def part_buckets(sess: ort.InferenceSession, data: Path, pass_iters: int) -> dict:
    from matryoshka.data.text import load_text
    from matryoshka.data.tokenizer import train_tokenizer

    split = load_text(data).splits  # text,label columns, seed 0: the toolkit's split
    tok = train_tokenizer(split["train"][0], vocab_size=VOCAB, max_len=SEQ)
    rows = encode(tok, split["test"][0])
    lengths = np.array([len(r) for r in rows])
    plans = {  # (row indices, padded ids) per batch; padded once here, outside the timing
        "pad-to-longest": [np.arange(i, min(i + BATCH, len(rows)))
                           for i in range(0, len(rows), BATCH)],
        "buckets": buckets(lengths, BATCH),
    }
    plans = {k: [(idx, pad([rows[i] for i in idx])) for idx in v] for k, v in plans.items()}

    def one_pass(plan: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [sess.run(None, {"x": ids})[0] for _, ids in plan]

    # warmup 1: a pass is a whole test set; time_pair alternates one pass of each per round
    t_pad, t_bkt = time_pair(lambda: one_pass(plans["pad-to-longest"]),
                             lambda: one_pass(plans["buckets"]), 1, pass_iters)
    logits = {}
    for name, plan in plans.items():  # scatter back: row idx[j] of the data got out[j]
        out = np.empty((len(rows), CONFIG.n_classes), dtype=np.float32)
        for (idx, _), res in zip(plan, one_pass(plan)):
            out[idx] = res
        logits[name] = out
    res = {"texts": len(rows), "real_tokens": int(lengths.sum()), "batch": BATCH,
           "max_abs_diff": float(np.abs(logits["pad-to-longest"] - logits["buckets"]).max())}
    for name, t in (("pad-to-longest", t_pad), ("buckets", t_bkt)):
        s = t["p50_ms"] / 1e3
        res[name] = {"p50_s": s, "texts_per_s": len(rows) / s,
                     "real_tokens_per_s": res["real_tokens"] / s,
                     "padded_tokens": int(sum(ids.size for _, ids in plans[name]))}
    res["ratio"] = res["pad-to-longest"]["p50_s"] / res["buckets"]["p50_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("shape", "buckets", "all"), default="all")
    ap.add_argument("--iters", type=int, default=50, help="timed calls of each, shape part")
    ap.add_argument("--pass-iters", type=int, default=5, help="timed passes of each, buckets")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls of each, shape part")
    ap.add_argument("--threads", type=int, default=None,
                    help="ORT intra-op threads and torch.set_num_threads [each one's default]")
    ap.add_argument("--batches", default="1,8", help="shape part batch sizes [1,8]")
    ap.add_argument("--level", type=int, default=512, choices=LEVELS, help="buckets part")
    ap.add_argument("--data", type=Path, default=Path("artifacts/data/spam.csv"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    do_shape, do_buckets = args.part in ("shape", "all"), args.part in ("buckets", "all")
    if do_buckets and not args.data.is_file():
        alone = args.part == "buckets"
        print(f"no text data at {args.data}: run `bash scripts/fetch_text_demo.sh`"
              + ("" if alone else " (skipping the buckets part)"), file=sys.stderr)
        if alone:
            return 2
        do_buckets = False
    report: dict = {"machine": device_name(), "onnxruntime": ort.__version__,
                    "torch": torch.__version__, "threads": args.threads,
                    "torch_threads": torch.get_num_threads()}
    print(f"{report['machine']} | onnxruntime {ort.__version__} | torch {torch.__version__} | "
          f"threads {args.threads or 'defaults'} (torch uses {torch.get_num_threads()})")
    with tempfile.TemporaryDirectory() as tmp:
        model, sessions = build(list(LEVELS) if do_shape else [args.level], args.threads,
                                Path(tmp))
    failed = []
    if do_shape:
        print(f"\nshape: ORT fp32 vs torch eager, seq {SEQ}, {args.iters} calls each "
              "alternating\n" f"{'level':>6} {'batch':>5} {'ORT p50 ms':>10} "
              f"{'torch p50':>10} {'torch/ORT':>11} {'max|diff|':>12}")
        report["shape"] = part_shape(model, sessions, batches, args.warmup, args.iters)
        failed += [f"shape level {r['level']} batch {r['batch']}: max|ORT - torch| "
                   f"{r['max_abs_diff']:.2e} >= 1e-3" for r in report["shape"]
                   if not r["max_abs_diff"] < 1e-3]
    if do_buckets:
        r = report["buckets"] = part_buckets(sessions[args.level], args.data, args.pass_iters)
        r["level"] = args.level
        print(f"\nbuckets: level {args.level}, {r['texts']} test texts of {args.data}, batch "
              f"{BATCH}, {r['real_tokens']} real tokens, {args.pass_iters} passes each "
              f"alternating\n{'':>15} {'p50 s/pass':>10} {'texts/s':>9} {'tokens/s':>10} "
              f"{'padded tokens':>13}")
        for name in ("pad-to-longest", "buckets"):
            v = r[name]
            print(f"{name:>15} {v['p50_s']:>10.3f} {v['texts_per_s']:>9.1f} "
                  f"{v['real_tokens_per_s']:>10.0f} {v['padded_tokens']:>13}")
        print(f"pad-to-longest / buckets: x{r['ratio']:.2f} time, padded tokens x"
              f"{r['pad-to-longest']['padded_tokens'] / r['buckets']['padded_tokens']:.2f}; "
              f"max|logits diff| {r['max_abs_diff']:.2e}")
        if not r["max_abs_diff"] < 1e-4:
            failed.append(f"buckets: logits differ from pad-to-longest by "
                          f"{r['max_abs_diff']:.2e} >= 1e-4")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for msg in failed:
        print(f"PARITY FAILED: {msg}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
