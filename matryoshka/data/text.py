"""Users' labelled text: one CSV/JSONL file split by a seed, or a folder of train/val/test files.

docs/design.md, "The model" (Text) and "Errors". Needs numpy and the standard library
only; the tokenizer that turns these strings into ids lives in matryoshka.data.tokenizer.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matryoshka.errors import ConfigError, DataError, MissingArtifactError
from matryoshka.io import sha256_bytes

SPLITS = ("train", "val", "test")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

Rows = list[tuple[str, str]]  # (text, label) in file order


@dataclass(frozen=True)
class TextData:
    """Labelled strings per split; y indexes `labels`, and `source` reloads the same split."""

    splits: dict[str, tuple[list[str], np.ndarray]]  # "train"/"val"/"test" -> (texts, int64 y)
    labels: list[str]  # class names of the train split, sorted (integers by value)
    source: dict  # JSON-serialisable record: reload_text(source) gives these very splits


def is_text_source(path: str | Path) -> bool:
    """True for a .csv/.jsonl/.ndjson file, or a folder holding train.csv or train.jsonl etc."""
    p = Path(path)
    if p.is_dir():
        return bool(_split_files(p))
    return p.suffix.lower() in FORMATS


def load_text(path: str | Path, text_column: str = "text", label_column: str = "label",
              seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> TextData:
    """Read labelled text; one file is split by a seeded permutation, a folder is used as given.

    >>> data = load_text("reviews.csv", seed=0)  # doctest: +SKIP
    >>> sorted(data.splits), data.labels  # doctest: +SKIP
    (['test', 'train', 'val'], ['neg', 'pos'])
    """
    root = Path(path).resolve()
    files = _read_source(root)
    return _build(root, files, text_column, label_column, seed, val_fraction, test_fraction)


def reload_text(source: dict) -> TextData:
    """The splits recorded in `source` (from TextData.source), or an error if the data moved or
    changed since training."""
    try:
        root = Path(source["path"])
        args = (source["text_column"], source["label_column"], source["seed"],
                source["val_fraction"], source["test_fraction"])
        recorded = source["sha256"]
        if source["kind"] != "text":
            raise KeyError("kind")
    except (KeyError, TypeError):
        raise DataError(f"not a text data source record: {source!r}") from None
    if not root.exists():
        raise MissingArtifactError(f"the training data {root} was moved or deleted; put it back "
                                   "or pass the data again")
    files = _read_source(root)
    now = _sha256(files)
    if now != recorded:
        raise DataError(f"the training data {root} changed since training (sha256 recorded "
                        f"{recorded[:12]}, now {now[:12]})")
    text = _build(root, files, *args)
    return with_classes(text, source["class_order"]) if source.get("class_order") else text


def match_classes(data_labels: list[str], model_labels: list[str], where: str,
                  label_map: dict[str, str] | None = None) -> list[str]:
    """The data's class names in the order of a classifier's (its id2label): each data name
    first renamed by `label_map` (data name -> model name), then matched by name, else by name
    ignoring case, else transformers' default names LABEL_0, LABEL_1, ... to the data's
    integer labels 0, 1, ...; anything else is one DataError naming both.

    >>> match_classes(["ham", "spam"], ["SPAM", "HAM"], "m")
    ['spam', 'ham']
    >>> match_classes(["0", "1"], ["LABEL_0", "LABEL_1"], "m")
    ['0', '1']
    >>> match_classes(["0", "1"], ["NEG", "POS"], "m", {"0": "NEG", "1": "POS"})
    ['0', '1']
    """
    if label_map:
        unknown = sorted(set(label_map) - set(data_labels))
        if unknown:
            raise DataError(f"--label-map names {unknown[0]!r}, which is not a class of the "
                            f"data ({', '.join(data_labels)})")
        wrong = sorted(set(label_map.values()) - set(model_labels))
        if wrong:
            raise DataError(f"--label-map maps to {wrong[0]!r}, which is not a class of {where} "
                            f"({', '.join(model_labels)})")
        renamed = [label_map.get(name, name) for name in data_labels]
        order = match_classes(renamed, model_labels, where)
        return [data_labels[renamed.index(name)] for name in order]
    for key in (str, str.casefold):
        theirs = {key(name): name for name in data_labels}
        if len(theirs) == len(data_labels) and set(theirs) == {key(m) for m in model_labels}:
            return [theirs[key(m)] for m in model_labels]
    if model_labels == [f"LABEL_{i}" for i in range(len(model_labels))] and \
            sorted(data_labels) == sorted(str(i) for i in range(len(model_labels))):
        return [str(i) for i in range(len(model_labels))]
    raise DataError(f"{where} is a classifier of the classes {model_labels}, but the data has "
                    f"{data_labels}; the names must be the same (case aside), or pair them "
                    "with --label-map DATA=MODEL,...")


def with_classes(text: TextData, classes: list[str]) -> TextData:
    """The same splits with y indexing `classes`, an order of the same class names (an
    imported classifier's); the order is recorded in the source, so that reload_text gives
    it again."""
    if list(classes) == text.labels:
        return text
    if sorted(classes) != sorted(text.labels):
        raise DataError(f"the class order {classes} does not name the data's classes "
                        f"{text.labels}")
    index = np.array([classes.index(name) for name in text.labels], dtype=np.int64)
    splits = {s: (texts, index[y]) for s, (texts, y) in text.splits.items()}
    return TextData(splits=splits, labels=list(classes),
                    source={**text.source, "class_order": list(classes)})


# --- reading bytes ------------------------------------------------------------------------

def _split_files(folder: Path) -> dict[str, list[Path]]:
    """The split files present in `folder`, e.g. {"train": [folder/"train.csv"], ...}."""
    found: dict[str, list[Path]] = {}
    for split in SPLITS:
        for ext in FORMATS:
            if (folder / f"{split}{ext}").is_file():
                found.setdefault(split, []).append(folder / f"{split}{ext}")
    return found


def _read_source(root: Path) -> dict[str, tuple[Path, bytes]]:
    """{"all": (file, bytes)} for one file, or {"train": ..., "val": ..., "test": ...}."""
    if root.is_dir():
        found = _split_files(root)
        if not found:
            raise DataError(f"{root} holds no split files; a data folder needs train, val and "
                            f"test files, e.g. train.csv ({', '.join(FORMATS)})")
        missing = [s for s in SPLITS if s not in found]
        if missing:
            raise DataError(f"{root} lacks the {', '.join(missing)} split file(s); a data folder "
                            f"needs train, val and test files")
        paths = [p for ps in found.values() for p in ps]
        if len(paths) != len(SPLITS) or len({FORMATS[p.suffix] for p in paths}) != 1:
            raise DataError(f"{root}: the split files mix formats or repeat a split "
                            f"({', '.join(p.name for p in paths)}); keep one file per split, "
                            "all in one format")
        return {s: (ps[0], ps[0].read_bytes()) for s, ps in found.items()}
    if not root.is_file():
        raise MissingArtifactError(f"data file not found: {root}")
    if root.suffix.lower() not in FORMATS:
        raise DataError(f"{root}: unknown text data format {root.suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(FORMATS)} or a folder of train/val/test files")
    return {"all": (root, root.read_bytes())}


def _sha256(files: dict[str, tuple[Path, bytes]]) -> str:
    if "all" in files:
        return sha256_bytes(files["all"][1])
    # A folder: sorted by file name, with the names, so swapping two files' contents shows.
    lines = sorted(f"{p.name}:{sha256_bytes(b)}\n" for p, b in files.values())
    return sha256_bytes("".join(lines).encode())


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} is not UTF-8 (byte {e.start}, line {line}); convert it, e.g. "
                        f"iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
                        ) from None
    return text.removeprefix("\ufeff")  # a BOM would otherwise glue itself to the first column


# --- parsing ------------------------------------------------------------------------------

def _parse(path: Path, data: bytes, text_column: str, label_column: str) -> Rows:
    text = _decode(path, data)
    columns = (text_column, label_column)
    if FORMATS[path.suffix.lower()] == "csv":
        records = _csv_records(path, text, columns)
    else:
        records = _jsonl_records(path, text, columns)
    rows = [(_text(path, where, r[text_column]), _label(path, where, r[label_column]))
            for where, r in records]
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def _require(path: Path, keys, columns: tuple[str, str], where: str) -> None:
    """Each wanted column among `keys`, or an error that lists the columns and the option."""
    for col, option in zip(columns, ("--text-column", "--label-column")):
        if col not in keys:
            have = ", ".join(repr(k) for k in keys) or "none"
            raise DataError(f"{path} has no column {col!r} ({where} has {have}); set {option}")


def _csv_records(path: Path, text: str, columns: tuple[str, str]):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None:
            raise DataError(f"{path} is empty; a CSV file needs a header row")
        _require(path, reader.fieldnames, columns, "the header")
        for i, record in enumerate(reader, start=1):
            where = f"row {i} (line {reader.line_num})"
            if None in record:  # more fields than the header: usually an unquoted comma
                raise DataError(f"{path}, {where}: more fields than the header has; quote texts "
                                'that hold commas ("...")')
            yield where, record
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None


def _jsonl_records(path: Path, text: str, columns: tuple[str, str]):
    row = 0
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) carry nothing
        row += 1
        where = f"row {row} (line {n})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, {where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, {where}: not a JSON object; each line must be one object "
                            'such as {"text": "...", "label": "..."}')
        _require(path, record, columns, where)
        yield where, record


def _text(path: Path, where: str, value) -> str:
    if value is None:  # a CSV row with fewer fields than the header
        raise DataError(f"{path}, {where}: the text is missing (fewer fields than the header)")
    if not isinstance(value, str):
        raise DataError(f"{path}, {where}: the text is a {type(value).__name__}, not a string")
    if not value.strip():
        raise DataError(f"{path}, {where}: the text is empty; every text needs at least one word")
    return value


def _label(path: Path, where: str, value) -> str:
    # bool is an int in Python, but true/false as a class name is almost surely a mistake.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}, {where}: the label is missing or empty")
    if not isinstance(value, str):
        raise DataError(f"{path}, {where}: the label is a {type(value).__name__}; use a string "
                        "or an integer")
    return value.strip()


# --- splitting ----------------------------------------------------------------------------

def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    ok = 0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
    if not ok:
        raise ConfigError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must "
                          "each be in (0, 1) and sum to less than 1")


def _random_split(path: Path, rows: Rows, seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, Rows]:
    """Test first, then val, then train from one seeded permutation; file order within each."""
    n = len(rows)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val],
             "train": perm[n_test + n_val:]}
    for split, idx in parts.items():
        if len(idx) == 0:
            raise DataError(f"{path}: the {split} split is empty ({n} rows; val_fraction "
                            f"{val_fraction}, test_fraction {test_fraction}); add rows or change "
                            "the fractions")
    return {s: [rows[i] for i in np.sort(parts[s])] for s in SPLITS}


def _class_names(found: set[str]) -> list[str]:
    """Sorted, with integer names by value so that labels 0..9 map to indices 0..9."""
    try:
        return sorted(found, key=int)
    except ValueError:
        return sorted(found)


def _encode_labels(where: dict[str, Path], parts: dict[str, Rows]) -> tuple[list[str], dict]:
    labels = _class_names({lab for _, lab in parts["train"]})
    if len(labels) < 2:
        raise DataError(f"{where['train']}: the train split has {len(labels)} class(es) "
                        f"({', '.join(labels)}); a classifier needs at least 2")
    index = {name: i for i, name in enumerate(labels)}
    splits = {}
    for s in SPLITS:
        unknown = sorted({lab for _, lab in parts[s]} - index.keys())
        if unknown:
            raise DataError(f"{where[s]}: label {unknown[0]!r} appears in the {s} split but not "
                            f"in train; every class needs training examples")
        splits[s] = ([t for t, _ in parts[s]],
                     np.array([index[lab] for _, lab in parts[s]], dtype=np.int64))
    return labels, splits


def _build(root: Path, files: dict[str, tuple[Path, bytes]], text_column: str,
           label_column: str, seed: int | None, val_fraction: float | None,
           test_fraction: float | None) -> TextData:
    if "all" in files:
        _check_fractions(val_fraction, test_fraction)
        path, data = files["all"]
        rows = _parse(path, data, text_column, label_column)
        parts = _random_split(path, rows, seed, val_fraction, test_fraction)
        where = dict.fromkeys(SPLITS, path)
        fmt = FORMATS[path.suffix.lower()]
    else:
        parts = {s: _parse(p, b, text_column, label_column) for s, (p, b) in files.items()}
        where = {s: p for s, (p, _) in files.items()}
        fmt = "folder"
        seed = val_fraction = test_fraction = None  # a folder's split is its files, not a seed
    labels, splits = _encode_labels(where, parts)
    source = {"kind": "text", "path": str(root), "sha256": _sha256(files), "format": fmt,
              "text_column": text_column, "label_column": label_column, "seed": seed,
              "val_fraction": val_fraction, "test_fraction": test_fraction}
    return TextData(splits=splits, labels=labels, source=source)
