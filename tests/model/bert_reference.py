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
    if "embeddings_project.weight" in w:  # ELECTRA: the embedding is projected to the width
        h = h @ w["embeddings_project.weight"].T + w["embeddings_project.bias"]
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


def as_bert(state: dict, config, dim: int | None = None, ffn: int | None = None) -> dict:
    """A matryoshka state dict (numpy or torch values) under BertModel's names, the key bias
    and the token-type table zero (the import folds the latter into the positions): the whole
    model, or the standalone BERT that a width level dim (with ffn neurons per layer) is, cut
    by hand from the prefixes (the first dim rows and columns, the first ffn neurons, the
    level's own LayerNorm gamma_i, beta_i)."""
    s = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v)
         for k, v in state.items()}
    d, f = dim or config.d_model, ffn or config.d_mid
    i = config.dims().index(d)

    def ln(name):
        return s[f"{name}.weight.{i}"][:d], s[f"{name}.bias.{i}"][:d]

    e = config.embed_dim or d  # ELECTRA's tables are whole at every level, then projected
    w = {"embeddings.word_embeddings.weight": s["embed.weight"][:, :e],
         "embeddings.position_embeddings.weight": s["pos"][:, :e],
         "embeddings.token_type_embeddings.weight": np.zeros((2, e), np.float32)}
    if config.embed_dim:
        w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = (
            s["ln_e.weight"], s["ln_e.bias"])
        w["embeddings_project.weight"] = s["embed_proj.weight"][:d]
        w["embeddings_project.bias"] = s["embed_proj.bias"][:d]
    else:
        w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = ln("ln_e")
    for layer in range(config.n_layers):
        p, b = f"encoder.layer.{layer}.", f"blocks.{layer}."
        a = p + "attention."
        for theirs, ours in (("query", "q"), ("key", "k"), ("value", "v")):
            w[f"{a}self.{theirs}.weight"] = s[f"{b}attn.{ours}.weight"][:d, :d]
            w[f"{a}self.{theirs}.bias"] = (np.zeros(d, np.float32) if ours == "k"
                                           else s[f"{b}attn.{ours}.bias"][:d])
        w[f"{a}output.dense.weight"] = s[f"{b}attn.o.weight"][:d, :d]
        w[f"{a}output.dense.bias"] = s[f"{b}attn.o.bias"][:d]
        w[f"{a}output.LayerNorm.weight"], w[f"{a}output.LayerNorm.bias"] = ln(f"{b}ln1")
        w[f"{p}intermediate.dense.weight"] = s[f"{b}ffn.w1.weight"][:f, :d]
        w[f"{p}intermediate.dense.bias"] = s[f"{b}ffn.w1.bias"][:f]
        w[f"{p}output.dense.weight"] = s[f"{b}ffn.w2.weight"][:d, :f]
        w[f"{p}output.dense.bias"] = s[f"{b}ffn.w2.bias"][:d]
        w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"] = ln(f"{b}ln2")
    return w


def head_logits(state: dict, config, pooled: np.ndarray) -> np.ndarray:
    """The classifier on pooled [batch, d] (a width level's d): a fine-tuned classifier's
    hidden layer W[:d, :d] and its activation first (config.head_act), then head[:, :d]."""
    s = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, np.float64)
         for k, v in state.items()}
    d = pooled.shape[-1]
    if config.head_act != "none":
        z = pooled @ s["pre_head.weight"][:d, :d].T + s["pre_head.bias"][:d]
        pooled = {"tanh": np.tanh, "relu": lambda t: np.maximum(t, 0.0),
                  "gelu": lambda t: 0.5 * t * (1.0 + erf(t / math.sqrt(2.0)))}[config.head_act](z)
    return pooled @ s["head.weight"][:, :d].T + s["head.bias"]


def bert_cfg(config, dim: int | None = None) -> dict:
    """The reference's config for the model, or for its width level dim."""
    return {"num_attention_heads": (dim or config.d_model) // config.head_dim,
            "num_hidden_layers": config.n_layers, "layer_norm_eps": config.ln_eps}
