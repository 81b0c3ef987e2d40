"""Import a pretrained Hugging Face encoder of a BERT-like family (BERT as in MiniLM,
DistilBERT, RoBERTa, XLM-R, CamemBERT, ELECTRA: model/families.py; and ModernBERT,
model/modernbert.py) into a MatryoshkaTransformer,
exactly: before any training, the imported model's pooled output, and a fine-tuned
classifier's logits, are the original's (tests/model/test_pretrained.py checks BERT against an
independent numpy forward, tests/model/test_families.py every family against `transformers`).

The folder is a standard model folder: config.json, model.safetensors (or only
pytorch_model.bin, read with torch.load(weights_only=True)), tokenizer.json, and optionally
sentence-transformers' 1_Pooling/config.json (mean or CLS pooling; mean when absent). A
`*ForSequenceClassification` folder brings its head and its class names (id2label), and pools
its first token as it does. `transformers` is never needed.

What changes in the mapping, each exact:
- the key bias is dropped: it adds q.b_k to every score of a query alike, which softmax
  ignores (this model has no key bias, see layers.NestedAttention);
- the token-type embedding of type 0 (every single-text input) is added into the learned
  position table;
- the position table keeps the max_len rows a right-padded text reads (RoBERTa's start at
  pad_token_id + 1); the MLM head, and a base model's pooler, are left out (a
  sentence-transformers encoder does not use them), and a base model's classifier head is new.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from matryoshka.errors import ArtifactError, ConfigError, not_a_folder
from matryoshka.model.families import CONFIG_KEYS, Family, family_of

POOLING_FILE = "1_Pooling/config.json"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
BIN_FILE = "pytorch_model.bin"


def read_hf_config(folder: str | Path) -> tuple[Family, dict]:
    """The family and config.json of a model folder, checked and under BERT's keys: what the
    import needs, with one clear message for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise not_a_folder(folder, "pretrained model folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder: it has no {CONFIG_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    family = family_of(raw, str(path))
    cfg = family.config(raw)
    for key in CONFIG_KEYS:
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            own = family.config_keys.get(key, key)
            raise ConfigError(f"{path}: {own} must be a positive integer; got "
                              f"{cfg.get(key)!r} (a {family.name} config needs it)")
    if family.factorised and (not isinstance(cfg["embedding_size"], int)
                              or isinstance(cfg["embedding_size"], bool)
                              or cfg["embedding_size"] < 1):
        raise ConfigError(f"{path}: embedding_size must be a positive integer; got "
                          f"{cfg['embedding_size']!r}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ConfigError(f"{path}: hidden_size {cfg['hidden_size']} is not a multiple of "
                          f"num_attention_heads {cfg['num_attention_heads']}")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported "
                          "(the exact 'gelu' is)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{path}: position_embedding_type "
                          f"{cfg.get('position_embedding_type')!r} is not supported (absolute is)")
    pad = cfg["pad_token_id"]
    if not isinstance(pad, int) or not 0 <= pad < cfg["vocab_size"]:
        raise ConfigError(f"{path}: pad_token_id {pad!r} is not an id of the vocabulary")
    if positions(family, cfg) < 1:
        raise ConfigError(f"{path}: max_position_embeddings {cfg['max_position_embeddings']} "
                          f"leaves no position after the offset of pad_token_id + 1")
    classifier_labels(cfg, str(path))  # a head that cannot be imported is refused here
    return family, cfg


def embed_width(family: Family, cfg: dict) -> int:
    """ELECTRA's embedding_size where it differs from hidden_size (the tables are that wide
    and projected), else 0."""
    if not family.factorised or cfg["embedding_size"] == cfg["hidden_size"]:
        return 0
    return cfg["embedding_size"]


def positions(family: Family, cfg: dict) -> int:
    """The longest text (in tokens) the position table holds."""
    return cfg["max_position_embeddings"] - family.position_offset(cfg)


def classifier_labels(cfg: dict, where: str) -> list[str] | None:
    """The class names of a fine-tuned `*ForSequenceClassification` (id2label in id order),
    or None for a base model."""
    arch = cfg.get("architectures") or []
    if not (isinstance(arch, list) and arch and str(arch[0]).endswith(
            "ForSequenceClassification")):
        return None
    if cfg.get("problem_type") in ("regression", "multi_label_classification"):
        raise ConfigError(f"{where}: problem_type {cfg['problem_type']!r} is not supported "
                          "(single-label classification is)")
    id2label = cfg.get("id2label")
    if not isinstance(id2label, dict) or len(id2label) < 2:
        raise ConfigError(f"{where}: a {arch[0]} needs id2label with at least 2 classes; got "
                          f"{id2label!r}")
    try:
        ids = sorted(int(k) for k in id2label)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: id2label's keys must be class ids 0, 1, ...") from None
    if ids != list(range(len(ids))):
        raise ConfigError(f"{where}: id2label's keys must be 0 to {len(ids) - 1}; got {ids}")
    names = [str(id2label.get(str(i), id2label.get(i))) for i in ids]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: id2label names a class twice: {names}")
    return names


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


def _load_tensors(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The folder's tensors as numpy arrays: model.safetensors, else pytorch_model.bin loaded
    as weights only (no pickled code runs)."""
    path = folder / WEIGHTS_FILE
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return path, load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"{path} is corrupt or not a safetensors file ({e})") from None
    path = folder / BIN_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has neither {WEIGHTS_FILE} nor {BIN_FILE} (a sharded "
                          "checkpoint is not read: save it as one file)")
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read as weights only ({str(e).splitlines()[0]})"
                          ) from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"{path} is not a state dict (a mapping of names to tensors)")
    return path, {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                  for k, v in state.items()}


def read_hf_weights(folder: str | Path, family: Family, cfg: dict,
                    classifier: bool) -> dict[str, np.ndarray]:
    """The encoder's tensors by BertModel's names (and a classifier's head tensors as
    pre_head.* and head.*), float32, every shape checked against config.json."""
    path, raw = _load_tensors(Path(folder))
    w = {family.tensor_name(k): v for k, v in raw.items()}
    if family.modern:
        from matryoshka.model.modernbert import modernbert_shapes

        want = modernbert_shapes(cfg, classifier, len(cfg.get("id2label") or ()))
        _check_shapes(path, w, want, cfg)
        return {k: v.astype(np.float32) for k, v in w.items()
                if k in want or (k.endswith(".bias") and k[:-5] + ".weight" in want)}
    d, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    e = embed_width(family, cfg) or d
    want = {"embeddings.word_embeddings.weight": (v, e),
            "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], e),
            "embeddings.LayerNorm.weight": (e,), "embeddings.LayerNorm.bias": (e,)}
    if e != d:
        want.update({"embeddings_project.weight": (d, e), "embeddings_project.bias": (d,)})
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
    rename = {}  # a classifier's head: its hidden layer and classifier, by the family's names
    for ours, theirs in family.head.items() if classifier else ():
        size = d if ours == "pre_head" else len(cfg["id2label"])
        want.update({f"{theirs}.weight": (size, d), f"{theirs}.bias": (size,)})
        rename.update({f"{theirs}.weight": f"{ours}.weight", f"{theirs}.bias": f"{ours}.bias"})
    _check_shapes(path, w, want, cfg)
    out = {rename.get(k, k): w[k].astype(np.float32) for k in want}
    types = w.get("embeddings.token_type_embeddings.weight")
    if types is not None:
        if types.ndim != 2 or types.shape[1] != e:
            raise ConfigError(f"{path}: embeddings.token_type_embeddings.weight has shape "
                              f"{tuple(types.shape)}, not (types, {e})")
        out["embeddings.token_type_embeddings.weight"] = types.astype(np.float32)
    return out


DEFAULT_MAX_LEN = 128


def text_length(family: Family, cfg: dict, max_len: int | None) -> int:
    """max_len as asked, or by default 128 tokens (fewer where the model has fewer
    positions); more than the position table holds is a ConfigError."""
    if max_len is None:
        return min(DEFAULT_MAX_LEN, positions(family, cfg))
    if max_len > positions(family, cfg):
        raise ConfigError(f"max_len {max_len} exceeds the {positions(family, cfg)} positions "
                          f"of this {family.name} model")
    return max_len


def _check_shapes(path: Path, w: dict, want: dict[str, tuple], cfg: dict) -> None:
    """Every tensor of `want` is in `w` with its shape (one ConfigError naming the first that
    is not)."""
    for name, shape in want.items():
        if w.get(name) is None:
            if name.startswith(("embeddings", "encoder", "layers", "final_norm")):
                raise ConfigError(f"{path} lacks {name}, which config.json's "
                                  f"{cfg['num_hidden_layers']} layers need")
            raise ConfigError(f"{path} lacks the classifier's {name.rsplit('.', 1)[0]}, which "
                              f"{cfg['architectures'][0]} has")
        if tuple(w[name].shape) != shape:
            raise ConfigError(f"{path}: {name} has shape {tuple(w[name].shape)} but "
                              f"config.json says {shape}")


def bert_config_fields(family: Family, cfg: dict, pooling: str, max_len: int | None,
                       head_act: str = "none") -> dict:
    """The MatryoshkaConfig fields of the imported architecture (the caller adds the
    classes, the levels and the name); `head_act` other than "none" keeps a classifier's
    hidden layer, and ModernBERT's LayerNorm after it."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    max_len = text_length(family, cfg, max_len)
    dropout = cfg.get("hidden_dropout_prob", 0.1)
    modern = {}
    if family.modern:
        from matryoshka.model.modernbert import modernbert_fields

        modern = modernbert_fields(cfg, family.name)
        dropout = modern.pop("dropout")
        if head_act != "none":  # its classifier's head ends in a LayerNorm
            modern["head_norm"] = "layer_norm"
    return dict(d_model=d, levels=(d,), n_layers=cfg["num_hidden_layers"],
                head_dim=d // heads, d_mid=cfg["intermediate_size"], ffn_nesting="fixed",
                norm="shared", pos_encoding="learned", input_kind="text",
                vocab_size=cfg["vocab_size"], max_len=max_len,
                pad_id=int(cfg["pad_token_id"]), block="post_ln",
                activation="gelu", ln_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                embed_norm="layer_norm", pooling=pooling, head_act=head_act,
                embed_dim=embed_width(family, cfg),
                dropout=float(dropout or 0.0)) | modern


def bert_state(w: dict[str, np.ndarray], n_layers: int, max_len: int,
               offset: int = 0) -> dict[str, np.ndarray]:
    """The encoder's tensors (and a classifier's head) under this model's parameter names;
    the position table's rows offset .. offset + max_len."""
    pos = w["embeddings.position_embeddings.weight"][offset:offset + max_len]
    if "embeddings.token_type_embeddings.weight" in w:
        pos = pos + w["embeddings.token_type_embeddings.weight"][0]
    s = {"embed.weight": w["embeddings.word_embeddings.weight"], "pos": pos}
    if "embeddings_project.weight" in w:  # ELECTRA: a plain LayerNorm, then the projection
        s.update({"ln_e.weight": w["embeddings.LayerNorm.weight"],
                  "ln_e.bias": w["embeddings.LayerNorm.bias"],
                  "embed_proj.weight": w["embeddings_project.weight"],
                  "embed_proj.bias": w["embeddings_project.bias"]})
    else:
        s.update({"ln_e.weight.0": w["embeddings.LayerNorm.weight"],
                  "ln_e.bias.0": w["embeddings.LayerNorm.bias"]})
    s.update({k: v for k, v in w.items() if k.startswith(("pre_head.", "head."))})
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


def read_tokenizer(folder: str | Path, max_len: int, family: Family | None = None):
    """The model's own tokenizer.json, as shipped, with its truncation set to max_len (its
    post-processor's specials included) and no padding: the runtime pads. With `family`, its
    model (WordPiece, BPE, Unigram) must be one the family ships with."""
    from matryoshka.runtime.text import load_tokenizer

    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} has no {TOKENIZER_FILE}; the import needs the model's "
                          "own tokenizer (a fast tokenizer's tokenizer.json)")
    data = path.read_bytes()
    try:
        tok = load_tokenizer(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if family is not None:
        kind = json.loads(data).get("model", {}).get("type")
        if kind not in family.tokenizers:
            raise ConfigError(f"{path}: a {kind} tokenizer does not belong to a {family.name} "
                              f"model (its tokenizer is {' or '.join(family.tokenizers)})")
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def import_encoder(folder: str | Path, n_classes: int | None = None,
                   max_len: int | None = None, name: str | None = None, seed: int = 0):
    """(model, tokenizer, labels): a MatryoshkaTransformer holding the pretrained model of
    `folder` and its tokenizer. A fine-tuned `*ForSequenceClassification` keeps its head, and
    `labels` are its class names; a base model gets a new head of `n_classes` (seeded) and
    labels None. Texts are cut to max_len tokens [128, or the model's positions if fewer].
    One ConfigError for a folder that cannot be imported or whose files disagree."""
    import torch

    from matryoshka.model.config import MatryoshkaConfig
    from matryoshka.model.transformer import MatryoshkaTransformer

    family, cfg = read_hf_config(folder)
    labels = classifier_labels(cfg, str(Path(folder) / CONFIG_FILE))
    if labels is None and n_classes is None:
        raise ConfigError(f"{folder} is a base model without a classifier head: say how many "
                          "classes its new head has")
    pooling = (cfg.get("classifier_pooling", "cls") if family.modern else "cls") if labels \
        else read_pooling(folder)
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"{folder}: classifier_pooling {pooling!r} is not supported (cls or "
                          "mean)")
    weights = read_hf_weights(folder, family, cfg, classifier=labels is not None)
    max_len = text_length(family, cfg, max_len)
    tokenizer = read_tokenizer(folder, max_len, family)
    if tokenizer.get_vocab_size() > cfg["vocab_size"]:
        raise ConfigError(f"{folder}: tokenizer.json has {tokenizer.get_vocab_size()} tokens "
                          f"but the embedding {cfg['vocab_size']}")
    fields = bert_config_fields(family, cfg, pooling, max_len,
                                head_act=family.head_act if labels else "none")
    if family.modern and labels and cfg.get("classifier_activation", "gelu") != "gelu":
        raise ConfigError(f"{folder}: classifier_activation "
                          f"{cfg['classifier_activation']!r} is not supported (gelu is)")
    config = MatryoshkaConfig(**fields, n_classes=len(labels) if labels else n_classes,
                              name=name or Path(folder).name)
    torch.manual_seed(seed)
    model = MatryoshkaTransformer(config)
    if family.modern:
        from matryoshka.model.modernbert import modernbert_state

        mapped = modernbert_state(weights, cfg, labels is not None)
    else:
        mapped = bert_state(weights, config.n_layers, max_len, family.position_offset(cfg))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in mapped.items()}
    missing = set(model.state_dict()) - set(state)
    if missing - (set() if labels else {"head.weight", "head.bias"}):
        raise ArtifactError(f"internal: the import maps no weight to {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    if labels is None:
        with torch.no_grad():  # the new head: small, so the pretrained features lead at first
            model.head.weight.normal_(0.0, 0.02)
            model.head.bias.zero_()
    return model.eval(), tokenizer, labels


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
                  max_len: int | None) -> None:
    """Refuse levels the pretrained folder cannot be nested at (ConfigError), from its
    config.json alone: before its weights are read and the texts tokenized."""
    from matryoshka.model.config import MatryoshkaConfig

    family, cfg = read_hf_config(folder)
    c = MatryoshkaConfig(**bert_config_fields(family, cfg, "mean", max_len), n_classes=2)
    (heads_config if nesting == "heads" else width_config)(c, levels)


def nest_by_heads(model, levels: tuple[int, ...]):
    """The same weights as a model nested by heads (config nesting 'heads'): level h runs the
    first h heads and the first d_mid * h / n_heads FFN neurons of every layer, at the full
    residual width. The largest level is the model itself."""
    from matryoshka.model.transformer import MatryoshkaTransformer

    nested = MatryoshkaTransformer(heads_config(model.config, levels))
    nested.load_state_dict(model.state_dict())
    return nested.train(model.training)


__all__ = ["bert_config_fields", "bert_state", "check_nesting", "classifier_labels",
           "heads_config", "import_encoder", "nest_by_heads", "nest_by_width", "positions",
           "read_hf_config", "read_hf_weights", "read_pooling", "read_tokenizer",
           "width_config"]
