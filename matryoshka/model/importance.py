"""Importance of attention heads and FFN neurons, and the exact reordering that puts the most
important first (DynaBERT's rewiring), so that a prefix of the heads and neurons keeps what
matters most.

- A head's importance is I_h = sum_x |dL/dxi_h|, the gradient of the loss with respect to a
  mask xi_h = 1 on the head's output (Michel et al., 2019), per example: the input of the
  output projection times its gradient, summed over the head's features and positions.
- A neuron's importance is the first-order Taylor score of its weights over the whole split,
  I_j = |sum W1[j, :] dL/dW1[j, :] + b1_j dL/db1_j| + |sum W2[:, j] dL/dW2[:, j]|: the first
  term is sum pre_j dL/dpre_j of its pre-activation, the second sum a_j dL/da_j of its
  activation (a GeGLU neuron adds |sum g_j dL/dg_j| of its gate's pre-activation, and its
  gate row moves with it).

Reordering permutes the rows of q, k, v (by whole heads) and the columns of o, and the rows of
the FFN's first matrix and the columns of its second: the model computes the same function
(up to the order of float additions; tests/model/test_importance.py checks 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from matryoshka.model.transformer import MatryoshkaTransformer


def importance(model: MatryoshkaTransformer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """(heads [layers, heads], neurons [layers, ffn]) importance of the full model on
    `batches` of (x, y); loss(logits, y, reduction="sum") defaults to cross-entropy of the
    full level's logits (a sum over the batch, so that per-example terms add up)."""
    loss = loss or torch.nn.functional.cross_entropy
    c = model.config
    n_heads = c.n_heads
    heads = np.zeros((c.n_layers, n_heads))
    # sum pre dL/dpre and sum a dL/da of every neuron, over the split (signed, then |.|)
    pre_sum = np.zeros((c.n_layers, model.blocks[0].ffn.w1.weight.shape[0]))
    act_sum, gate_sum = np.zeros_like(pre_sum), np.zeros_like(pre_sum)
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs):
            t = inputs[0]
            t.retain_grad()
            seen[name] = t
        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.attn.o.register_forward_pre_hook(keep(f"attn{i}")))
        handles.append(block.ffn.w2.register_forward_pre_hook(keep(f"act{i}")))
        handles.append(block.ffn.w1.register_forward_hook(
            lambda module, inputs, out, i=i: keep(f"pre{i}")(module, (out,))))
        if hasattr(block.ffn, "gate"):  # GeGLU: the gate's pre-activation counts too
            handles.append(block.ffn.gate.register_forward_hook(
                lambda module, inputs, out, i=i: keep(f"gate{i}")(module, (out,))))
    was_training = model.training
    model.eval()  # no dropout: the scores of the function that is deployed
    try:
        for x, y in batches:
            seen.clear()
            model.zero_grad(set_to_none=True)
            loss(model(x), y, reduction="sum").backward()
            for i in range(c.n_layers):
                a = seen[f"attn{i}"]  # [batch, n, heads * head_dim]
                per_sample = (a * a.grad).detach().float().sum(dim=1)  # bf16 under autocast
                heads[i] += per_sample.reshape(len(a), n_heads, c.head_dim).sum(2).abs(
                    ).sum(0).numpy()
                for name, acc in (("pre", pre_sum), ("act", act_sum), ("gate", gate_sum)):
                    if f"{name}{i}" not in seen:
                        continue
                    t = seen[f"{name}{i}"]
                    acc[i] += (t * t.grad).detach().float().sum(
                        dim=tuple(range(t.ndim - 1))).numpy()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return heads, np.abs(pre_sum) + np.abs(act_sum) + np.abs(gate_sum)


def order(scores: np.ndarray) -> np.ndarray:
    """Indices from the most to the least important (stable: ties keep their order)."""
    return np.argsort(-scores, kind="stable")


@torch.no_grad()
def reorder(model: MatryoshkaTransformer, head_order: np.ndarray,
            neuron_order: np.ndarray) -> MatryoshkaTransformer:
    """Permute every layer's heads (head_order [layers, heads]) and FFN neurons
    (neuron_order [layers, ffn]) in place; returns the model."""
    hd = model.config.head_dim
    for i, block in enumerate(model.blocks):
        rows = torch.as_tensor(
            (np.asarray(head_order[i])[:, None] * hd + np.arange(hd)).reshape(-1))
        attn = block.attn
        for lin in (attn.q, attn.k, attn.v):
            lin.weight.copy_(lin.weight[rows])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[rows])
        attn.o.weight.copy_(attn.o.weight[:, rows])
        cols = torch.as_tensor(np.asarray(neuron_order[i]))
        ffn = block.ffn
        for lin in ffn.inputs:  # GeGLU: both halves alike
            lin.weight.copy_(lin.weight[cols])
            lin.bias.copy_(lin.bias[cols])
        ffn.w2.weight.copy_(ffn.w2.weight[:, cols])
    return model


def rewire(model: MatryoshkaTransformer, batches, loss=None) -> dict:
    """Score the heads and neurons on `batches`, then reorder the model by importance; returns
    the scores and the orders (for the checkpoint's metrics)."""
    heads, neurons = importance(model, batches, loss)
    head_order = np.stack([order(h) for h in heads])
    neuron_order = np.stack([order(n) for n in neurons])
    reorder(model, head_order, neuron_order)
    return {"head_importance": heads.tolist(), "head_order": head_order.tolist(),
            "neuron_order": neuron_order.tolist()}


__all__ = ["importance", "order", "reorder", "rewire"]
