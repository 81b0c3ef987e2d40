"""`matryoshka bench`: measure every level of an export on this device."""

from __future__ import annotations

import click

from matryoshka.cli.core import DEMO_EXPORT, check_destination, cli, parse_ints


@cli.command("bench")
@click.argument("export_dir", default=DEMO_EXPORT)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
              show_default=True)
@click.option("--batch", "batch", default="1,8,32", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=100, show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads "
              "(and torch's, for the torch baseline) [onnxruntime's default].")
@click.option("--data", default=None,
              help="Real inputs (and labels), test split: 'demo', a .npz or a text file "
              "[the data the export was made from].")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Text: time every row at exactly this many tokens [the data's own lengths].")
@click.option("--baselines", default="", help="Comma-separated: torch, padded.")
@click.option("--checkpoint", default=None,
              help="Checkpoint for the torch baseline [the one named in the manifest].")
@click.option("--variant", type=click.Choice(["fp32", "int8", "auto"]), default="fp32",
              show_default=True, help="Graph set to measure.")
@click.option("--engine", type=click.Choice(["auto", "graph", "levels"]), default="auto",
              show_default=True, help="Time the calibrated cascade through cascade.onnx "
              "(graph), one session per level (levels), or both where the graph exists (auto).")
@click.option("--json", "json_out", default=None, help="Also write the record to this file.")
@click.option("--plot", "plot_out", default=None, help="Write a PNG (needs matryoshka[plot]).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def bench_cmd(export_dir, device, batch, warmup, iters, threads, data, seq_len, baselines,
              checkpoint, variant, engine, json_out, plot_out, no_progress) -> None:
    """Measure every level of EXPORT_DIR on this device; record it in bench.json/.md.

    Example: matryoshka bench artifacts/demo/export --batch 1,32 --baselines torch,padded
    """
    from pathlib import Path

    from matryoshka.data.source import for_export
    from matryoshka.errors import ConfigError
    from matryoshka.io import write_json_atomic
    from matryoshka.runtime.bench import run_bench
    from matryoshka.runtime.manifest import read_manifest
    from matryoshka.runtime.providers import check_threads, requested_providers
    from matryoshka.runtime.records import bench_table, plot_bench
    from matryoshka.runtime.timing import check_counts

    batches = parse_ints(batch, "--batch")
    check_threads(threads)
    for option, target in (("--json", json_out), ("--plot", plot_out)):
        check_destination(option, target)  # before the bench runs, not after
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = sorted(set(names) - {"torch", "padded"})
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; choose from torch, padded")
    check_counts(warmup, iters)  # before the baselines load anything
    manifest = read_manifest(export_dir)
    providers = requested_providers(device)
    x, y = for_export(export_dir, manifest, data)[0]["test"]
    timers, notes = {}, []
    for name in names:
        try:
            from matryoshka.exporter import baselines as bl
        except ImportError:
            notes.append(f"{name} baseline skipped: needs matryoshka[train]")
            continue
        made = (bl.torch_baseline(checkpoint or manifest["checkpoint"]["path"], threads)
                if name == "torch" else
                bl.padded_baseline(export_dir, manifest, providers, threads))
        if isinstance(made, str):
            notes.append(made)
        else:
            timers[name] = made
    try:
        record = run_bench(export_dir, device=device, batches=batches, warmup=warmup,
                           iters=iters, threads=threads, x=x, y=y, baselines=timers,
                           notes=notes, progress=not no_progress, variant=variant,
                           seq_len=seq_len, engine=engine)
    finally:
        for t in timers.values():
            getattr(t, "cleanup", lambda: None)()
    click.echo(bench_table(record))
    folder = Path(export_dir)
    click.echo(f"recorded in {folder / 'bench.json'} and {folder / 'bench.md'}")
    if json_out:
        write_json_atomic(json_out, record)
        click.echo(f"record written to {json_out}")
    if plot_out:
        click.echo(f"plot written to {plot_bench(record, plot_out)}")
