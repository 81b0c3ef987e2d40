"""The Hugging Face encoder families that import exactly, each described by how its folder maps
onto BERT's: config keys, tensor names, positions, pad id, classifier head and tokenizer.

A BERT-like encoder is post-LN: embeddings (token + position + token type 0, LayerNorm), then
blocks of self-attention and a GELU FFN, each added to its input and normalized. DistilBERT
and the RoBERTa family (RoBERTa, XLM-R, CamemBERT) are that architecture under other names:

- distilbert: its own config keys (dim, n_layers, n_heads, hidden_dim, activation), tensor
  names (q_lin, sa_layer_norm, ffn.lin1, ...), no token types, LayerNorm eps 1e-12;
- roberta, xlm-roberta, camembert: BERT's tensor names under `roberta.`, a one-row token-type
  table, positions counted from padding_idx + 1 (its position ids are
  cumsum(ids != pad) + pad, so a right-padded text's token j reads row pad + 1 + j), pad id 1;
- modernbert (ModernBERT, the Ettin encoders): its own architecture, under `model.`
  (model/modernbert.py: pre-LN, rotary, GeGLU, alternating global and local attention);
- electra (a discriminator): BERT's names under `electra.`, but the token, position and type
  tables and the embedding LayerNorm are embedding_size wide, and embeddings_project (a dense
  embedding_size -> hidden_size) feeds the blocks (config.embed_dim).

A `*ForSequenceClassification` folder adds a head: a d x d hidden layer and its activation on
the first token (BERT's pooler, tanh; RoBERTa's classifier.dense, tanh; DistilBERT's
pre_classifier, ReLU; ELECTRA's classifier.dense, GELU), then the classifier. `transformers`
is never imported here: the tests check each mapping against it
(tests/model/test_families.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from matryoshka.errors import ConfigError

# The config keys the import reads, under BERT's names.
CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")


@dataclass(frozen=True)
class Family:
    """How one family's folder maps onto BERT's (see the module docstring)."""

    name: str  # as the docs and messages say it
    prefix: str  # the base model's attribute in its *ForSequenceClassification
    config_keys: dict[str, str]  # BERT's config key -> this family's
    renames: tuple[tuple[str, str], ...]  # regex substitutions of tensor names onto BERT's
    head: dict[str, str]  # "pre_head" and "head" -> this family's module names
    head_act: str  # the activation after the head's hidden layer
    tokenizers: tuple[str, ...]  # tokenizer.json model types it ships with
    ln_eps: float | None = None  # fixed by the architecture (None: config's layer_norm_eps)
    offset_positions: bool = False  # position ids start at pad_token_id + 1
    default_pad: int = 0
    factorised: bool = False  # ELECTRA: tables embedding_size wide, then embeddings_project
    modern: bool = False  # ModernBERT: its own architecture (model/modernbert.py)

    def config(self, raw: dict) -> dict:
        """raw config.json under BERT's keys (the family's own keys renamed)."""
        cfg = dict(raw)
        for ours, theirs in self.config_keys.items():
            if theirs in raw:
                cfg[ours] = raw[theirs]
        if self.ln_eps is not None:
            cfg["layer_norm_eps"] = self.ln_eps
        if self.factorised:
            cfg.setdefault("embedding_size", cfg.get("hidden_size"))
        cfg.setdefault("pad_token_id", self.default_pad)
        if cfg["pad_token_id"] is None:
            cfg["pad_token_id"] = self.default_pad
        return cfg

    def position_offset(self, cfg: dict) -> int:
        """The position table's row of a text's first token."""
        return int(cfg["pad_token_id"]) + 1 if self.offset_positions else 0

    def tensor_name(self, name: str) -> str:
        """A tensor's name in the folder, under BERT's BertModel names (head tensors keep
        theirs)."""
        if name.startswith(self.prefix + "."):
            name = name[len(self.prefix) + 1:]
        for pattern, repl in self.renames:
            name = re.sub(pattern, repl, name)
        return name


_ROBERTA_HEAD = {"pre_head": "classifier.dense", "head": "classifier.out_proj"}

FAMILIES = {
    "bert": Family("BERT", "bert", {}, (), {"pre_head": "pooler.dense", "head": "classifier"},
                   "tanh", ("WordPiece",)),
    "distilbert": Family(
        "DistilBERT", "distilbert",
        {"hidden_size": "dim", "num_hidden_layers": "n_layers",
         "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
         "hidden_act": "activation", "hidden_dropout_prob": "dropout"},
        ((r"^transformer\.layer\.", "encoder.layer."),
         (r"\.attention\.q_lin\.", ".attention.self.query."),
         (r"\.attention\.k_lin\.", ".attention.self.key."),
         (r"\.attention\.v_lin\.", ".attention.self.value."),
         (r"\.attention\.out_lin\.", ".attention.output.dense."),
         (r"\.sa_layer_norm\.", ".attention.output.LayerNorm."),
         (r"\.ffn\.lin1\.", ".intermediate.dense."),
         (r"\.ffn\.lin2\.", ".output.dense."),
         (r"\.output_layer_norm\.", ".output.LayerNorm.")),
        {"pre_head": "pre_classifier", "head": "classifier"}, "relu", ("WordPiece",),
        ln_eps=1e-12),
    "electra": Family("ELECTRA", "electra", {}, (), _ROBERTA_HEAD, "gelu", ("WordPiece",),
                      factorised=True),
    "modernbert": Family(
        "ModernBERT", "model", {"layer_norm_eps": "norm_eps", "hidden_act": "hidden_activation"},
        (), {"pre_head": "head.dense", "head": "classifier"}, "gelu", ("BPE",), modern=True),
    "roberta": Family("RoBERTa", "roberta", {}, (), _ROBERTA_HEAD, "tanh", ("BPE",),
                      offset_positions=True, default_pad=1),
    "xlm-roberta": Family("XLM-RoBERTa", "roberta", {}, (), _ROBERTA_HEAD, "tanh",
                          ("Unigram", "BPE"), offset_positions=True, default_pad=1),
    "camembert": Family("CamemBERT", "roberta", {}, (), _ROBERTA_HEAD, "tanh",
                        ("Unigram", "BPE"), offset_positions=True, default_pad=1),
}


def family_of(raw: dict, where: str) -> Family:
    """The Family of a config.json (ConfigError naming the supported ones otherwise)."""
    got = raw.get("model_type") if isinstance(raw, dict) else None
    if got not in FAMILIES:
        raise ConfigError(f"{where}: model_type is {got!r}; the families that can be imported "
                          f"are {', '.join(sorted(FAMILIES))}")
    return FAMILIES[got]


__all__ = ["CONFIG_KEYS", "FAMILIES", "Family", "family_of"]
