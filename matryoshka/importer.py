"""`matryoshka import`: a Hugging Face model folder written as a checkpoint, exactly as imported,
with no training (model/pretrained.py, model/families.py).

A fine-tuned `*ForSequenceClassification` keeps its head and its class names, so that
`mexport --checkpoint OUT --levels FULL_WIDTH` exports the user's own classifier as it is, and
`train --init-from OUT --levels ...` nests it with the classifier itself as the teacher. A
base encoder gets a new head, sized by the data's classes (as `train --pretrained` makes it).
With data, its record is kept (export, calibrate and bench find it again) and an imported
classifier's test accuracy is measured; the data's class names are matched to the model's.

    >>> metrics = import_checkpoint("my-sst2-model", "artifacts/sst2/checkpoint",
    ...                             data="sst2.csv")  # doctest: +SKIP
    >>> metrics["test_accuracy"]  # doctest: +SKIP
    {'768': 0.91}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from matryoshka.errors import ConfigError
from matryoshka.io import atomic_dir, check_out_dir, sha256_file

log = logging.getLogger(__name__)


def import_checkpoint(folder: str | Path, out: str | Path, data: str | None = None,
                      text_column: str = "text", label_column: str = "label",
                      split_seed: int = 0, max_len: int | None = None,
                      name: str | None = None, seed: int = 0,
                      label_map: dict[str, str] | None = None, force: bool = False,
                      say: Callable[[str], None] | None = None) -> dict:
    """Import `folder` and write it to the checkpoint folder `out` (atomically); returns its
    metrics.json: the class names, the source (path, model_type, architecture, the sha256 of
    its weights) and, with `data`, its record and a classifier's test accuracy."""
    from matryoshka.model.checkpoint import save_checkpoint
    from matryoshka.model.pretrained import (
        BIN_FILE,
        CONFIG_FILE,
        WEIGHTS_FILE,
        classifier_labels,
        import_encoder,
        read_hf_config,
    )

    say = say or log.info
    check_out_dir(out, force)
    folder = Path(folder)
    _, cfg = read_hf_config(folder)
    if classifier_labels(cfg, str(folder / CONFIG_FILE)) is None and data is None:
        raise ConfigError(f"{folder} is a base model without a classifier head: give --data, "
                          "whose classes size its new head")
    text = None
    if data is not None:
        from matryoshka.data.text import load_text

        text = load_text(data, text_column=text_column, label_column=label_column,
                         seed=split_seed)
    model, tokenizer, classes = import_encoder(
        folder, n_classes=len(text.labels) if text else None, max_len=max_len,
        name=name or folder.name, seed=seed)
    weights = folder / WEIGHTS_FILE if (folder / WEIGHTS_FILE).is_file() else folder / BIN_FILE
    if label_map and (classes is None or text is None):
        raise ConfigError("--label-map pairs --data's classes with a fine-tuned classifier's; "
                          + ("give --data" if classes else f"{folder} is a base encoder"))
    metrics: dict = {"imported_from": {
        "path": str(folder.resolve()), "model_type": cfg.get("model_type"),
        "architecture": (cfg.get("architectures") or [None])[0],
        "weights": weights.name, "sha256": sha256_file(weights)},
        "labels": list(classes) if classes else None}
    if text is not None:
        metrics.update(_with_data(model, tokenizer, text, classes, str(folder), say,
                                  label_map))
    c = model.config
    say(f"imported {metrics['imported_from']['architecture'] or c.name}: width {c.d_model}, "
        f"{c.n_layers} layers, {c.n_heads} heads, {c.n_classes} classes "
        f"({', '.join(metrics['labels'])})"
        + ("" if classes else "; the classifier head is new (train it with --init-from)"))
    with atomic_dir(out, force) as tmp:
        save_checkpoint(tmp, model, metrics, {"tokenizer.json": tokenizer.to_str().encode()})
    return metrics


def _with_data(model, tokenizer, text, classes: list[str] | None, where: str,
               say: Callable[[str], None], label_map: dict[str, str] | None = None) -> dict:
    """The data's record, its class names in the model's order, and an imported
    classifier's test accuracy at full width."""
    from matryoshka.data.source import load_text_record
    from matryoshka.data.text import match_classes, with_classes
    from matryoshka.data.tokenizer import encode_dataset

    if classes is not None:
        text = with_classes(text, match_classes(text.labels, classes, where, label_map))
    out: dict = {"data": load_text_record(text), "labels": list(text.labels)}
    if classes is None:
        return out
    from matryoshka.training.loop import evaluate

    x, y = encode_dataset(tokenizer, text, model.config.pad_id)["test"]
    acc = evaluate(model, x, y)[model.config.d_model]["accuracy"]
    say(f"test accuracy of the imported classifier: {acc:.4f} on {len(y)} texts")
    out["test_accuracy"] = {str(model.config.d_model): acc}
    return out


__all__ = ["import_checkpoint"]
