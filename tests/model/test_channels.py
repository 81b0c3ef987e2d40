"""The residual channels of an imported encoder: Minitron's importance (mean |a| over a text's
real tokens at every LayerNorm output, L2 over the texts, summed) and the one permutation of
every residual axis, which leaves the model's function unchanged."""

import numpy as np
import pytest
import torch

from matryoshka.errors import ConfigError
from matryoshka.model import MatryoshkaTransformer, preset
from matryoshka.model.channels import channel_importance, permute_channels, rewire_channels
from matryoshka.model.layers import NestedLayerNorm
from matryoshka.model.pretrained import import_encoder, nest_by_width
from matryoshka.runtime.text import encode, pad
from tests.model.tiny_bert import make_tiny_bert, texts


@pytest.fixture(params=["mean", "cls"])
def imported(tmp_path, request):
    model, tok, _ = import_encoder(make_tiny_bert(tmp_path / "bert", pooling=request.param),
                                n_classes=3, max_len=64)
    with torch.no_grad():  # a head that reads every channel, so a wrong permutation shows
        model.head.weight.normal_()
    return model, torch.from_numpy(pad(encode(tok, texts(24))))


def test_the_permutation_leaves_the_encoder_unchanged(imported):
    model, x = imported
    with torch.no_grad():
        before, (pooled, _) = model(x), model.encode(x)
        order = np.random.default_rng(1).permutation(model.config.d_model)
        permute_channels(model, order)
        after, (pooled_after, _) = model(x), model.encode(x)
    assert (x == 0).any()  # the batch is padded
    assert torch.allclose(after, before, atol=1e-5)
    assert torch.allclose(pooled_after, pooled[:, order], atol=1e-5)  # a relabelling
    assert not torch.equal(pooled_after, pooled)


def test_a_channel_that_every_layernorm_scales_up_ranks_first(imported):
    model, x = imported
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, NestedLayerNorm)):
            norm.weight[0][7] *= 20
            norm.bias[0][7] *= 20
    scores = channel_importance(model, [x[:10], x[10:]])
    assert scores.shape == (32,) and np.argmax(scores) == 7
    info = rewire_channels(model, [x])
    assert info["channel_order"][0] == 7
    assert np.allclose(info["channel_importance"], scores, rtol=1e-5)  # batching: the same


def test_padding_does_not_change_the_scores(imported):
    model, x = imported
    longer = torch.cat([x, torch.zeros(len(x), 9, dtype=x.dtype)], dim=1)
    assert np.allclose(channel_importance(model, [x]), channel_importance(model, [longer]),
                       rtol=1e-5)


def test_the_score_is_minitrons_aggregation(imported):
    """One LayerNorm's part checked by hand: the embedding LayerNorm's output, mean |a| over
    real tokens, L2 over texts."""
    model, x = imported
    seen = {}
    norms = [m for m in model.modules() if isinstance(m, NestedLayerNorm)]
    for k, norm in enumerate(norms):
        norm.register_forward_hook(lambda m, i, out, k=k: seen.__setitem__(k, out.detach()))
    with torch.no_grad():
        model(x)
    mask = (x != 0).float()[..., None]
    want = sum(((seen[k].abs() * mask).sum(1) / mask.sum(1)).pow(2).sum(0).sqrt()
               for k in seen)
    assert len(seen) == 1 + 2 * model.config.n_layers
    assert np.allclose(channel_importance(model, [x]), want.numpy(), rtol=1e-5)


def test_only_a_full_width_model_with_learned_positions_is_permuted(imported):
    model, _ = imported
    with pytest.raises(ConfigError, match="only a model trained at its full width alone"):
        permute_channels(nest_by_width(model, (16, 32)), np.arange(32))
    scratch = MatryoshkaTransformer(preset("tiny-text", levels=(32,)))
    with pytest.raises(ConfigError, match="sinusoidal positions .* pass --no-rewire"):
        channel_importance(scratch, [torch.ones(2, 5, dtype=torch.long)])
