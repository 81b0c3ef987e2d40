"""Where a model's data came from, recorded so that export, calibrate and bench find the same
data again (and say so when it was moved or changed). docs/design.md, "Data flow".

A record is a JSON object: {"kind": "demo"}, {"kind": "npz", "path", "sha256"}, or a text
source from matryoshka.data.text ({"kind": "text", "path", "sha256", columns, split seed}).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matryoshka.data import DEMO_FILE, Dataset, load_dataset
from matryoshka.errors import DataError, MissingArtifactError, not_a_file
from matryoshka.io import sha256_file


def describe(name_or_path: str | Path) -> dict:
    """The record of 'demo' or of a .npz: its absolute path and sha256."""
    if str(name_or_path) == "demo":
        return {"kind": "demo", "sha256": sha256_file(DEMO_FILE)}
    path = Path(name_or_path).resolve()
    if not path.is_file():
        raise not_a_file(name_or_path, "data file")
    return {"kind": "npz", "path": str(path), "sha256": sha256_file(path)}


def class_names(record: dict, n_classes: int) -> list[str]:
    """The label names a record knows, else '0' .. 'n-1'."""
    names = record.get("labels") if isinstance(record, dict) else None
    return list(names) if names else [str(i) for i in range(n_classes)]


def load(record: dict | str, tokenizer=None, pad_id: int = 0) -> Dataset:
    """The numeric data set behind a record: arrays as the graphs take them. Text is
    tokenized with `tokenizer` (the model's own) and padded with the model's pad_id. A legacy
    record is a plain name or path."""
    if isinstance(record, str):
        return load_dataset(record)
    if "kind" not in record and "name" in record:  # manifests written before data records
        return load_dataset(record["name"])
    kind = record.get("kind")
    if kind == "demo":
        return load_dataset("demo")
    if kind == "npz":
        _check_unchanged(Path(record["path"]), record["sha256"])
        return load_dataset(record["path"])
    if kind == "text":
        from matryoshka.data.text import reload_text
        from matryoshka.data.tokenizer import encode_dataset

        if tokenizer is None:
            raise DataError("text data needs the model's tokenizer.json to be tokenized")
        return encode_dataset(tokenizer, reload_text(record), pad_id)
    raise DataError(f"unknown data record kind {kind!r}")


def resolve(data: str | None, recorded: dict | str | None, tokenizer=None,
            pad_id: int = 0) -> tuple[Dataset, dict]:
    """--data if given, else the recorded data: (numeric data set, its record). A text file
    given as --data is read with the recorded text and label columns (and class order), and
    text is padded with the model's pad_id."""
    if data is None:
        if not recorded:
            raise DataError("this model records no data; pass --data")
        if isinstance(recorded, str):  # checkpoints written before data records
            recorded = describe(recorded)
        return load(recorded, tokenizer, pad_id), recorded
    from matryoshka.data.text import is_text_source, load_text, with_classes

    if is_text_source(data):
        opts = recorded if isinstance(recorded, dict) and recorded.get("kind") == "text" else {}
        text = load_text(data, text_column=opts.get("text_column", "text"),
                         label_column=opts.get("label_column", "label"),
                         seed=opts.get("seed", 0))
        if opts.get("class_order") and sorted(opts["class_order"]) == sorted(text.labels):
            text = with_classes(text, opts["class_order"])
        if opts.get("labels") and text.labels != opts["labels"]:
            raise DataError(f"{data} has the labels {text.labels}; the model was trained on "
                            f"{opts['labels']}")
        record = load_text_record(text)
        return load(record, tokenizer, pad_id), record
    record = describe(data)
    return load(record), record


def for_export(folder: str | Path, manifest: dict, data: str | None) -> tuple[Dataset, dict]:
    """--data if given, else the data the export was made from (its manifest's record), with
    text tokenized by the export's own tokenizer.json (checked against its sha256)."""
    tokenizer = None
    if manifest.get("tokenizer"):
        from matryoshka.runtime.manifest import read_named
        from matryoshka.runtime.reading import Reading
        from matryoshka.runtime.text import load_tokenizer

        tokenizer = load_tokenizer(read_named(Path(folder), manifest["tokenizer"]),
                                   Reading.of(manifest["input"]))
    return resolve(data, manifest.get("data"), tokenizer,
                   manifest.get("input", {}).get("pad_id", 0))


def load_text_record(text) -> dict:
    """A text source's record, with its label names."""
    return {**text.source, "labels": list(text.labels)}


def _check_unchanged(path: Path, sha256: str) -> None:
    if not path.is_file():
        raise MissingArtifactError(f"the data {path} was moved or deleted since training; "
                                   "pass --data with its new place")
    now = sha256_file(path)
    if now != sha256:
        raise DataError(f"the data {path} changed since training (sha256 {sha256[:12]} then, "
                        f"{now[:12]} now); pass --data to use it anyway")


def as_input(x: np.ndarray, kind: str) -> np.ndarray:
    """x as the graphs take it: float32 images, int64 ids."""
    return x.astype(np.float32) if kind == "image" else x.astype(np.int64)
