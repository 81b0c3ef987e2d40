"""Text input (docs/design.md, "The model"): the mask comes from the ids alone, padded keys get
no attention weight and pooling is the masked mean, so a row's logits are the same alone and
unpadded as inside a batch padded to a longer row, at every level."""

import numpy as np
import pytest
import torch

from matryoshka.model import MatryoshkaTransformer, extract_level, preset


def ragged_ids(seed: int = 0, n: int = 6, vocab: int = 200, longest: int = 32):
    """Rows of different lengths, without the pad id 0 inside them."""
    rng = np.random.default_rng(seed)
    lengths = [1, 3, 7, 12, longest - 5, longest][:n]
    return [rng.integers(1, vocab, size=k).astype(np.int64) for k in lengths]


def padded(rows, width):
    out = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MatryoshkaTransformer(preset("tiny-text")).eval()


@pytest.mark.parametrize("dim", [8, 16, 32])
def test_a_row_alone_equals_the_row_in_a_padded_batch(model, dim):
    rows = ragged_ids()
    with torch.no_grad():
        batch = model(torch.as_tensor(padded(rows, 32)), level=dim).numpy()
        for i, r in enumerate(rows):
            alone = model(torch.as_tensor(r[None]), level=dim).numpy()
            np.testing.assert_allclose(batch[i], alone[0], rtol=0, atol=1e-5)
            # the extracted level is the same standalone model
            small = extract_level(model, dim)(torch.as_tensor(r[None])).numpy()
            np.testing.assert_allclose(small[0], alone[0], rtol=0, atol=1e-5)


def test_padding_is_really_masked(model):
    """Without the mask the padded row would differ: the test can fail."""
    rows = ragged_ids()
    ids = torch.as_tensor(padded(rows, 32))
    with torch.no_grad():
        masked = model(ids, level=32)
        model.config.__dict__["input_kind"] = "tokens"  # the same weights, no mask
        try:
            unmasked = model(ids, level=32)
        finally:
            model.config.__dict__["input_kind"] = "text"
    assert (masked[0] - unmasked[0]).abs().max() > 1e-3


def test_config_of_a_text_model_has_no_image_fields():
    d = preset("tiny-text").to_dict()
    assert d["input_kind"] == "text" and d["pad_id"] == 0
    assert not {"image_size", "patch_size", "pixel_scale"} & set(d)
    assert "vocab_size" not in preset("tiny").to_dict()


def test_trim_drops_the_trailing_padding_and_keeps_the_logits(model):
    """A batch of short texts costs its longest text: trim keeps every column that holds a
    real token of some row, and the trimmed batch's logits are the padded batch's."""
    rows = ragged_ids(n=4)  # lengths 1, 3, 7, 12, padded to 32
    ids = torch.as_tensor(padded(rows, 32))
    trimmed = model.trim(ids)
    assert trimmed.shape == (4, 12) and torch.equal(trimmed, ids[:, :12])
    with torch.no_grad():
        for dim in (8, 32):
            torch.testing.assert_close(model(trimmed, level=dim), model(ids, level=dim),
                                       rtol=0, atol=1e-5)
    inner = ids.clone()
    inner[0, 20] = 5  # a real token after a pad is kept, with the pads before it
    assert model.trim(inner).shape == (4, 21)
    assert model.trim(torch.zeros(2, 9, dtype=torch.long)).shape == (2, 1)
    image = MatryoshkaTransformer(preset("tiny"))
    x = torch.zeros(2, 8, 8)
    assert model.trim(ids[:, :1]).shape == (4, 1) and image.trim(x) is x
