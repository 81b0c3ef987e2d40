"""Import a pretrained Hugging Face BERT-family encoder (BertModel, as in MiniLM) into a
MatryoshkaTransformer, exactly: before any training, the imported model's pooled output is the
original's (tests/model/test_bert.py checks it against an independent numpy forward).

The folder is a standard model folder: config.json (model_type bert), model.safetensors,
tokenizer.json, and optionally sentence-transformers' 1_Pooling/config.json (mean or CLS
pooling; mean when absent). Weights are read with safetensors; `transformers` is never needed.

What changes in the mapping, each exact:
- BERT's key bias is dropped: it adds q.b_k to every score of a query alike, which softmax
  ignores (this model has no key bias, see layers.NestedAttention);
- the token-type embedding of type 0 (every single-text input) is added into the learned
  position table;
- the position table keeps its first max_len rows; the pooler and any MLM head are left out
  (a sentence-transformers encoder does not use them), and the classifier head is new.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matryoshka.errors import ArtifactError, ConfigError, not_a_folder

POOLING_FILE = "1_Pooling/config.json"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def read_bert_config(folder: str | Path) -> dict:
    """config.json of a BERT-family folder, checked: what the import needs, with one clear
    message for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise not_a_folder(folder, "pretrained model folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder: it has no {CONFIG_FILE}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "bert":
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise ConfigError(f"{path}: model_type is {got!r}; only the BERT family (model_type "
                          "'bert', e.g. MiniLM) can be imported")
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings")
    for key in need:
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ConfigError(f"{path}: {key} must be a positive integer; got "
                              f"{cfg.get(key)!r}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ConfigError(f"{path}: hidden_size {cfg['hidden_size']} is not a multiple of "
                          f"num_attention_heads {cfg['num_attention_heads']}")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported "
                          "(BERT's exact 'gelu' is)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{path}: position_embedding_type "
                          f"{cfg.get('position_embedding_type')!r} is not supported (absolute is)")
    return cfg


def read_pooling(folder: str | Path) -> str:
    """'mean' or 'cls', from sentence-transformers' 1_Pooling/config.json (mean without it)."""
    path = Path(folder) / POOLING_FILE
    if not path.is_file():
        return "mean"
    try:
        p = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    modes = [k for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens",
                         "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
             if p.get(k)]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise ConfigError(f"{path}: pooling {modes or 'none'} is not supported (mean or CLS alone)")


def read_bert_weights(folder: str | Path, cfg: dict) -> dict[str, np.ndarray]:
    """The encoder's tensors by their BertModel names ('bert.' prefixes removed), float32,
    every shape checked against config.json."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {WEIGHTS_FILE} (only safetensors weights are read)")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is corrupt or not a safetensors file ({e})") from None
    w = {(k[5:] if k.startswith("bert.") else k): v for k, v in raw.items()}
    d, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    want = {"embeddings.word_embeddings.weight": (v, d),
            "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            want[f"{p}attention.self.{name}.weight"] = (d, d)
            want[f"{p}attention.self.{name}.bias"] = (d,)
        want.update({f"{p}attention.output.dense.weight": (d, d),
                     f"{p}attention.output.dense.bias": (d,),
                     f"{p}attention.output.LayerNorm.weight": (d,),
                     f"{p}attention.output.LayerNorm.bias": (d,),
                     f"{p}intermediate.dense.weight": (m, d),
                     f"{p}intermediate.dense.bias": (m,),
                     f"{p}output.dense.weight": (d, m), f"{p}output.dense.bias": (d,),
                     f"{p}output.LayerNorm.weight": (d,), f"{p}output.LayerNorm.bias": (d,)})
    for name, shape in want.items():
        if name not in w:
            raise ConfigError(f"{path} lacks {name}, which config.json's "
                              f"{cfg['num_hidden_layers']} layers need")
        if tuple(w[name].shape) != shape:
            raise ConfigError(f"{path}: {name} has shape {tuple(w[name].shape)} but "
                              f"config.json says {shape}")
    out = {k: w[k].astype(np.float32) for k in want}
    types = w.get("embeddings.token_type_embeddings.weight")
    if types is not None:
        if types.ndim != 2 or types.shape[1] != d:
            raise ConfigError(f"{path}: embeddings.token_type_embeddings.weight has shape "
                              f"{tuple(types.shape)}, not (types, {d})")
        out["embeddings.token_type_embeddings.weight"] = types.astype(np.float32)
    return out


def bert_config_fields(cfg: dict, pooling: str, max_len: int) -> dict:
    """The MatryoshkaConfig fields of the imported architecture (the caller adds the
    classes, the levels and the name)."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if max_len > cfg["max_position_embeddings"]:
        raise ConfigError(f"max_len {max_len} exceeds the model's max_position_embeddings "
                          f"{cfg['max_position_embeddings']}")
    return dict(d_model=d, levels=(d,), n_layers=cfg["num_hidden_layers"],
                head_dim=d // heads, d_mid=cfg["intermediate_size"], ffn_nesting="fixed",
                norm="shared", pos_encoding="learned", input_kind="text",
                vocab_size=cfg["vocab_size"], max_len=max_len,
                pad_id=int(cfg.get("pad_token_id", 0) or 0), block="post_ln",
                activation="gelu", ln_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                embed_norm="layer_norm", pooling=pooling,
                dropout=float(cfg.get("hidden_dropout_prob", 0.1) or 0.0))


def bert_state(w: dict[str, np.ndarray], n_layers: int, max_len: int) -> dict[str, np.ndarray]:
    """The encoder's tensors under this model's parameter names (the head is not among them)."""
    pos = w["embeddings.position_embeddings.weight"][:max_len]
    if "embeddings.token_type_embeddings.weight" in w:
        pos = pos + w["embeddings.token_type_embeddings.weight"][0]
    s = {"embed.weight": w["embeddings.word_embeddings.weight"], "pos": pos,
         "ln_e.weight.0": w["embeddings.LayerNorm.weight"],
         "ln_e.bias.0": w["embeddings.LayerNorm.bias"]}
    for i in range(n_layers):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        att = p + "attention."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            s[f"{b}attn.{ours}.weight"] = w[f"{att}self.{theirs}.weight"]
            if ours != "k":  # the key bias shifts a query's scores alike: softmax ignores it
                s[f"{b}attn.{ours}.bias"] = w[f"{att}self.{theirs}.bias"]
        s.update({f"{b}attn.o.weight": w[f"{att}output.dense.weight"],
                  f"{b}attn.o.bias": w[f"{att}output.dense.bias"],
                  f"{b}ln1.weight.0": w[f"{att}output.LayerNorm.weight"],
                  f"{b}ln1.bias.0": w[f"{att}output.LayerNorm.bias"],
                  f"{b}ffn.w1.weight": w[f"{p}intermediate.dense.weight"],
                  f"{b}ffn.w1.bias": w[f"{p}intermediate.dense.bias"],
                  f"{b}ffn.w2.weight": w[f"{p}output.dense.weight"],
                  f"{b}ffn.w2.bias": w[f"{p}output.dense.bias"],
                  f"{b}ln2.weight.0": w[f"{p}output.LayerNorm.weight"],
                  f"{b}ln2.bias.0": w[f"{p}output.LayerNorm.bias"]})
    return s


def read_tokenizer(folder: str | Path, max_len: int):
    """The model's own tokenizer.json, as shipped, with its truncation set to max_len (its
    post-processor's [CLS] and [SEP] included) and no padding: the runtime pads."""
    from matryoshka.runtime.text import load_tokenizer

    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {TOKENIZER_FILE}; the import needs the model's "
                          "own tokenizer (a fast tokenizer's tokenizer.json)")
    try:
        tok = load_tokenizer(path.read_bytes())
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def import_bert(folder: str | Path, n_classes: int, max_len: int = 128, name: str | None = None,
                seed: int = 0):
    """A MatryoshkaTransformer holding the pretrained encoder of `folder` and a new
    classifier head (seeded), and the model's tokenizer. Fails with one ConfigError for a
    folder that is not a BERT-family model or whose files disagree."""
    import torch

    from matryoshka.model.config import MatryoshkaConfig
    from matryoshka.model.transformer import MatryoshkaTransformer

    cfg = read_bert_config(folder)
    pooling = read_pooling(folder)
    weights = read_bert_weights(folder, cfg)
    tokenizer = read_tokenizer(folder, max_len)
    if tokenizer.get_vocab_size() > cfg["vocab_size"]:
        raise ConfigError(f"{folder}: tokenizer.json has {tokenizer.get_vocab_size()} tokens "
                          f"but the embedding {cfg['vocab_size']}")
    config = MatryoshkaConfig(**bert_config_fields(cfg, pooling, max_len), n_classes=n_classes,
                              name=name or Path(folder).name)
    torch.manual_seed(seed)
    model = MatryoshkaTransformer(config)
    state = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in bert_state(weights, config.n_layers, max_len).items()}
    missing = set(model.state_dict()) - set(state)
    if missing - {"head.weight", "head.bias"}:
        raise ArtifactError(f"internal: the import maps no weight to {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():  # the new head: small, so the pretrained features lead at first
        model.head.weight.normal_(0.0, 0.02)
        model.head.bias.zero_()
    return model.eval(), tokenizer


def _check_full_width(c) -> None:
    from matryoshka.model.channels import check_full_width

    check_full_width(c, "(an imported encoder fine-tuned by train --pretrained) can be nested")


def width_config(c, levels: tuple[int, ...]):
    """The config of a full-width model nested by its hidden width (the seed's h[:d_i]):
    levels are widths, multiples of head_dim up to d_model, the last d_model; heads d_i /
    head_dim and FFN d_mid * d_i / d_model; per-level LayerNorms."""
    import dataclasses

    from matryoshka.model.config import MatryoshkaConfig

    _check_full_width(c)
    try:
        return MatryoshkaConfig(**{**dataclasses.asdict(c), "levels": tuple(levels),
                                   "norm": "per_level", "ffn_nesting": "proportional"})
    except ConfigError as e:
        raise ConfigError(f"--levels {','.join(map(str, levels))}: {e} (levels of --nesting "
                          f"width are hidden widths, multiples of {c.head_dim} up to "
                          f"{c.d_model}; numbers of heads need --nesting heads)") from None


def nest_by_width(model, levels: tuple[int, ...]):
    """The same weights as a model nested by its hidden width: level d_i runs h[:d_i], the
    first d_i / head_dim heads and d_mid * d_i / d_model FFN neurons of every layer, the
    first d_i columns of the token and position tables, and its own LayerNorms, whose gamma_i,
    beta_i start as the prefixes of the model's. The largest level is the model itself.
    Reorder the residual channels first (model/channels.py), so the prefixes hold the most
    important."""
    from matryoshka.model.layers import NestedLayerNorm
    from matryoshka.model.transformer import MatryoshkaTransformer

    nested = MatryoshkaTransformer(width_config(model.config, levels))
    state = model.state_dict()
    for name, module in nested.named_modules():
        if isinstance(module, NestedLayerNorm):  # one shared gamma, beta: a prefix per level
            for part in ("weight", "bias"):
                full = state[f"{name}.{part}.0"]
                for i, d in enumerate(levels):
                    state[f"{name}.{part}.{i}"] = full[:d].clone()
    nested.load_state_dict(state, strict=True)
    return nested.train(model.training)


def heads_config(c, levels: tuple[int, ...]):
    """The config of a full-width model nested by heads: levels are numbers of heads, level h
    with d_mid * h / n_heads FFN neurons, at the full residual width."""
    import dataclasses

    from matryoshka.model.config import MatryoshkaConfig

    _check_full_width(c)
    try:
        return MatryoshkaConfig(**{**dataclasses.asdict(c), "nesting": "heads",
                                   "levels": tuple(levels), "ffn_nesting": "proportional"})
    except ConfigError as e:
        raise ConfigError(f"--levels {','.join(map(str, levels))}: {e} (levels of an imported "
                          f"encoder are numbers of heads, of {c.d_model // c.head_dim})"
                          ) from None


def check_nesting(folder: str | Path, nesting: str, levels: tuple[int, ...],
                  max_len: int) -> None:
    """Refuse levels the pretrained folder cannot be nested at (ConfigError), from its
    config.json alone: before its weights are read and the texts tokenized."""
    from matryoshka.model.config import MatryoshkaConfig

    c = MatryoshkaConfig(**bert_config_fields(read_bert_config(folder), "mean", max_len),
                         n_classes=2)
    (heads_config if nesting == "heads" else width_config)(c, levels)


def nest_by_heads(model, levels: tuple[int, ...]):
    """The same weights as a model nested by heads (config nesting 'heads'): level h runs the
    first h heads and the first d_mid * h / n_heads FFN neurons of every layer, at the full
    residual width. The largest level is the model itself."""
    from matryoshka.model.transformer import MatryoshkaTransformer

    nested = MatryoshkaTransformer(heads_config(model.config, levels))
    nested.load_state_dict(model.state_dict())
    return nested.train(model.training)


__all__ = ["check_nesting", "heads_config", "import_bert", "nest_by_heads", "nest_by_width",
           "width_config", "read_bert_config",
           "read_bert_weights", "read_pooling",
           "bert_config_fields", "bert_state", "read_tokenizer"]
