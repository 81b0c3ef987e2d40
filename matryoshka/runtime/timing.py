"""Timing on this device: latency percentiles, side-by-side timing, MatMul peaks, one level.

docs/design.md, "Data flow" (bench). numpy and onnxruntime only; percentiles after a warmup.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.errors import ConfigError
from matryoshka.runtime.manifest import level_flops
from matryoshka.runtime.memory import level_memory
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.text import trim

PEAK_GRAPHS = {"fp32": Path(__file__).with_name("matmul_peak.onnx"),
               "int8": Path(__file__).with_name("matmul_int8_peak.onnx")}


def device_name() -> str:
    """A stable name for this machine's processor, e.g. 'Intel(R) Xeon(R) ... (2 cores)'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def check_counts(warmup: int, iters: int) -> None:
    """Raise a ConfigError for --iters below 1 or a negative --warmup."""
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be non-negative, got {warmup}")


def _times(fn: Callable[[], object], n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def _stats(seconds: np.ndarray) -> dict:
    ms = seconds * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def time_call(fn: Callable[[], object], warmup: int, iters: int) -> dict:
    """Latency percentiles in ms of fn() after `warmup` untimed calls."""
    check_counts(warmup, iters)
    for _ in range(warmup):
        fn()
    return _stats(_times(fn, iters))


def time_many(fns: dict[str, Callable[[], object]], warmup: int, iters: int,
              rounds: int = 10) -> dict[str, dict]:
    """Time several calls side by side: `warmup` untimed calls of each, then round-robin
    blocks of iters/rounds calls each, the first one rotating every round, so that the
    machine's slow and fast moments fall on all alike. Returns each one's percentiles, and
    the median of each of its blocks in round order ("blocks_ms"), so that a ratio can be
    taken round by round."""
    check_counts(warmup, iters)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    per = max(1, iters // rounds)
    times: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for r in range(max(1, iters // per)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_times(fns[name], per))
    return {n: {**_stats(np.concatenate(ts)),
                "blocks_ms": [float(np.median(t) * 1e3) for t in ts]}
            for n, ts in times.items()}


def time_pair(fa: Callable[[], object], fb: Callable[[], object], warmup: int, iters: int,
              rounds: int = 10) -> tuple[dict, dict]:
    """`time_many` of two calls; returns both percentile dicts."""
    t = time_many({"a": fa, "b": fb}, warmup, iters, rounds)
    return t["a"], t["b"]


def matmul_peak(precision: str, providers: list[str], threads: int | None,
                sizes=(512, 1024, 2048), iters: int = 10) -> float:
    """The best median rate of a large square matrix product on the same provider and threads:
    GFLOP/s of an fp32 MatMul, or GOP/s of an INT8 MatMulInteger (uint8 x int8 -> int32, the
    kernel of onnxruntime's INT8 MatMuls), a multiply-add counted as 2 either way."""
    session = ort.InferenceSession(str(PEAK_GRAPHS[precision]), session_options(threads),
                                   providers=providers)
    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        if precision == "int8":
            a = rng.integers(0, 256, (n, n), dtype=np.uint8)
            b = rng.integers(-128, 128, (n, n), dtype=np.int8)
        else:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
        t = time_call(lambda a=a, b=b: session.run(None, {"a": a, "b": b}), 2, iters)
        best = max(best, 2.0 * n**3 / (t["p50_ms"] / 1e3) / 1e9)
    return best


def bench_level(graph: bytes, providers: list[str], threads: int | None, input_name: str,
                inputs: dict[int, np.ndarray], warmup: int, iters: int, entry: dict,
                peak: float, level: str, pad_id: int | None = None,
                precision: str = "fp32", fold_dequantize: bool = False) -> list[dict]:
    """Load one graph (timing the load; its memory, session and one run at the largest
    batch, is measured in a fresh process: runtime/memory.py), then time it on each batch of
    `inputs` (batch size -> rows). `graph` holds the bytes already checked against the
    manifest's sha256; `entry` is the level's manifest entry, for its FLOPs. Text (a pad_id):
    FLOPs are counted at the length each batch really runs (its padded length), and real
    tokens per second too. `peak` is the measured MatMul peak of `precision`.
    fold_dequantize: the session option a weight8 graph needs (providers.folds_dequantize)."""
    fold = fold_dequantize
    t0 = time.perf_counter()
    session = ort.InferenceSession(graph, session_options(threads, fold), providers=providers)
    load_ms = (time.perf_counter() - t0) * 1e3
    memory = level_memory(graph, inputs[max(inputs)], providers, threads,
                          fold_dequantize=fold)  # a fresh process
    rows = []
    for b, xb in inputs.items():
        t = time_call(lambda xb=xb: session.run(None, {input_name: xb}), warmup, iters)
        seconds = t["p50_ms"] / 1e3
        flops = level_flops(entry, int(xb.shape[1]) if pad_id is not None else None)
        gflops = flops * b / seconds / 1e9
        row = {"level": level, "batch": b, "precision": precision, **t,
               "throughput": b / seconds, "flops_per_sample": flops,
               "gflops": gflops, "roofline": gflops / peak if peak else None,
               "load_ms": load_ms, "rss_mb": memory["session_mb"],
               "rss_run_mb": memory["run_mb"], "rss_batch": max(inputs), "bytes": len(graph),
               "providers": session.get_providers()}
        if pad_id is not None:
            row["seq"] = int(xb.shape[1])
            row["tokens_per_s"] = float((xb != pad_id).sum()) / seconds
        rows.append(row)
    return rows


def batch_of(x: np.ndarray, b: int, pad_id: int | None = None,
             seq_len: int | None = None) -> np.ndarray:
    """b real samples, cycling through x when it has fewer. Text (a pad_id): the batch is
    as long as its longest row (the data's own length mix), or exactly seq_len ids."""
    idx = np.arange(b) % len(x)
    xb = x[idx]
    if pad_id is not None and seq_len is None:
        xb = trim(xb, pad_id)
    elif pad_id is not None:
        if seq_len > xb.shape[1]:
            xb = np.pad(xb, ((0, 0), (0, seq_len - xb.shape[1])), constant_values=pad_id)
        # every row exactly seq_len real ids: fill with [UNK] (1)
        xb = np.where(xb[:, :seq_len] == pad_id, 1, xb[:, :seq_len]).astype(x.dtype)
    return np.ascontiguousarray(xb)
