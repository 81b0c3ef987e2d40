"""Raw strings to padded int64 ids with the export's own tokenizer.json.

docs/design.md, "The model" (Text). This is the one place where strings become ids:
training (matryoshka.data.tokenizer) calls the same `encode`, so the ids a device computes are
the ids the model was trained on. Needs the optional extra `tokenizers` (matryoshka[text]);
never torch or onnx.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matryoshka.errors import ConfigError, DataError, MatryoshkaError

PAD_ID, UNK_ID = 0, 1
PAD, UNK = "[PAD]", "[UNK]"


class TextInputError(DataError):
    """A list of texts that cannot be predicted (an empty string, a non-string)."""


def load_tokenizer(data: bytes):
    """A `tokenizers.Tokenizer` from the bytes of tokenizer.json (already sha256-checked)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MatryoshkaError("this export takes raw text, which needs the tokenizers "
                              "package: pip install 'matryoshka[text]'") from None
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises its own exception types
        raise ConfigError(f"tokenizer.json cannot be loaded ({e})") from None
    tokenizer.no_padding()  # `pad` pads, per batch: a file's fixed padding would cost time
    return tokenizer


def check_texts(texts, start: int = 0) -> list[str]:
    """A list of non-empty strings, or TextInputError naming the first bad item (counted
    from `start`: the position of texts[0] in a longer stream)."""
    if isinstance(texts, (str, bytes)):
        raise TextInputError("pass a list of strings, not one string: predict([text])")
    try:
        items = list(texts)
    except TypeError:
        raise TextInputError(f"texts must be a list of strings; got {type(texts).__name__}"
                             ) from None
    for i, t in enumerate(items, start):
        if not isinstance(t, str):
            raise TextInputError(f"text {i} is not a string (got {type(t).__name__} {t!r:.40})")
        if not t.strip():
            raise TextInputError(f"text {i} is empty; every text needs at least one word")
    return items


ENCODE_CHUNK = 256  # texts per encode_batch: its Encodings (tokens, offsets, and the
# overflowing pieces a truncation keeps) weigh far more than the ids, so few live at once


def encode(tokenizer, texts: Sequence[str], start: int = 0) -> list[np.ndarray]:
    """One int64 id array per text, truncated as tokenizer.json says (no padding)."""
    rows = [np.asarray(e.ids, dtype=np.int64)
            for i in range(0, len(texts), ENCODE_CHUNK)
            for e in tokenizer.encode_batch(list(texts[i:i + ENCODE_CHUNK]))]
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise TextInputError(f"text {start + i} gives no tokens: {texts[i][:40]!r}")
    return rows


def pad(rows: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Rows right-padded with PAD_ID to `length` (default: the longest row): [n, length]."""
    length = max((len(r) for r in rows), default=0) if length is None else length
    out = np.full((len(rows), length), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :min(len(row), length)] = row[:length]
    return out


def trim(ids: np.ndarray, pad_id: int = PAD_ID) -> np.ndarray:
    """A right-padded id batch cut to its longest row: the padding no row needs."""
    return ids[:, :int((ids != pad_id).sum(axis=1).max(initial=0))]


def buckets(lengths: Sequence[int], batch: int) -> list[np.ndarray]:
    """Row indices sorted by length and cut into batches of `batch`: a short text never waits
    on (or pays for) the padding of the longest one in its batch."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch] for i in range(0, len(order), batch)]
