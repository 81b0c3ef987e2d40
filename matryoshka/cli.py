"""The `matryoshka` command line: one click group, every heavy import done lazily.

DESIGN.md, "Errors": a user's mistake prints one `error: ...` line and exits 2, with no
traceback. `matryoshka predict` must run where torch is not installed, so nothing here imports
torch at module level.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from matryoshka import __version__
from matryoshka.errors import MatryoshkaError

DEMO_CHECKPOINT = "artifacts/demo/checkpoint"
DEMO_EXPORT = "artifacts/demo/export"


def _standalone(command: click.Command, args, prog_name, extra) -> None:
    """Run a click command so that every failure, click's own included, is one `error:` line:
    exit 2 for a user's mistake, 1 for the environment (a full disk, a permission) or a bug
    of ours. --debug (or MATRYOSHKA_DEBUG=1) lets the traceback through instead."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get("MATRYOSHKA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]  # accepted before or after the command name
    try:
        rv = click.Command.main(command, args=args, prog_name=prog_name, standalone_mode=False,
                                **extra)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _say_error(e.format_message())
        sys.exit(2)
    except MatryoshkaError as e:
        if debug:
            raise
        _say_error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        _say_error(_os_message(e))
        sys.exit(1)
    except Exception as e:  # a bug of ours: still one line, the traceback behind --debug
        if debug:
            raise
        _say_error(f"internal error ({type(e).__name__}: {e}); rerun with --debug for the "
                   "traceback")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _os_message(e: OSError) -> str:
    """'No space left on device: artifacts/demo/export/manifest.json' and the like."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what


def _say_error(message: str) -> None:
    """Print the error once, on one line: under torchrun every rank fails alike, so rank 0
    alone speaks."""
    if os.environ.get("RANK", "0") == "0":
        click.echo("error: " + " ".join(str(message).split()), err=True)


def _debug_option(f):
    """--debug is read by `_standalone` before click parses anything; this only documents it."""
    return click.option("--debug", is_flag=True, expose_value=False,
                        help="Show the traceback of a failure.")(f)


class _Group(click.Group):
    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        _standalone(self, args, prog_name, extra)


class _Command(click.Command):
    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        _setup_logging(False)
        _standalone(self, args, prog_name, extra)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    root = logging.getLogger("matryoshka")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="matryoshka")
@_debug_option
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Train one nested-width Transformer, export one ONNX graph per level, run the cascade."""
    _setup_logging(verbose)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"needs comma-separated numbers, got {text!r}",
                                 param_hint=what) from None


@cli.command()
@click.option("--preset", "preset_name", default="demo", show_default=True,
              help="Named architecture: demo or tiny.")
@click.option("--data", default="demo", show_default=True,
              help="'demo' (bundled digits) or a .npz with x_/y_ train, val and test.")
@click.option("--out", default=DEMO_CHECKPOINT, show_default=True,
              help="Checkpoint folder to write.")
@click.option("--levels", default=None, help="Nested widths, e.g. 64,128,256,512 "
              "(default: the preset's). The last must equal d_model.")
@click.option("--epochs", type=int, default=None,
              help="Passes over the training split [the preset's recipe; demo: 60].")
@click.option("--batch-size", type=int, default=None, help="Samples per step [32].")
@click.option("--schedule", type=click.Choice(["joint", "progressive", "sampled"]),
              default="joint", show_default=True)
@click.option("--alpha", default=None, help="CE weight per level, comma-separated "
              "[demo: 1,1,1,2; else 1 each].")
@click.option("--beta", type=float, default=None, help="Consistency weight L_reg [0].")
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
              "weights (fine-tuning); --preset and --levels are then ignored.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(preset_name, data, out, levels, epochs, batch_size, schedule, alpha, beta, gamma,
          temperature, distill_direction, lr, lr_scale, seed, init_from, force,
          no_progress) -> None:
    """Train a Matryoshka Transformer and write its checkpoint folder.

    Example: matryoshka train --preset demo --data demo --out artifacts/demo/checkpoint
    """
    from matryoshka.data import load_dataset
    from matryoshka.io import check_out_dir
    from matryoshka.model import parse_levels, preset
    from matryoshka.training import RECIPES, TrainConfig, config_for_data
    from matryoshka.training import train as run_training

    check_out_dir(out, force)
    overrides = {}
    if levels is not None:
        overrides["levels"] = parse_levels(levels)
    init = None
    if init_from is not None:
        from matryoshka.model.checkpoint import load_checkpoint

        init, _ = load_checkpoint(init_from)
        cfg = init.config
    else:
        cfg = preset(preset_name, **overrides)
    fields = dict(epochs=epochs, batch_size=batch_size, beta=beta, gamma=gamma,
                  temperature=temperature, lr=lr, alpha=_floats(alpha, "--alpha"),
                  lr_scale=_floats(lr_scale, "--lr-scale"), distill_direction=distill_direction)
    recipe = dict(RECIPES.get(preset_name, {})) if init_from is None else {}
    if levels is not None and len(cfg.levels) != len(recipe.get("alpha", cfg.levels)):
        recipe.pop("alpha", None)  # the recipe's alpha was for the preset's own levels
    recipe.update({k: v for k, v in fields.items() if v is not None})
    tcfg = TrainConfig(schedule=schedule, seed=seed, **recipe)
    tcfg.alphas(cfg.levels)
    if tcfg.lr_scale is not None and len(tcfg.lr_scale) != len(cfg.levels):
        raise click.BadParameter(f"needs {len(cfg.levels)} values, one per level",
                                 param_hint="--lr-scale")
    dataset = load_dataset(data)
    if init is None:
        cfg = config_for_data(cfg, dataset)
    metrics = run_training(cfg, dataset, tcfg, out, force=force, progress=not no_progress,
                           data_name=str(data), init=init)
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
        click.option("--quantize", type=click.Choice(["none", "dynamic"]), default="none",
                     show_default=True, help="Also write level-XXXX.int8.onnx (dynamic INT8)."),
        click.option("--data", default=None,
                     help="Validation data [the data the checkpoint was trained on]."),
        click.option("--force", is_flag=True, help="Replace an existing --out."),
        click.option("--no-progress", is_flag=True, help="Hide the progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run_export(levels, checkpoint, out, opset, no_simplify, atol, rtol, quantize, data,
                force, no_progress) -> None:
    from matryoshka.model import parse_levels

    parsed = parse_levels(levels) if levels is not None else None
    from matryoshka.exporter import export as run_export
    from matryoshka.exporter import export_table

    manifest = run_export(checkpoint, out, parsed, opset=opset, simplify=not no_simplify,
                          atol=atol, rtol=rtol, quantize=quantize, force=force, data=data,
                          progress=not no_progress)
    click.echo(export_table(manifest))
    click.echo(f"{len(manifest['levels'])} graphs and manifest.json written to {out}")


@cli.command("export")
@_export_options
def export_cmd(**kwargs) -> None:
    """Export one validated ONNX graph per level (also installed as `mexport`).

    Example: mexport --levels 64,128,256,512
    """
    _run_export(**kwargs)


@click.command("mexport", cls=_Command)
@_debug_option
@_export_options
def mexport(**kwargs) -> None:
    """Export one validated ONNX graph per level of a checkpoint.

    Example: mexport --levels 64,128,256,512
    """
    _run_export(**kwargs)


@cli.command()
@click.argument("export_dir")
@click.argument("input_npy")
@click.option("--level", type=int, default=None, help="Run this one level.")
@click.option("--thresholds", default=None,
              help="Cascade thresholds, one per level but the last, e.g. 0.9,0.9,0.9.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto",
              show_default=True)
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True)
@click.option("--key", default=None,
              help="The array to read when INPUT_NPY is an .npz archive [its only array].")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Rows per run: bounds memory, whatever the input's size.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(export_dir, input_npy, level, thresholds, device, variant, key, batch_size,
            as_json) -> None:
    """Predict the samples in INPUT_NPY (.npy, or .npz with --key) with the graphs in
    EXPORT_DIR (no torch needed).

    Example: matryoshka predict artifacts/demo/export samples.npy --thresholds 0.9,0.9,0.9
    """
    import json as _json

    import numpy as np

    from matryoshka.runtime import Runtime

    x = _load_array(input_npy, key)
    thr = None
    if thresholds is not None:
        thr = list(_floats(thresholds, "--thresholds") or ())
    rt = Runtime.open(export_dir, device=device, variant=variant, batch_size=batch_size)
    out = rt.predict(x, level=level, thresholds=thr)
    if as_json:
        click.echo(_json.dumps({"labels": out.labels.tolist(), "levels": out.levels.tolist(),
                                "confidence": [round(float(c), 6) for c in out.confidence],
                                "providers": rt.providers[rt.levels[-1]]}, allow_nan=False))
        return
    click.echo(f"{'row':>5} {'label':>6} {'level':>6} {'confidence':>11}")
    for i, (lab, lev, conf) in enumerate(zip(out.labels, out.levels, out.confidence)):
        click.echo(f"{i:>5} {lab:>6} {lev:>6} {conf:>11.4f}")
    if len(out):
        dims, counts = np.unique(out.levels, return_counts=True)
        share = ", ".join(f"{d}: {c}" for d, c in zip(dims, counts))
        click.echo(f"{len(out)} rows answered by level ({share})")


def _load_array(path_text: str, key: str | None):
    """A .npy array, or one array of an .npz archive; never a pickle."""
    import zipfile
    from pathlib import Path

    import numpy as np

    from matryoshka.errors import DataError, MissingArtifactError

    path = Path(path_text)
    if not path.is_file():
        raise MissingArtifactError(f"input file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            if key is not None:
                raise DataError(f"--key {key} needs an .npz archive; {path} is a .npy array")
            return loaded
        with loaded:
            names = list(loaded.files)
            if key is None and len(names) != 1:
                raise DataError(f"{path} is an .npz archive with the arrays "
                                f"{', '.join(names) or '(none)'}; name one with --key")
            name = key if key is not None else names[0]
            if name not in names:
                raise DataError(f"{path} has no array {name!r} (it has: {', '.join(names)})")
            return loaded[name]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path} is not a readable .npy or .npz array ({e})") from None


@cli.command("calibrate")
@click.argument("export_dir", default=DEMO_EXPORT)
@click.option("--data", default="demo", show_default=True,
              help="'demo' or a .npz with the same keys as for training.")
@click.option("--split", default="val", show_default=True,
              help="Split to calibrate on (train or val); test is kept for the report.")
@click.option("--target", default="agreement", show_default=True,
              help="agreement: disagreement with the largest level; accuracy: accuracy lost.")
@click.option("--epsilon", type=float, default=0.02, show_default=True,
              help="Risk the cascade may take.")
@click.option("--delta", type=float, default=0.1, show_default=True,
              help="Probability that the guarantee fails over the calibration draw.")
@click.option("--variant", default="fp32", show_default=True,
              help="Graph set to calibrate: fp32 or int8.")
@click.option("--int8", "int8", default=None, help="'static': INT8 static quantization first.")
@click.option("--method", default="minmax", show_default=True,
              help="INT8 calibration method: minmax, entropy or percentile.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def calibrate_cmd(export_dir, data, split, target, epsilon, delta, variant, int8, method,
                  no_progress) -> None:
    """Fit temperatures and certified escalation thresholds into EXPORT_DIR's manifest.

    Example: matryoshka calibrate artifacts/demo/export --epsilon 0.02 --delta 0.1
    """
    from matryoshka.calibration import calibrate, calibration_table
    from matryoshka.runtime.manifest import read_manifest

    record = calibrate(export_dir, data=data, split=split, target=target, epsilon=epsilon,
                       delta=delta, variant=variant, int8=int8, method=method,
                       progress=not no_progress)
    click.echo(calibration_table(record, read_manifest(export_dir)))


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"needs comma-separated integers, got {text!r}",
                                 param_hint=what) from None
    if not values:
        raise click.BadParameter("needs at least one value", param_hint=what)
    return values


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
@click.option("--data", default="demo", show_default=True,
              help="Real inputs (and labels): 'demo' or a .npz; the test split is used.")
@click.option("--baselines", default="", help="Comma-separated: torch, padded.")
@click.option("--checkpoint", default=None,
              help="Checkpoint for the torch baseline [the one named in the manifest].")
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True, help="Graph set to measure.")
@click.option("--json", "json_out", default=None, help="Also write the record to this file.")
@click.option("--plot", "plot_out", default=None, help="Write a PNG (needs matryoshka[plot]).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def bench_cmd(export_dir, device, batch, warmup, iters, threads, data, baselines, checkpoint,
              variant, json_out, plot_out, no_progress) -> None:
    """Measure every level of EXPORT_DIR on this device; record it in bench.json/.md.

    Example: matryoshka bench artifacts/demo/export --batch 1,32 --baselines torch,padded
    """
    from pathlib import Path

    from matryoshka.data import load_dataset
    from matryoshka.errors import ConfigError
    from matryoshka.io import write_json_atomic
    from matryoshka.runtime.bench import bench_table, check_counts, plot_bench, run_bench
    from matryoshka.runtime.manifest import read_manifest
    from matryoshka.runtime.providers import check_threads, requested_providers

    batches = _ints(batch, "--batch")
    check_threads(threads)
    for option, target in (("--json", json_out), ("--plot", plot_out)):
        _check_destination(option, target)  # before the bench runs, not after
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    unknown = sorted(set(names) - {"torch", "padded"})
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; choose from torch, padded")
    check_counts(warmup, iters)  # before the baselines load anything
    manifest = read_manifest(export_dir)
    providers = requested_providers(device)
    x, y = load_dataset(data)["test"]
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
                           notes=notes, progress=not no_progress, variant=variant)
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


def _check_destination(option: str, target: str | None) -> None:
    """A file to write later: its folder must exist now, and it must not be a folder."""
    from pathlib import Path

    from matryoshka.errors import ConfigError

    if target is None:
        return
    path = Path(target)
    if path.is_dir():
        raise ConfigError(f"{option} {target} is a folder; name a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {target}: the folder {path.parent} does not exist")


def main() -> None:
    cli()


def mexport_main() -> None:
    mexport()


if __name__ == "__main__":
    main()
