"""Fitting a model's configuration to a data set, and checking that the data can feed it.

docs/design.md, "Data flow". numpy only: the search, the CLI and the training loop check data
without importing torch. `cfg` is a `matryoshka.model.MatryoshkaConfig` (read and
`dataclasses.replace`d, so this module needs no import of the model).

    >>> from matryoshka.data import load_dataset
    >>> from matryoshka.model import preset
    >>> data = load_dataset("demo")
    >>> cfg = config_for_data(preset("tiny"), data)
    >>> cfg.input_kind, cfg.image_size, cfg.n_classes
    ('image', 8, 10)
    >>> check_data_fits(cfg, data)  # raises a DataError naming what does not fit
"""

from __future__ import annotations

import dataclasses

import numpy as np

from matryoshka.data import Dataset
from matryoshka.errors import DataError
from matryoshka.runtime.text import PAD_ID


def check_data_fits(cfg, data: Dataset) -> None:
    """Raise a DataError when the data set's shapes or labels cannot feed this model."""
    x, _ = data["train"]
    if cfg.input_kind == "image":
        want = (cfg.image_size, cfg.image_size)
        if x.shape[1:] != want:
            raise DataError(f"the model takes images of shape {want}; the data has "
                            f"{tuple(x.shape[1:])}")
    elif x.ndim != 2 or x.shape[1] > cfg.max_len:
        raise DataError(f"the model takes token ids [n, <= {cfg.max_len}]; the data has "
                        f"{tuple(x.shape)}")
    else:
        check_token_ids(data, cfg.vocab_size)
    top = max(int(y.max()) for _, y in data.values())
    if top >= cfg.n_classes:
        raise DataError(f"labels go up to {top} but the model has {cfg.n_classes} classes")


def check_token_ids(data: Dataset, vocab_size: int | None = None) -> None:
    """Token ids must be integers, non-negative (and below vocab_size, when one is given), in
    sequences of at least one token, in every split."""
    for split, (x, _) in data.items():
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{split}: token ids must be integers, got dtype {x.dtype}")
        if x.shape[1] == 0:
            raise DataError(f"{split}: token sequences must hold at least one token")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0:
            raise DataError(f"{split}: token ids must be non-negative; got {lo}")
        if vocab_size is not None and hi >= vocab_size:
            raise DataError(f"{split}: token ids must be below the vocabulary size "
                            f"{vocab_size}; got {hi}")


def config_for_data(cfg, data: Dataset):
    """The preset adapted to the data: image size or vocabulary, classes, pixel scale."""
    x = data["train"][0]
    n_classes = max(int(y.max()) for _, y in data.values()) + 1
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        check_token_ids(data)
        vocab = max(int(v[0].max()) for v in data.values()) + 1
        return dataclasses.replace(cfg, input_kind="tokens", vocab_size=vocab,
                                   max_len=x.shape[1], n_classes=n_classes)
    if x.ndim == 3 and x.shape[1] == x.shape[2]:
        scale = float(max(float(np.abs(v[0]).max()) for v in data.values())) or 1.0
        return dataclasses.replace(cfg, input_kind="image", image_size=x.shape[1],
                                   pixel_scale=scale, n_classes=n_classes)
    raise DataError(f"cannot tell the input kind of samples shaped {tuple(x.shape[1:])}: "
                    "images must be [n, side, side], token ids [n, length] integers")


def config_for_text(cfg, tokenizer, n_classes: int):
    """The preset adapted to raw text: the tokenizer's vocabulary and truncation length."""
    return dataclasses.replace(cfg, input_kind="text", vocab_size=tokenizer.get_vocab_size(),
                               max_len=int(tokenizer.truncation["max_length"]),
                               n_classes=n_classes, pad_id=PAD_ID)
