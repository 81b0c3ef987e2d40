"""`matryoshka predict`: run an export on arrays (or texts) without torch."""

from __future__ import annotations

import click

from matryoshka.cli.core import cli, parse_floats


@cli.command()
@click.argument("export_dir")
@click.argument("input_npy", required=False)
@click.option("--text", "texts", multiple=True,
              help="A text to classify (repeatable); the export must hold a tokenizer.")
@click.option("--input-file", default=None,
              help="A UTF-8 file of texts, one per line (blank lines are skipped).")
@click.option("--level", default=None,
              help="Run this one level: its name, or a trained level's width.")
@click.option("--thresholds", default=None,
              help="Cascade thresholds, one per level but the last, e.g. 0.9,0.9,0.9.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto",
              show_default=True)
@click.option("--variant", type=click.Choice(["fp32", "int8", "auto"]), default="fp32",
              show_default=True)
@click.option("--engine", type=click.Choice(["auto", "graph", "levels"]), default="auto",
              show_default=True, help="graph: the cascade in one session over cascade.onnx; "
              "levels: one session per level; auto: the graph where the export has one.")
@click.option("--key", default=None,
              help="The array to read when INPUT_NPY is an .npz archive [its only array].")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Rows per run: bounds memory, whatever the input's size.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(export_dir, input_npy, texts, input_file, level, thresholds, device, variant,
            engine, key, batch_size, as_json) -> None:
    """Predict with the graphs in EXPORT_DIR (no torch needed): the samples in INPUT_NPY
    (.npy, or .npz with --key), or raw texts (--text, --input-file) for a text export.

    Examples:

      matryoshka predict artifacts/demo/export samples.npy --thresholds 0.9,0.9,0.9

      matryoshka predict artifacts/text/export --text "WIN a FREE cruise!!!" --text "lunch?"
    """
    import json as _json

    from matryoshka.errors import ConfigError
    from matryoshka.runtime import Runtime

    given = [name for name, v in (("INPUT_NPY", input_npy), ("--text", texts),
                                  ("--input-file", input_file)) if v]
    if len(given) != 1:
        raise ConfigError("give exactly one of INPUT_NPY, --text or --input-file"
                          + (f" (got {', '.join(given)})" if given else ""))
    thr = None
    if thresholds is not None:
        thr = list(parse_floats(thresholds, "--thresholds") or ())
    rt = Runtime.open(export_dir, device=device, variant=variant, batch_size=batch_size,
                      engine=engine)
    if input_npy:
        x = _load_array(input_npy, key)
    else:
        x = list(texts) if texts else _read_lines(input_file)  # predict refuses text
        # for an export without a tokenizer, with one clear message
    out = rt.predict(x, level=level, thresholds=thr)
    names = rt.class_names
    if as_json:
        click.echo(_json.dumps({"labels": out.labels.tolist(),
                                "label_names": [names[i] for i in out.labels],
                                "levels": out.levels.tolist(),
                                "confidence": [round(float(c), 6) for c in out.confidence],
                                "engine": rt.engine,
                                "providers": rt.active_providers()}, allow_nan=False))
        return
    width = max([5] + [len(n) for n in names])
    click.echo(f"{'row':>5} {'label':>{width}} {'level':>6} {'confidence':>11}")
    for i, (lab, lev, conf) in enumerate(zip(out.labels, out.levels, out.confidence)):
        click.echo(f"{i:>5} {names[lab]:>{width}} {lev:>6} {conf:>11.4f}")
    if len(out):
        counts = {d: int((out.levels == d).sum()) for d in rt.levels}
        share = ", ".join(f"{d}: {c}" for d, c in counts.items() if c)
        engine = "cascade.onnx" if rt.engine == "graph" else "one session per level"
        click.echo(f"{len(out)} rows answered by level ({share}); engine: {engine}")


def _read_lines(path_text: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    from pathlib import Path

    from matryoshka.errors import DataError, MissingArtifactError

    path = Path(path_text)
    if not path.is_file():
        raise MissingArtifactError(f"input file not found: {path}")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte {e.start}); convert it, e.g. with "
                        "iconv -f latin1 -t utf-8") from None
    if not lines:
        raise DataError(f"{path} holds no text (every line is blank)")
    return lines


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
