"""The text demo's models side by side on the same test split: the TF-IDF + logistic-regression
baseline, then each checkpoint's levels (params, MFLOPs per mail, test accuracy), and each
export's calibrated cascade (accuracy, the share of the largest level's FLOPs it spends).

    python scripts/text_report.py --baseline artifacts/text/baseline.json \\
        --model "from scratch=artifacts/text/checkpoint" \\
        --model "MiniLM nested=artifacts/minilm-demo/checkpoint" \\
        --cascade "MiniLM nested=artifacts/minilm-demo/export"

Exit 2 on a missing or unreadable file, with one error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path}: {e}") from None


def _pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def rows(baseline: Path | None, models: list, cascades: list) -> list[tuple]:
    """(model, level, params, MFLOPs, test accuracy) rows; '' where a column has no value."""
    out = []
    if baseline is not None:
        b = _read(baseline)
        out.append(("TF-IDF + logistic regression", "", "", "", b["test_accuracy"]))
    for name, folder in models:
        m = _read(folder / "metrics.json")
        cfg = _read(folder / "config.json")
        heads = cfg.get("nesting") == "heads"
        for level in m["levels"]:
            k = str(level)
            out.append((name, f"h{level}" if heads else k, f"{m['params'][k] / 1e6:.1f} M",
                        f"{m['flops_per_sample'][k] / 1e6:,.0f}", m["test_accuracy"][k]))
    for name, folder in cascades:
        cal = _read(folder / "manifest.json").get("calibration") or {}
        for variant, rec in cal.items():
            test = rec["test"]
            out.append((f"{name}, calibrated cascade ({variant}, eps {rec['epsilon']:g})",
                        "+".join(rec["levels"]), "",
                        f"{test['relative_cost']:.3f} of the largest",
                        test["accuracy"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, help="benchmarks/text_baseline.py --json output")
    ap.add_argument("--model", type=_pair, action="append", default=[],
                    metavar="NAME=CHECKPOINT")
    ap.add_argument("--cascade", type=_pair, action="append", default=[],
                    metavar="NAME=EXPORT")
    args = ap.parse_args(argv)
    try:
        table = rows(args.baseline, args.model, args.cascade)
    except KeyError as e:
        print(f"error: a report lacks the field {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    head = ("model", "level", "params", "MFLOPs", "test acc")
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  test acc")
    for r in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + f"  {r[4]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
