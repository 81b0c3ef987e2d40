"""How large each width level of a base-size model of every importable family is, fp32 and
INT8, and the token table's share of it: counted from the parameters each level's graph holds.

    python benchmarks/family_sizes.py [--check EXPORT_DIR] [--json OUT]

The configs are the published base sizes (bert-base-uncased, distilbert-base-uncased,
roberta-base, xlm-roberta-base, electra-small-discriminator, ModernBERT-base), imported as
model/pretrained.py
imports them (with a classifier head of 2 classes) and nested by width at a quarter, half,
three quarters and all of the hidden width. The model is built on torch's meta device, so no
weight is allocated; a level's parameters are the slices of its view (what mexport copies).
Bytes: fp32 4 per parameter; INT8 as `--quantize dynamic-pc` stores it, 1 per entry of every
matrix and of the token table (a uint8 Gather) and 4 per entry of the rest (the position table,
LayerNorms, biases), plus a scale and a zero point per output channel. `--check` compares the
same count with the level files of an existing export (the graph's own bytes are the rest).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from matryoshka.model.config import MatryoshkaConfig
from matryoshka.model.families import FAMILIES
from matryoshka.model.pretrained import bert_config_fields, width_config
from matryoshka.model.transformer import MatryoshkaTransformer

# Published base configs (their config.json keys that the import reads).
BASE = {
    "bert (bert-base-uncased)": ("bert", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=30522, max_position_embeddings=512, layer_norm_eps=1e-12)),
    "distilbert (distilbert-base-uncased)": ("distilbert", dict(
        dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522,
        max_position_embeddings=512)),
    "roberta (roberta-base)": ("roberta", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=50265, max_position_embeddings=514, layer_norm_eps=1e-5, pad_token_id=1)),
    "xlm-roberta (xlm-roberta-base)": ("xlm-roberta", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=250002, max_position_embeddings=514, layer_norm_eps=1e-5, pad_token_id=1)),
    "electra (electra-small-discriminator)": ("electra", dict(
        hidden_size=256, embedding_size=128, num_hidden_layers=12, num_attention_heads=4,
        intermediate_size=1024, vocab_size=30522, max_position_embeddings=512,
        layer_norm_eps=1e-12)),
    "modernbert (ModernBERT-base)": ("modernbert", dict(
        hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
        vocab_size=50368, max_position_embeddings=8192, norm_eps=1e-5, pad_token_id=50283,
        hidden_activation="gelu", global_attn_every_n_layers=3, local_attention=128)),
}


def nested_config(family: str, raw: dict, max_len: int = 128) -> MatryoshkaConfig:
    fam = FAMILIES[family]
    cfg = fam.config({**raw, "model_type": family})
    full = MatryoshkaConfig(**bert_config_fields(fam, cfg, "cls", max_len, fam.head_act),
                            n_classes=2, name=family)
    d = full.d_model
    return width_config(full, tuple(d * k // 4 for k in (1, 2, 3, 4)))


def level_bytes(model: MatryoshkaTransformer, level: int) -> dict:
    """Parameters, fp32 and INT8 bytes of one level, and the token table's parameters."""
    params = dict(model.named_parameters())
    total = table = int8 = 0
    for name, (src, sl) in model.view(level).items():
        shape = params[src][sl].shape
        n = int(torch.Size(shape).numel())
        total += n
        quantized = len(shape) == 2 and name != "pos"  # matrices and the token table
        if name == "embed.weight":
            table = n
        # a matrix [out, in] of NestedLinear, or the token table [vocab, dim]: one scale and
        # one zero point per output channel (per row of the table)
        int8 += n + 8 * shape[0] if quantized else 4 * n
    return {"params": total, "table_params": table, "fp32_mb": 4 * total / 1e6,
            "int8_mb": int8 / 1e6, "table_share_fp32": table / total}


def sizes() -> list[dict]:
    rows = []
    for label, (family, raw) in BASE.items():
        cfg = nested_config(family, raw)
        with torch.device("meta"):
            model = MatryoshkaTransformer(cfg)
        for level in cfg.levels:
            row = {"model": label, "level": level, **level_bytes(model, level)}
            int8_table = row["table_params"] + 8 * cfg.vocab_size
            row["table_share_int8"] = int8_table / (row["int8_mb"] * 1e6)
            rows.append(row)
    return rows


def check(export: Path) -> list[dict]:
    """The count against an export's level files: (name, counted MB, file MB)."""
    from matryoshka.model.checkpoint import load_checkpoint

    manifest = json.loads((export / "manifest.json").read_text())
    model, _ = load_checkpoint(manifest["checkpoint"]["path"])
    out = []
    for entry in manifest["levels"]:
        counted = level_bytes(model, int(entry["name"]))
        for variant, key in (("fp32", "fp32_mb"), ("int8", "int8_mb")):
            file = entry.get("file") if variant == "fp32" else (entry.get("int8") or {}).get("file")
            if file and (export / file).is_file():
                out.append({"level": entry["name"], "variant": variant, "counted_mb": counted[key],
                            "file_mb": (export / file).stat().st_size / 1e6})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, default=None, help="an export to compare with")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = sizes()
    print("| model | level | parameters | fp32 MB | INT8 MB | token table, fp32 | INT8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['level']} | {r['params'] / 1e6:.1f}M | {r['fp32_mb']:.0f} | "
              f"{r['int8_mb']:.0f} | {r['table_share_fp32']:.0%} | {r['table_share_int8']:.0%} |")
    checked = check(args.check) if args.check else []
    for c in checked:
        print(f"{args.check} level {c['level']} {c['variant']}: counted {c['counted_mb']:.2f} MB, "
              f"file {c['file_mb']:.2f} MB")
    if args.json:
        args.json.write_text(json.dumps({"levels": rows, "check": checked}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
