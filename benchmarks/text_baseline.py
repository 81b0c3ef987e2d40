"""The text demo's classical baseline: TF-IDF + logistic regression on the toolkit's own split.

    python benchmarks/text_baseline.py artifacts/data/spam.csv [--seed 0] [--json OUT]

The data go through matryoshka.data.text.load_text with the toolkit's defaults (seed, 10%
validation, 10% test), so the baseline sees exactly the train/val/test texts that a Matryoshka
model trained on the same file sees, and its test accuracy is directly comparable. Word uni- and
bigrams (sublinear tf, min_df=2) are fitted on train only; C of the logistic regression is chosen
from {0.1, 1, 10} by validation accuracy (ties go to the smaller C, the simpler model), and the
model with that C, fitted on train only, is scored on test once.

scikit-learn is not a dependency of the toolkit: it comes with the `baseline` extra
(`pip install -e ".[baseline]"`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

C_GRID = (0.1, 1.0, 10.0)


def run(path: Path, seed: int) -> dict:
    """Fit the baseline on the train split of `path`; the report as a JSON-able dict."""
    return fit(path, seed)[0]


def fit(path: Path, seed: int):
    """The report, and the fitted model as one callable: texts -> predicted labels."""
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from matryoshka.data.text import load_text

    data = load_text(path, text_column="text", label_column="label", seed=seed,
                     val_fraction=0.1, test_fraction=0.1)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        data.splits[s] for s in ("train", "val", "test"))

    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    f_train = vectorizer.fit_transform(x_train)
    vectorize_s = time.perf_counter() - t0
    f_val, f_test = vectorizer.transform(x_val), vectorizer.transform(x_test)

    by_c: dict[float, tuple[float, float, LogisticRegression]] = {}
    for c in C_GRID:
        t0 = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=2000).fit(f_train, y_train)
        fit_s = time.perf_counter() - t0
        by_c[c] = (float((model.predict(f_val) == y_val).mean()), fit_s, model)
    # max() keeps the first of equal keys, and C_GRID is ascending: a tie picks the smaller C
    best_c = max(C_GRID, key=lambda c: by_c[c][0])
    val_acc, fit_s, model = by_c[best_c]
    test_acc = float((model.predict(f_test) == y_test).mean())
    report = {
        "data": str(path),
        "seed": seed,
        "labels": list(data.labels),
        "sizes": {s: len(data.splits[s][0]) for s in ("train", "val", "test")},
        "model": "TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2) + "
                 "LogisticRegression(max_iter=2000)",
        "val_accuracy_by_C": {str(c): by_c[c][0] for c in C_GRID},
        "C": best_c,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "n_features": len(vectorizer.vocabulary_),
        # the cost of the chosen model alone: TF-IDF fit on train + logistic regression fit
        "fit_s": round(vectorize_s + fit_s, 3),
        "scikit_learn": sklearn.__version__,
    }
    return report, lambda texts: model.predict(vectorizer.transform(texts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="labelled text: a CSV/JSONL file with text,label")
    ap.add_argument("--seed", type=int, default=0, help="the split seed (the toolkit's default)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    try:
        import sklearn  # noqa: F401 - only to fail early with the install hint
    except ImportError:
        print('error: scikit-learn is missing; install the extra: pip install -e ".[baseline]"',
              file=sys.stderr)
        return 1
    from matryoshka.errors import MatryoshkaError

    try:
        report = run(args.data, args.seed)
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sizes = report["sizes"]
    print(f"{report['data']}: {', '.join(f'{n} {s}' for s, n in sizes.items())}; "
          f"classes {', '.join(report['labels'])}; seed {report['seed']}")
    print(f"{'C':>6} {'val acc':>8}")
    for c, acc in report["val_accuracy_by_C"].items():
        mark = "  <- chosen" if float(c) == report["C"] else ""
        print(f"{float(c):>6g} {acc:>8.4f}{mark}")
    print(f"{'val acc':>12} {'test acc':>9} {'features':>9} {'fit s':>7}")
    print(f"{report['val_accuracy']:>12.4f} {report['test_accuracy']:>9.4f} "
          f"{report['n_features']:>9d} {report['fit_s']:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
