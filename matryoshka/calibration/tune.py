"""`matryoshka tune`: time fp32 and INT8 of every level side by side on this device, score both
on held-out data, and write the precision plan into manifest.json.

docs/design.md, "Escalation and calibration". Every INT8 graph is first checked against exact
integer arithmetic on this device (matryoshka/int8_check.py). The choice itself is
`runtime.plan.choose_precisions`; this module measures. The plan is chosen for one
deployment batch size (the best choice at every other measured batch is recorded beside it),
because calibration must be done on exactly the graphs that run: `matryoshka calibrate
--variant auto` then certifies the planned cascade.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from matryoshka.calibration.calibrate import accuracy_of, check_labels, level_logits
from matryoshka.data.source import for_export
from matryoshka.errors import ConfigError
from matryoshka.folder.cascades import commit
from matryoshka.int8_check import check_entry
from matryoshka.runtime import Runtime
from matryoshka.runtime.cpu import describe, int8_features
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import (
    level_name,
    manifest_writer,
    named_files,
    read_manifest,
)
from matryoshka.runtime.plan import PRECISIONS, plan_by_batch
from matryoshka.runtime.providers import check_threads
from matryoshka.runtime.timing import batch_of, check_counts, device_name, time_pair

log = logging.getLogger(__name__)


def tune(export_dir: str | Path, data: str | None = None, split: str = "val",
         batches: tuple[int, ...] = (1, 8, 32), for_batch: int = 1, max_loss: float = 0.005,
         device: str = "cpu", threads: int | None = None, warmup: int = 5, iters: int = 50,
         progress: bool = True) -> dict:
    """Measure every (level, precision) pair at each batch size and commit the plan for
    `for_batch`: per level, the fastest precision whose accuracy on `split` is at most
    `max_loss` (a fraction: 0.005 is half a point) below the level's fp32 accuracy.

    >>> plan = tune("artifacts/demo/export", batches=(1, 32), for_batch=32)  # doctest: +SKIP
    >>> plan["precisions"]                                                   # doctest: +SKIP
    ['fp32', 'fp32', 'int8', 'int8']
    """
    _check_args(split, batches, for_batch, max_loss, warmup, iters, threads)
    export_dir = Path(export_dir)
    dataset, _ = for_export(export_dir, read_manifest(export_dir), data)
    with manifest_writer(export_dir) as manifest:
        if any("int8" not in lv for lv in manifest["levels"]):
            raise ConfigError("tune compares fp32 with INT8, and this export has no INT8 graph "
                              "for every level: export with --quantize dynamic (or "
                              "dynamic-pc), or run matryoshka calibrate --int8 static")
        check_labels(dataset, manifest["output"]["shape"][-1], data or "the export's data")
        x = check_input(dataset[split][0], manifest["input"])
        y = dataset[split][1]
        # on the device the plan is for: INT8 kernels that are not exact here fail the plan
        checks = {level_name(lv): check_entry(export_dir, level_name(lv), lv["int8"],
                                              lv.get("flops_per_sample") or 0, x)
                  for lv in manifest["levels"]}
        runtimes = {p: Runtime.from_manifest(export_dir, manifest, device, threads, variant=p)
                    for p in PRECISIONS}
        timings = _time_levels(runtimes, x, batches, warmup, iters, progress)
        logits = {p: level_logits(rt, x) for p, rt in runtimes.items()}
        accuracy = {str(d): {p: accuracy_of(logits[p][i], y) for p in PRECISIONS}
                    for i, d in enumerate(runtimes["fp32"].levels)}
        by_batch = plan_by_batch(timings, accuracy, runtimes["fp32"].levels, max_loss)
        fp32 = runtimes["fp32"]
        plan = {
            "precisions": by_batch[str(for_batch)], "batch": for_batch, "max_loss": max_loss,
            "by_batch": by_batch, "device": device_name(), "cpu": int8_features(),
            "int8_check": checks,
            "provider": fp32.providers[fp32.levels[-1]][0], "threads": threads,
            "split": split, "n": int(len(y)),
            "int8_methods": [lv["int8"].get("method") for lv in manifest["levels"]],
            "accuracy": accuracy, "timings": timings,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        manifest["plan"] = plan
        if (manifest.get("calibration") or {}).pop("auto", None) is not None:
            log.warning("the auto calibration was fitted on the previous plan's graphs and was "
                        "dropped; run: matryoshka calibrate %s --variant auto", export_dir)
        commit(export_dir, manifest, named_files(manifest), x)
    return plan


def _check_args(split, batches, for_batch, max_loss, warmup, iters, threads) -> None:
    if split not in ("train", "val"):
        raise ConfigError(f"--split must be train or val (test is kept for the report); "
                          f"got {split!r}")
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"--batch sizes must be positive; got {list(batches)}")
    if for_batch not in batches:
        raise ConfigError(f"--for-batch {for_batch} must be one of the measured --batch sizes "
                          f"({', '.join(map(str, batches))})")
    if not 0.0 <= max_loss < 1.0:  # NaN fails this too
        raise ConfigError(f"--max-loss must be at least 0 points and below 100; got "
                          f"{max_loss * 100:g}")
    check_counts(warmup, iters)
    check_threads(threads)


def _time_levels(runtimes: dict[str, Runtime], x: np.ndarray, batches, warmup: int,
                 iters: int, progress: bool) -> list[dict]:
    """fp32 and INT8 of each level timed side by side (alternating blocks of calls) at each
    batch size, on real rows; text batches are as long as their longest row."""
    fp32, int8 = runtimes["fp32"], runtimes["int8"]
    spec = fp32.input_spec
    pad = spec.get("pad_id", 0) if spec.get("kind") == "text" else None
    inputs = {b: batch_of(x, b, pad) for b in batches}
    timings = []
    steps = [(d, b) for d in fp32.levels for b in batches]
    for dim, b in tqdm(steps, desc="tune", disable=None if progress else True, leave=False):
        xb = inputs[b]
        tf, ti = time_pair(lambda d=dim, xb=xb: fp32.run_level(d, xb),
                           lambda d=dim, xb=xb: int8.run_level(d, xb), warmup, iters)
        # the speed-up of INT8 in each round (the two ran in alternating blocks), and a 95%
        # lower confidence bound of its median: the margin the plan needs before it trusts
        # INT8 (runtime.plan)
        speedups = [f / q for f, q in zip(tf.pop("blocks_ms"), ti.pop("blocks_ms"))]
        ti.update(speedup_low=median_lower_bound(speedups),
                  speedup_median=float(np.median(speedups)), rounds=len(speedups))
        for precision, t in (("fp32", tf), ("int8", ti)):
            timings.append({"level": dim, "batch": b, "precision": precision, **t})
    return timings


def median_lower_bound(values: list[float], confidence: float = 0.95) -> float:
    """A distribution-free lower confidence bound of the median: the k-th smallest value,
    with k the largest for which P(Binomial(n, 1/2) <= k - 1) <= 1 - confidence (10 rounds:
    the 2nd smallest, which lies below the median with probability 98.9%). One slow round (a
    hiccup of the machine) does not sink it, as it sinks the minimum; with too few rounds for
    any k, the minimum.

    >>> median_lower_bound([0.8, 3.1, 3.2, 3.3, 3.3, 3.4, 3.4, 3.5, 3.5, 3.6])
    3.1
    """
    n = len(values)
    k, below = 1, 0.0  # below = P(Binomial(n, 1/2) <= k - 1)
    for j in range(n):
        below += math.comb(n, j) / 2**n
        if below > 1 - confidence:
            break
        k = j + 1
    return float(sorted(values)[min(k, n) - 1])


def plan_table(plan: dict, levels: list[str]) -> str:
    """The closing report of `matryoshka tune`."""
    lines = [f"plan for batch {plan['batch']} on {plan['device']}, {plan['provider']}, "
             f"threads {plan['threads']} (accuracy bound: {plan['max_loss'] * 100:g} points "
             f"on {plan['split']}, n {plan['n']})",
             f"INT8 on this CPU ({describe(plan['cpu']) if plan.get('cpu') else 'not recorded'}"
             "): every graph's kernels equal exact ones (max |logit diff| "
             + ", ".join(f"{d}: {c['kernel_max_abs']:.2g}" for d, c in
                         (plan.get("int8_check") or {}).items()) + ")",
             f"{'level':>6} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'speed-up':>8} "
             f"{'lowest':>7} {'fp32 acc':>9} {'int8 acc':>9}  choice"]
    p50 = {(t["level"], t["batch"], t["precision"]): t["p50_ms"] for t in plan["timings"]}
    low = {(t["level"], t["batch"]): t.get("speedup_low") for t in plan["timings"]
           if t["precision"] == "int8"}
    for i, dim in enumerate(levels):
        acc = plan["accuracy"][str(dim)]
        for b in sorted({t["batch"] for t in plan["timings"]}):
            f, q = p50[(dim, b, "fp32")], p50[(dim, b, "int8")]
            choice = plan["by_batch"][str(b)][i]
            mark = " (plan)" if b == plan["batch"] else ""
            lo = low.get((dim, b))
            lo = "" if lo is None else f"{lo:.2f}x"
            lines.append(f"{dim:>6} {b:>5} {f:>9.3f} {q:>9.3f} {f / q:>7.2f}x {lo:>7} "
                         f"{acc['fp32']:>9.4f} {acc['int8']:>9.4f}  {choice}{mark}")
    lines.append("planned precisions: " + ", ".join(
        f"{d}: {p}" for d, p in zip(levels, plan["precisions"])))
    lines.append("(lowest: a 95% lower bound of INT8's median speed-up over the rounds of "
                 "alternating blocks; the plan takes INT8 only when it is above 1)")
    return "\n".join(lines)
