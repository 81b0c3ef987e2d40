"""Importance of the residual channels, and the one permutation of the residual axis that puts
the most important first, so that the prefix h[:d_i] of a width level keeps what the encoder
uses most (issue 31: the seed's width nesting on an imported encoder).

- A channel's importance is Minitron's (Muralidharan et al., 2024, "Compact Language Models
  via Pruning and Knowledge Distillation"): at every LayerNorm's output (in a post-LN block
  these are the residual stream itself), the mean |activation| over a text's real tokens, then
  the L2 norm of that over the texts, summed over all the LayerNorms. It needs no labels.
- The permutation acts on every residual axis at once: the columns of the token and position
  tables (ELECTRA's: the output rows of the projection that follows them), every LayerNorm's
  gamma and beta, the input columns of q, k, v and the FFN's first matrix, the output rows
  (and biases) of the attention projection and the FFN's second matrix, and the classifier's
  input columns (an imported classifier's hidden layer: its input columns and, in the same
  order, its output rows, so the head's input follows). LayerNorm commutes with a
  permutation, so the model computes the same function (tests/model/test_channels.py checks
  1e-5 on padded texts). A rotation (SliceGPT) would not
  be exact in a post-LN block and is not needed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from matryoshka.errors import ConfigError
from matryoshka.model.layers import NestedLayerNorm
from matryoshka.model.transformer import MatryoshkaTransformer


def check_full_width(c, action: str) -> None:
    """Refuse a config that is not a model trained at its full width alone: only such a model
    can `action` (be nested, have its residual channels reordered)."""
    if c.nesting != "width" or c.levels != (c.d_model,) or c.layer_ffn:
        raise ConfigError(f"only a model trained at its full width alone {action}; this one "
                          f"has levels {','.join(map(str, c.levels))}")


def _check_permutable(model: MatryoshkaTransformer) -> None:
    c = model.config
    check_full_width(c, "can have its residual channels reordered")
    if c.pos_encoding == "sinusoidal_per_level":
        raise ConfigError("a model with sinusoidal positions cannot have its residual channels "
                          "reordered (the positions are not weights); pass --no-rewire")


@torch.no_grad()
def channel_importance(model: MatryoshkaTransformer,
                       batches: Iterable[torch.Tensor]) -> np.ndarray:
    """[d_model] importance of each residual channel of the full model on `batches` of inputs
    (Minitron's aggregation: mean |a| over real tokens, L2 over the samples, summed over every
    LayerNorm)."""
    _check_permutable(model)
    # every LayerNorm of the residual stream (a classifier's head norm reads no tokens)
    norms = [m for name, m in model.named_modules() if isinstance(m, NestedLayerNorm)
             and name != "head_norm"]
    squares = np.zeros((len(norms), model.config.d_model))
    mask: list[torch.Tensor | None] = [None]

    def hook(k):
        def run(module, inputs, out):
            a = out.detach().float().abs()  # [batch, n, d]
            m = mask[0]
            if m is None:
                per_sample = a.mean(dim=1)
            else:
                w = m.unsqueeze(-1).to(a.dtype)
                per_sample = (a * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
            squares[k] += per_sample.pow(2).sum(0).numpy()
        return run

    handles = [n.register_forward_hook(hook(k)) for k, n in enumerate(norms)]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            mask[0] = model.mask(x)
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return np.sqrt(squares).sum(0)


@torch.no_grad()
def permute_channels(model: MatryoshkaTransformer, channel_order: np.ndarray
                     ) -> MatryoshkaTransformer:
    """Apply one permutation (new channel j is old channel channel_order[j]) to every residual
    axis of a full-width model, in place; returns the model."""
    _check_permutable(model)
    d = model.config.d_model
    p = torch.as_tensor(np.asarray(channel_order, dtype=np.int64))
    if sorted(p.tolist()) != list(range(d)):
        raise ConfigError(f"internal: a channel order must be a permutation of {d} channels")

    def rows(t: torch.Tensor | None) -> None:  # the residual axis is the first
        if t is not None:
            t.copy_(t[p])

    def cols(t: torch.Tensor) -> None:  # the residual axis is the last
        t.copy_(t[..., p])

    c = model.config
    if c.input_kind == "image" or c.embed_dim:
        proj = model.embed if c.input_kind == "image" else model.embed_proj
        rows(proj.weight)
        rows(proj.bias)
    else:
        cols(model.embed.weight)
    if c.pos_encoding == "learned" and not c.embed_dim:  # ELECTRA's: embed_dim wide
        cols(model.pos)
    for norm in (m for m in model.modules() if isinstance(m, NestedLayerNorm)):
        for t in (*norm.weight, *norm.bias):
            rows(t)
    for block in model.blocks:
        attn, ffn = block.attn, block.ffn
        for lin in (attn.q, attn.k, attn.v, *ffn.inputs):
            cols(lin.weight)
        for lin in (attn.o, ffn.w2):
            rows(lin.weight)
            rows(lin.bias)
    if model.config.head_act != "none":  # the hidden layer's output keeps the same order
        rows(model.pre_head.weight)
        cols(model.pre_head.weight)
        rows(model.pre_head.bias)
    cols(model.head.weight)
    return model


def rewire_channels(model: MatryoshkaTransformer, batches: Iterable[torch.Tensor]) -> dict:
    """Score the residual channels on `batches` of inputs, then permute the model so that the
    most important come first; returns the scores and the order."""
    scores = channel_importance(model, batches)
    channel_order = np.argsort(-scores, kind="stable")
    permute_channels(model, channel_order)
    return {"channel_importance": scores.tolist(), "channel_order": channel_order.tolist()}


__all__ = ["channel_importance", "check_full_width", "permute_channels", "rewire_channels"]
