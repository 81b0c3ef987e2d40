"""`matryoshka bundle`: the part of an export that one device ships."""

from __future__ import annotations

import click

from matryoshka.cli.core import cli


@cli.command("bundle")
@click.argument("export_dir")
@click.option("--out", required=True, help="Bundle folder to write.")
@click.option("--levels", default=None,
              help="Levels to ship, e.g. 64,128 [every level].")
@click.option("--max-mb", type=float, default=None,
              help="Ship the largest prefix of the levels (cheapest first) whose bundle, "
              "every file counted, fits in this many MB (10^6 bytes).")
@click.option("--variant", type=click.Choice(["fp32", "int8", "auto"]), default=None,
              help="Precision of the shipped graphs: fp32, int8, or auto (the plan of "
              "`matryoshka tune`) [auto where the export has a plan, else int8 where every "
              "level has an INT8 graph, else fp32].")
@click.option("--data", default=None,
              help="Data to certify the thresholds again on, when the bundle holds other "
              "levels than the calibrated cascade [the data the export was made from].")
@click.option("--ort", "ort_format", is_flag=True,
              help="Also write cascade.ort (onnxruntime's mobile format) and the operators "
              "a reduced build needs.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def bundle_cmd(export_dir, out, levels, max_mb, variant, data, ort_format, force,
               no_progress) -> None:
    """Write a self-contained export folder holding only the levels one device can afford,
    their tokenizer and a cascade.onnx over them, certified for that level set.

    Example: matryoshka bundle artifacts/demo/export --out artifacts/demo/phone --max-mb 2
    """
    from matryoshka.bundle import MB, bundle
    from matryoshka.runtime.manifest import read_manifest

    b = bundle(export_dir, out, levels=levels, max_mb=max_mb, variant=variant, data=data,
               ort_format=ort_format, force=force, progress=not no_progress)
    m = read_manifest(b.folder)
    click.echo(f"bundle {b.folder}: levels {', '.join(b.levels)} from the {b.variant} graphs "
               f"of {export_dir}, {b.total_bytes / MB:.2f} MB in all"
               + (f" (budget {max_mb:g} MB)" if max_mb is not None else ""))
    by_file = {lv["file"]: lv for lv in m["levels"]}
    for name, size in b.files.items():
        lv = by_file.get(name)
        what = ""
        if lv is not None:
            acc = (lv.get("accuracy") or {}).get("onnx")
            what = f"level {lv['name']}, {lv['precision']}" + (
                f", test accuracy {acc:.4f}" if acc is not None else "")
        elif name.startswith("cascade") and name.endswith(".onnx"):
            what = f"the cascade over {', '.join(m['cascade']['fp32']['levels'])}"
        click.echo(f"  {name:<34} {size / MB:8.2f} MB  {what}".rstrip())
    rec = b.calibration
    if rec is None and len(b.levels) == 1:
        click.echo(f"cascade: one level, every row answers at {b.levels[0]} (no thresholds "
                   "to certify)")
        return
    if rec is None:
        click.echo("cascade: not calibrated, every row answers at the largest level; certify "
                   f"it with: matryoshka calibrate {b.folder}")
        return
    test = rec["test"]
    click.echo(f"cascade: {rec['guarantee']}"
               + (" (certified again for this level set)" if b.recertified else ""))
    click.echo(f"  on its test split (n {test['n']}): {rec['target']} risk {test['risk']:.4f}, "
               f"accuracy {test['accuracy']:.4f} (level {rec['levels'][-1]} alone "
               f"{test['accuracy_largest']:.4f}), relative FLOPs cost "
               f"{test['relative_cost']:.3f}")
