"""What trimming each text batch's trailing padding saves a training step, timed side by side.

    python benchmarks/train_trim.py --data artifacts/data/reviews \\
        --pretrained artifacts/pretrained/all-MiniLM-L6-v2 [--levels 96,192,384]
        [--batch-size 16] [--max-len 128] [--steps 12] [--rounds 3]

The pretrained encoder is imported and nested as `matryoshka train --pretrained ... --levels`
does (without rewiring, which does not change a step's cost), and the same training batches
(drawn by seed 0) run one joint step each, padded to max_len as before the change and trimmed to
their longest text as `matryoshka train` now does, the two alternating in rounds so that slow
and fast moments of the machine fall on both. The median round's seconds per step are printed,
with their ratio and the mean tokens per batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from matryoshka.errors import MatryoshkaError
from matryoshka.training import TrainConfig, make_optimizer
from matryoshka.training.distributed import MultiLevel
from matryoshka.training.loop import train_step
from matryoshka.training.setup import TrainPlan, prepare


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--pretrained", required=True)
    ap.add_argument("--levels", default="96,192,384")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=None, help="tokens per text [128]")
    ap.add_argument("--steps", type=int, default=12, help="batches per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        p = prepare(TrainPlan(out="unused", data=args.data, pretrained=args.pretrained,
                              levels=args.levels, max_len=args.max_len, rewire=False,
                              progress=False,
                              recipe={"batch_size": args.batch_size}))
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = p.init
    tcfg: TrainConfig = p.recipe
    x = torch.as_tensor(p.dataset["train"][0])
    y = torch.as_tensor(p.dataset["train"][1], dtype=torch.long)
    order = np.random.default_rng(0).permutation(len(x))[:args.steps * tcfg.batch_size]
    batches = [(x[order[i:i + tcfg.batch_size]], y[order[i:i + tcfg.batch_size]])
               for i in range(0, len(order), tcfg.batch_size)]
    levels, alphas = list(model.config.levels), tcfg.alphas(model.config.levels)
    wrapped = MultiLevel(model)
    opt = make_optimizer(model, tcfg.lr, tcfg.weight_decay, tcfg.lr_scale)
    times: dict[str, list[float]] = {"padded": [], "trimmed": []}
    for _ in range(args.rounds):
        for name in times:
            start = time.perf_counter()
            for xb, yb in batches:
                xb = model.trim(xb) if name == "trimmed" else xb
                train_step(wrapped, opt, xb, yb, levels, tcfg, alphas, lr=0.0,
                           mask=model.mask(xb))
            times[name].append((time.perf_counter() - start) / len(batches))
    tokens = np.mean([model.trim(xb).shape[1] for xb, _ in batches])
    padded, trimmed = (statistics.median(times[k]) for k in ("padded", "trimmed"))
    print(f"{len(batches)} batches of {tcfg.batch_size}, levels {args.levels}, "
          f"{torch.get_num_threads()} threads; tokens per batch: {x.shape[1]} padded, "
          f"{tokens:.1f} trimmed on average")
    print(f"seconds per step (median of {args.rounds} rounds): padded {padded:.3f}, trimmed "
          f"{trimmed:.3f}; trimmed is {padded / trimmed:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
