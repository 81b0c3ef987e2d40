"""Raw strings to padded int64 ids with the export's own tokenizer.json.

docs/design.md, "The model" (Text). This is the one place where strings become ids:
training (matryoshka.data.tokenizer) calls the same `encode`, so the ids a device computes are
the ids the model was trained on. Needs the optional extra `tokenizers` (matryoshka[text]);
never torch or onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from matryoshka.errors import ConfigError, DataError, MatryoshkaError
from matryoshka.runtime.cascade import Prediction
from matryoshka.runtime.reading import Reading, head_tail

PAD_ID, UNK_ID = 0, 1
PAD, UNK = "[PAD]", "[UNK]"
# The characters JavaScript's String.prototype.trim removes (ECMAScript's WhiteSpace and
# LineTerminator): a text of only these is empty, in Python as in examples/js/cascade.mjs.
# (Python's own str.strip() keeps U+FEFF and removes U+001C-U+001F and U+0085.)
BLANK = ("\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")
TEXT_WINDOW = 1024  # texts tokenized and held at once by predict_texts: bounds their memory


class TextInputError(DataError):
    """A list of texts that cannot be predicted (an empty string, a non-string)."""


def load_tokenizer(data: bytes, reading: Reading = Reading()):
    """A `tokenizers.Tokenizer` from the bytes of tokenizer.json (already sha256-checked),
    reading long texts as `reading` says (see `reader`)."""
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
    return reader(tokenizer, reading)


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
        if not t.strip(BLANK):
            raise TextInputError(f"text {i} is empty; every text needs at least one word")
    return items


class HeadTail:
    """A tokenizer that reads a text longer than max_len by its head and its tail
    (reading.head_tail) instead of its first tokens. It stands in for the `tokenizers`
    Tokenizer it wraps, whose methods it passes on (`to_str` gives the file as saved); only
    `encode_batch` differs, and gives objects with the `ids` alone."""

    def __init__(self, tokenizer, head_share: float):
        trunc = tokenizer.truncation
        if not trunc:
            raise ConfigError("tokenizer.json has no truncation, so no max_len to read a "
                              "long text's head and tail within")
        self.tokenizer, self.max_len, self.head_share = tokenizer, trunc["max_length"], head_share
        self.whole = type(tokenizer).from_str(tokenizer.to_str())  # reads every token
        self.whole.no_truncation()
        self.whole.no_padding()

    def encode_batch(self, texts: list[str]) -> list[Ids]:
        full = [e.ids for e in self.whole.encode_batch(texts)]
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_len]
        plain = self.whole.encode_batch([texts[i] for i in long], add_special_tokens=False)
        for i, e in zip(long, plain):
            full[i] = head_tail(full[i], e.ids, self.max_len, self.head_share)
        return [Ids(ids) for ids in full]

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


class Ids(NamedTuple):
    ids: list[int]


def reader(tokenizer, reading: Reading):
    """The tokenizer that reads long texts as `reading` says: itself for truncate (its
    tokenizer.json truncates), else a HeadTail over it."""
    if reading.mode == "truncate" or isinstance(tokenizer, HeadTail):
        return tokenizer
    return HeadTail(tokenizer, reading.head_share)


ENCODE_CHUNK = 256  # texts per encode_batch: its Encodings (tokens, offsets, and the
# overflowing pieces a truncation keeps) weigh far more than the ids, so few live at once


def encode(tokenizer, texts: Sequence[str], start: int = 0) -> list[np.ndarray]:
    """One int64 id array per text, cut to max_len as the tokenizer reads long texts
    (tokenizer.json's truncation, or a HeadTail's cut), with no padding."""
    rows = [np.asarray(e.ids, dtype=np.int64)
            for i in range(0, len(texts), ENCODE_CHUNK)
            for e in tokenizer.encode_batch(list(texts[i:i + ENCODE_CHUNK]))]
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise TextInputError(f"text {start + i} gives no tokens: {texts[i][:40]!r}")
    return rows


def pad(rows: Sequence[np.ndarray], length: int | None = None,
        pad_id: int = PAD_ID) -> np.ndarray:
    """Rows right-padded with pad_id (the model's: 0 for BERT, 1 for RoBERTa) to `length`
    (default: the longest row): [n, length]."""
    length = max((len(r) for r in rows), default=0) if length is None else length
    out = np.full((len(rows), length), pad_id, dtype=np.int64)
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


def windows(texts: Iterable[str], window: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """A stream of texts (a list, a generator over a file's lines) in windows of `window`
    texts [TEXT_WINDOW], each with the index of its first text; only one window is held.

    >>> list(windows(["a", "b", "c"], 2))
    [(0, ['a', 'b']), (2, ['c'])]
    """
    if isinstance(texts, (str, bytes)):
        check_texts(texts)  # its message: predict([text])
    window = TEXT_WINDOW if window is None else window
    if window < 1:
        raise ConfigError(f"window must be at least 1 text; got {window}")
    chunk, start = [], 0
    for text in texts:
        chunk.append(text)
        if len(chunk) == window:
            yield start, chunk
            start, chunk = start + len(chunk), []
    if chunk:
        yield start, chunk


def predict_window(predict: Callable[..., Prediction], tokenizer, texts: list[str], start: int,
                   batch_size: int, n_classes: int, levels: list[str], level=None,
                   thresholds=None, pad_id: int = PAD_ID) -> Prediction:
    """One window's Prediction, in its texts' order: encoded with the export's tokenizer,
    sorted by length into batches of `batch_size` rows, each padded (with pad_id) to its
    longest row and
    answered by `predict(ids, level, thresholds)` (Runtime.predict); `start` numbers the texts
    in error messages."""
    texts = check_texts(texts, start)
    rows = encode(tokenizer, texts, start)
    n = len(rows)
    labels, answered = np.zeros(n, np.int64), np.zeros(n, np.asarray(levels).dtype)
    probs, conf = np.zeros((n, n_classes), np.float32), np.zeros(n, np.float32)
    for idx in buckets([len(r) for r in rows], batch_size):
        out = predict(pad([rows[i] for i in idx], pad_id=pad_id), level, thresholds)
        labels[idx], answered[idx], probs[idx], conf[idx] = (out.labels, out.levels,
                                                             out.probs, out.confidence)
    return Prediction(labels, probs, conf, answered)
