"""Rewiring by importance (model/importance.py): reordering heads and FFN neurons leaves the
full model's function unchanged (<= 1e-5), the scores are the head-mask gradient and the
neurons' Taylor score, and after rewiring the prefix holds the most important."""

import numpy as np
import pytest
import torch

from matryoshka.model.importance import importance, order, reorder, rewire
from matryoshka.model.pretrained import import_encoder
from matryoshka.runtime.text import encode, pad
from tests.model.tiny_bert import make_tiny_bert, texts


@pytest.fixture
def bert(tmp_path):
    model, tok, _ = import_encoder(make_tiny_bert(tmp_path / "bert", heads=4, ffn=64), n_classes=3,
                                max_len=32)
    torch.manual_seed(0)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    ids = torch.from_numpy(pad(encode(tok, texts(48, seed=3))))
    y = torch.arange(48) % 3
    return model, [(ids[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]


def test_reordering_changes_nothing_in_the_full_model(bert):
    model, batches = bert
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        before = model(x).numpy()
    rng = np.random.default_rng(0)
    c = model.config
    reorder(model, np.stack([rng.permutation(4) for _ in range(c.n_layers)]),
            np.stack([rng.permutation(64) for _ in range(c.n_layers)]))
    with torch.no_grad():
        after = model(x).numpy()
    assert np.abs(after - before).max() <= 1e-5
    assert not np.array_equal(model.blocks[0].attn.q.weight.detach().numpy()[:8], 0)


def test_the_head_score_is_the_gradient_of_a_head_mask(bert):
    """Masking head h by xi: |d loss / d xi| at xi = 1 for one example, by finite
    differences."""
    model, batches = bert
    x, y = batches[0][0][:1], batches[0][1][:1]
    heads, _ = importance(model, [(x, y)])
    hd, layer, h = model.config.head_dim, 1, 2
    o = model.blocks[layer].attn.o

    def loss_at(xi):
        def scale(module, inputs):
            t = inputs[0].clone()
            t[..., h * hd:(h + 1) * hd] *= xi
            return (t, *inputs[1:])
        handle = o.register_forward_pre_hook(scale)
        try:
            with torch.no_grad():
                return float(torch.nn.functional.cross_entropy(model(x).double(), y))
        finally:
            handle.remove()

    eps = 1e-3
    fd = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert heads[layer, h] == pytest.approx(abs(fd), rel=2e-2, abs=1e-5)


def test_rewiring_puts_the_most_important_first_and_keeps_the_function(bert):
    model, batches = bert
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        model.blocks[0].attn.v.weight[0:8] = 0  # head 0 of layer 0 now contributes nothing
        model.blocks[0].attn.v.bias[0:8] = 0
        before = model(x).numpy()
    info = rewire(model, batches)
    assert info["head_order"][0][-1] == 0  # the silenced head goes last
    with torch.no_grad():
        assert np.abs(model(x).numpy() - before).max() <= 1e-5
    heads, neurons = importance(model, batches)
    for scores in (*heads, *neurons):
        assert list(order(scores)) == list(range(len(scores)))  # already in order


def test_the_neuron_score_is_the_taylor_score_of_its_weights(bert):
    """I_j = |sum W1[j,:] dL/dW1[j,:] + b1_j dL/db1_j| + |sum W2[:,j] dL/dW2[:,j]| over the
    split, from the parameters' own gradients."""
    model, batches = bert
    _, neurons = importance(model, batches)
    model.eval()
    model.zero_grad()
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    for i, block in enumerate(model.blocks):
        w1, w2 = block.ffn.w1, block.ffn.w2
        incoming = (w1.weight * w1.weight.grad).sum(1) + w1.bias * w1.bias.grad
        outgoing = (w2.weight * w2.weight.grad).sum(0)
        want = (incoming.abs() + outgoing.abs()).detach().numpy()
        np.testing.assert_allclose(neurons[i], want, rtol=1e-3, atol=1e-6)
    model.zero_grad()


def test_scores_under_bf16_autocast_are_float_and_rank_like_fp32(bert):
    """train --precision bf16 scores under autocast: the activations and gradients are bf16
    there; the scores come back as float arrays that rank the heads nearly as fp32 does."""
    model, batches = bert
    fp32 = importance(model, batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = importance(model, batches)
    for name, a32, a16 in zip(("heads", "neurons"), fp32, bf16):
        assert a16.shape == a32.shape and a16.dtype == np.float64 and np.isfinite(a16).all()
        for row32, row16 in zip(a32, a16):
            assert np.corrcoef(row32, row16)[0, 1] > 0.9, name
