"""ModernBERT (Warner et al., 2024; the Ettin encoders) imported exactly into a
MatryoshkaTransformer: what its folder maps to (model/pretrained.py reads the folder and
calls here).

The architecture, as config fields of this project's model:
- pre-LN blocks (`block: pre_ln_bare_first`: the first block has no attention LayerNorm, the
  embedding's LayerNorm precedes it) and a final LayerNorm; no biases anywhere (they import
  as zeros, and LayerNorms without a bias as a zero beta);
- rotary positions (`pos_encoding: rotary`), theta `rope_theta` in the global layers and
  `local_rope_theta` in the others; every `global_every`-th layer from 0 attends globally and
  the others to keys at most `local_window` tokens away (local_attention // 2);
- a GeGLU FFN: Wi's first half is W1 and its second the gate (`activation: geglu`), so that
  nesting cuts neuron j of both halves together;
- a classifier's head: dense, its activation and a LayerNorm (`head_norm`) on the first token
  or the masked mean (`classifier_pooling`), then the classifier.
"""

from __future__ import annotations

import numpy as np

from matryoshka.errors import ConfigError


def layer_pattern(cfg: dict, where: str) -> tuple[int, int, float, float]:
    """(global_every, local_window, rope_theta, local_rope_theta) of a ModernBERT config, in
    either of its forms: global_attn_every_n_layers, global_rope_theta and local_rope_theta
    (the published folders), or transformers 5's layer_types and rope_parameters."""
    n = cfg["num_hidden_layers"]
    every = cfg.get("global_attn_every_n_layers", 3)
    types = cfg.get("layer_types")
    if types is not None:
        globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
        if len(types) != n or not globals_ or globals_[0] != 0:
            raise ConfigError(f"{where}: layer_types must name {n} layers, the first global")
        every = globals_[1] - globals_[0] if len(globals_) > 1 else n
        if globals_ != list(range(0, n, every)):
            raise ConfigError(f"{where}: layer_types {types} is not global every k-th layer")
    rope = cfg.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or {}).get("rope_theta",
                                                   cfg.get("global_rope_theta", 160000.0))
    local = (rope.get("sliding_attention") or {}).get("rope_theta",
                                                      cfg.get("local_rope_theta", 10000.0))
    window = cfg.get("local_attention", 128) // 2
    if not isinstance(every, int) or every < 1 or not window >= 1:
        raise ConfigError(f"{where}: global_attn_every_n_layers and local_attention must be "
                          "positive")
    return every, window, float(theta), float(local)


def modernbert_fields(cfg: dict, where: str) -> dict:
    """The MatryoshkaConfig fields that ModernBERT sets (the rest as bert_config_fields)."""
    every, window, theta, local = layer_pattern(cfg, where)
    return dict(block="pre_ln_bare_first", activation="geglu", pos_encoding="rotary",
                ln_eps=float(cfg.get("layer_norm_eps", 1e-5)), global_every=every,
                local_window=window, rope_theta=theta, local_rope_theta=local,
                dropout=float(cfg.get("mlp_dropout", 0.0) or 0.0))


def modernbert_shapes(cfg: dict, classifier: bool, labels: int) -> dict[str, tuple]:
    """The tensors a ModernBERT folder must hold (names after its `model.` prefix), with
    their shapes; the biases it may hold are not among them (see modernbert_state)."""
    d, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    want = {"embeddings.tok_embeddings.weight": (v, d), "embeddings.norm.weight": (d,),
            "final_norm.weight": (d,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        if i:
            want[p + "attn_norm.weight"] = (d,)
        want.update({p + "attn.Wqkv.weight": (3 * d, d), p + "attn.Wo.weight": (d, d),
                     p + "mlp_norm.weight": (d,), p + "mlp.Wi.weight": (2 * m, d),
                     p + "mlp.Wo.weight": (d, m)})
    if classifier:
        want.update({"head.dense.weight": (d, d), "head.norm.weight": (d,),
                     "classifier.weight": (labels, d)})
    return want


def modernbert_state(w: dict[str, np.ndarray], cfg: dict, classifier: bool
                     ) -> dict[str, np.ndarray]:
    """The folder's tensors (checked by modernbert_shapes) under this model's names; a bias
    the folder lacks is zero."""
    d, m = cfg["hidden_size"], cfg["intermediate_size"]

    def bias(name: str, size: int) -> np.ndarray:
        return w.get(name, np.zeros(size, np.float32))

    s = {"embed.weight": w["embeddings.tok_embeddings.weight"],
         "ln_e.weight.0": w["embeddings.norm.weight"],
         "ln_e.bias.0": bias("embeddings.norm.bias", d),
         "ln_f.weight.0": w["final_norm.weight"], "ln_f.bias.0": bias("final_norm.bias", d)}
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"layers.{i}.", f"blocks.{i}."
        qkv, qkv_b = w[p + "attn.Wqkv.weight"], bias(p + "attn.Wqkv.bias", 3 * d)
        wi, wi_b = w[p + "mlp.Wi.weight"], bias(p + "mlp.Wi.bias", 2 * m)
        if i:
            s[b + "ln1.weight.0"] = w[p + "attn_norm.weight"]
            s[b + "ln1.bias.0"] = bias(p + "attn_norm.bias", d)
        s.update({  # the key bias is dropped: softmax ignores it
            b + "attn.q.weight": qkv[:d], b + "attn.q.bias": qkv_b[:d],
            b + "attn.k.weight": qkv[d:2 * d],
            b + "attn.v.weight": qkv[2 * d:], b + "attn.v.bias": qkv_b[2 * d:],
            b + "attn.o.weight": w[p + "attn.Wo.weight"],
            b + "attn.o.bias": bias(p + "attn.Wo.bias", d),
            b + "ln2.weight.0": w[p + "mlp_norm.weight"],
            b + "ln2.bias.0": bias(p + "mlp_norm.bias", d),
            b + "ffn.w1.weight": wi[:m], b + "ffn.w1.bias": wi_b[:m],
            b + "ffn.gate.weight": wi[m:], b + "ffn.gate.bias": wi_b[m:],
            b + "ffn.w2.weight": w[p + "mlp.Wo.weight"],
            b + "ffn.w2.bias": bias(p + "mlp.Wo.bias", d)})
    if classifier:
        s.update({"pre_head.weight": w["head.dense.weight"],
                  "pre_head.bias": bias("head.dense.bias", d),
                  "head_norm.weight.0": w["head.norm.weight"],
                  "head_norm.bias.0": bias("head.norm.bias", d),
                  "head.weight": w["classifier.weight"],
                  "head.bias": bias("classifier.bias", w["classifier.weight"].shape[0])})
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in s.items()}


__all__ = ["layer_pattern", "modernbert_fields", "modernbert_shapes", "modernbert_state"]
