"""bench.json and bench.md: storing bench records, choosing a level from them, reports.

docs/design.md, "Data flow" (bench, select_level). Never imports the Runtime.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import onnxruntime as ort

from matryoshka.errors import ArtifactError, ConfigError, MatryoshkaError
from matryoshka.io import read_json_object, write_bytes_atomic, write_json_atomic
from matryoshka.runtime.cpu import describe, int8_features
from matryoshka.runtime.timing import device_name

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
PERCENTILES = ("p50", "p90", "p99")


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
            "cpu": int8_features(),
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
                  f"Measured {rec['created']} with onnxruntime {rec['onnxruntime']}"
                  + (f" on {describe(rec['cpu'])}" if rec.get("cpu") else "")
                  + f"; MatMul peak {_peaks(rec)}; roofline is against the peak of the row's "
                  "precision.", "",
                  "| level | precision | batch | p50 ms | p90 ms | p99 ms | samples/s | tokens/s "
                  "| GFLOP/s | roofline | load ms | session MB | run MB | size KB | accuracy |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rec["results"]:
            acc = rec.get("accuracy", {}).get(str(r["level"]))
            tokens = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
            lines.append(
                f"| {r['level']} | {r.get('precision', 'fp32')} | {r['batch']} | "
                f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                f"{r['p99_ms']:.3f} | {r['throughput']:.0f} | {tokens} | {r['gflops']:.1f} | "
                f"{r['roofline']:.2f} | {r['load_ms']:.1f} | {_mb(r.get('rss_mb'))} | "
                f"{_mb(r.get('rss_run_mb'))} | "
                f"{r['bytes'] / 1024:.0f} | {'' if acc is None else f'{acc:.4f}'} |")
        if rec.get("baselines"):
            lines += ["", "| baseline | level | batch | p50 ms | sliced p50 ms | ratio |",
                      "|---|---:|---:|---:|---:|---:|"]
            for b in rec["baselines"]:
                lines.append(f"| {b['name']} | {b['level']} | {b['batch']} | "
                             f"{b['p50_ms']:.3f} | {b['sliced_p50_ms']:.3f} | "
                             f"{b['ratio']:.2f} |")
        if rec.get("cascade"):
            lines += ["", "| cascade | engine | batch | accuracy | ms/sample | relative cost "
                      "| exits |", "|---|---|---:|---:|---:|---:|---|"]
            for c in rec["cascade"]:
                exits = ", ".join(f"{d}: {f:.0%}" for d, f in zip(c["levels"],
                                                                   c["exit_fractions"]))
                lines.append(f"| {c['name']} | {c.get('engine', 'levels')} | {c['batch']} | "
                             f"{c['accuracy']:.4f} | "
                             f"{c['ms_per_sample']:.4f} | {c['relative_cost']:.3f} | "
                             f"{exits} |")
        lines.append("")
    return "\n".join(lines)


def _mb(v) -> str:
    """A memory figure in MiB ('' where it could not be measured)."""
    return "" if v is None else f"{v:.1f}"


def bench_table(record: dict) -> str:
    """The terminal table of one bench record."""
    w = max([6, *(len(str(r["level"])) for r in record["results"])])  # mixes have names
    rows = [f"{record['device']} | {record['provider']} | threads {record['threads']} | "
            f"{record.get('variant', 'fp32')} | MatMul peak {_peaks(record)}"
            + (f" | {describe(record['cpu'])}" if record.get("cpu") else ""),
            f"{'level':>{w}} {'prec':>4} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
            f"{'samples/s':>10} {'GFLOP/s':>8} {'roofline':>8} {'load ms':>8} {'sess MB':>7} "
            f"{'run MB':>7} {'acc':>7}"]
    text = any("tokens_per_s" in r for r in record["results"])
    if text:
        rows[0] += f" | sequence length: {record.get('seq_len')}"
        rows[1] += f" {'seq':>5} {'tokens/s':>10}"
    for r in record["results"]:
        acc = record.get("accuracy", {}).get(str(r["level"]))
        row = (f"{r['level']:>{w}} {r.get('precision', 'fp32'):>4} {r['batch']:>5} "
               f"{r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} "
               f"{r['p99_ms']:>9.3f} {r['throughput']:>10.0f} {r['gflops']:>8.1f} "
               f"{r['roofline']:>8.2f} {r['load_ms']:>8.1f} {_mb(r.get('rss_mb')):>7} "
               f"{_mb(r.get('rss_run_mb')):>7} {'' if acc is None else f'{acc:.4f}':>7}")
        if text:
            row += f" {r['seq']:>5} {r['tokens_per_s']:>10.0f}"
        rows.append(row)
    for b in record.get("baselines", []):
        rows.append(f"baseline {b['name']:<7} level {b['level']:>4} batch {b['batch']:>3}: "
                    f"p50 {b['p50_ms']:.3f} ms vs sliced {b['sliced_p50_ms']:.3f} ms "
                    f"(x{b['ratio']:.2f})")
    for c in record.get("cascade", []):
        rows.append(f"cascade ({c.get('engine', 'levels')}) batch {c['batch']:>3}: "
                    f"accuracy {c['accuracy']:.4f}, "
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
                label=f"cascade ({c.get('engine', 'levels')}), batch {c['batch']} "
                f"(cost {c['relative_cost']:.2f})")
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


def select_level(folder: Path, levels: list[str], provider: str, budget_ms: float,
                 batch: int = 1, percentile: str = "p90", variant: str = "fp32",
                 threads: int | None = None) -> str:
    """The largest of `levels` (ordered by FLOPs) whose latency in the newest `bench` record
    of this device, `provider` and `variant` (and `threads`, where a record has them) fits
    budget_ms; Runtime.select_level asks it for its own folder.

    >>> select_level(Path("export"), ["64", "512"], "CPUExecutionProvider", 5.0)  # doctest: +SKIP
    '64'
    """
    here = device_name()
    records = [r for r in read_bench(folder)["records"]
               if r.get("device") == here and r.get("provider") == provider
               and r.get("variant", "fp32") == variant]
    if threads is not None:
        records = [r for r in records if r.get("threads") == threads] or records
    if not records:
        raise MatryoshkaError(f"no bench record for {here} with {provider} in {folder}; run: "
                              f"matryoshka bench {folder}")
    latest = max(records, key=lambda r: r.get("created", ""))
    return choose_level(latest["results"], budget_ms, batch, percentile, levels)
