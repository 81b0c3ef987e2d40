"""On-device benchmarking of every level: the whole `matryoshka bench` run and its record.

docs/design.md, "Data flow" (bench). Times with runtime.timing, stores with runtime.records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matryoshka.errors import ConfigError
from matryoshka.io import writer_lock
from matryoshka.runtime.cascade import relative_cost
from matryoshka.runtime.manifest import level_name
from matryoshka.runtime.records import new_record, store_record
from matryoshka.runtime.runtime import ENGINES, Runtime
from matryoshka.runtime.text import trim
from matryoshka.runtime.timing import batch_of, bench_level, check_counts, matmul_peak, time_pair

# -- the whole bench ---------------------------------------------------------------------------
# A baseline maps (level, input batch) to a zero-argument call to time beside the sliced graph.
Baseline = Callable[[int, np.ndarray], Callable[[], object]]


def run_bench(folder: str | Path, device: str = "cpu", batches: list[int] | None = None,
              warmup: int = 10, iters: int = 100, threads: int | None = None,
              x: np.ndarray | None = None, y: np.ndarray | None = None,
              baselines: dict[str, Baseline] | None = None, notes: list[str] | None = None,
              progress: bool = True, variant: str = "fp32", seq_len: int | None = None,
              engine: str = "auto") -> dict:
    """Measure every level of an export on this device; store and return the record.

    Text exports are timed on batches as long as their longest row (the data's own length
    mix), or at exactly `seq_len` tokens per row. The calibrated cascade is timed through
    `engine`: "graph" (cascade.onnx), "levels", or "auto": both, where the export has the graph.

    >>> rec = run_bench("artifacts/demo/export", x=x_test, y=y_test)  # doctest: +SKIP
    """
    batches = batches or [1, 8, 32]
    if any(b < 1 for b in batches):
        raise ConfigError(f"--batch sizes must be positive, got {batches}")
    check_counts(warmup, iters)  # before any work
    if x is None:
        raise ConfigError("bench needs real inputs (--data)")
    # A writer of bench.json: the lock is held from the first graph read to the record's
    # commit, so the record measures exactly the graphs that the manifest names meanwhile.
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    with writer_lock(folder):
        rt = Runtime.open(folder, device=device, threads=threads, variant=variant,
                          engine="levels")
        cascades = [] if engine == "graph" else [rt]
        if engine == "graph" or (engine == "auto" and (rt.manifest.get("cascade") or {}).get(
                variant)):
            cascades.insert(0, Runtime.open(folder, device=device, threads=threads,
                                            variant=variant, engine="graph", preload=False))
        record = _measure(rt, x, y, batches, warmup, iters, threads, baselines or {},
                          notes or [], progress, seq_len, cascades)
        store_record(Path(folder), record)
    return record


def _measure(rt, x: np.ndarray, y: np.ndarray | None, batches: list[int], warmup: int,
             iters: int, threads: int | None, baselines: dict[str, Baseline],
             notes: list[str], progress: bool, seq_len: int | None = None,
             cascades: list | None = None) -> dict:
    from matryoshka.runtime.inputs import check_input

    x = check_input(x, rt.input_spec)
    pad = rt.input_spec.get("pad_id", 0) if rt.input_spec.get("kind") == "text" else None
    if seq_len is not None and (pad is None or not 1 <= seq_len <= rt.input_spec["max_len"]):
        raise ConfigError(f"--seq-len needs a text export and 1 <= seq_len <= "
                          f"{rt.input_spec.get('max_len')}; got {seq_len}")
    inputs = {b: batch_of(x, b, pad, seq_len) for b in batches}
    providers = rt._providers
    active = rt.providers[rt.levels[-1]]
    precisions = {d: rt.precision(d) for d in rt.levels}
    record = new_record(active[0], threads, matmul_peak("fp32", providers, threads),
                        matmul_peak("int8", providers, threads)
                        if "int8" in precisions.values() else None)
    peaks = {"fp32": record["peak_gflops"], "int8": record["peak_int8_gops"]}
    record["variant"], record["notes"] = rt.variant, list(notes)
    record["providers"] = active
    if pad is not None:
        record["seq_len"] = seq_len or "the data's length mix"
    entries = {level_name(lv): lv for lv in rt.manifest["levels"]}
    flops = {name: float(lv["flops_per_sample"]) for name, lv in entries.items()}
    trained = [name for name in rt.levels if name.isdigit()]  # the baselines know widths only
    steps = len(rt.levels) + len(trained) * len(baselines)
    bar = _progress(steps, progress)
    for level in rt.levels:
        record["results"] += bench_level(rt.graph_bytes(level), providers, threads,
                                         rt.input_spec["name"], inputs, warmup, iters,
                                         entries[level], peaks[precisions[level]], level, pad,
                                         precisions[level], rt.fold_dequantize(level))
        bar.update(1)
    for name, fn in baselines.items():
        for level in trained:
            if name == "padded" and level == rt.levels[-1]:
                bar.update(1)
                continue  # the full level padded to itself is the full level
            for b, xb in inputs.items():
                session = rt._session(level)
                mine, theirs = time_pair(
                    lambda s=session, xb=xb: s.run(None, {rt.input_spec["name"]: xb}),
                    fn(rt.dim(level), xb), warmup, iters)
                theirs.pop("blocks_ms")
                record["baselines"].append({"name": name, "level": level, "batch": b, **theirs,
                                            "sliced_p50_ms": mine["p50_ms"],
                                            "ratio": theirs["p50_ms"] / mine["p50_ms"]})
            bar.update(1)
    bar.close()
    if y is not None:
        record["accuracy"] = {str(d): float((rt.predict(x, level=d).labels == y).mean())
                              for d in rt.levels}
        if rt.calibration() and rt.calibration().get("thresholds") is not None:
            record["cascade"] = [cascade_row(c, x, y, b, flops, pad) for c in cascades or [rt]
                                 for b in batches]
    return record


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    """A tqdm bar where tqdm is installed (it is not a runtime dependency), else nothing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    # disable=None: tqdm hides itself when stderr is not a terminal (CI logs, pipes)
    return tqdm(total=total, desc="bench", disable=None if enabled else True, leave=False)


CASCADE_PASSES_S = 20.0  # timed passes over the test split stop here (at least 2 are timed)


def cascade_row(rt, x: np.ndarray, y: np.ndarray, batch: int, flops: dict,
                pad_id: int | None = None, repeats: int = 5) -> dict:
    """Run the calibrated cascade over x in batches: accuracy, time per sample (the median
    of up to `repeats` timed passes after one untimed pass; fewer, but at least 2, where they
    would take over CASCADE_PASSES_S: a pass of MiniLM's 590 test mails at batch 1 takes 10 s
    on 2 cores), exit fractions and relative cost. Text batches are cut to their longest row."""
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    if pad_id is not None:
        chunks = [trim(c, pad_id) for c in chunks]

    def one_pass():
        outs = [rt.predict(c) for c in chunks]
        return np.concatenate([o.levels for o in outs]), np.concatenate([o.labels for o in outs])

    t0 = time.perf_counter()
    lv, lab = one_pass()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(2, min(repeats, int(CASCADE_PASSES_S // max(first, 1e-9))))):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    elapsed = float(np.median(times))
    dims = rt.cascade_levels()
    cost = float(relative_cost(lv, dims, [flops[d] for d in dims]).mean())
    return {"name": "cascade", "engine": rt.engine, "batch": batch,
            "accuracy": float((lab == y).mean()),
            "ms_per_sample": elapsed * 1e3 / len(x), "timed_passes": len(times), "levels": dims,
            "exit_fractions": [float((lv == d).mean()) for d in dims], "relative_cost": cost,
            "thresholds": rt.calibration()["thresholds"]}
