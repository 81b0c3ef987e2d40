"""`matryoshka tune`: a precision per level, from fp32 and INT8 timed side by side here."""

from __future__ import annotations

import click

from matryoshka.cli.core import DEMO_EXPORT, cli, parse_ints


@cli.command("tune")
@click.argument("export_dir", default=DEMO_EXPORT)
@click.option("--batch", "batch", default="1,8,32", show_default=True,
              help="Batch sizes to time, comma-separated.")
@click.option("--for-batch", type=int, default=1, show_default=True,
              help="The deployment batch size the plan is chosen for (one of --batch).")
@click.option("--max-loss", "max_loss_points", type=float, default=0.5, show_default=True,
              help="Accuracy a level may lose to INT8 against its fp32, in points.")
@click.option("--data", default=None,
              help="'demo', a .npz or a text file [the data the export was made from].")
@click.option("--split", default="val", show_default=True,
              help="Split to time and score on (train or val); test is kept for the report.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
              show_default=True)
@click.option("--threads", type=int, default=None,
              help="onnxruntime intra-op threads [onnxruntime's default].")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--iters", type=int, default=50, show_default=True,
              help="Timed calls per precision, level and batch size.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def tune_cmd(export_dir, batch, for_batch, max_loss_points, data, split, device, threads,
             warmup, iters, no_progress) -> None:
    """Choose fp32 or INT8 for each level of EXPORT_DIR from measurements on this device,
    and write the plan into its manifest.

    Each level's INT8 graph (mexport --quantize ..., or calibrate --int8 static) is timed side
    by side with its fp32 graph at every --batch and scored on --split; a level runs INT8 where
    that is faster at --for-batch and loses at most --max-loss points. Then certify the planned
    cascade with: matryoshka calibrate EXPORT_DIR --variant auto; run it with --variant auto.

    Example: matryoshka tune artifacts/demo/export --batch 1,32 --for-batch 32
    """
    from matryoshka.calibration.tune import plan_table, tune
    from matryoshka.runtime.manifest import level_name, read_manifest

    plan = tune(export_dir, data=data, split=split, batches=tuple(parse_ints(batch, "--batch")),
                for_batch=for_batch, max_loss=max_loss_points / 100.0, device=device,
                threads=threads, warmup=warmup, iters=iters, progress=not no_progress)
    levels = [level_name(lv) for lv in read_manifest(export_dir)["levels"]]
    click.echo(plan_table(plan, levels))
    click.echo(f"plan written to {export_dir}/manifest.json; certify it with: matryoshka "
               f"calibrate {export_dir} --variant auto")
