"""Train the text tokenizer (Hugging Face `tokenizers`) and turn TextData into padded int64 ids.

docs/design.md, "The model" (Text). Strings become ids only through
matryoshka.runtime.text.encode/pad, the same functions every runtime uses.
"""

from __future__ import annotations

import json

import numpy as np

from matryoshka.data.text import SPLITS, TextData
from matryoshka.errors import ConfigError, MatryoshkaError
from matryoshka.runtime.text import (
    PAD,
    PAD_ID,
    UNK,
    UNK_ID,
    TextInputError,
    check_texts,
    encode,
    pad,
)

MODELS = ("wordpiece", "bpe")


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise MatryoshkaError("text data needs the tokenizers package: "
                              "pip install 'matryoshka[text]'") from None
    return tokenizers


def train_tokenizer(texts: list[str], vocab_size: int = 8000, model: str = "bpe",
                    lowercase: bool = True, max_len: int = 128):
    """A `tokenizers.Tokenizer` trained on `texts`: [PAD] is id 0, [UNK] id 1, and rows are
    truncated to `max_len` by the tokenizer itself (the rule travels in tokenizer.json).

    model "bpe" (the default) trains the same tokenizer from the same texts in every run;
    "wordpiece" may not, across processes (huggingface/tokenizers#1794).

    >>> tok = train_tokenizer(["a cat", "a dog"] * 10, vocab_size=50, max_len=8)
    >>> tok.token_to_id("[PAD]"), tok.token_to_id("[UNK]"), tok.truncation["max_length"]
    (0, 1, 8)
    """
    if vocab_size < 3:
        raise ConfigError(f"vocab_size must be at least 3 ([PAD], [UNK] and one token), "
                          f"got {vocab_size}")
    if max_len < 1:
        raise ConfigError(f"max_len must be at least 1, got {max_len}")
    if model not in MODELS:
        raise ConfigError(f"unknown tokenizer model {model!r}; use one of {', '.join(MODELS)}")
    texts = check_texts(texts)
    if not texts:
        raise TextInputError("no texts to train the tokenizer on")
    tk = _tokenizers()
    tok, trainer = _model_and_trainer(tk, model, vocab_size)
    tok.normalizer = tk.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                   strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer, length=len(texts))
    # Padding is NOT enabled: matryoshka.runtime.text.pad pads, here and on every device.
    tok.enable_truncation(max_length=max_len)
    if (tok.token_to_id(PAD), tok.token_to_id(UNK)) != (PAD_ID, UNK_ID):
        raise RuntimeError(f"tokenizer training put {PAD}/{UNK} at ids "
                           f"{tok.token_to_id(PAD)}/{tok.token_to_id(UNK)}, not "
                           f"{PAD_ID}/{UNK_ID}")
    return tok


def _model_and_trainer(tk, model: str, vocab_size: int):
    special = [PAD, UNK]  # in this order: the trainer gives them ids 0 and 1
    if model == "wordpiece":
        tok = tk.Tokenizer(tk.models.WordPiece(unk_token=UNK))
        tok.decoder = tk.decoders.WordPiece()
        trainer = tk.trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                               show_progress=False)
    else:
        # No end-of-word suffix and no continuing-subword prefix: the trainer creates those
        # tokens while it iterates over a hash map, so their ids, and the merges that break
        # count ties by id, change from run to run (huggingface/tokenizers#1794). Without
        # them every id comes from the sorted alphabet or a merge, and training is
        # deterministic. The pre-tokenizer still splits words, so no token spans two.
        tok = tk.Tokenizer(tk.models.BPE(unk_token=UNK))
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                         show_progress=False)
    return tok, trainer


def tokenizer_info(tokenizer) -> dict:
    """What the tokenizer does, read from the tokenizer itself: a JSON record for manifests."""
    spec = json.loads(tokenizer.to_str())
    norm = spec.get("normalizer") or {}
    trunc = tokenizer.truncation
    return {
        "model": spec["model"]["type"],
        "vocab_size": tokenizer.get_vocab_size(),
        "lowercase": bool(norm.get("lowercase", False)),
        "normalizer": _describe_normalizer(norm),
        "pre_tokenizer": (spec.get("pre_tokenizer") or {}).get("type", "none"),
        "pad_id": tokenizer.token_to_id(PAD),
        "unk_id": tokenizer.token_to_id(UNK),
        "max_len": trunc["max_length"] if trunc else None,
        "truncation": _describe_truncation(trunc),
    }


def _describe_normalizer(norm: dict) -> str:
    if not norm:
        return "none"
    if norm.get("type") != "BertNormalizer":
        return str(norm.get("type"))
    flags = ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase")
    return f"BertNormalizer({', '.join(f'{k}={norm.get(k)}' for k in flags)})"


def _describe_truncation(trunc: dict | None) -> str:
    if not trunc:
        return "none: rows keep every id"
    if trunc["direction"] == "left":
        return "left: ids before the last max_len are dropped"
    return "right: ids beyond max_len are dropped"


def encode_dataset(tokenizer, data: TextData,
                   pad_id: int = PAD_ID) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split as (int64 ids [n, width], int64 y [n]), padded with pad_id (the model's) to
    one width: the longest row of the whole data set (≤ max_len), the numeric Dataset the
    trainer takes."""
    rows = {}
    for split in SPLITS:
        texts = data.splits[split][0]
        try:
            rows[split] = encode(tokenizer, texts)
        except TextInputError as e:  # say which split, since the index is within it
            raise TextInputError(f"{data.source.get('path', 'data')}, {split} split: {e}"
                                 ) from None
    width = max(len(r) for split_rows in rows.values() for r in split_rows)
    return {s: (pad(rows[s], width, pad_id), data.splits[s][1]) for s in SPLITS}
