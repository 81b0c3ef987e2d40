"""`matryoshka bundle`: what one device ships. A self-contained export folder cut from an
export: the levels the device can afford (named, or the largest prefix that fits a budget) in
one precision per level, the tokenizer, a `cascade.onnx` over those levels, and a manifest of
its own whose thresholds are certified for that very level set. docs/bundle.md.

A bundle holds one graph set: each level entry names the graph the device runs (`file`,
with its `precision`, fp32 or int8), and the manifest lists it, and its cascade and
calibration, under the default key "fp32", so that `Runtime.open`, `predict`, `bench` and the
JS examples open a bundle as they open an export, at their defaults.

The folder is built beside --out and renamed into place when it is whole (`io.atomic_dir`):
a bundle interrupted at any point, even by kill -9, is absent, and a --force over an old one
leaves the old one or the new one.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from matryoshka.calibration import calibrate
from matryoshka.data.source import for_export
from matryoshka.errors import ConfigError, MatryoshkaError, ValidationError
from matryoshka.folder.cascade import LevelGraph, build_cascade
from matryoshka.folder.cascades import commit, write_ort
from matryoshka.int8_check import check_entry
from matryoshka.io import atomic_dir, check_out_dir, sha256_file, writer_lock
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import (
    MANIFEST,
    VARIANTS,
    level_file,
    level_name,
    manifest_writer,
    read_manifest,
    read_named,
)

log = logging.getLogger(__name__)
MB = 1_000_000  # the sizes the CLI prints and --max-mb takes are decimal megabytes
# what a bundle's manifest may grow by between the estimate and the commit (the calibration
# record of a recertified level set, the cascade entry)
MANIFEST_SLACK = 16_384
PROBE_ROWS = 64  # synthetic rows the cascade is checked on when the export's data is gone


@dataclass(frozen=True)
class Bundle:
    folder: Path
    levels: list[str]
    precisions: list[str]
    variant: str  # the export's graph set the levels were taken from
    files: dict[str, int]  # every file of the bundle, with its bytes
    recertified: bool
    calibration: dict | None  # the bundle's certified record, None when uncalibrated

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def bundle(export_dir: str | Path, out: str | Path, levels: str | list[str] | None = None,
           max_mb: float | None = None, variant: str | None = None, data: str | None = None,
           ort_format: bool = False, force: bool = False, progress: bool = True) -> Bundle:
    """Write the bundle of `export_dir` to `out`; returns what it holds.

    levels: level names (a list, or comma-separated), or None for every level; max_mb: the
    largest prefix of the export's levels (cheapest first) whose bundle, every file counted,
    fits in this many MB. variant: fp32, int8 or auto (tune's plan) [auto where the export
    has a plan, else int8 where every level has an INT8 graph, else fp32]. data: to certify
    the thresholds again when the level set differs from the calibrated one [the data the
    export was made from]. ort_format: also write cascade.ort for mobile builds.

    >>> b = bundle("artifacts/demo/export", "artifacts/demo/phone", max_mb=5)  # doctest: +SKIP
    >>> b.levels, b.total_bytes                                               # doctest: +SKIP
    """
    export_dir, out = Path(export_dir), Path(out)
    if levels is not None and max_mb is not None:
        raise ConfigError("give --levels or --max-mb, not both")
    if max_mb is not None and not (isinstance(max_mb, (int, float)) and max_mb > 0):
        raise ConfigError(f"--max-mb must be a positive number of MB; got {max_mb!r}")
    source = read_manifest(export_dir)
    _check_places(export_dir, out)
    check_out_dir(out, force)
    variant = default_variant(source) if variant is None else variant
    precisions = _precisions(source, variant, export_dir)
    key = graph_set(source, variant)
    names = [level_name(lv) for lv in source["levels"]]
    if max_mb is not None:
        picked = _levels_within(export_dir, source, precisions, max_mb, ort_format)
    elif levels is not None:
        picked = _named(levels, names)
    else:
        picked = names
    cal = (source.get("calibration") or {}).get(key)
    certified = cal is not None and cal.get("thresholds") is not None
    recertify = certified and picked != names
    if recertify:  # before anything is written: the data must be at hand
        _check_data(export_dir, source, data, picked, cal)
    manifest = bundle_manifest(export_dir, source, picked, precisions, variant, ort_format)
    with _held(out), atomic_dir(out, force) as tmp:
        with manifest_writer(tmp) as _:
            for entry in [*manifest["levels"], manifest.get("tokenizer")]:
                if entry:  # read_named checks the bytes against the source's sha256
                    src = {**entry, "file": entry.pop("source_file", entry["file"])}
                    (tmp / entry["file"]).write_bytes(read_named(export_dir, src))
            rows = _rows_to_check(export_dir, source, data)
            for lv in manifest["levels"]:  # on this machine: a miss leaves no bundle
                if lv["precision"] == "int8":
                    lv["int8_check"] = check_entry(tmp, level_name(lv), lv,
                                                   lv.get("flops_per_sample") or 0, rows)
            commit(tmp, manifest, {}, rows, refresh=not recertify)
        if recertify:
            _recertify(tmp, data, cal, progress)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())
                 if p.is_file() and p.name != ".lock"}
        if max_mb is not None and sum(files.values()) > max_mb * MB:  # pragma: no cover
            raise ValidationError(f"the bundle came out at {sum(files.values()) / MB:.2f} MB, "
                                  f"over --max-mb {max_mb:g}: the size estimate was wrong")
        final = read_manifest(tmp)
    record = (final.get("calibration") or {}).get("fp32")
    return Bundle(out, picked, [lv["precision"] for lv in final["levels"]], variant, files,
                  recertify, record if record and record.get("thresholds") else None)


def is_bundle(manifest: dict) -> bool:
    """Whether the manifest is a bundle's: one graph set, each level naming its precision."""
    return "bundle" in manifest or any("precision" in lv for lv in manifest["levels"])


def graph_set(manifest: dict, variant: str) -> str:
    """The key of the manifest's calibration and cascade for `variant`: a bundle keeps its
    one graph set, whatever its precisions, under "fp32" (the runtime's default)."""
    return "fp32" if is_bundle(manifest) else variant


def default_variant(manifest: dict) -> str:
    """auto where `matryoshka tune` left a precision plan, else int8 where every level has
    an INT8 graph (a bundle: where every level's graph is INT8), else fp32."""
    if is_bundle(manifest):
        own = {lv.get("precision", "fp32") for lv in manifest["levels"]}
        return own.pop() if len(own) == 1 else "auto"
    if manifest.get("plan"):
        return "auto"
    if all("int8" in lv for lv in manifest["levels"]):
        return "int8"
    return "fp32"


def bundle_manifest(export_dir: Path, source: dict, picked: list[str], precisions: list[str],
                    variant: str, ort_format: bool) -> dict:
    """The bundle's manifest before its cascade is built: the picked levels, each naming the
    graph of its precision; the source's calibration of that variant where it was certified
    for exactly these levels; no plan (it timed graphs a bundle may not hold)."""
    m = copy.deepcopy(source)
    levels = []
    bundled = is_bundle(source)  # its levels already name their one graph and precision
    for lv, precision in zip(source["levels"], precisions):
        if level_name(lv) not in picked:
            continue
        new = {k: v for k, v in lv.items() if k != "int8"}
        new["source_file"] = lv["file"] if precision == "fp32" or bundled else lv["int8"]["file"]
        if precision == "int8" and not bundled:
            q = lv["int8"]
            new.update(file=q["file"], sha256=q["sha256"], bytes=q["bytes"],
                       int8_method=q.get("method"))
            new["accuracy"] = {**lv.get("accuracy", {}), "onnx": q.get("accuracy"),
                               "fp32": (lv.get("accuracy") or {}).get("onnx")}
            new.pop("parity", None)  # it measured the fp32 graph against torch
        new["precision"] = precision
        new["file"] = level_file(level_name(lv), precision)  # untagged: a fresh folder
        levels.append(new)
    m["levels"] = levels
    for key in ("plan", "cascade", "calibration"):
        m.pop(key, None)
    cal = (source.get("calibration") or {}).get(graph_set(source, variant))
    if cal is not None and picked == [level_name(lv) for lv in source["levels"]]:
        m["calibration"] = {"fp32": copy.deepcopy(cal)}
    m["exporter"] = {**(m.get("exporter") or {}), "ort": bool(ort_format)}
    m["bundle"] = {
        "source": str(export_dir.resolve()),
        "source_manifest_sha256": sha256_file(export_dir / MANIFEST),
        "variant": variant, "levels": list(picked),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return m


# -- choosing the levels -------------------------------------------------------------------------
def _precisions(source: dict, variant: str, export_dir: Path) -> list[str]:
    if variant not in VARIANTS:
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if is_bundle(source):  # one graph per level, of its own precision: kept as it is
        own = [lv.get("precision", "fp32") for lv in source["levels"]]
        other = [level_name(lv) for lv, p in zip(source["levels"], own) if p != variant]
        if variant != "auto" and other:
            raise ConfigError(f"--variant {variant}: the bundle {export_dir} holds level(s) "
                              f"{', '.join(other)} in {'int8' if variant == 'fp32' else 'fp32'}"
                              f" only; leave --variant out to keep each level's precision")
        return own
    if variant == "auto":
        if not source.get("plan"):
            raise ConfigError(f"--variant auto needs a precision plan; make one with: "
                              f"matryoshka tune {export_dir}")
        return list(source["plan"]["precisions"])
    if variant == "int8":
        missing = [level_name(lv) for lv in source["levels"] if "int8" not in lv]
        if missing:
            raise ConfigError(f"--variant int8: {export_dir} has no INT8 graph for level(s) "
                              f"{', '.join(missing)}; export with --quantize dynamic-pc-shared "
                              "or pick --variant fp32")
    return [variant] * len(source["levels"])


def _named(levels: str | list[str], names: list[str]) -> list[str]:
    asked = [s.strip() for s in levels.split(",")] if isinstance(levels, str) else list(levels)
    asked = [s for s in asked if s]
    if not asked:
        raise ConfigError("--levels names no level")
    unknown = [s for s in asked if s not in names]
    if unknown:
        raise ConfigError(f"--levels: no level {', '.join(unknown)} in this export (levels: "
                          f"{', '.join(names)})")
    return [n for n in names if n in asked]  # the export's order: cheapest first


def _levels_within(export_dir: Path, source: dict, precisions: list[str], max_mb: float,
         ort_format: bool) -> list[str]:
    """The longest prefix of the levels whose bundle fits in max_mb (every file counted)."""
    names = [level_name(lv) for lv in source["levels"]]
    sizes = []
    for k in range(len(names), 0, -1):
        size = estimate_bytes(export_dir, source, names[:k], precisions, ort_format)
        sizes.append((names[k - 1], size))
        if size <= max_mb * MB:
            return names[:k]
    raise ConfigError(f"--max-mb {max_mb:g} is below the smallest bundle: level {names[0]} "
                      f"alone takes {sizes[-1][1] / MB:.2f} MB")


def estimate_bytes(export_dir: Path, source: dict, picked: list[str], precisions: list[str],
                   ort_format: bool) -> int:
    """The bundle's size, never below what it will be: its level graphs and tokenizer as
    they are, its cascade graph built (uncalibrated: a calibrated one holds the same weights
    or fewer) and, with ort_format, converted; the manifest with room to grow."""
    m = bundle_manifest(export_dir, source, picked, precisions, "fp32", ort_format)
    total = sum(int(lv["bytes"]) for lv in m["levels"])
    total += int((m.get("tokenizer") or {}).get("bytes", 0))
    graphs = [LevelGraph(level_name(lv), int(lv["dim"]), onnx.load_from_string(
        read_named(export_dir, {**lv, "file": lv["source_file"]}))) for lv in m["levels"]]
    k = len(graphs)
    meta = {"matryoshka.guarantee": "x" * 200, "matryoshka.input": json.dumps(m["input"])}
    data = build_cascade(graphs, [1.0] * (k - 1), [1.0] * k, meta).SerializeToString()
    del graphs
    total += len(data) + len(json.dumps(m, indent=2)) + MANIFEST_SLACK
    if ort_format:
        total += _ort_bytes(data) + 4096  # and its operators config
    return total


def _ort_bytes(data: bytes) -> int:
    with tempfile.TemporaryDirectory(prefix="matryoshka-ort-") as tmp:
        src, made = Path(tmp) / "cascade.onnx", Path(tmp) / "cascade.ort"
        src.write_bytes(data)
        write_ort(src, made)
        return made.stat().st_size


# -- places, data, certification -----------------------------------------------------------------
def _check_places(export_dir: Path, out: Path) -> None:
    src, dst = export_dir.resolve(), out.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise ConfigError(f"--out {out} overlaps the export {export_dir}: a bundle is written "
                          "beside an export, never into or over it")


@contextlib.contextmanager
def _held(out: Path):
    """The writer lock of an export folder that --force replaces: wait for its writer."""
    if (out / MANIFEST).is_file():
        with writer_lock(out):
            yield
    else:
        yield


def _check_data(export_dir: Path, source: dict, data: str | None, picked: list[str],
                cal: dict) -> None:
    try:
        for_export(export_dir, source, data)
    except MatryoshkaError as e:
        raise ConfigError(
            f"the thresholds of {export_dir} are certified for levels "
            f"{', '.join(cal.get('levels') or [])}; a bundle of {', '.join(picked)} needs "
            f"them certified again, on the export's data, and {e}") from None


def _rows_to_check(export_dir: Path, source: dict, data: str | None) -> np.ndarray:
    """Rows to check the new cascade graph on: the export's validation split where its data
    is at hand, else synthetic rows of the input's shape (the check compares the graph with
    the levels engine row for row; any rows serve)."""
    spec = source["input"]
    try:
        dataset = for_export(export_dir, source, data)[0]
        return check_input(dataset["val"][0], spec)
    except MatryoshkaError as e:
        log.info("checking the cascade on synthetic rows: %s", e)
    rng = np.random.default_rng(0)
    if spec.get("kind") == "text":
        length = int(spec["max_len"])
        x = rng.integers(1, int(spec["vocab_size"]), (PROBE_ROWS, length), dtype=np.int64)
        ends = rng.integers(1, length + 1, PROBE_ROWS)
        x[np.arange(length)[None, :] >= ends[:, None]] = int(spec.get("pad_id", 0))
        return x
    shape = [PROBE_ROWS, *(int(s) for s in spec["shape"][1:])]
    return rng.standard_normal(shape).astype(np.float32)


def _recertify(folder: Path, data: str | None, cal: dict, progress: bool) -> None:
    """Certify the bundle's own level set with the parameters the export was certified with."""
    calibrate(folder, data=data, split=cal.get("split", "val"), target=cal["target"],
              epsilon=float(cal["epsilon"]), delta=float(cal["delta"]), variant="fp32",
              progress=progress)
