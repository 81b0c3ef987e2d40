"""`matryoshka train`: model size, data and recipe from the command line; writes a checkpoint.

docs/design.md, "Data flow" and "The model". Raw text (CSV, JSONL, a folder) gets a
tokenizer trained on its training split, saved in the checkpoint beside the weights.
"""

from __future__ import annotations

import click

from matryoshka.cli.core import (
    DEMO_CHECKPOINT,
    cli,
    parse_floats,
    parse_label_map,
    text_columns,
)
from matryoshka.runtime.reading import READINGS

POSITIVE = click.IntRange(min=1)


@cli.command()
@click.option("--preset", "preset_name", default=None,
              help="Named architecture: demo, tiny, text or tiny-text [text for raw text, "
              "else demo].")
@click.option("--data", default="demo", show_default=True,
              help="'demo' (bundled digits), a .npz with x_/y_ train, val and test, or raw "
              "text: a .csv or .jsonl file (split by --split-seed) or a folder with "
              "train/val/test files.")
@text_columns
@click.option("--out", default=DEMO_CHECKPOINT, show_default=True,
              help="Checkpoint folder to write.")
@click.option("--levels", default=None, help="Nested widths, e.g. 64,128,256,512 [the "
              "preset's]; the last is d_model.")
@click.option("--d-model", type=POSITIVE, default=None,
              help="Full width [the last level; alone, it scales the preset's levels].")
@click.option("--layers", type=POSITIVE, default=None, help="Transformer blocks [preset's].")
@click.option("--head-dim", type=POSITIVE, default=None,
              help="Width of one attention head; divides every level [preset's].")
@click.option("--d-mid", type=POSITIVE, default=None, help="FFN width at the full level.")
@click.option("--ffn-mult", type=click.FloatRange(min=0, min_open=True), default=None,
              help="FFN width as a multiple of d_model [the preset's ratio].")
@click.option("--max-len", type=POSITIVE, default=None,
              help="Text: tokens read per text (see --long) [preset's: 128].")
@click.option("--long", "reading", type=click.Choice(list(READINGS)), default=None,
              help="Text: how a text longer than --max-len is read: truncate (its first "
              "tokens) or head-tail (its first and last; see --head-share); recorded in the "
              "checkpoint and its exports [--init-from's, else truncate].")
@click.option("--head-share", type=click.FloatRange(0, 1), default=None,
              help="--long head-tail: the share of the tokens read that come from the text's "
              "head, the rest from its tail [--init-from's, else 0.25].")
@click.option("--vocab-size", type=click.IntRange(min=3), default=8000, show_default=True,
              help="Text: tokenizer vocabulary.")
@click.option("--tokenizer", "tokenizer_model", type=click.Choice(["bpe", "wordpiece"]),
              default="bpe", show_default=True, help="Text: tokenizer model (bpe trains "
              "the same vocabulary in every run; wordpiece may not: tokenizers#1794).")
@click.option("--no-lowercase", is_flag=True, help="Text: keep case (and accents).")
@click.option("--name", default=None, help="Model name in the graphs [DATA-PRESET].")
@click.option("--epochs", type=int, default=None,
              help="Passes over the training split [the preset's recipe; demo: 60].")
@click.option("--batch-size", type=int, default=None, help="Samples per step [32].")
@click.option("--schedule", type=click.Choice(["joint", "progressive", "sampled", "mix"]),
              default="joint", show_default=True,
              help="joint: every level every step; progressive: smaller levels first; "
              "sampled: one random level per step; mix: every level plus one random "
              "Mix'n'Match sub-model per step (MatFormer).")
@click.option("--alpha", default=None, help="CE weight per level, comma-separated "
              "[demo: 1,1,1,2; else 1 each].")
@click.option("--beta", type=float, default=None,
              help="Consistency weight L_reg [0; nesting an imported encoder: 5e-4].")
@click.option("--gamma", type=float, default=None, help="Distillation weight L_distill [0.5].")
@click.option("--mu", type=float, default=None,
              help="Hidden-state distillation weight L_hidden: the largest level's block "
              "outputs teach each smaller level's, through the prefix (mean squared error "
              "per feature and real token, summed over layers) [0].")
@click.option("--temperature", type=float, default=None, help="Distillation T [2].")
@click.option("--distill-direction", type=click.Choice(["seed", "teacher"]), default=None,
              help="seed: KL(p_i || p_k) as in the seed text; teacher: Hinton's KL(p_k || p_i) "
              "[the preset's recipe, else seed].")
@click.option("--lr", type=float, default=None, help="Base learning rate eta0 [1e-3].")
@click.option("--lr-scale", default=None,
              help="lambda_i per level, comma-separated [1 each]; "
              "eta_i = eta0*sqrt(d/d_i)*lambda_i.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init-from", default=None, help="Start from this checkpoint's config and "
              "weights (fine-tuning); the size options are then ignored, but for --levels on "
              "an encoder fine-tuned by --pretrained, which nests it (see --nesting).")
@click.option("--nesting", type=click.Choice(["width", "heads"]), default="width",
              show_default=True, help="With --levels and an imported encoder (--pretrained, "
              "or --init-from a checkpoint of --pretrained): width nests its hidden width, "
              "the seed's h[:d_i] (levels are widths, e.g. 96,192,288,384 of MiniLM's 384: "
              "the token table, every matrix and LayerNorm sliced, FLOPs ~ d_i^2); heads "
              "keeps the width and nests heads and FFN neurons (DynaBERT; levels are numbers "
              "of heads, e.g. 3,6,9,12).")
@click.option("--pretrained", default=None, metavar="FOLDER",
              help="Raw text: start from this pretrained Hugging Face BERT-family encoder "
              "(config.json, model.safetensors, tokenizer.json; e.g. the folder "
              "scripts/fetch_pretrained.sh unpacks), with its own tokenizer and a new "
              "classifier head; the size and tokenizer options are then ignored. With "
              "--levels it is nested at once (see --nesting), its largest level teaching the "
              "others; fine-tuning it first and nesting that with --init-from lets the "
              "fine-tuned model teach instead.")
@click.option("--rewire/--no-rewire", default=True, show_default=True,
              help="With --levels and an imported encoder: reorder first, by "
              "importance on the training split, the residual channels (--nesting width; one "
              "permutation of every residual axis, Minitron's score) and each layer's heads "
              "and FFN neurons, so that every level's prefix holds the most important.")
@click.option("--teacher", default=None, metavar="CHECKPOINT|none",
              help="Distil every level, the largest included, from this frozen checkpoint: "
              "its logits on the training split are computed once before training, with its "
              "own tokenizer (so a teacher of a longer --max-len can teach) [nesting by "
              "--init-from with --levels: that checkpoint; else none: the largest level, "
              "trained alongside, teaches (--pretrained with --levels too)].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True, help="The training forward and backward: under bf16 "
              "autocast (the weights, evaluation and export stay fp32) or fp32. auto: bf16 "
              "for an imported encoder on a CPU that has bf16 (AVX512-BF16, AMX), else fp32.")
@click.option("--train-rows", type=POSITIVE, default=None, metavar="N",
              help="Train on N rows of the training split, drawn by --seed (a quicker run); "
              "val and test stay whole [every row].")
@click.option("--label-map", default=None, metavar="DATA=MODEL,...",
              help="Pair the data's class names with those of a fine-tuned classifier "
              "(--pretrained or --init-from), e.g. pos=POSITIVE,neg=NEGATIVE [matched by name, "
              "case aside].")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(preset_name, data, text_column, label_column, split_seed, out, levels, d_model,
          layers, head_dim, d_mid, ffn_mult, max_len, reading, head_share, vocab_size,
          tokenizer_model, no_lowercase, name, epochs, batch_size, schedule, alpha, beta,
          gamma, mu, temperature, distill_direction, lr, lr_scale, seed, init_from, nesting,
          pretrained, rewire, teacher, precision, train_rows, label_map, force,
          no_progress) -> None:
    """Train a Matryoshka Transformer and write its checkpoint folder.

    Examples:

      matryoshka train --preset demo --data demo --out artifacts/demo/checkpoint

      matryoshka train --data reviews.csv --text-column review --label-column stars
      --levels 32,64,128 --layers 2 --max-len 96 --out artifacts/reviews/checkpoint

      matryoshka train --data artifacts/data/spam.csv --pretrained
      artifacts/pretrained/all-MiniLM-L6-v2 --out artifacts/minilm/teacher

      matryoshka train --data artifacts/data/spam.csv --init-from artifacts/minilm/teacher
      --levels 96,192,288,384 --out artifacts/minilm/checkpoint   (nested by width)

      matryoshka train --data artifacts/data/spam.csv --pretrained
      artifacts/pretrained/all-MiniLM-L6-v2 --levels 96,192,384 --out artifacts/minilm/width
      (fine-tuned and nested by width in one stage)

      matryoshka train --data artifacts/data/spam.csv --init-from artifacts/minilm/teacher
      --nesting heads --levels 3,6,9,12 --out artifacts/minilm/heads   (nested by heads)
    """
    from matryoshka.training.setup import TrainPlan, run

    recipe = dict(epochs=epochs, batch_size=batch_size, beta=beta, gamma=gamma, mu=mu,
                  temperature=temperature, lr=lr, alpha=parse_floats(alpha, "--alpha"),
                  lr_scale=parse_floats(lr_scale, "--lr-scale"),
                  distill_direction=distill_direction)
    plan = TrainPlan(
        out=out, data=data, text_column=text_column, label_column=label_column,
        split_seed=split_seed, preset=preset_name, levels=levels, d_model=d_model,
        layers=layers, head_dim=head_dim, d_mid=d_mid, ffn_mult=ffn_mult, max_len=max_len,
        reading=reading, head_share=head_share, vocab_size=vocab_size,
        tokenizer=tokenizer_model, lowercase=not no_lowercase,
        name=name, recipe=recipe, schedule=schedule, seed=seed, init_from=init_from,
        nesting=nesting, pretrained=pretrained, rewire=rewire, teacher=teacher,
        precision=precision, train_rows=train_rows, label_map=parse_label_map(label_map),
        force=force, progress=not no_progress)
    metrics = run(plan, say=lambda line: click.echo(line, err=True))
    click.echo(level_table(metrics))
    click.echo(f"checkpoint written to {out} ({metrics['train_seconds']:.0f} s of training)")


def level_table(metrics: dict) -> str:
    """Per-level table of params, MFLOPs and accuracy from a metrics.json dict."""
    rows = [f"{'level':>6} {'params':>10} {'MFLOPs':>8} {'val acc':>8} {'test acc':>8}"]
    for d in metrics["levels"]:
        k = str(d)
        rows.append(f"{d:>6} {metrics['params'][k]:>10,} "
                    f"{metrics['flops_per_sample'][k] / 1e6:>8.2f} "
                    f"{metrics['val_accuracy'][k]:>8.4f} {metrics['test_accuracy'][k]:>8.4f}")
    return "\n".join(rows)
