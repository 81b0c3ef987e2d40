"""`matryoshka import`: a Hugging Face model folder as a checkpoint, exactly, with no training
(matryoshka.importer)."""

from __future__ import annotations

import click

from matryoshka.cli.core import cli, parse_label_map, text_columns


@cli.command("import")
@click.argument("folder")
@click.option("--out", required=True, help="Checkpoint folder to write.")
@click.option("--data", default=None,
              help="Raw text (a .csv or .jsonl file, or a folder of them) to record with the "
              "checkpoint, as train does: its classes are matched to a classifier's (or "
              "size a base model's new head), and a classifier's test accuracy is measured "
              "[none: mexport and calibrate then need --data].")
@text_columns
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="Tokens kept per text (longer ones are truncated) [128, or the model's "
              "positions if fewer].")
@click.option("--name", default=None, help="Model name in the graphs [the folder's name].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of a base model's new head.")
@click.option("--label-map", default=None, metavar="DATA=MODEL,...",
              help="Pair --data's class names with the classifier's, e.g. "
              "pos=POSITIVE,neg=NEGATIVE [matched by name, case aside].")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def import_cmd(folder, out, data, text_column, label_column, split_seed, max_len, name, seed,
               label_map, force) -> None:
    """Write the Hugging Face model FOLDER (BERT, DistilBERT, RoBERTa, XLM-R, CamemBERT,
    ELECTRA or ModernBERT;
    a base encoder or a fine-tuned *ForSequenceClassification) as a checkpoint, exactly as
    imported and with no training.

    Examples:

      matryoshka import my-distilbert-sst2 --out artifacts/sst2/checkpoint --data sst2.csv

      mexport --checkpoint artifacts/sst2/checkpoint --levels 768 --out artifacts/sst2/export
    """
    from matryoshka.importer import import_checkpoint

    import_checkpoint(folder, out, data=data, text_column=text_column,
                      label_column=label_column, split_seed=split_seed, max_len=max_len,
                      name=name, seed=seed, label_map=parse_label_map(label_map),
                      force=force,
                      say=lambda line: click.echo(line, err=True))
    click.echo(f"checkpoint written to {out}")
