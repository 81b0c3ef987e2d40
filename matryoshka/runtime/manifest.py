"""The export folder's manifest.json: its schema, reading and checking it, and committing a new
one (the folder's single commit point).

docs/design.md, "The export folder". numpy-free, standard
library only. Readers call `read_manifest`; writers work inside `manifest_writer` and end
with `commit_manifest`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from matryoshka.errors import ArtifactError, MissingArtifactError
from matryoshka.io import (
    read_json_object,
    sha256_bytes,
    sha256_file,
    write_json_atomic,
    writer_lock,
)
from matryoshka.runtime.plan import check_plan

# 2: a level is named (`name`; a trained level by its width, a Mix'n'Match sub-model by the
# user) and may carry its `spec`; levels are ordered by FLOPs. Version 1 (levels by `dim`
# alone, strictly increasing) is still read: each level is named by its width.
SCHEMA_VERSION = 2
READS = (1, 2)
MANIFEST = "manifest.json"
VARIANTS = ("fp32", "int8", "auto")  # the graph sets a folder may hold, and "auto": the plan
DTYPES = ("float32", "int64")
BARE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Files the exporter and calibrate write; only these are ever deleted by a writer.
GRAPH_FILE = re.compile(r"^((level-(\d{4,}|[A-Za-z][A-Za-z0-9_]*)|cascade)(-[0-9a-f]{8,64})?"
                        r"(\.[a-z0-9]+)?\.onnx|tokenizer(-[0-9a-f]{8,64})?\.json"
                        r"|cascade(-[0-9a-f]{8,64})?(\.[a-z0-9]+)?\.(ort|required_operators"
                        r"\.config))$")
# A trained level is named by its width; a mix by a letter, then letters, digits or '_'.
LEVEL_NAME = re.compile(r"^(\d+|[A-Za-z][A-Za-z0-9_]{0,31})$")
TOKENIZER_FILE = "tokenizer.json"
FLOPS_TERMS = ("per_token", "per_pair", "per_sample")


def level_file(name: str | int, variant: str = "fp32", tag: str | None = None) -> str:
    """'level-0064.onnx' for the fp32 graph of level '64', 'level-mid.int8.onnx' for the int8
    graph of the mix 'mid'; a tag (a short sha256) makes a second name while the first is still
    named by the committed manifest."""
    name = str(name)
    stem = (f"level-{int(name):04d}" if name.isdigit() else f"level-{name}") + \
        (f"-{tag}" if tag else "")
    return f"{stem}.onnx" if variant == "fp32" else f"{stem}.{variant}.onnx"


def cascade_file(variant: str = "fp32") -> str:
    """'cascade.onnx' for the fp32 cascade graph, 'cascade.int8.onnx' for the int8 one."""
    return "cascade.onnx" if variant == "fp32" else f"cascade.{variant}.onnx"


def level_flops(entry: dict, length: int | None = None) -> float:
    """FLOPs of one sample through a level, at `length` tokens (None: the full length the
    exporter counted). Attention's scores and context grow with length**2, the rest with
    length; an export without the `flops` terms (schema before them) gives the full length."""
    terms = entry.get("flops")
    if length is None or terms is None:
        return float(entry["flops_per_sample"])
    return float(terms["per_token"] * length + terms["per_pair"] * length**2
                 + terms["per_sample"])


def read_manifest(folder: str | Path) -> dict:
    """Load and check manifest.json of an export folder.

    >>> read_manifest("artifacts/demo/export")["levels"][0]["name"]  # doctest: +SKIP
    '64'
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise MissingArtifactError(f"export folder not found: {folder}; make one with: "
                                   "mexport --levels 64,128,256,512")
    if not path.is_file():
        raise MissingArtifactError(f"{folder} has no {MANIFEST}; is it an export folder?")
    manifest = read_json_object(path)
    check_manifest(manifest, path)
    return upgrade(manifest)


def check_manifest(m: dict, path: str | Path = MANIFEST) -> None:
    """Raise ArtifactError naming the first field of `m` that a reader could not trust."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {what}")

    version = m.get("schema_version")
    if version not in READS or isinstance(version, bool):
        raise ArtifactError(f"{path} has schema_version {version!r}; this matryoshka reads "
                            f"versions {', '.join(map(str, READS))}")
    for key in ("input", "output", "levels", "model"):
        if not isinstance(m.get(key), list if key == "levels" else dict):
            raise bad(f"the {key!r} section is missing or not a "
                      f"{'list' if key == 'levels' else 'JSON object'}")
    _check_input(m["input"], bad)
    shape = m["output"].get("shape")
    if not (isinstance(shape, list) and shape and _positive_int(shape[-1])):
        raise bad("output.shape must be a list ending in the number of classes")
    if not m["levels"]:
        raise bad("lists no levels")
    dims, names, flops_order = [], [], []
    for i, lv in enumerate(m["levels"]):
        if not isinstance(lv, dict):
            raise bad(f"levels[{i}] is not a JSON object")
        if not _positive_int(lv.get("dim")):
            raise bad(f"levels[{i}].dim must be a positive integer; got {lv.get('dim')!r}")
        if version >= 2:
            _check_level_name(lv, i, bad)
            names.append(lv["name"])
        _check_file_entry(lv, f"levels[{i}]", bad)
        if "int8" in lv:
            _check_file_entry(lv["int8"], f"levels[{i}].int8", bad)
        flops = lv.get("flops_per_sample")
        if not (_number(flops) and flops > 0):
            raise bad(f"levels[{i}].flops_per_sample must be a positive number")
        terms = lv.get("flops")
        if terms is not None and not (isinstance(terms, dict) and all(
                _number(terms.get(t)) and terms[t] >= 0 for t in FLOPS_TERMS)):
            raise bad(f"levels[{i}].flops must hold {', '.join(FLOPS_TERMS)} (numbers >= 0)")
        dims.append(lv["dim"])
        flops_order.append(flops)
    if version == 1 and any(b <= a for a, b in zip(dims, dims[1:])):
        raise bad(f"level dims must be strictly increasing; got {dims}")
    if len(set(names)) < len(names):
        raise bad(f"level names must be unique; got {names}")
    if any(b < a for a, b in zip(flops_order, flops_order[1:])):
        raise bad("levels must be ordered by flops_per_sample")
    if "tokenizer" in m:
        _check_file_entry(m["tokenizer"], "tokenizer", bad)
    labels = m["output"].get("labels")
    if labels is not None and not (isinstance(labels, list) and len(labels) == shape[-1]
                                   and all(isinstance(x, str) for x in labels)):
        raise bad(f"output.labels must be {shape[-1]} class names")
    _check_calibration(m.get("calibration"), [level_name(lv) for lv in m["levels"]], bad)
    _check_cascade(m.get("cascade"), [level_name(lv) for lv in m["levels"]], bad)
    check_plan(m.get("plan"), len(dims), bad)
    if m.get("plan") and any("int8" not in lv for lv, p in zip(m["levels"],
                                                                m["plan"]["precisions"])
                             if p == "int8"):
        raise bad("plan.precisions names int8 for a level without an int8 graph")


def _check_level_name(lv: dict, i: int, bad) -> None:
    name = lv.get("name")
    if not (isinstance(name, str) and LEVEL_NAME.match(name)):
        raise bad(f"levels[{i}].name must be a width or a letter then letters, digits or '_'; "
                  f"got {name!r}")
    if name.isdigit() and int(name) != lv["dim"]:
        raise bad(f"levels[{i}] is named {name} but has dim {lv['dim']}; a level named by a "
                  "width is that width")
    spec = lv.get("spec")
    if spec is None:
        return
    if not (isinstance(spec, dict) and spec.get("dim") == lv["dim"]
            and all(isinstance(spec.get(k), list) and spec[k]
                    and all(_positive_int(v) for v in spec[k]) for k in ("ffn", "heads"))
            and len(spec["ffn"]) == len(spec["heads"])):
        raise bad(f"levels[{i}].spec must hold the level's dim and one ffn width and one head "
                  "count per layer")


def level_name(entry: dict) -> str:
    """A level's name: its own (schema 2), or its width (schema 1)."""
    return entry.get("name") or str(entry["dim"])


def upgrade(m: dict) -> dict:
    """A checked manifest of an older schema in the current one (in memory): a version 1
    manifest names each level by its width. A writer commits the upgraded form."""
    if m["schema_version"] == 1:
        for lv in m["levels"]:
            lv["name"] = str(lv["dim"])
        m["schema_version"] = SCHEMA_VERSION
    return m


def _check_input(spec: dict, bad) -> None:
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad("input.name must be a non-empty string")
    if spec.get("dtype") not in DTYPES:
        raise bad(f"input.dtype must be one of {', '.join(DTYPES)}; got {spec.get('dtype')!r}")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) >= 2 and shape[0] == "batch"
            and all(isinstance(s, str) or _positive_int(s) for s in shape)):
        raise bad("input.shape must be a list like ['batch', 8, 8] (axis sizes or names)")


def _check_file_entry(entry, where: str, bad) -> None:
    if not isinstance(entry, dict):
        raise bad(f"{where} is not a JSON object")
    name = entry.get("file")
    if not (isinstance(name, str) and BARE_NAME.match(name) and name not in (".", "..")):
        raise bad(f"{where}.file must be a bare file name in the folder; got {name!r}")
    if not (isinstance(entry.get("sha256"), str) and SHA256.match(entry["sha256"])):
        raise bad(f"{where}.sha256 must be 64 lower-case hex digits")


def _check_calibration(cal, names: list[str], bad) -> None:
    if cal is None:
        return
    k = len(names)
    if not isinstance(cal, dict):
        raise bad("calibration must be a JSON object")
    for variant, rec in cal.items():
        where = f"calibration.{variant}"
        if not isinstance(rec, dict):
            raise bad(f"{where} is not a JSON object")
        temps = rec.get("temperatures")
        if not (isinstance(temps, list) and len(temps) == k
                and all(_number(t) and t > 0 for t in temps)):
            raise bad(f"{where}.temperatures must be {k} finite numbers > 0; got {temps!r}")
        cascade = rec.get("levels", names)  # the cascade's levels; before the list: all
        if not (isinstance(cascade, list) and cascade and all(c in names for c in cascade)
                and [n for n in names if n in cascade] == cascade):
            raise bad(f"{where}.levels must list levels of the export, in its order")
        thr = rec.get("thresholds")
        if thr is not None and not (isinstance(thr, list) and len(thr) == len(cascade) - 1
                                    and all(_number(t) and 0 <= t <= 1 for t in thr)):
            raise bad(f"{where}.thresholds must be null or {len(cascade) - 1} numbers in "
                      f"[0, 1]; got {thr!r}")
        graphs = rec.get("graphs")
        if graphs is not None and not (isinstance(graphs, list) and len(graphs) == k and all(
                isinstance(g, str) and SHA256.match(g) for g in graphs)):
            raise bad(f"{where}.graphs must list the sha256 of the {k} graphs it was fitted on")


def _check_cascade(cascade, names: list[str], bad) -> None:
    """`cascade`: variant -> the entry of its cascade graph (file, sha256, the levels it runs
    in order, and the default thresholds and temperatures stored in it)."""
    if cascade is None:
        return
    if not isinstance(cascade, dict):
        raise bad("cascade must be a JSON object")
    for variant, entry in cascade.items():
        where = f"cascade.{variant}"
        _check_file_entry(entry, where, bad)
        for key in ("ort", "ort_config"):
            if key in entry:
                _check_file_entry(entry[key], f"{where}.{key}", bad)
        levels = entry.get("levels")
        if not (isinstance(levels, list) and levels and all(n in names for n in levels)
                and [n for n in names if n in levels] == levels):
            raise bad(f"{where}.levels must list levels of the export, in its order")
        for key, k in (("thresholds", len(levels) - 1), ("temperatures", len(levels))):
            v = entry.get(key)
            if not (isinstance(v, list) and len(v) == k and all(_number(t) for t in v)):
                raise bad(f"{where}.{key} must be {k} numbers")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# -- writing -----------------------------------------------------------------------------------
def named_files(manifest: dict | None) -> dict[str, str]:
    """Every file the manifest names, with its sha256."""
    named = {}
    manifest = manifest or {}
    for lv in manifest.get("levels", []):
        for entry in (lv, lv.get("int8")):
            if entry:
                named[entry["file"]] = entry["sha256"]
    if manifest.get("tokenizer"):
        named[manifest["tokenizer"]["file"]] = manifest["tokenizer"]["sha256"]
    for entry in (manifest.get("cascade") or {}).values():
        for e in (entry, entry.get("ort"), entry.get("ort_config")):
            if e:
                named[e["file"]] = e["sha256"]
    return named


def free_name(plain: str, sha256: str, named: dict[str, str]) -> str:
    """`plain` unless the committed manifest names it for other bytes, then `plain` tagged
    with the new bytes' sha256 ('level-0064-1a2b3c4d.onnx'): a writer never overwrites a file
    that the committed manifest names. A name already holding these bytes is reused."""
    stem, dot, rest = plain.partition(".")
    for tag in ("", f"-{sha256[:8]}", f"-{sha256}"):
        name = f"{stem}{tag}{dot}{rest}"
        if named.get(name, sha256) == sha256:
            return name
    raise ArtifactError(f"no free file name for {plain}")  # pragma: no cover


def install(folder: Path, tmp: Path, plain: str, named: dict[str, str]) -> dict:
    """Give a finished temp file its final name (`free_name` of `plain`) and return its
    manifest entry: file, sha256, bytes. When the committed manifest already names that file,
    it holds these very bytes, and it is left untouched."""
    sha, size = sha256_file(tmp), tmp.stat().st_size
    name = free_name(plain, sha, named)
    if name in named:
        tmp.unlink()
    else:
        os.replace(tmp, folder / name)
    return {"file": name, "sha256": sha, "bytes": size}


@contextlib.contextmanager
def manifest_writer(folder: str | Path, replace: bool = False) -> Iterator[dict | None]:
    """Hold the folder's writer lock and yield its committed manifest (None if it has none).

    Graph files that the committed manifest does not name are a dead writer's and are removed
    on entry, like its temp files. replace=True (a new export over the folder) also accepts
    an unreadable manifest, which the new one will replace, as None.
    """
    folder = Path(folder)
    with writer_lock(folder):
        try:
            current = read_manifest(folder) if (folder / MANIFEST).exists() else None
        except ArtifactError:
            if not replace:
                raise
            yield None
            return
        remove_unnamed(folder, current)
        try:
            yield current
        except BaseException:
            _remove_uncommitted(folder)
            raise


def _remove_uncommitted(folder: Path) -> None:
    """After a failed writer: delete the graphs it installed for a commit that never came.
    What is kept is read from the manifest on disk, not from the writer's copy, which it
    changed in place (and which may name new files and no longer the committed ones), and
    which a writer that committed and then failed has already replaced."""
    try:
        on_disk = read_manifest(folder) if (folder / MANIFEST).exists() else None
    except (ArtifactError, OSError):
        return  # nothing to tell the committed files from the new ones: keep them all
    remove_unnamed(folder, on_disk)


def commit_manifest(folder: str | Path, manifest: dict) -> None:
    """Check and atomically replace manifest.json (the commit), then delete the graph files
    that it no longer names. Call inside `manifest_writer`."""
    folder = Path(folder)
    check_manifest(manifest, folder / MANIFEST)
    missing = [n for n in named_files(manifest) if not (folder / n).is_file()]
    if missing:
        raise ArtifactError(f"refusing to commit a manifest that names missing files: {missing}")
    write_json_atomic(folder / MANIFEST, manifest)
    remove_unnamed(folder, manifest)


def remove_unnamed(folder: Path, manifest: dict | None) -> None:
    """Delete the graph files that `manifest` does not name."""
    keep = named_files(manifest)
    for p in folder.iterdir():
        if GRAPH_FILE.match(p.name) and p.name not in keep and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def read_named(folder: Path, entry: dict) -> bytes:
    """The file a manifest entry names, read once and checked against its sha256."""
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingArtifactError(f"{path.name} named by the manifest is missing from "
                                   f"{folder}") from None
    if sha256_bytes(data) != entry["sha256"]:
        raise ArtifactError(f"{path.name} does not match the sha256 in manifest.json; the "
                            "file is corrupt or was changed after export")
    return data
