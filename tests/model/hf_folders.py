"""Tiny random Hugging Face model folders, made by `transformers` itself (no hub, no download),
for checking an importer against `transformers` as the reference.

make_hf_folder writes config.json and the weights (model.safetensors, or pytorch_model.bin
alone) with transformers' save_pretrained, for the base model (BertModel, DistilBertModel,
RobertaModel, XLMRobertaModel, CamembertModel, ElectraModel) or its *ForSequenceClassification,
and a tokenizer.json built with the `tokenizers` library:

* bert, distilbert, electra: the WordPiece of tiny_bert.py ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
  [MASK]=4, BertNormalizer lowercase, "[CLS] $A [SEP]");
* roberta: a byte-level BPE trained on generated texts (<s>=0 <pad>=1 </s>=2 <unk>=3, <mask>
  last, RobertaProcessing);
* xlm-roberta and camembert: a SentencePiece-like Unigram trained on the same texts (<s>=0
  <pad>=1 </s>=2 <unk>=3, <mask> last, NFKC normalizer, Metaspace, "<s> $A </s>"). The real
  ones normalize with a precompiled SentencePiece charsmap, which @huggingface/tokenizers
  approximates (and its Nmt normalizer it lacks), so NFKC stands in for it here.
  (The real CamemBERT is SentencePiece too, though its <s>/</s> ids differ; here they are 0/2.)

Every LayerNorm weight and bias and every bias is randomised (transformers leaves them at 1/0),
and the weights are drawn with initializer_range 0.2 rather than 0.02, so that attention is not
near uniform: a bug in the mapping shows. reference_outputs runs the folder with transformers;
encode_texts turns texts into the right-padded int64 batch that both sides take."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tests.model.tiny_bert import WORDS, wordpiece

FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "modernbert")
# ModernBERT's specials follow the BPE vocabulary (its real pad id is 50283 of 50368)
PAD_ID = {"bert": 0, "distilbert": 0, "electra": 0, "roberta": 1, "xlm-roberta": 1,
          "camembert": 1, "modernbert": 403}
LABEL_WORDS = ("negative", "positive", "neutral", "question", "spam", "other", "urgent",
               "later")
_CLASSES = {"bert": "Bert", "distilbert": "DistilBert", "roberta": "Roberta",
            "xlm-roberta": "XLMRoberta", "camembert": "Camembert", "electra": "Electra",
            "modernbert": "ModernBert"}
_EXTRA = ("café naïve über señor déjà vu garçon Zürich crème brûlée façade São Paulo "
          "🙂 🚀 ❤️ 👍 — «quoted» ¿qué? ¡hola!").split()


def label_names(n: int) -> list[str]:
    """n readable class names: negative, positive, neutral, ... then label_8, label_9, ..."""
    return [LABEL_WORDS[i] if i < len(LABEL_WORDS) else f"label_{i}" for i in range(n)]


def training_texts(n: int = 300, seed: int = 0) -> list[str]:
    """n texts of WORDS (some capitalised) with accented words, emoji and punctuation mixed in:
    what the BPE and Unigram tokenizers are trained on."""
    rng = np.random.default_rng(seed)
    pool = list(WORDS) + [w.capitalize() for w in WORDS] + list(_EXTRA)
    return [" ".join(rng.choice(pool, size=int(rng.integers(1, 16))))
            + str(rng.choice(["", "!", "?", ".", ","])) for _ in range(n)]


def _wordpiece():
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
                               + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
                               + list("abcdefghijklmnopqrstuvwxyz!?.,")))  # "a" only once
    tok = wordpiece(vocab)
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def _byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts(), trainer=trainer)
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                      add_prefix_space=False)
    return tok


def _unigram():
    """UnigramTrainer picks the pieces; their scores are then recounted here (log of each
    piece's share of the training text), because the trainer's scores, and so its piece order,
    change from run to run in the third decimal."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    def parts(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = parts(models.Unigram())
    tok.train_from_iterator(training_texts(), trainer=trainers.UnigramTrainer(
        vocab_size=200, show_progress=False, unk_token="<unk>", special_tokens=specials))
    pieces = sorted(set(tok.get_vocab()) - set(specials))
    words = [w for t in training_texts() for w, _ in
             tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t))]
    total = sum(map(len, words))
    score = {p: math.log(max(sum(w.count(p) for w in words), 1) / total) for p in pieces}
    vocab = [(p, 0.0) for p in specials] + sorted(score.items(), key=lambda x: (-x[1], x[0]))
    tok = parts(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.add_special_tokens(specials + ["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def _modern_bpe():
    """RoBERTa's byte-level BPE (401 tokens), then ModernBERT's specials at the end: [CLS] 401,
    [SEP] 402, [PAD] 403, [MASK] 404, and "[CLS] $A [SEP]"."""
    from tokenizers import processors

    tok = _byte_bpe()
    tok.add_special_tokens(["[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 401), ("[SEP]", 402)])
    assert tok.token_to_id("[PAD]") == PAD_ID["modernbert"]
    return tok


def make_tokenizer(family: str):
    """The family's tokenizers.Tokenizer, without truncation or padding."""
    tok = {"roberta": _byte_bpe, "xlm-roberta": _unigram, "camembert": _unigram,
           "modernbert": _modern_bpe}.get(family, _wordpiece)()
    tok.no_truncation()
    tok.no_padding()
    return tok


def make_config(family: str, vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4,
                ffn: int = 64, positions: int = 64):
    """The family's small transformers config; RoBERTa-style ones get positions + 2 position
    embeddings (their position ids start at pad_id + 1), so `positions` tokens fit."""
    import transformers

    cls = getattr(transformers, _CLASSES[family] + "Config")
    if family == "modernbert":  # two layers: 0 global, 1 local, with a window of 4 tokens
        return cls(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                   num_attention_heads=heads, intermediate_size=ffn,
                   max_position_embeddings=positions, pad_token_id=403, cls_token_id=401,
                   sep_token_id=402, bos_token_id=401, eos_token_id=402,
                   global_attn_every_n_layers=2, local_attention=8, global_rope_theta=160000.0,
                   local_rope_theta=10000.0, classifier_pooling="mean", initializer_range=0.2)
    if family == "distilbert":
        return cls(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                   hidden_dim=ffn, max_position_embeddings=positions, pad_token_id=0,
                   initializer_range=0.2)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=ffn, initializer_range=0.2)
    if family in ("bert", "electra"):
        extra = dict(max_position_embeddings=positions, type_vocab_size=2, pad_token_id=0)
        if family == "electra":
            extra["embedding_size"] = hidden // 2
        return cls(**common, **extra)
    return cls(**common, max_position_embeddings=positions + 2, type_vocab_size=1,
               pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _randomise(model, seed: int) -> None:
    """LayerNorm weights 1 + 0.1 N(0, 1), LayerNorm and all other biases 0.1 N(0, 1)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("bias"):
                p.copy_(noise)
            elif "LayerNorm" in name or "layer_norm" in name or name.endswith("norm.weight"):
                p.copy_(1 + noise)


def make_hf_folder(folder: str | Path, family: str, classifier: bool = False, n_labels: int = 3,
                   hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                   positions: int = 64, seed: int = 0, weights: str = "safetensors") -> Path:
    """A random `family` model saved by transformers in `folder` (config.json, model.safetensors
    or, with weights="bin", pytorch_model.bin alone) plus tokenizer.json; returns the folder."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: not one of {FAMILIES}")
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights {weights!r}: safetensors or bin")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(family)
    vocab_size = max(tok.get_vocab().values()) + 1
    cfg = make_config(family, vocab_size, hidden, layers, heads, ffn, positions)
    if classifier:
        names = label_names(n_labels)
        cfg.num_labels = n_labels
        cfg.id2label = dict(enumerate(names))
        cfg.label2id = {n: i for i, n in enumerate(names)}
    suffix = "ForSequenceClassification" if classifier else "Model"
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[family] + suffix)(cfg)
    _randomise(model, seed)
    model.eval()
    model.save_pretrained(folder)  # transformers 5 writes model.safetensors only
    if weights == "bin":
        from safetensors.torch import load_file

        st = folder / "model.safetensors"
        torch.save(load_file(str(st)), folder / "pytorch_model.bin")
        st.unlink()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _family(folder: Path) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["model_type"]


def encode_texts(folder: str | Path, texts, max_len: int = 48) -> np.ndarray:
    """[batch, longest] int64: the folder's tokenizer.json on `texts`, truncated to max_len
    (specials kept), right-padded with the family's pad id."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.no_padding()
    rows = [e.ids for e in tok.encode_batch(list(texts))]
    out = np.full((len(rows), max(map(len, rows))), PAD_ID[_family(folder)], np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def reference_outputs(folder: str | Path, ids: np.ndarray, pad_id: int) -> dict:
    """transformers' float32 outputs on right-padded `ids` (attention_mask = ids != pad_id; no
    position or token-type ids passed, so transformers makes its own): last_hidden_state,
    pooler_output where the base model has a pooler, logits for a classifier."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    archs = AutoConfig.from_pretrained(folder).architectures or []
    classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    model = auto.from_pretrained(folder, attn_implementation="eager").eval()
    x = torch.as_tensor(np.asarray(ids, np.int64))
    mask = (x != pad_id).long()
    out = {}
    with torch.no_grad():
        base = model.base_model(input_ids=x, attention_mask=mask)
        out["last_hidden_state"] = base.last_hidden_state
        if getattr(base, "pooler_output", None) is not None:
            out["pooler_output"] = base.pooler_output
        if classifier:
            out["logits"] = model(input_ids=x, attention_mask=mask).logits
    return {k: v.float().numpy() for k, v in out.items()}


def modernbert_level_logits(state: dict, config, dim: int, ids: np.ndarray) -> np.ndarray:
    """transformers' own ModernBertForSequenceClassification built at width `dim` from the
    prefixes of a nested ModernBERT state cut by hand (the level's LayerNorms, the first dim
    rows and columns, the first m neurons of both GeGLU halves, biases kept), run on ids: the
    reference that a level's graph must equal."""
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    s = {k: (v.detach() if hasattr(v, "detach") else torch.as_tensor(v)).float()
         for k, v in state.items()}
    i, m = config.dims().index(dim), config.ffn_width(dim)
    cfg = ModernBertConfig(
        vocab_size=config.vocab_size, hidden_size=dim, num_hidden_layers=config.n_layers,
        num_attention_heads=dim // config.head_dim, intermediate_size=m,
        max_position_embeddings=config.max_len, pad_token_id=config.pad_id, cls_token_id=401,
        sep_token_id=402, bos_token_id=401, eos_token_id=402,
        global_attn_every_n_layers=config.global_every, local_attention=2 * config.local_window,
        global_rope_theta=config.rope_theta, local_rope_theta=config.local_rope_theta,
        classifier_pooling=config.pooling, norm_eps=config.ln_eps, norm_bias=True,
        attention_bias=True, mlp_bias=True, classifier_bias=True,
        num_labels=config.n_classes)
    model = ModernBertForSequenceClassification(cfg).eval()

    def ln(name):
        return s[f"{name}.weight.{i}"][:dim], s[f"{name}.bias.{i}"][:dim]

    w = {"model.embeddings.tok_embeddings.weight": s["embed.weight"][:, :dim]}
    w["model.embeddings.norm.weight"], w["model.embeddings.norm.bias"] = ln("ln_e")
    w["model.final_norm.weight"], w["model.final_norm.bias"] = ln("ln_f")
    for layer in range(config.n_layers):
        p, b = f"model.layers.{layer}.", f"blocks.{layer}."
        if layer:
            w[p + "attn_norm.weight"], w[p + "attn_norm.bias"] = ln(b + "ln1")
        w[p + "mlp_norm.weight"], w[p + "mlp_norm.bias"] = ln(b + "ln2")
        w[p + "attn.Wqkv.weight"] = torch.cat([s[f"{b}attn.{x}.weight"][:dim, :dim]
                                               for x in "qkv"])
        w[p + "attn.Wqkv.bias"] = torch.cat([s[f"{b}attn.q.bias"][:dim], torch.zeros(dim),
                                             s[f"{b}attn.v.bias"][:dim]])
        w[p + "attn.Wo.weight"] = s[f"{b}attn.o.weight"][:dim, :dim]
        w[p + "attn.Wo.bias"] = s[f"{b}attn.o.bias"][:dim]
        w[p + "mlp.Wi.weight"] = torch.cat([s[f"{b}ffn.w1.weight"][:m, :dim],
                                            s[f"{b}ffn.gate.weight"][:m, :dim]])
        w[p + "mlp.Wi.bias"] = torch.cat([s[f"{b}ffn.w1.bias"][:m], s[f"{b}ffn.gate.bias"][:m]])
        w[p + "mlp.Wo.weight"] = s[f"{b}ffn.w2.weight"][:dim, :m]
        w[p + "mlp.Wo.bias"] = s[f"{b}ffn.w2.bias"][:dim]
    w["head.dense.weight"] = s["pre_head.weight"][:dim, :dim]
    w["head.dense.bias"] = s["pre_head.bias"][:dim]
    w["head.norm.weight"], w["head.norm.bias"] = ln("head_norm")
    w["classifier.weight"], w["classifier.bias"] = s["head.weight"][:, :dim], s["head.bias"]
    missing, unexpected = model.load_state_dict(w, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    x = torch.as_tensor(np.asarray(ids, np.int64))
    with torch.no_grad():
        return model(input_ids=x, attention_mask=(x != config.pad_id).long()).logits.numpy()
