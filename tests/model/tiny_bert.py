"""A tiny random BERT-family model folder, made by the tests themselves (no hub, no download):
config.json (model_type bert), model.safetensors with BertModel's tensor names, a WordPiece
tokenizer.json whose post-processor adds [CLS] and [SEP], and 1_Pooling/config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = ("free money now click here prize win claim offer lunch meeting thursday friday "
         "the a and to of is you we are at on for your please reply thanks patch").split()


def wordpiece(vocab: list[str]):
    """BERT's WordPiece tokenizer over `vocab` ([PAD] [UNK] [CLS] [SEP] first): lowercased,
    its post-processor adding [CLS] and [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def make_tiny_bert(folder: str | Path, pooling: str = "mean", hidden: int = 32, layers: int = 2,
                   heads: int = 4, ffn: int = 64, positions: int = 64, seed: int = 0,
                   prefix: str = "") -> Path:
    from safetensors.numpy import save_file

    folder = Path(folder)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [
        f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz!?.,")
    tok = wordpiece(vocab)
    tok.enable_truncation(max_length=positions)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads,
           "intermediate_size": ffn, "vocab_size": len(vocab) + 3,
           "max_position_embeddings": positions, "type_vocab_size": 2, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_dropout_prob": 0.1,
           "position_embedding_type": "absolute"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"}))
    rng = np.random.default_rng(seed)

    def t(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": t(cfg["vocab_size"], hidden),
         "embeddings.position_embeddings.weight": t(positions, hidden),
         "embeddings.token_type_embeddings.weight": t(2, hidden),
         "embeddings.LayerNorm.weight": 1 + t(hidden, scale=0.1),
         "embeddings.LayerNorm.bias": t(hidden, scale=0.1),
         "embeddings.position_ids": np.arange(positions, dtype=np.int64)[None],
         "pooler.dense.weight": t(hidden, hidden), "pooler.dense.bias": t(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"] = t(hidden, hidden, scale=hidden ** -0.5)
            w[f"{p}attention.self.{name}.bias"] = t(hidden, scale=0.3)
        w.update({f"{p}attention.output.dense.weight": t(hidden, hidden, scale=hidden ** -0.5),
                  f"{p}attention.output.dense.bias": t(hidden, scale=0.1),
                  f"{p}attention.output.LayerNorm.weight": 1 + t(hidden, scale=0.1),
                  f"{p}attention.output.LayerNorm.bias": t(hidden, scale=0.1),
                  f"{p}intermediate.dense.weight": t(ffn, hidden, scale=hidden ** -0.5),
                  f"{p}intermediate.dense.bias": t(ffn, scale=0.1),
                  f"{p}output.dense.weight": t(hidden, ffn, scale=ffn ** -0.5),
                  f"{p}output.dense.bias": t(hidden, scale=0.1),
                  f"{p}output.LayerNorm.weight": 1 + t(hidden, scale=0.1),
                  f"{p}output.LayerNorm.bias": t(hidden, scale=0.1)})
    save_file({prefix + k: v for k, v in w.items()}, str(folder / "model.safetensors"))
    return folder


def texts(n: int, seed: int = 0) -> list[str]:
    """n texts of 1 to 40 words, so that a batch of them is padded."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 41)))) + rng.choice(["", "!", "?"])
            for _ in range(n)]


KEYS = {"spam": "free money prize", "ham": "lunch meeting thursday",
        "other": "patch reply thanks"}


def labelled_csv(path: str | Path, classes=("spam", "ham"), n: int = 900, seed: int = 0) -> Path:
    """A text,label CSV: n rows of 1 to 20 random words plus their class's key words, the
    classes in turn, so a model tells them apart after one epoch."""
    import csv
    import random

    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = classes[i % len(classes)]
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(1, 20))) + " " + KEYS[label],
                        label])
    return Path(path)


def fine_tune_and_export(d: Path, folder: Path, data: Path, max_len: int, *extra: str) -> Path:
    """train --pretrained FOLDER for one epoch on `data` (and the options `extra`), then
    mexport: the export folder (d/exp; the checkpoint is d/ck)."""
    from click.testing import CliRunner

    from matryoshka.cli import cli, mexport

    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--pretrained", str(folder),
                                 "--max-len", str(max_len), "--epochs", "1",
                                 "--out", str(d / "ck"), "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"),
                                     "--no-progress"])
    assert r.exit_code == 0, r.output
    return d / "exp"


def teacher_and_student(d: Path, folder: Path, *nest: str) -> str:
    """train --pretrained FOLDER for one epoch on d/data.csv (the teacher, d/teacher), then
    train --init-from it with `nest` (e.g. --levels 8,16,32) for one epoch (d/ck); returns
    the second run's output."""
    from click.testing import CliRunner

    from matryoshka.cli import cli

    run = CliRunner().invoke
    r = run(cli, ["train", "--data", str(d / "data.csv"), "--pretrained", str(folder),
                  "--max-len", "32", "--epochs", "1", "--out", str(d / "teacher"),
                  "--no-progress"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["train", "--data", str(d / "data.csv"), "--init-from", str(d / "teacher"),
                  *nest, "--epochs", "1", "--out", str(d / "ck"), "--no-progress"])
    assert r.exit_code == 0, r.output
    return r.output
