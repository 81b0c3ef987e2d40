"""`matryoshka predict`: run an export on arrays (or texts) without torch."""

from __future__ import annotations

from collections.abc import Iterator

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

      matryoshka predict artifacts/minilm-demo/export --text "WIN a FREE cruise!!!" --text "lunch?"
    """
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
    output = _Output(rt, as_json)
    if input_npy:
        output.add(rt.predict(_load_array(input_npy, key), level=level, thresholds=thr))
    elif texts:
        output.add(rt.predict(list(texts), level=level, thresholds=thr))
    else:  # streamed: one window of lines is read, tokenized and answered at a time
        for out in rt.predict_texts(_read_lines(input_file), level=level, thresholds=thr):
            output.add(out)
    output.close()


class _Output:
    """The table (printed row by row, as the answers come) or the JSON object (written at
    the end, a slice at a time) of `matryoshka predict`: its memory is a few bytes a row."""

    def __init__(self, rt, as_json: bool):
        self.rt, self.as_json, self.n, self.headed = rt, as_json, 0, False
        self.names = rt.class_names
        self.parts: list[tuple] = []  # JSON: (labels, levels, confidence) of each chunk
        self.counts = dict.fromkeys(rt.levels, 0)
        self.width = max([5] + [len(n) for n in self.names])

    def add(self, out) -> None:
        if self.as_json:
            self.parts.append((out.labels, out.levels, out.confidence))
            return
        self._header()
        lines = [f"{self.n + i:>5} {self.names[lab]:>{self.width}} {lev:>6} {conf:>11.4f}"
                 for i, (lab, lev, conf) in enumerate(zip(out.labels, out.levels,
                                                          out.confidence))]
        if lines:
            click.echo("\n".join(lines))
        for d in self.counts:
            self.counts[d] += int((out.levels == d).sum())
        self.n += len(out)

    def close(self) -> None:
        if self.as_json:
            self._write_json()
            return
        self._header()
        if self.n == 0:
            return
        share = ", ".join(f"{d}: {c}" for d, c in self.counts.items() if c)
        engine = "cascade.onnx" if self.rt.engine == "graph" else "one session per level"
        click.echo(f"{self.n} rows answered by level ({share}); engine: {engine}")

    def _header(self) -> None:
        if not self.headed:
            click.echo(f"{'row':>5} {'label':>{self.width}} {'level':>6} {'confidence':>11}")
            self.headed = True

    def _write_json(self) -> None:
        import json

        def field(key: str, values) -> None:
            click.echo(f"{json.dumps(key)}: [", nl=False)
            first = True
            for chunk in values:
                if chunk:
                    click.echo(("" if first else ", ") + json.dumps(chunk)[1:-1], nl=False)
                    first = False
            click.echo("], ", nl=False)

        click.echo("{", nl=False)
        field("labels", (p[0].tolist() for p in self.parts))
        field("label_names", ([self.names[i] for i in p[0]] for p in self.parts))
        field("levels", (p[1].tolist() for p in self.parts))
        field("confidence", ([round(float(c), 6) for c in p[2]] for p in self.parts))
        tail = {"engine": self.rt.engine, "providers": self.rt.active_providers()}
        click.echo(json.dumps(tail, allow_nan=False)[1:])


def _read_lines(path_text: str) -> Iterator[str]:
    """The non-blank lines of a UTF-8 text file, read lazily (a file of any size is held a
    window at a time); the errors name the line."""
    from pathlib import Path

    from matryoshka.errors import not_a_file

    path = Path(path_text)
    if not path.is_file():  # checked now, before the first line is asked for
        raise not_a_file(path, "input file")
    return _lines(path)


def _lines(path) -> Iterator[str]:
    from matryoshka.errors import DataError

    with open(path, "rb") as f:  # bytes: a decoding error can name its line
        found = False
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 (line {number}, byte {e.start}); convert "
                                "it, e.g. with iconv -f latin1 -t utf-8") from None
            if line.strip():
                found = True
                yield line
    if not found:
        raise DataError(f"{path} holds no text (every line is blank)")


def _load_array(path_text: str, key: str | None):
    """A .npy array, or one array of an .npz archive; never a pickle."""
    import zipfile
    from pathlib import Path

    import numpy as np

    from matryoshka.errors import DataError, not_a_file

    path = Path(path_text)
    if not path.is_file():
        raise not_a_file(path, "input file")
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
