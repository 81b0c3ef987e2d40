"""Test accuracy against measured latency: every level and calibrated cascade of text exports,
and the TF-IDF baseline, timed side by side on this machine.

    python benchmarks/frontier.py --export width=artifacts/minilm/width-export \\
        --export heads=artifacts/minilm/heads-export [--data artifacts/data/spam.csv or a folder]
        [--batches 1,32] [--mails 128] [--passes 5] [--threads 2]
        [--plot docs/frontier.png] [--json OUT]

Every item answers the same test mails, raw text in, labels out, tokenization included: each
level of each export in fp32 and INT8 (where the export has INT8 graphs), each calibrated
cascade (Runtime through cascade.onnx, as it answers by default: only the undecided rows
escalate), and TF-IDF +
logistic regression (benchmarks/text_baseline.py, fitted on the same training split). The
latency of an item at batch b is one pass over the first --mails test mails in batches of b,
divided by the mails; the passes of all items are timed in one round-robin
(runtime.timing.time_many), so slow and fast moments of the machine fall on all alike, and the
median pass is kept. Accuracy is over the whole test split. Each level and cascade is also
given against its export's largest level: throughput (x largest, same variant; x fp32) and
accuracy. A cascade is drawn for each
variant the export has a calibration of (`matryoshka calibrate EXPORT --variant int8`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.runtime import Runtime
from matryoshka.runtime.cascade import relative_cost
from matryoshka.runtime.manifest import level_name
from matryoshka.runtime.timing import device_name, time_many

VARIANTS = ("fp32", "int8")


def open_items(exports: dict[str, Path], threads: int | None) -> list[dict]:
    """One item per level and variant of each export, and one per calibrated cascade."""
    items = []
    for name, folder in exports.items():
        for variant in VARIANTS:
            try:
                rt = Runtime.open(folder, device="cpu", threads=threads, variant=variant,
                                  engine="levels")
            except MatryoshkaError as e:  # no INT8 graphs: that variant is left out
                print(f"{name}: no {variant} variant ({e})", file=sys.stderr)
                continue
            flops = {level_name(lv): float(lv["flops_per_sample"]) for lv in rt.manifest["levels"]}
            for level in rt.levels:
                items.append({"export": name, "variant": variant, "kind": "level",
                              "name": level, "rt": rt, "level": level,
                              "flops": flops.get(level)})
            if rt.calibration() and rt.calibration().get("thresholds") is not None:
                # as Runtime.predict answers by default: cascade.onnx, one session (the
                # levels engine alternates one session per level, whose spinning thread pools
                # take the cores from each other: docs/small-levels.md)
                graph = Runtime.open(folder, device="cpu", threads=threads, variant=variant,
                                     engine="graph")
                items.append({"export": name, "variant": variant, "kind": "cascade",
                              "name": "cascade", "rt": graph, "level": None, "flops": None,
                              "level_flops": flops})
            else:
                print(f"{name}: no {variant} calibration, so no {variant} cascade "
                      f"(matryoshka calibrate {folder} --variant {variant})", file=sys.stderr)
    return items


def runner(item: dict, batch: int):
    """texts -> labels for an item at a batch size (and the levels that answered)."""
    if item["kind"] == "tfidf":
        fn = item["predict"]
        return lambda texts: (np.concatenate([fn(texts[i:i + batch])
                                              for i in range(0, len(texts), batch)]), None)
    rt = item["rt"]

    def run(texts):
        rt.batch_size = batch
        out = rt.predict(texts, level=item["level"])
        return out.labels, out.levels
    return run


def measure(items: list[dict], texts: list[str], y: np.ndarray, sample: list[str],
            batches: list[int], passes: int) -> list[dict]:
    rows = []
    for item in items:  # accuracy over the whole test split, untimed
        labels, levels = runner(item, 32)(texts)
        item["accuracy"] = float((np.asarray(labels) == y).mean())
        if item["kind"] == "cascade":
            rt = item["rt"]
            dims, flops = rt.cascade_levels(), item["level_flops"]
            item["relative_cost"] = float(relative_cost(levels, dims,
                                                        [flops[d] for d in dims]).mean())
            item["exit_fractions"] = [float((levels == d).mean()) for d in dims]
    for b in batches:
        fns = {key(it): (lambda f=runner(it, b): f(sample)) for it in items}
        print(f"timing {len(fns)} items at batch {b}, {passes} passes of {len(sample)} mails",
              file=sys.stderr, flush=True)
        t = time_many(fns, 1, passes, rounds=passes)
        for it in items:
            row = {k: it[k] for k in ("export", "variant", "kind", "name", "accuracy")}
            row.update({k: it[k] for k in ("relative_cost", "exit_fractions", "flops")
                        if it.get(k) is not None})
            row.update(batch=b, ms_per_mail=t[key(it)]["p50_ms"] / len(sample))
            rows.append(row)
    return rows


def relative_to_largest(rows: list[dict]) -> None:
    """Add to each row of an export its throughput and accuracy against that export's largest
    level at the same batch: in the same variant (speedup, accuracy_change) and in fp32
    (speedup_fp32). Throughput is 1 / ms per text, so the speedup is the largest level's ms
    over the row's."""
    largest = {}
    for r in rows:
        if r["kind"] == "level":
            k = (r["export"], r["variant"], r["batch"])
            if k not in largest or r["flops"] > largest[k]["flops"]:
                largest[k] = r
    for r in rows:
        same = largest.get((r["export"], r["variant"], r["batch"]))
        fp32 = largest.get((r["export"], "fp32", r["batch"]))
        if same is not None:
            r["speedup"] = same["ms_per_mail"] / r["ms_per_mail"]
            r["accuracy_change"] = r["accuracy"] - same["accuracy"]
        if fp32 is not None:
            r["speedup_fp32"] = fp32["ms_per_mail"] / r["ms_per_mail"]


def key(item: dict) -> str:
    return f"{item['export']}/{item['variant']}/{item['name']}"


def plot(rows: list[dict], batches: list[int], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    exports = list(dict.fromkeys(r["export"] for r in rows if r["kind"] != "tfidf"))
    colors = dict(zip(exports, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(1, len(batches), figsize=(6.2 * len(batches), 4.8), squeeze=False)
    for ax, b in zip(axes[0], batches):
        at = [r for r in rows if r["batch"] == b]
        for export in exports:
            for variant, style in (("fp32", "-"), ("int8", "--")):
                lv = [r for r in at if r["export"] == export and r["variant"] == variant
                      and r["kind"] == "level"]
                if lv:
                    ax.plot([r["ms_per_mail"] for r in lv], [r["accuracy"] for r in lv],
                            style, marker="o", color=colors[export], ms=5,
                            label=f"{export} levels, {variant}")
                    for r in lv if variant == "fp32" else []:
                        ax.annotate(r["name"], (r["ms_per_mail"], r["accuracy"]), fontsize=8,
                                    xytext=(4, -10), textcoords="offset points")
                for r in (r for r in at if r["export"] == export and r["variant"] == variant
                          and r["kind"] == "cascade"):
                    ax.plot(r["ms_per_mail"], r["accuracy"], marker="*", ms=14,
                            color=colors[export], ls="none",
                            mfc=colors[export] if variant == "fp32" else "white",
                            label=f"{export} cascade, {variant} "
                                  f"({r['relative_cost']:.3f} of the FLOPs)")
        for r in (r for r in at if r["kind"] == "tfidf"):
            ax.plot(r["ms_per_mail"], r["accuracy"], marker="X", ms=10, color="black",
                    ls="none", label="TF-IDF + logistic regression")
            ax.axhline(r["accuracy"], color="black", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(f"ms per mail at batch {b} (median pass, tokenization included)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", action="append", default=[], metavar="NAME=DIR",
                    help="a text export to draw (repeat for several)")
    ap.add_argument("--data", type=Path, default=Path("artifacts/data/spam.csv"))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--mails", type=int, default=128, help="test mails per timed pass")
    ap.add_argument("--passes", type=int, default=5, help="timed passes of each item")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    ap.add_argument("--no-baseline", action="store_true", help="leave TF-IDF out")
    ap.add_argument("--plot", type=Path, help="write the figure (PNG) here")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    exports = {}
    for spec in args.export:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder, "manifest.json").is_file():
            print(f"error: --export takes NAME=DIR with an export folder; got {spec!r}",
                  file=sys.stderr)
            return 2
        exports[name] = Path(folder)
    if not exports:
        print("error: give at least one --export NAME=DIR", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.data.exists():  # a .csv/.jsonl file, or a folder of train/val/test files
        print(f"error: no data at {args.data}: run `bash scripts/fetch_text_demo.sh` (spam) "
              "or `bash scripts/fetch_reviews.sh` (the reviews)", file=sys.stderr)
        return 2
    from matryoshka.data.text import load_text

    texts, y = load_text(args.data).splits["test"]
    texts, y = list(texts), np.asarray(y)
    items = open_items(exports, args.threads)
    if not args.no_baseline:
        sys.path.insert(0, str(Path(__file__).parent))
        from text_baseline import fit

        report, predict = fit(args.data, 0)
        items.append({"export": "tfidf", "variant": "cpu", "kind": "tfidf",
                      "name": "TF-IDF + LR", "predict": predict, "flops": None})
    rows = measure(items, texts, y, texts[:args.mails], batches, args.passes)
    relative_to_largest(rows)
    machine = device_name()
    print(f"{machine} | {len(texts)} test mails | timed on {args.mails}, median of "
          f"{args.passes} passes")
    print(f"{'export':>8} {'variant':>7} {'item':>8} {'batch':>5} {'ms/mail':>9} "
          f"{'accuracy':>8} {'cost':>6} {'x largest':>9} {'x fp32':>7} {'acc diff':>8}")
    print("  cost: FLOPs of the largest level's; x largest / acc diff: throughput and accuracy "
          "against the export's largest level in the same variant; x fp32: throughput against "
          "its largest fp32 level; all at the same batch")
    for r in rows:
        cost = f"{r['relative_cost']:.3f}" if "relative_cost" in r else ""
        rel = (f"{r['speedup']:>8.2f}x {r['speedup_fp32']:>6.2f}x {r['accuracy_change']:>+8.4f}"
               if "speedup" in r and "speedup_fp32" in r else "")
        print(f"{r['export']:>8} {r['variant']:>7} {r['name']:>8} {r['batch']:>5} "
              f"{r['ms_per_mail']:>9.3f} {r['accuracy']:>8.4f} {cost:>6} {rel}")
    if args.plot:
        plot(rows, batches, args.plot,
             f"{', '.join(exports)} on {len(texts)} test mails; {machine}, onnxruntime CPU, "
             f"{args.threads or 'default'} threads")
        print(f"wrote {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "mails_timed": args.mails,
                                         "passes": args.passes, "threads": args.threads,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
