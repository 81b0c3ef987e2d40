"""`matryoshka train`: model size, data and recipe from the command line; writes a checkpoint.

docs/design.md, "Data flow" and "The model". Raw text (CSV, JSONL, a folder) gets a
tokenizer trained on its training split, saved in the checkpoint beside the weights.
"""

from __future__ import annotations

from pathlib import Path

import click

from matryoshka.cli.core import DEMO_CHECKPOINT, cli, parse_floats

POSITIVE = click.IntRange(min=1)


@cli.command()
@click.option("--preset", "preset_name", default=None,
              help="Named architecture: demo, tiny, text or tiny-text [text for raw text, "
              "else demo].")
@click.option("--data", default="demo", show_default=True,
              help="'demo' (bundled digits), a .npz with x_/y_ train, val and test, or raw "
              "text: a .csv or .jsonl file (split by --split-seed) or a folder with "
              "train/val/test files.")
@click.option("--text-column", default="text", show_default=True, help="Raw text: the column "
              "holding the text.")
@click.option("--label-column", default="label", show_default=True,
              help="Raw text: the column holding the label.")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Raw text in one file: seed of its 80/10/10 train/val/test split.")
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
              help="Text: tokens kept per text (longer ones are truncated) [preset's: 128].")
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
              help="Consistency weight L_reg [0; nesting by heads: 5e-4].")
@click.option("--gamma", type=float, default=None, help="Distillation weight L_distill [0.5].")
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
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(preset_name, data, text_column, label_column, split_seed, out, levels, d_model,
          layers, head_dim, d_mid, ffn_mult, max_len, vocab_size, tokenizer_model,
          no_lowercase, name, epochs, batch_size, schedule, alpha, beta, gamma, temperature,
          distill_direction, lr, lr_scale, seed, init_from, nesting, pretrained, rewire,
          teacher, precision, train_rows, force, no_progress) -> None:
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
    import dataclasses

    from matryoshka.data.text import is_text_source
    from matryoshka.io import check_out_dir
    from matryoshka.model import parse_levels, preset, resize
    from matryoshka.training import RECIPES, TrainConfig

    check_out_dir(out, force)
    _check_nesting(nesting, init_from, pretrained, levels)
    # nesting an imported encoder: one fine-tuned by --pretrained (--init-from, which then
    # teaches), or the pretrained folder itself (the largest level, trained alongside, teaches)
    nests = (init_from is not None or pretrained is not None) and levels is not None
    text = is_text_source(data)
    if pretrained is not None:
        _check_pretrained_options(text, init_from, preset_name)
        preset_name = "pretrained"
        if nests:  # bad levels: refused from config.json, before the texts are tokenized
            from matryoshka.model.bert import check_nesting

            check_nesting(pretrained, nesting, parse_levels(levels), max_len or 128)
    preset_name = preset_name or ("text" if text else "demo")
    init = None
    if pretrained is not None:
        cfg = None  # the pretrained model's, once the classes are known
    elif init_from is not None:
        from matryoshka.model.checkpoint import load_checkpoint

        init, _ = load_checkpoint(init_from)
        cfg = init.config
        if nests:
            init, cfg = _nest_config(init, nesting, parse_levels(levels))
    else:
        cfg = resize(preset(preset_name), d_model=d_model,
                     levels=parse_levels(levels) if levels is not None else None,
                     n_layers=layers, head_dim=head_dim, d_mid=d_mid, ffn_mult=ffn_mult,
                     max_len=max_len)
    fields = dict(epochs=epochs, batch_size=batch_size, beta=beta, gamma=gamma,
                  temperature=temperature, lr=lr, alpha=parse_floats(alpha, "--alpha"),
                  lr_scale=parse_floats(lr_scale, "--lr-scale"),
                  distill_direction=distill_direction)
    recipe = dict(RECIPES.get(preset_name, {})) if init_from is None else {}
    if nests:
        recipe = dict(RECIPES["nested" if nesting == "heads" else "nested_width"])
    if pretrained is not None:
        dataset, record, labels, files, init = _pretrained_data(
            data, text_column, label_column, split_seed, pretrained, max_len, name, seed)
        cfg = init.config
        if nests:
            init, cfg = _nest_config(init, nesting, parse_levels(levels))
    if len(cfg.levels) != len(recipe.get("alpha", cfg.levels)):
        recipe.pop("alpha", None)  # the recipe's alpha was for the preset's own levels
    recipe.update({k: v for k, v in fields.items() if v is not None})
    tcfg = TrainConfig(schedule=schedule, seed=seed, **recipe)
    tcfg.alphas(cfg.levels)
    if tcfg.lr_scale is not None and len(tcfg.lr_scale) != len(cfg.levels):
        raise click.BadParameter(f"needs {len(cfg.levels)} values, one per level",
                                 param_hint="--lr-scale")
    if pretrained is None:  # the pretrained path read its data above, with the model
        dataset, record, labels, files, cfg = _text_data(
            data, text_column, label_column, split_seed, vocab_size, tokenizer_model,
            not no_lowercase, cfg, init, init_from) if text else _array_data(data, cfg, init)
    precision = _precision(precision, cfg)
    rows = _train_rows(dataset, train_rows, seed)
    if teacher is None and nests:
        teacher = init_from  # nesting: the fine-tuned encoder teaches every level
    taught = None
    if teacher is not None and teacher != "none" and tcfg.gamma > 0:  # gamma 0: no distilling
        taught = _teacher_logits(teacher, data, text_column, label_column, split_seed,
                                 dataset, rows, labels, precision, no_progress)
    if nests and rewire:
        _rewire(init, dataset, tcfg.batch_size, precision, no_progress,
                channels=nesting == "width")
    if nests and nesting == "width":
        from matryoshka.model.bert import nest_by_width

        init = nest_by_width(init, cfg.levels)
    tcfg = dataclasses.replace(tcfg, teacher=None if taught is None else teacher,
                               precision=precision, train_rows=train_rows and len(rows))
    if init is None:
        stem = "digits" if data == "demo" else Path(data).stem
        cfg = dataclasses.replace(cfg, name=name or f"{stem}-{preset_name}")
    from matryoshka.training import train as run_training

    metrics = run_training(cfg, dataset, tcfg, out, force=force, progress=not no_progress,
                           data_name=record, init=init, files=files, labels=labels,
                           teacher_logits=taught)
    click.echo(level_table(metrics))
    click.echo(f"checkpoint written to {out} ({metrics['train_seconds']:.0f} s of training)")


def _nest_config(model, nesting: str, levels: tuple[int, ...]):
    """(model, config) of a full-width imported encoder nested at `levels`: by heads and FFN
    neurons (DynaBERT) at once; by the hidden width, the config only (the model is nested
    after the rewiring)."""
    if nesting == "heads":
        from matryoshka.model.bert import nest_by_heads

        model = nest_by_heads(model, levels)
        return model, model.config
    from matryoshka.model.bert import width_config

    return model, width_config(model.config, levels)


def _rewire(model, dataset, batch_size: int, precision: str, no_progress: bool,
            rows: int = 2048, channels: bool = False) -> None:
    """Reorder the heads and FFN neurons (and with `channels`, first the residual channels)
    by importance on (up to `rows` of) the training split: scored by the full model (under
    the training precision), so the smallest prefixes keep what it uses most."""
    import numpy as np
    import torch

    from matryoshka.model.importance import rewire

    x, y = dataset["train"]
    keep = np.random.default_rng(0).permutation(len(x))[:rows]
    x, y = torch.as_tensor(x[keep]), torch.as_tensor(y[keep], dtype=torch.long)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    what = "residual channels, heads and FFN neurons" if channels else "heads and FFN neurons"
    if not no_progress:
        click.echo(f"rewiring: scoring {what} on {len(x)} training rows", err=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if channels:
            from matryoshka.model.channels import rewire_channels

            order = rewire_channels(model, [b for b, _ in batches])["channel_order"]
            click.echo("rewired the residual channels by importance; the first 8: "
                       f"{order[:8]}", err=True)
        info = rewire(model, batches)
    click.echo("rewired by importance; heads of layer 0, most important first: "
               f"{info['head_order'][0]}", err=True)


def _train_rows(dataset: dict, n: int | None, seed: int):
    """Keep n rows of the training split (all when n is None or not smaller), drawn by the
    seed and kept in split order, in place; returns their indices into the split."""
    import numpy as np

    x, y = dataset["train"]
    if n is None or n >= len(x):
        return np.arange(len(x))
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    dataset["train"] = (x[keep], y[keep])
    return keep


def _precision(choice: str, cfg) -> str:
    """auto: bf16 for an imported encoder (post-LN BERT) where the CPU has bf16; measured
    there, a MiniLM step ran 2.2x faster; elsewhere it says it falls back to fp32. The
    from-scratch presets keep their fp32 recipes."""
    from matryoshka.training.teacher import native_bf16

    if choice != "auto":
        return choice
    if cfg.block != "post_ln":
        return "fp32"
    if native_bf16():
        return "bf16"
    click.echo("precision: fp32 (this CPU has no native bf16, AVX512-BF16 or AMX; training "
               "takes about twice as long as where it has)", err=True)
    return "fp32"


def _teacher_logits(folder, data, text_column, label_column, split_seed, dataset, rows,
                    labels, precision, no_progress):
    """The frozen teacher's logits on the training rows kept (`rows`, indices into the split),
    row for row, under the training precision; text is tokenized with the teacher's own
    tokenizer."""
    from matryoshka.errors import ConfigError
    from matryoshka.model.checkpoint import checkpoint_tokenizer, load_checkpoint
    from matryoshka.training.loop import check_data_fits
    from matryoshka.training.teacher import teacher_logits

    model, metrics = load_checkpoint(folder)
    if metrics.get("labels") != list(labels):
        raise ConfigError(f"--teacher {folder} was trained on the classes "
                          f"{metrics.get('labels')}; this data has {list(labels)}")
    x, y = dataset["train"]
    if model.config.input_kind == "text":
        from matryoshka.data.text import is_text_source, load_text
        from matryoshka.runtime.text import encode, load_tokenizer, pad

        if not is_text_source(data):
            raise ConfigError(f"--teacher {folder} takes raw text; --data is not raw text")
        tokenizer = load_tokenizer(checkpoint_tokenizer(folder, model.config))
        texts = load_text(data, text_column=text_column, label_column=label_column,
                          seed=split_seed).splits["train"][0]
        x = pad(encode(tokenizer, [texts[i] for i in rows]))
    check_data_fits(model.config, {"train": (x, y)})
    top = str(model.config.levels[-1])
    acc = metrics.get("test_accuracy", {}).get(top)
    click.echo(f"teacher: {folder}" + (f" (test accuracy {acc:.4f})" if acc else "")
               + f"; computing its logits on the {len(x)} training rows once", err=True)
    return teacher_logits(model, x, bf16=precision == "bf16", progress=not no_progress)


def _check_pretrained_options(text, init_from, preset_name) -> None:
    from matryoshka.errors import ConfigError

    if not text:
        raise ConfigError("--pretrained imports a text encoder: --data must be raw text (a "
                          ".csv or .jsonl file, or a folder of them)")
    if init_from is not None:
        raise ConfigError("give --pretrained or --init-from, not both")
    if preset_name is not None:
        raise ConfigError("--preset has no meaning with --pretrained: the architecture is "
                          "the pretrained model's")


def _check_nesting(nesting, init_from, pretrained, levels) -> None:
    from matryoshka.errors import ConfigError

    if nesting == "heads" and ((init_from is None and pretrained is None) or levels is None):
        raise ConfigError("--nesting heads nests an imported encoder: give it with "
                          "--init-from A_CHECKPOINT_OF_--pretrained or --pretrained FOLDER, "
                          "and --levels (numbers of heads)")


def _pretrained_data(data, text_column, label_column, split_seed, folder, max_len, name,
                     seed):
    """Read the texts, import the encoder with its own tokenizer, encode every split."""
    from matryoshka.data.source import load_text_record
    from matryoshka.data.text import load_text
    from matryoshka.data.tokenizer import encode_dataset
    from matryoshka.model.bert import import_bert

    text = load_text(data, text_column=text_column, label_column=label_column,
                     seed=split_seed)
    model, tokenizer = import_bert(folder, n_classes=len(text.labels), max_len=max_len or 128,
                                   name=name or f"{Path(data).stem}-{Path(folder).name}",
                                   seed=seed)
    files = {"tokenizer.json": tokenizer.to_str().encode()}
    return encode_dataset(tokenizer, text), load_text_record(text), text.labels, files, model


def _array_data(data, cfg, init):
    from matryoshka.data import load_dataset
    from matryoshka.data.source import describe
    from matryoshka.training import config_for_data

    dataset = load_dataset(data)
    if init is None:
        cfg = config_for_data(cfg, dataset)
    labels = [str(i) for i in range(cfg.n_classes)]
    return dataset, describe(data), labels, None, cfg


def _text_data(data, text_column, label_column, split_seed, vocab_size, tokenizer_model,
               lowercase, cfg, init, init_from):
    """Read the texts, train the tokenizer on the training split, encode every split."""
    from matryoshka.data.source import load_text_record
    from matryoshka.data.text import load_text
    from matryoshka.data.tokenizer import encode_dataset, train_tokenizer
    from matryoshka.errors import ConfigError
    from matryoshka.model.checkpoint import checkpoint_tokenizer
    from matryoshka.runtime.text import load_tokenizer
    from matryoshka.training import config_for_text

    text = load_text(data, text_column=text_column, label_column=label_column,
                     seed=split_seed)
    if init is not None:
        if init.config.input_kind != "text":
            raise ConfigError("--init-from names a model that does not take text")
        tokenizer = load_tokenizer(checkpoint_tokenizer(init_from, init.config))
    else:
        max_len = cfg.max_len if cfg.input_kind in ("tokens", "text") else 128
        tokenizer = train_tokenizer(text.splits["train"][0], vocab_size=vocab_size,
                                    model=tokenizer_model, lowercase=lowercase,
                                    max_len=max_len)
        cfg = config_for_text(cfg, tokenizer, len(text.labels))
    files = {"tokenizer.json": tokenizer.to_str().encode()}
    return encode_dataset(tokenizer, text), load_text_record(text), text.labels, files, cfg


def level_table(metrics: dict) -> str:
    """Per-level table of params, MFLOPs and accuracy from a metrics.json dict."""
    rows = [f"{'level':>6} {'params':>10} {'MFLOPs':>8} {'val acc':>8} {'test acc':>8}"]
    for d in metrics["levels"]:
        k = str(d)
        rows.append(f"{d:>6} {metrics['params'][k]:>10,} "
                    f"{metrics['flops_per_sample'][k] / 1e6:>8.2f} "
                    f"{metrics['val_accuracy'][k]:>8.4f} {metrics['test_accuracy'][k]:>8.4f}")
    return "\n".join(rows)
