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
