"""`mexport` (also `matryoshka export`): one validated graph per level of a checkpoint."""

from __future__ import annotations

import click

from matryoshka.cli.core import DEMO_CHECKPOINT, DEMO_EXPORT, Command, cli, debug_option
from matryoshka.quantize import EXPORT_QUANTIZE


def _export_options(f):
    options = [
        click.option("--levels", default=None,
                     help="Widths to export, e.g. 64,128,256,512 [the trained levels]."),
        click.option("--checkpoint", default=DEMO_CHECKPOINT, show_default=True,
                     help="Checkpoint folder from `matryoshka train`."),
        click.option("--out", default=DEMO_EXPORT, show_default=True,
                     help="Export folder to write."),
        click.option("--opset", type=int, default=17, show_default=True),
        click.option("--no-simplify", is_flag=True, help="Skip onnxsim."),
        click.option("--atol", type=float, default=1e-4, show_default=True,
                     help="Absolute tolerance of the parity check against torch."),
        click.option("--rtol", type=float, default=1e-3, show_default=True,
                     help="Relative tolerance of the parity check against torch."),
        click.option("--quantize", type=click.Choice(EXPORT_QUANTIZE),
                     default="none", show_default=True,
                     help="Also write an INT8 graph per level (level-0064.int8.onnx, ...): "
                     "dynamic (per-tensor weight scales), dynamic-pc (per-channel), weight8 "
                     "(INT8 weights, fp32 compute: the same answers at any batch, for the web) "
                     "or weight4 (4-bit weights, int8 compute); -shared: every smaller level "
                     "slices the largest level's quantized weights, stored once in "
                     "cascade.int8.onnx. "
                     "Static INT8: matryoshka calibrate --int8 static."),
        click.option("--mix", "mixes", multiple=True, metavar="NAME=SPEC",
                     help="Also export a Mix'n'Match sub-model as a level named NAME; SPEC is "
                     "DIM[:ffn=W,...][:heads=H,...], one value per layer (or one for all), "
                     "e.g. mid=256:ffn=1024,512:heads=8,4. Repeatable."),
        click.option("--from-search", default=None, metavar="SEARCH_JSON",
                     help="Also export sub-models from the frontier of `matryoshka search`."),
        click.option("--pick", default="all", show_default=True,
                     help="With --from-search: frontier picks to export, e.g. 1,3, or all, "
                     "or best (the best under the search's budget)."),
        click.option("--data", default=None,
                     help="Validation data [the data the checkpoint was trained on]."),
        click.option("--ort", is_flag=True,
                     help="Also write each cascade graph in onnxruntime's ORT format for mobile "
                     "builds (cascade.ort) with the operators a reduced build needs "
                     "(cascade.required_operators.config); calibrate and tune keep them."),
        click.option("--force", is_flag=True, help="Replace an existing --out."),
        click.option("--no-progress", is_flag=True, help="Hide the progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run_export(levels, checkpoint, out, opset, no_simplify, atol, rtol, quantize, mixes,
                from_search, pick, data, ort, force, no_progress) -> None:
    from matryoshka.model import parse_levels

    parsed = parse_levels(levels) if levels is not None else None
    from matryoshka.exporter import export as run_export
    from matryoshka.exporter import export_table

    manifest = run_export(checkpoint, out, parsed, opset=opset, simplify=not no_simplify,
                          atol=atol, rtol=rtol, quantize=quantize, force=force, data=data,
                          progress=not no_progress, ort=ort,
                          mixes=_mixes(checkpoint, mixes, from_search, pick))
    click.echo(export_table(manifest))
    click.echo(f"{len(manifest['levels'])} graphs and manifest.json written to {out}")


def _mixes(checkpoint, mixes, from_search, pick) -> list:
    """(name, Spec) of every --mix and --from-search pick, parsed against the checkpoint."""
    if not mixes and from_search is None:
        return []
    from matryoshka.model import parse_mix
    from matryoshka.model.checkpoint import checkpoint_sha256, read_config

    cfg = read_config(checkpoint)
    chosen = [parse_mix(m, cfg.n_layers, cfg.head_dim) for m in mixes]
    if from_search is not None:
        from matryoshka.search import load_picks

        chosen += load_picks(from_search, pick, checkpoint_sha256(checkpoint))
    return chosen


@cli.command("export")
@_export_options
def export_cmd(**kwargs) -> None:
    """Export one validated ONNX graph per level (also installed as `mexport`).

    Example: mexport --levels 64,128,256,512 --mix mid=256:ffn=1024,512
    """
    _run_export(**kwargs)


@click.command("mexport", cls=Command)
@debug_option
@_export_options
def mexport(**kwargs) -> None:
    """Export one validated ONNX graph per level of a checkpoint, and each Mix'n'Match
    sub-model asked for (--mix, --from-search) as a level beside them, ordered by FLOPs.

    Example: mexport --levels 64,128,256,512 --from-search artifacts/demo/search.json
    """
    _run_export(**kwargs)
