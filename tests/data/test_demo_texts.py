"""The text demo's own texts: training-time and runtime tokenization give the same ids."""

from pathlib import Path

import numpy as np
import pytest

SPAM = Path(__file__).resolve().parents[2] / "artifacts" / "data" / "spam.csv"


@pytest.mark.skipif(not SPAM.is_file(), reason="the text demo data is fetched by "
                    "scripts/fetch_text_demo.sh, which scripts/test.sh (CI) runs first")
def test_training_and_runtime_tokenize_the_demo_test_texts_identically():
    from matryoshka.data.text import load_text
    from matryoshka.data.tokenizer import encode_dataset, train_tokenizer
    from matryoshka.runtime.text import encode, load_tokenizer, pad

    text = load_text(SPAM)
    assert len(text.splits["test"][0]) == 590 and text.labels == ["ham", "spam"]
    tokenizer = train_tokenizer(text.splits["train"][0], vocab_size=8000, max_len=128)
    trained = encode_dataset(tokenizer, text)["test"][0]  # what the model was trained on
    shipped = load_tokenizer(tokenizer.to_str().encode())  # what tokenizer.json gives a device
    rows = encode(shipped, text.splits["test"][0])
    assert max(len(r) for r in rows) == 128  # long mails are truncated, as in training
    np.testing.assert_array_equal(pad(rows, trained.shape[1]), trained)
