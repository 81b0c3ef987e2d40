"""`matryoshka calibrate`: temperatures and certified thresholds into an export's manifest."""

from __future__ import annotations

import click

from matryoshka.cli.core import DEMO_EXPORT, cli


@cli.command("calibrate")
@click.argument("export_dir", default=DEMO_EXPORT)
@click.option("--data", default=None,
              help="'demo', a .npz or a text file like the training data [the data the "
              "export was made from; a moved or changed file is reported].")
@click.option("--split", default="val", show_default=True,
              help="Split to calibrate on (train or val); test is kept for the report.")
@click.option("--target", default="agreement", show_default=True,
              help="agreement: disagreement with the largest level; accuracy: accuracy lost.")
@click.option("--epsilon", type=float, default=0.02, show_default=True,
              help="Risk the cascade may take.")
@click.option("--delta", type=float, default=0.1, show_default=True,
              help="Probability that the guarantee fails over the calibration draw.")
@click.option("--variant", default="fp32", show_default=True,
              help="Graph set to calibrate: fp32, int8, or auto (the precision plan of "
              "`matryoshka tune`).")
@click.option("--int8", "int8", default=None,
              help="'static': INT8 static quantization of every level first; "
              "'static-shared': then every smaller level takes the corners of the largest "
              "level's quantized weights (stored once in cascade.int8.onnx).")
@click.option("--method", default="minmax", show_default=True,
              help="INT8 calibration method: minmax, entropy or percentile.")
@click.option("--cascade", default="cheapest", show_default=True,
              help="Levels the cascade escalates through: cheapest (every level or the "
              "trained levels alone, whichever certified set costs less; each certified at "
              "delta/2, so the choice keeps the guarantee), all, trained (without the "
              "Mix'n'Match sub-models) or level names, e.g. 64,mix1,512.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def calibrate_cmd(export_dir, data, split, target, epsilon, delta, variant, int8, method,
                  cascade, no_progress) -> None:
    """Fit temperatures and certified escalation thresholds into EXPORT_DIR's manifest.

    Example: matryoshka calibrate artifacts/demo/export --epsilon 0.02 --delta 0.1
    """
    from matryoshka.calibration import calibrate, calibration_table
    from matryoshka.runtime.manifest import read_manifest

    record = calibrate(export_dir, data=data, split=split, target=target, epsilon=epsilon,
                       delta=delta, variant=variant, int8=int8, method=method,
                       progress=not no_progress, cascade=cascade)
    click.echo(calibration_table(record, read_manifest(export_dir)))
