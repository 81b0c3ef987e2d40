"""The cascade graphs of an export folder (cascade.onnx, cascade.int8.onnx, cascade.auto.onnx):
what each must hold, building and checking it, and installing it before a writer's commit.

docs/design.md, "The cascade as one graph" and "The export folder". Every writer (mexport,
calibrate, tune) calls `refresh_cascades` on its new manifest just before the commit: a graph
whose levels, weights, thresholds and temperatures are unchanged is kept as it is; any other
is rebuilt from the level graphs the manifest names, checked against the levels engine bit for
bit, and installed under a name the committed manifest does not use.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from matryoshka.errors import ValidationError
from matryoshka.folder.cascade import IR_VERSION, LevelGraph, build_cascade
from matryoshka.io import temp_path, writing
from matryoshka.logs import quiet_root_logger
from matryoshka.runtime.cascade import concat, run_cascade
from matryoshka.runtime.manifest import (
    SCHEMA_VERSION,
    VARIANTS,
    cascade_file,
    commit_manifest,
    install,
    level_name,
    named_files,
    read_named,
)
from matryoshka.runtime.providers import session_options
from matryoshka.runtime.runtime import CHUNK_ROWS, Runtime

log = logging.getLogger(__name__)
CHECK_ROWS = 512  # rows of real data each new graph is checked on, at most
# ...and at most this many FLOPs of its largest level over them (the check runs each of its
# threshold vectors through the graph and the levels engine: 512 MiniLM rows took 2 min a
# variant on a 2-core CPU, for every export and calibrate), but never fewer than MIN_CHECK_ROWS
CHECK_FLOPS = 2e11
MIN_CHECK_ROWS = 64
RANDOM_VECTORS = 5
# mexport --ort: each cascade's manifest entry key and file suffix (cascade.ort, ...)
ORT_FILES = (("ort", ".ort"), ("ort_config", ".required_operators.config"))


def wanted(manifest: dict, variant: str) -> dict | None:
    """What the variant's cascade graph must hold for this manifest: the levels it runs, its
    default thresholds and temperatures, and the sha256 of each level graph it is built from;
    None when the export has no graphs of this variant (no INT8 everywhere, no plan).

    Calibrated thresholds come from the variant's calibration; without certified ones the
    defaults are 1.0, which sends every row to the largest level, as the runtime does.
    """
    levels = manifest["levels"]
    names = [level_name(lv) for lv in levels]
    if variant == "int8" and any("int8" not in lv for lv in levels):
        return None
    plan = manifest.get("plan")
    if variant == "auto" and not plan:
        return None
    precisions = plan["precisions"] if variant == "auto" else [variant] * len(levels)
    graphs = [lv["sha256"] if p == "fp32" else lv["int8"]["sha256"]
              for lv, p in zip(levels, precisions)]
    cal = (manifest.get("calibration") or {}).get(variant)
    if cal is not None and cal.get("graphs") not in (None, graphs):
        cal = None  # fitted on other graphs: the runtime refuses it, so the graph ignores it
    temps_all = list(cal["temperatures"]) if cal else [1.0] * len(names)
    if cal and cal.get("thresholds") is not None:
        cascade = list(cal.get("levels", names))
        thresholds = [float(t) for t in cal["thresholds"]]
    else:
        cascade, thresholds = names, [1.0] * (len(names) - 1)
    pick = [names.index(n) for n in cascade]
    return {"levels": cascade, "thresholds": thresholds,
            "temperatures": [float(temps_all[i]) for i in pick],
            "graphs": [graphs[i] for i in pick], "calibrated": bool(cal and cal.get(
                "thresholds") is not None)}


def refresh_cascades(folder: Path, manifest: dict, named: dict[str, str],
                     x: np.ndarray) -> None:
    """Bring manifest["cascade"] (in memory) up to date: keep each graph that still holds what
    it must, build and install the others (checked on `x`), drop those of variants gone."""
    current = manifest.get("cascade") or {}
    fresh = {}
    for variant in VARIANTS:
        want = wanted(manifest, variant)
        if want is None:
            continue
        old = current.get(variant)
        if old is not None and all(old.get(key) == value for key, value in want.items()):
            fresh[variant] = old
        else:
            fresh[variant] = _build(folder, manifest, variant, want, named, x)
        if (manifest.get("exporter") or {}).get("ort") and "ort" not in fresh[variant]:
            fresh[variant] = {**fresh[variant], **_to_ort(folder, variant, fresh[variant], named)}
    manifest["cascade"] = fresh


def _build(folder: Path, manifest: dict, variant: str, want: dict, named: dict[str, str],
           x: np.ndarray) -> dict:
    entries = {level_name(lv): lv for lv in manifest["levels"]}
    graphs = []
    for name, sha in zip(want["levels"], want["graphs"]):
        lv = entries[name]
        entry = lv if lv["sha256"] == sha else lv["int8"]
        graphs.append(LevelGraph(name, int(lv["dim"]),
                                 onnx.load_from_string(read_named(folder, entry))))
    cal = (manifest.get("calibration") or {}).get(variant) or {}
    meta = {
        "matryoshka.graph": "cascade", "matryoshka.variant": variant,
        "matryoshka.levels": ",".join(want["levels"]),
        "matryoshka.widths": ",".join(str(g.dim) for g in graphs),
        "matryoshka.thresholds": json.dumps(want["thresholds"]),
        "matryoshka.temperatures": json.dumps(want["temperatures"]),
        "matryoshka.guarantee": (cal.get("guarantee") if want["calibrated"] else
                                 "none: uncalibrated, every row answers at the largest level"),
        "matryoshka.input": json.dumps(manifest["input"], sort_keys=True),
        "matryoshka.classes": json.dumps(list(manifest["output"].get("labels") or [])),
        "matryoshka.tokenizer_sha256": (manifest.get("tokenizer") or {}).get("sha256", ""),
        "matryoshka.schema_version": SCHEMA_VERSION,
    }
    model = build_cascade(graphs, want["thresholds"], want["temperatures"], meta)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    plain = cascade_file(variant)
    opset = next(o.version for o in model.opset_import if o.domain == "")
    log.info("%s: %d bytes, %.3fx the largest level's graph", plain, len(data),
             len(data) / max(1, graphs[-1].model.ByteSize()))
    del model, graphs  # every level's weights, twice over: not held while the check runs
    largest = entries[want["levels"][-1]].get("flops_per_sample") or 0
    check_cascade(data, Runtime.from_manifest(folder, manifest, device="cpu", preload=False,
                                              variant=variant), want, x, plain,
                  rows=check_row_count(largest))
    tmp = temp_path(folder, plain)
    with writing(tmp):
        tmp.write_bytes(data)
    return {**install(folder, tmp, plain, named), **want, "ir_version": IR_VERSION,
            "opset": opset}


def _to_ort(folder: Path, variant: str, entry: dict, named: dict[str, str]) -> dict:
    """The graph in onnxruntime's ORT format, for mobile builds, and the operators config a
    reduced onnxruntime build needs to run it. Written as onnxruntime's converter
    (onnxruntime.tools.convert_onnx_models_to_ort, "Fixed" style) writes it, with every
    optimization but ConstantFolding: folding turns each level's Slice of a shared weight into
    a copy of its own, and the ORT file stores what the optimizer leaves (1.5x cascade.onnx on
    the MiniLM export). Unfolded, a branch slices its weights when it runs."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    stem = cascade_file(variant).removesuffix(".onnx")  # cascade, cascade.int8, cascade.auto
    with tempfile.TemporaryDirectory(prefix="matryoshka-ort-") as tmp, quiet_root_logger():
        src, made = Path(tmp) / f"{stem}.onnx", Path(tmp) / f"{stem}.ort"
        src.write_bytes(read_named(folder, entry))
        write_ort(src, made)
        tool_log = logging.getLogger("ort_format_model.utils")
        level = tool_log.level
        tool_log.setLevel(logging.WARNING)  # it logs a line per model at INFO
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                create_config_from_models([made], Path(tmp) / f"{stem}{ORT_FILES[1][1]}",
                                          enable_type_reduction=False)
        finally:
            tool_log.setLevel(level)
        out = {}
        for key, suffix in ORT_FILES:
            name = stem + suffix
            made = Path(tmp) / name
            if not made.is_file():
                raise ValidationError(f"onnxruntime's ORT converter did not write {name}")
            data = made.read_bytes()
            if key == "ort_config":  # it names the converted file by its temporary path
                data = data.replace(f"{tmp}/".encode(), b"")
            tmp_file = temp_path(folder, name)
            with writing(tmp_file):
                tmp_file.write_bytes(data)
            out[key] = install(folder, tmp_file, name, named)
    return out


def write_ort(src: Path, dst: Path, fold: bool = False) -> None:
    """`src` (an ONNX file) saved in the ORT format at `dst`, optimized as onnxruntime's
    converter does it ("Fixed" style, every optimization, NchwcTransformer's x86-only layouts
    left out), and, unless `fold`, without ConstantFolding, so that weights shared through
    Slices stay stored once; a branch that reads a whole stored tensor (the largest level's
    weights) then reads it directly, not through a Slice that would copy it on every run."""
    model = onnx.load(str(src))
    weight_only = dequantizes_weights_only(model)
    if not fold:
        read_whole_tensors(model)
        src = dst.with_name(dst.name + ".onnx")
        onnx.save(model, str(src))
    del model
    # weight8 is saved with its DequantizeLinear folded: onnxruntime's QDQ rewrite of a
    # DequantizeLinear->MatMul into MatMulNBits looks for the weight in the branch itself and
    # fails on a stored/ one
    so = session_options(None, fold_dequantize=weight_only)
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    disabled = ["NchwcTransformer"] + ([] if fold else ["ConstantFolding"])
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=disabled)


def dequantizes_weights_only(model: onnx.ModelProto) -> bool:
    """Whether the graph (its branches included) dequantizes stored weights and quantizes no
    activation: weight8's int8 weights with fp32 compute, as providers.folds_dequantize."""
    ops: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    return "DequantizeLinear" in ops and not ops & {"QuantizeLinear", "DynamicQuantizeLinear"}


def read_whole_tensors(model: onnx.ModelProto) -> int:
    """In place: every Slice of a whole stored tensor (starts 0, ends its shape) removed, its
    readers reading the tensor itself. Returns how many. cascade.onnx keeps those Slices:
    onnxruntime folds them at load into an initializer the branch owns, which it prepacks as
    the level's own graph (bit-identical answers); an unfolded graph would copy the tensor."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    values = {i.name: onnx.numpy_helper.to_array(i).tolist()
              for i in model.graph.initializer if i.name.startswith("slice/")}
    rename: dict[str, str] = {}

    def whole(node: onnx.NodeProto) -> bool:
        return (node.op_type == "Slice" and len(node.input) == 3 and node.input[0] in shapes
                and values.get(node.input[1]) == [0] * len(shapes[node.input[0]])
                and values.get(node.input[2]) == shapes[node.input[0]])

    def walk(graph: onnx.GraphProto) -> None:
        keep = []
        for node in graph.node:
            if whole(node):
                rename[node.output[0]] = node.input[0]
                continue
            keep.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
        del graph.node[:]
        graph.node.extend(keep)

    def relink(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    relink(attr.g)

    walk(model.graph)
    relink(model.graph)
    return len(rename)


def settle_names(folder: Path, manifest: dict) -> None:
    """After a commit: give each cascade file that a commit left under a tagged name
    (cascade-1a2b3c4d.onnx, while cascade.onnx still held the graph it replaced) its plain
    name again, so that an application always finds cascade.onnx. A hard link (or a copy)
    under the plain name, then a second commit, which deletes the tagged file. Call inside
    `manifest_writer`, after `commit_manifest`."""
    named = named_files(manifest)
    changed = False
    for variant, entry in (manifest.get("cascade") or {}).items():
        stem = cascade_file(variant).removesuffix(".onnx")
        for key, suffix in ((None, ".onnx"), *ORT_FILES):
            plain = stem + suffix
            e = entry if key is None else entry.get(key)
            if not e or e["file"] == plain or plain in named:
                continue
            tmp = temp_path(folder, plain)
            with writing(tmp):
                try:
                    os.link(folder / e["file"], tmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(folder / e["file"], tmp)
            os.replace(tmp, folder / plain)
            e["file"] = plain
            changed = True
    if changed:
        commit_manifest(folder, manifest)


def check_row_count(flops_per_sample: float) -> int:
    """Rows a new cascade graph is checked on: CHECK_ROWS, fewer where its largest level costs
    more than CHECK_FLOPS over them, never under MIN_CHECK_ROWS."""
    fit = int(CHECK_FLOPS // max(float(flops_per_sample), 1.0))
    return max(MIN_CHECK_ROWS, min(CHECK_ROWS, fit))


def check_cascade(data: bytes, rt: Runtime, want: dict, x: np.ndarray, name: str,
                  rows: int = CHECK_ROWS, random: int = RANDOM_VECTORS, seed: int = 0) -> int:
    """Run the graph `data` against the levels engine of `rt` on up to `rows` rows of x: at
    its defaults, all 0, all 1, `random` random vectors, and the tie vectors (`tie_vectors`).
    Labels and levels must be equal row for row, and probs and confidences bit for bit, or
    ValidationError. Returns the number of vectors run."""
    levels, temps = want["levels"], np.asarray(want["temperatures"], np.float32)
    session = ort.InferenceSession(data, _quiet(rt.cascade_folds_dequantize(levels)),
                                   providers=["CPUExecutionProvider"])  # as the runtime loads it
    x = x[:rows]
    k = len(levels)
    vectors = [None, [0.0] * (k - 1), [1.0] * (k - 1)]
    rng = np.random.default_rng(seed)
    vectors += [rng.uniform(0.3, 1.0, k - 1).tolist() for _ in range(random)]
    vectors += tie_vectors(rt, x, levels, temps, rng)
    names = [o.name for o in session.get_outputs()]
    for thr in vectors:
        feed = {}
        if thr is not None:
            feed["thresholds"] = np.asarray(thr, np.float32)
            feed["temperatures"] = temps
        # in chunks of rows, both sides: every output is per row, and the memory stays that
        # of a chunk (a session's arena keeps its largest run)
        parts = [session.run(None, {**feed, "x": x[i:i + CHUNK_ROWS]})
                 for i in range(0, len(x), CHUNK_ROWS)]
        out = {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}
        used = want["thresholds"] if thr is None else [float(np.float32(t)) for t in thr]
        ref = concat([run_cascade(x[i:i + CHUNK_ROWS], levels, used, temps.tolist(),
                                  rt.run_level) for i in range(0, len(x), CHUNK_ROWS)])
        got = np.asarray(levels)[out["level_index"]]
        same = (np.array_equal(out["labels"], ref.labels) and np.array_equal(got, ref.levels)
                and np.array_equal(out["probs"], ref.probs)
                and np.array_equal(out["confidence"], ref.confidence))
        if not same:
            off = np.abs(out["probs"] - ref.probs).max(axis=1)
            at = sorted(set(ref.levels[off > 0].tolist()))
            raise ValidationError(
                f"{name} disagrees with the levels engine at thresholds {used}: "
                f"{int((out['labels'] != ref.labels).sum())} label(s) and "
                f"{int((got != ref.levels).sum())} level(s) differ, max |probs diff| "
                f"{float(off.max()):.2e} in {int((off > 0).sum())} row(s) answered at level(s) "
                f"{', '.join(at)}")
    return len(vectors)


def tie_vectors(rt: Runtime, x: np.ndarray, levels: list[str], temps: np.ndarray,
                rng: np.random.Generator) -> list[list[float]]:
    """Thresholds equal, in float32, to the confidence of a real row at their level, which
    must then escalate (strictly greater answers): one vector per level but the last (the
    others random), one with every level tied, and one that sends only the least confident
    row(s) on, through every level (a level run on a single row is where a weight that is not
    prepacked shows)."""
    from matryoshka.runtime.softmax import softmax

    if not len(x) or len(levels) < 2:
        return []
    ties, least = [], 1.0
    for i, level in enumerate(levels[:-1]):
        conf = np.sort(softmax(rt.run_level_in_chunks(level, x), float(temps[i])).max(axis=1))
        ties.append(float(conf[len(conf) // 2]))  # a real float32 value, exact in float64
        least = float(conf[0]) if i == 0 else least
    out = []
    for i, tie in enumerate(ties):
        thr = rng.uniform(0.3, 1.0, len(ties))
        thr[i] = tie
        out.append(thr.tolist())
    return out + [ties, [least] + [1.0] * (len(ties) - 1)]


def _quiet(fold_dequantize: bool = False) -> ort.SessionOptions:
    opts = session_options(None, fold_dequantize)  # weight8: providers.folds_dequantize
    opts.log_severity_level = 3  # thresholds/temperatures are initializers and inputs: a warning
    return opts


def commit(folder: Path, manifest: dict, named: dict, rows, refresh: bool = True) -> None:
    """The end of every writer's transaction (mexport, calibrate, tune, bundle), inside its
    `manifest_writer`: the cascade files the new manifest needs, built and checked on `rows`
    (`refresh_cascades`; `named`: the files the committed manifest names), then the manifest
    committed, then each cascade file given its plain name (`settle_names`). `refresh=False`
    for a writer that leaves the cascades to a later writer."""
    if refresh:
        refresh_cascades(folder, manifest, named, rows)
    commit_manifest(folder, manifest)
    settle_names(folder, manifest)
