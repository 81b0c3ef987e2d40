"""On-device benchmarking of every level: latency percentiles, throughput, roofline, memory.

DESIGN.md, "Who uses it and how" (bench, select_level). numpy and onnxruntime only. The
machine is noisy, so every number is a median or percentile over many timed runs after a
warmup, and ratios are taken between rows of one run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from matryoshka.errors import ArtifactError, ConfigError, MatryoshkaError
from matryoshka.io import read_json_object, write_bytes_atomic, write_json_atomic, writer_lock
from matryoshka.runtime.cascade import relative_cost
from matryoshka.runtime.manifest import level_flops, level_name
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.text import trim

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
PEAK_GRAPHS = {"fp32": Path(__file__).with_name("matmul_peak.onnx"),
               "int8": Path(__file__).with_name("matmul_int8_peak.onnx")}
PERCENTILES = ("p50", "p90", "p99")


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


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 where unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


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
    machine's slow and fast moments fall on all alike. Returns each one's percentiles."""
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
    return {n: _stats(np.concatenate(ts)) for n, ts in times.items()}


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
                precision: str = "fp32") -> list[dict]:
    """Load one graph (timing the load and its memory), then time it on each batch of
    `inputs` (batch size -> rows). `graph` holds the bytes already checked against the
    manifest's sha256; `entry` is the level's manifest entry, for its FLOPs. Text (a pad_id):
    FLOPs are counted at the length each batch really runs (its padded length), and real
    tokens per second too. `peak` is the measured MatMul peak of `precision`."""
    before = rss_mb()
    t0 = time.perf_counter()
    session = ort.InferenceSession(graph, session_options(threads), providers=providers)
    load_ms = (time.perf_counter() - t0) * 1e3
    grown = rss_mb() - before
    rows = []
    for b, xb in inputs.items():
        t = time_call(lambda xb=xb: session.run(None, {input_name: xb}), warmup, iters)
        seconds = t["p50_ms"] / 1e3
        flops = level_flops(entry, int(xb.shape[1]) if pad_id is not None else None)
        gflops = flops * b / seconds / 1e9
        row = {"level": level, "batch": b, "precision": precision, **t,
               "throughput": b / seconds, "flops_per_sample": flops,
               "gflops": gflops, "roofline": gflops / peak if peak else None,
               "load_ms": load_ms, "rss_mb": grown, "bytes": len(graph),
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


# -- bench.json and select_level -------------------------------------------------------------
def read_bench(folder: Path) -> dict:
    path = Path(folder) / BENCH_JSON
    if not path.is_file():
        return {"records": []}
    data = read_json_object(path)
    if not isinstance(data.get("records"), list):
        raise ArtifactError(f"{path} has no 'records' list")
    return data


def store_record(folder: Path, record: dict) -> dict:
    """Replace the record of the same device, provider and threads; write atomically.
    Call with the folder's writer lock held (`run_bench` does)."""
    data = read_bench(folder)
    def key(r: dict) -> tuple:
        return (r.get("device"), r.get("provider"), r.get("threads"), r.get("variant", "fp32"),
                r.get("seq_len"))

    data["records"] = [r for r in data["records"] if key(r) != key(record)]
    data["records"].append(record)
    write_json_atomic(Path(folder) / BENCH_JSON, data)
    write_bytes_atomic(Path(folder) / BENCH_MD, bench_markdown(data).encode())
    return data


def new_record(provider: str, threads: int | None, peak: float,
               peak_int8: float | None = None) -> dict:
    """An empty bench record; peak (GFLOP/s, fp32) and peak_int8 (GOP/s) were measured in the
    same run as the levels."""
    return {"device": device_name(), "provider": provider, "threads": threads,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "onnxruntime": ort.__version__, "peak_gflops": peak, "peak_int8_gops": peak_int8,
            "results": [], "baselines": [], "cascade": [], "accuracy": {}}


def choose_level(results: list[dict], budget_ms: float, batch: int = 1,
                 percentile: str = "p90", order: list[str] | None = None) -> str:
    """The largest level (the last in `order`, the export's levels by FLOPs; by default the
    order the record measured them in) whose measured latency at `batch` fits `budget_ms`.
    Levels are named; records of schema 1 exports name them by their width."""
    if percentile not in PERCENTILES:
        raise ConfigError(f"percentile must be one of {', '.join(PERCENTILES)}")
    rows = [r for r in results if r["batch"] == batch]
    if not rows:
        raise MatryoshkaError(f"the bench record has no measurement at batch {batch}; run "
                              f"matryoshka bench --batch {batch}")
    rank = {name: i for i, name in enumerate(order or dict.fromkeys(
        str(r["level"]) for r in results))}
    fits = [str(r["level"]) for r in rows if r[f"{percentile}_ms"] <= budget_ms
            and str(r["level"]) in rank]
    if not fits:
        fastest = min(rows, key=lambda r: r[f"{percentile}_ms"])
        raise MatryoshkaError(f"no level fits {budget_ms:g} ms at batch {batch} "
                              f"({percentile}); the fastest, level {fastest['level']}, "
                              f"takes {fastest[f'{percentile}_ms']:.3f} ms")
    return max(fits, key=rank.__getitem__)


def _peaks(rec: dict) -> str:
    text = f"{rec['peak_gflops']:.1f} GFLOP/s fp32"
    if rec.get("peak_int8_gops"):
        text += f", {rec['peak_int8_gops']:.1f} GOP/s INT8"
    return text


def bench_markdown(data: dict) -> str:
    lines = ["# matryoshka bench", ""]
    for rec in data["records"]:
        lines += [f"## {rec['device']}, {rec['provider']}, threads {rec['threads']}, "
                  f"{rec.get('variant', 'fp32')}", "",
                  f"Measured {rec['created']} with onnxruntime {rec['onnxruntime']}; "
                  f"MatMul peak {_peaks(rec)}; roofline is against the peak of the row's "
                  "precision.", "",
                  "| level | precision | batch | p50 ms | p90 ms | p99 ms | samples/s | tokens/s "
                  "| GFLOP/s | roofline | load ms | RSS MB | size KB | accuracy |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rec["results"]:
            acc = rec.get("accuracy", {}).get(str(r["level"]))
            tokens = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
            lines.append(
                f"| {r['level']} | {r.get('precision', 'fp32')} | {r['batch']} | "
                f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                f"{r['p99_ms']:.3f} | {r['throughput']:.0f} | {tokens} | {r['gflops']:.1f} | "
                f"{r['roofline']:.2f} | {r['load_ms']:.1f} | {r['rss_mb']:.1f} | "
                f"{r['bytes'] / 1024:.0f} | {'' if acc is None else f'{acc:.4f}'} |")
        if rec.get("baselines"):
            lines += ["", "| baseline | level | batch | p50 ms | sliced p50 ms | ratio |",
                      "|---|---:|---:|---:|---:|---:|"]
            for b in rec["baselines"]:
                lines.append(f"| {b['name']} | {b['level']} | {b['batch']} | "
                             f"{b['p50_ms']:.3f} | {b['sliced_p50_ms']:.3f} | "
                             f"{b['ratio']:.2f} |")
        if rec.get("cascade"):
            lines += ["", "| cascade | batch | accuracy | ms/sample | relative cost | exits |",
                      "|---|---:|---:|---:|---:|---|"]
            for c in rec["cascade"]:
                exits = ", ".join(f"{d}: {f:.0%}" for d, f in zip(c["levels"],
                                                                   c["exit_fractions"]))
                lines.append(f"| {c['name']} | {c['batch']} | {c['accuracy']:.4f} | "
                             f"{c['ms_per_sample']:.4f} | {c['relative_cost']:.3f} | "
                             f"{exits} |")
        lines.append("")
    return "\n".join(lines)


# -- the whole bench ---------------------------------------------------------------------------
# A baseline maps (level, input batch) to a zero-argument call to time beside the sliced graph.
Baseline = Callable[[int, np.ndarray], Callable[[], object]]


def run_bench(folder: str | Path, device: str = "cpu", batches: list[int] | None = None,
              warmup: int = 10, iters: int = 100, threads: int | None = None,
              x: np.ndarray | None = None, y: np.ndarray | None = None,
              baselines: dict[str, Baseline] | None = None, notes: list[str] | None = None,
              progress: bool = True, variant: str = "fp32", seq_len: int | None = None) -> dict:
    """Measure every level of an export on this device; store and return the record.

    Text exports are timed on batches as long as their longest row (the data's own length
    mix), or at exactly `seq_len` tokens per row.

    >>> rec = run_bench("artifacts/demo/export", x=x_test, y=y_test)  # doctest: +SKIP
    """
    from matryoshka.runtime.runtime import Runtime

    batches = batches or [1, 8, 32]
    if any(b < 1 for b in batches):
        raise ConfigError(f"--batch sizes must be positive, got {batches}")
    check_counts(warmup, iters)  # before any work
    if x is None:
        raise ConfigError("bench needs real inputs (--data)")
    # A writer of bench.json: the lock is held from the first graph read to the record's
    # commit, so the record measures exactly the graphs that the manifest names meanwhile.
    with writer_lock(folder):
        rt = Runtime.open(folder, device=device, threads=threads, variant=variant)
        record = _measure(rt, x, y, batches, warmup, iters, threads, baselines or {},
                          notes or [], progress, seq_len)
        store_record(Path(folder), record)
    return record


def _measure(rt, x: np.ndarray, y: np.ndarray | None, batches: list[int], warmup: int,
             iters: int, threads: int | None, baselines: dict[str, Baseline],
             notes: list[str], progress: bool, seq_len: int | None = None) -> dict:
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
                                         precisions[level])
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
                record["baselines"].append({"name": name, "level": level, "batch": b, **theirs,
                                            "sliced_p50_ms": mine["p50_ms"],
                                            "ratio": theirs["p50_ms"] / mine["p50_ms"]})
            bar.update(1)
    bar.close()
    if y is not None:
        record["accuracy"] = {str(d): float((rt.predict(x, level=d).labels == y).mean())
                              for d in rt.levels}
        if rt.calibration() and rt.calibration().get("thresholds") is not None:
            record["cascade"] = [cascade_row(rt, x, y, b, flops, pad) for b in batches]
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


def cascade_row(rt, x: np.ndarray, y: np.ndarray, batch: int, flops: dict,
                pad_id: int | None = None, repeats: int = 5) -> dict:
    """Run the calibrated cascade over x in batches: accuracy, time per sample (the median
    of `repeats` timed passes after one untimed pass), exit fractions and relative cost.
    Text batches are cut to their longest row."""
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    if pad_id is not None:
        chunks = [trim(c, pad_id) for c in chunks]

    def one_pass():
        outs = [rt.predict(c) for c in chunks]
        return np.concatenate([o.levels for o in outs]), np.concatenate([o.labels for o in outs])

    lv, lab = one_pass()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    elapsed = float(np.median(times))
    dims = rt.cascade_levels()
    cost = float(relative_cost(lv, dims, [flops[d] for d in dims]).mean())
    return {"name": "cascade", "batch": batch, "accuracy": float((lab == y).mean()),
            "ms_per_sample": elapsed * 1e3 / len(x), "levels": dims,
            "exit_fractions": [float((lv == d).mean()) for d in dims], "relative_cost": cost,
            "thresholds": rt.calibration()["thresholds"]}


def bench_table(record: dict) -> str:
    """The terminal table of one bench record."""
    w = max([6, *(len(str(r["level"])) for r in record["results"])])  # mixes have names
    rows = [f"{record['device']} | {record['provider']} | threads {record['threads']} | "
            f"{record.get('variant', 'fp32')} | MatMul peak {_peaks(record)}",
            f"{'level':>{w}} {'prec':>4} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
            f"{'samples/s':>10} {'GFLOP/s':>8} {'roofline':>8} {'load ms':>8} {'RSS MB':>7} "
            f"{'acc':>7}"]
    text = any("tokens_per_s" in r for r in record["results"])
    if text:
        rows[0] += f" | sequence length: {record.get('seq_len')}"
        rows[1] += f" {'seq':>5} {'tokens/s':>10}"
    for r in record["results"]:
        acc = record.get("accuracy", {}).get(str(r["level"]))
        row = (f"{r['level']:>{w}} {r.get('precision', 'fp32'):>4} {r['batch']:>5} "
               f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} "
               f"{r['p99_ms']:>9.3f} {r['throughput']:>10.0f} {r['gflops']:>8.1f} "
               f"{r['roofline']:>8.2f} {r['load_ms']:>8.1f} {r['rss_mb']:>7.1f} "
               f"{'' if acc is None else f'{acc:.4f}':>7}")
        if text:
            row += f" {r['seq']:>5} {r['tokens_per_s']:>10.0f}"
        rows.append(row)
    for b in record.get("baselines", []):
        rows.append(f"baseline {b['name']:<7} level {b['level']:>4} batch {b['batch']:>3}: "
                    f"p50 {b['p50_ms']:.3f} ms vs sliced {b['sliced_p50_ms']:.3f} ms "
                    f"(x{b['ratio']:.2f})")
    for c in record.get("cascade", []):
        rows.append(f"cascade batch {c['batch']:>3}: accuracy {c['accuracy']:.4f}, "
                    f"{c['ms_per_sample']:.4f} ms/sample, relative cost "
                    f"{c['relative_cost']:.3f}, exits "
                    + ", ".join(f"{d}: {f:.0%}" for d, f in zip(c["levels"],
                                                                c["exit_fractions"])))
    for note in record.get("notes", []):
        rows.append(f"note: {note}")
    return "\n".join(rows)


def plot_bench(record: dict, out: str | Path) -> Path:
    """PNG of accuracy against p50 latency per sample: one line per batch size over the
    levels, and the calibrated cascade as stars. Needs matryoshka[plot] (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install matryoshka[plot]") from None
    acc = record.get("accuracy") or {}
    if not acc:
        raise ConfigError("--plot needs labelled data (--data) to place levels by accuracy")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    batches = sorted({r["batch"] for r in record["results"]})
    for b in batches:
        rows = [r for r in record["results"] if r["batch"] == b]
        xs = [r["p50_ms"] / b for r in rows]
        ys = [acc[str(r["level"])] for r in rows]
        (line,) = ax.plot(xs, ys, "o-", label=f"levels, batch {b}")
        for r, xv, yv in zip(rows, xs, ys):
            ax.annotate(str(r["level"]), (xv, yv), textcoords="offset points", xytext=(4, -10),
                        fontsize=8, color=line.get_color())
    for c in record.get("cascade", []):
        ax.plot([c["ms_per_sample"]], [c["accuracy"]], "*", markersize=13,
                label=f"cascade, batch {c['batch']} (cost {c['relative_cost']:.2f})")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("p50 latency per sample (ms, log scale)")
    ax.set_ylabel("test accuracy")
    threads = record["threads"] or "onnxruntime default"
    ax.set_title(f"{record['device']}, {record.get('variant', 'fp32')}\n{record['provider']}, "
                 f"threads: {threads}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    import os

    os.replace(tmp, out)
    return out
