"""The report of `matryoshka search`: the frontier as a table, and the accuracy-against-FLOPs
plot (matplotlib, the optional extra [plot]). Reads a search record (a dict, as search.json
holds it); imports nothing of the search itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from matryoshka.errors import ConfigError
from matryoshka.model.spec import Spec

log = logging.getLogger(__name__)
PLOT_NEEDS = "the search plot needs matplotlib: pip install matryoshka[plot]"


def search_table(record: dict) -> str:
    """The frontier as a fixed-width table: trained levels and the budget's best marked."""
    specs = [str(Spec.from_dict(p["spec"])) for p in record["frontier"]]
    w = max([len("spec"), *map(len, specs)])
    nw = max(len(p["name"]) for p in record["frontier"] + record.get("between", []))
    nw = max(nw, len("name"))
    budget = record.get("budget_flops")
    lines = [f"{record['method']} search: {len(record['candidates'])} specs scored on "
             f"{record['split']} (n {record['n']}); the frontier holds "
             f"{len(record['frontier'])}" + (f"; budget {budget / 1e6:g} MFLOPs"
                                              if budget is not None else ""),
             f"{'pick':>4}  {'name':<{nw}}  {'spec':<{w}}  {'MFLOPs':>9}  {'params':>10}  "
             f"{'val acc':>7}"]
    best = record.get("best")
    for p, spec in zip(record["frontier"], specs):
        marks = (["trained"] if p["trained"] else []) + (
            ["best under budget"] if best is not None and p["spec"] == best["spec"] else [])
        lines.append(f"{p.get('pick') or '-':>4}  {p['name']:<{nw}}  {spec:<{w}}  "
                     f"{p['flops_per_sample'] / 1e6:>9.4f}  {p['params']:>10,}  "
                     f"{p['accuracy']:>7.4f}  {', '.join(marks)}".rstrip())
    if record.get("between"):
        lines.append("between the trained levels (the most accurate inside each gap; "
                     "--pick between):")
        for p in record["between"]:
            spec = str(Spec.from_dict(p["spec"]))
            lines.append(f"{'-':>4}  {p['name']:<{nw}}  {spec:<{w}}  "
                         f"{p['flops_per_sample'] / 1e6:>9.4f}  {p['params']:>10,}  "
                         f"{p['accuracy']:>7.4f}")
    return "\n".join(lines)


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_beside(record: dict, path: Path) -> str | None:
    """search.png beside search.json (its name, for the record), or None with a warning when
    matplotlib is not installed."""
    png = path.with_suffix(".png")
    if _pyplot() is None:
        log.warning("%s; %s not written", PLOT_NEEDS, png)
        return None
    plot_search(record, png)
    return png.name


def plot_search(record: dict, out: str | Path) -> Path:
    """PNG of val accuracy against MFLOPs per sample: every scored spec, the frontier, the
    trained levels, and the budget with its best. Needs matryoshka[plot] (matplotlib)."""
    plt = _pyplot()
    if plt is None:
        raise ConfigError(PLOT_NEEDS)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    mf = [c["flops_per_sample"] / 1e6 for c in record["candidates"]]
    ax.plot(mf, [c["accuracy"] for c in record["candidates"]], ".", color="0.7",
            label="scored specs")
    front = record["frontier"]
    ax.plot([p["flops_per_sample"] / 1e6 for p in front], [p["accuracy"] for p in front], "-",
            color="C0", label="frontier")
    for p in front + record["levels"]:  # every trained level, on the frontier or not
        xy = (p["flops_per_sample"] / 1e6, p["accuracy"])
        trained = "pick" not in p
        ax.plot(*xy, "s" if trained else "o", color="C1" if trained else "C0",
                label="trained levels" if p is record["levels"][0] else None)
        ax.annotate(p["name"], xy, textcoords="offset points", xytext=(4, -10), fontsize=8)
    # the interesting band: from a little below the worst trained level to the top
    low = min(lv["accuracy"] for lv in record["levels"]) - 0.05
    ax.set_ylim(bottom=max(low, min(c["accuracy"] for c in record["candidates"]) - 0.01))
    for p in record.get("between", []):
        ax.plot(p["flops_per_sample"] / 1e6, p["accuracy"], "D", color="C2", markersize=5,
                label="between levels" if p is record["between"][0] else None)
    if record.get("budget_flops") is not None:
        ax.axvline(record["budget_flops"] / 1e6, color="C3", linestyle="--", label="budget")
    if record.get("best") is not None:
        b = record["best"]
        ax.plot([b["flops_per_sample"] / 1e6], [b["accuracy"]], "*", color="C3", markersize=14,
                label=f"best: {b['name']}")
    ax.set_xscale("log")
    ax.set_xlabel("MFLOPs per sample (log scale)")
    ax.set_ylabel(f"{record['split']} accuracy (n {record['n']})")
    ax.set_title(f"Mix'n'Match {record['method']} search: squares are trained levels", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["PLOT_NEEDS", "plot_beside", "plot_search", "search_table"]
