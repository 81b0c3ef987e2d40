"""An independent numpy forward of a Hugging Face BertModel plus sentence-transformers' pooling,
written from the published architecture (not from matryoshka's mapping): the reference that the
import must equal. Reads the folder's own tensor names, keeps the key bias and the token-type
embedding, and masks padding with float32's most negative value as transformers does."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def bert_pooled(w: dict, cfg: dict, ids: np.ndarray, pad_id: int = 0,
                pooling: str = "mean") -> np.ndarray:
    """[batch, hidden] float64: the pooled sentence embedding of right-padded ids."""
    w = {(k[5:] if k.startswith("bert.") else k): np.asarray(v, np.float64) for k, v in w.items()}
    eps, heads = cfg.get("layer_norm_eps", 1e-12), cfg["num_attention_heads"]
    b, n = ids.shape
    mask = ids != pad_id
    h = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:n][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    h = _ln(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    d = h.shape[-1]
    hd = d // heads
    bias = np.where(mask, 0.0, np.finfo(np.float32).min)[:, None, None, :]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(x, name, p=p):
            return x @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(t):
            return t.reshape(b, n, heads, hd).transpose(0, 2, 1, 3)

        q = split(lin(h, "attention.self.query"))
        k = split(lin(h, "attention.self.key"))
        v = split(lin(h, "attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, n, d)
        h = _ln(h + lin(ctx, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"], eps)
        mid = lin(h, "intermediate.dense")
        mid = 0.5 * mid * (1.0 + erf(mid / math.sqrt(2.0)))
        h = _ln(h + lin(mid, "output.dense"), w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"], eps)
    if pooling == "cls":
        return h[:, 0]
    m = mask[..., None].astype(np.float64)
    return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
