"""The user's side of "bring your fine-tuned classifier": fine-tune a Hugging Face encoder
folder with `transformers`' own *ForSequenceClassification on a text CSV and save it as a
standard model folder, as a user would before handing it to matryoshka. The toolkit itself
never imports transformers; this script needs it (the [dev] extra pins it).

    python scripts/hf_finetune.py artifacts/pretrained/all-MiniLM-L6-v2 artifacts/data/spam.csv \\
        --out artifacts/hf-spam-classifier [--epochs 2 --max-len 128 --seed 0]

The data is split as matryoshka splits it (matryoshka.data.text.load_text, --split-seed 0),
so the classifier never sees the test rows either; it trains on the training split with
BERT's recipe (AdamW, lr 5e-5 with 10% warmup then linear decay, weight decay 0.01, batch 16),
then prints its validation and test accuracy and writes config.json (with id2label),
model.safetensors and the folder's tokenizer.json to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a Hugging Face encoder folder")
    ap.add_argument("data", help="a text CSV/JSONL (text,label) or a folder of splits")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from matryoshka.data.text import load_text

    text = load_text(args.data)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(text.labels), id2label=dict(enumerate(text.labels)),
        label2id={n: i for i, n in enumerate(text.labels)})
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=args.max_len)
    pad = model.config.pad_token_id or 0

    def batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [e.ids for e in tok.encode_batch(texts)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, (ids != pad).long()

    def accuracy(split: str) -> float:
        model.eval()
        texts, y = text.splits[split]
        right = 0
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                ids, mask = batch(texts[i:i + 64])
                right += int((model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
                              == torch.as_tensor(y[i:i + 64])).sum())
        return right / len(texts)

    x, y = text.splits["train"]
    steps = args.epochs * ((len(x) + args.batch_size - 1) // args.batch_size)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")
             and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x))
        for k in range(0, len(x), args.batch_size):
            idx = order[k:k + args.batch_size]
            ids, mask = batch([x[i] for i in idx])
            loss = model(input_ids=ids, attention_mask=mask,
                         labels=torch.as_tensor(y[idx])).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        print(f"epoch {epoch + 1}: val accuracy {accuracy('val'):.4f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr)
    test = accuracy("test")
    model.eval()
    model.save_pretrained(args.out)
    shutil.copy(args.model / "tokenizer.json", args.out / "tokenizer.json")
    summary = {"test_accuracy": test, "val_accuracy": accuracy("val"),
               "train_seconds": time.time() - start, "labels": text.labels}
    (args.out / "finetune.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
