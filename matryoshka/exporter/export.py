"""mexport: one validated, standalone ONNX graph per nesting level, plus manifest.json.

docs/design.md, "The export folder" and "Conventions". The folder is
written in place under its writer lock: each graph under a name the committed manifest does
not use, then manifest.json (the commit), then the files no manifest names any more are
deleted. A failure at any point leaves the previous export whole.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

from matryoshka import __version__
from matryoshka.data.source import as_input, class_names, resolve
from matryoshka.errors import ConfigError, DataError
from matryoshka.exporter.graph import input_spec, to_onnx
from matryoshka.exporter.validate import cpu_session, run_graph, validate_level
from matryoshka.folder.cascades import commit
from matryoshka.folder.shared_int8 import share_from_largest
from matryoshka.int8_check import check_int8_levels
from matryoshka.io import (
    LOCK,
    check_out_dir,
    make_dir,
    temp_path,
    writing,
)
from matryoshka.model import (
    Spec,
    check_mix_name,
    count_params,
    extract_level,
    flops_per_sample,
    flops_terms,
    validate_levels,
)
from matryoshka.model.checkpoint import checkpoint_sha256, checkpoint_tokenizer, load_checkpoint
from matryoshka.quantize import EXPORT_QUANTIZE, quantize_level
from matryoshka.runtime.manifest import (
    SCHEMA_VERSION,
    TOKENIZER_FILE,
    install,
    level_file,
    level_name,
    manifest_writer,
    named_files,
)
from matryoshka.runtime.records import BENCH_JSON, BENCH_MD
from matryoshka.runtime.text import load_tokenizer

log = logging.getLogger(__name__)
EXPORTER = "torchscript"
# LayerNormalization needs opset 17; torch's TorchScript exporter writes at most opset 20.
MIN_OPSET, MAX_OPSET = 17, 20


def check_export_levels(levels: tuple[int, ...], cfg) -> list[int]:
    """Validate the requested levels (widths, or head counts for an encoder nested by heads);
    return those that were not trained (to warn about)."""
    if cfg.nesting == "heads":
        for h in levels:
            cfg.spec(h)  # 1 .. n_heads, with a whole FFN width
        validate_levels(levels, 1, cfg.n_heads, trained=False)  # increasing
    else:
        validate_levels(levels, cfg.head_dim, cfg.d_model, trained=False)
    return [d for d in levels if d not in cfg.levels]


def plan_levels(cfg, levels: tuple[int, ...],
                mixes: list[tuple[str, Spec]]) -> list[tuple[str, int | Spec]]:
    """The levels to export as (name, level), ordered by FLOPs: each width named by itself,
    each Mix'n'Match spec checked against the trained granularities under its own name."""
    items: list[tuple[str, int | Spec]] = [(cfg.level_name(d), d) for d in levels]
    taken = {cfg.level_name(d): f"level {d}" for d in levels}
    own = {cfg.spec(d): cfg.level_name(d) for d in cfg.levels}
    for name, spec in mixes:
        check_mix_name(name, taken)
        spec = cfg.spec(spec)
        if spec in own:
            raise ConfigError(f"mix {name!r} ({spec}) is trained level {own[spec]} itself; "
                              "export it with --levels")
        twin = next((n for n, lv in items if lv == spec), None)
        if twin is not None:
            raise ConfigError(f"mixes {twin!r} and {name!r} have the same spec {spec}")
        taken[name] = f"mix {name!r}"
        items.append((name, spec))
    return sorted(items, key=lambda item: flops_per_sample(cfg, item[1]))


def export(checkpoint: str | Path, out: str | Path, levels: tuple[int, ...] | None = None,
           opset: int = 17, simplify: bool = True, atol: float = 1e-4, rtol: float = 1e-3,
           quantize: str = "none", force: bool = False, data: str | None = None,
           progress: bool = True, mixes: list[tuple[str, Spec]] | None = None,
           ort: bool = False) -> dict:
    """Export every level of a checkpoint to `out`, and each Mix'n'Match sub-model of
    `mixes` (name, Spec) as a level beside them; returns the manifest. Levels are ordered by
    FLOPs and named: a width by itself, a mix by its name.

    >>> manifest = export("artifacts/demo/checkpoint", "artifacts/demo/export",
    ...                   levels=(64, 128, 256, 512), force=True)  # doctest: +SKIP
    >>> [lv["file"] for lv in manifest["levels"]]  # doctest: +SKIP
    ['level-0064.onnx', 'level-0128.onnx', 'level-0256.onnx', 'level-0512.onnx']
    """
    if quantize not in EXPORT_QUANTIZE:
        raise ConfigError(f"--quantize must be one of {', '.join(EXPORT_QUANTIZE)}; got "
                          f"{quantize!r}")
    if atol < 0 or rtol < 0:
        raise ConfigError("--atol and --rtol must be non-negative")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset must be between {MIN_OPSET} (LayerNormalization) and "
                          f"{MAX_OPSET} (the newest the TorchScript exporter writes); got {opset}")
    out = check_out_dir(out, force)
    model, metrics = load_checkpoint(checkpoint)
    cfg = model.config
    levels = tuple(levels) if levels else cfg.levels
    for d in check_export_levels(levels, cfg):
        log.warning("level %d was not trained (trained: %s); its accuracy may be poor",
                    d, ",".join(map(str, cfg.levels)))
    items = plan_levels(cfg, levels, list(mixes or []))
    tokenizer_json = checkpoint_tokenizer(checkpoint, cfg)
    tokenizer = (None if tokenizer_json is None
                 else load_tokenizer(tokenizer_json, cfg.long_texts()))
    dataset, record = resolve(data, metrics.get("data") or "demo", tokenizer, cfg.pad_id)
    x_test, y_test = dataset["test"]
    x_test = as_input(x_test, cfg.input_kind)
    expected = tuple(input_spec(model)["shape"][1:])
    if cfg.input_kind == "image" and x_test.shape[1:] != expected:
        raise DataError(f"the data's samples are {x_test.shape[1:]}, the model takes {expected}")
    ck_sha = checkpoint_sha256(checkpoint)
    manifest = _manifest_head(model, checkpoint, ck_sha, record, opset, simplify)
    manifest["exporter"]["ort"] = bool(ort)
    manifest["output"]["labels"] = metrics.get("labels") or class_names(record, cfg.n_classes)
    created = not out.exists()
    make_dir(out)
    try:
        with manifest_writer(out, replace=True) as current:
            if current is not None and not force:  # another export won the race for the folder
                raise ConfigError(f"--out {out} already exists; pass --force to replace it")
            named = named_files(current)
            if tokenizer is not None:
                manifest["tokenizer"] = _install_tokenizer(out, tokenizer_json, tokenizer,
                                                           named)
            bar = tqdm(items, desc="export", unit="level", disable=None if progress else True,
                       leave=False)
            for name, level in bar:
                bar.set_postfix(level=name)
                entry = _export_level(model, name, level, items, out, named, opset, simplify,
                                      atol, rtol, x_test, y_test, ck_sha)
                entry["trained"] = level in cfg.levels
                key = str(level) if isinstance(level, int) else name  # metrics.json's key
                entry["accuracy"]["metrics_json"] = metrics.get("test_accuracy", {}).get(key)
                if quantize != "none":
                    entry["int8"] = _quantize(out, entry["file"], name, named, x_test, y_test,
                                              quantize.removesuffix("-shared"))
                manifest["levels"].append(entry)
            if quantize.endswith("-shared"):
                share_from_largest(out, manifest["levels"], named,
                                   lambda path: _acc(run_graph(cpu_session(path), x_test),
                                                     y_test))
            if quantize != "none":
                check_int8_levels(out, manifest["levels"], _check_split(dataset, cfg, x_test))
            commit(out, manifest, named, x_test)
            for name in (BENCH_JSON, BENCH_MD):  # they measured the graphs just replaced
                (out / name).unlink(missing_ok=True)
    except BaseException:
        if created:
            _remove_if_empty(out)
        raise
    return manifest


def _check_split(dataset, cfg, x_test: np.ndarray) -> np.ndarray:
    """The rows INT8 graphs are checked on: the validation split, else the test split."""
    x_val = dataset["val"][0] if "val" in dataset else []
    return as_input(x_val, cfg.input_kind) if len(x_val) else x_test


def _install_tokenizer(out: Path, data: bytes, tokenizer, named: dict[str, str]) -> dict:
    """Copy the checkpoint's tokenizer.json into the export; its manifest entry."""
    from matryoshka.data.tokenizer import tokenizer_info

    tmp = temp_path(out, TOKENIZER_FILE)
    with writing(tmp):
        tmp.write_bytes(data)
    return {**install(out, tmp, TOKENIZER_FILE, named), **tokenizer_info(tokenizer)}


def _remove_if_empty(out: Path) -> None:
    """Remove a folder this export made, when the failed export left only its lock in it."""
    try:
        if [p.name for p in out.iterdir()] == [LOCK]:
            (out / LOCK).unlink()
            out.rmdir()
    except OSError:
        pass


def _manifest_head(model, checkpoint, ck_sha, record: dict, opset, simplify) -> dict:
    import onnxsim

    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"matryoshka": __version__, "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnxsim": getattr(onnxsim, "__version__", "?"),
                     "python": platform.python_version()},
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": ck_sha},
        "data": record,
        "model": model.config.to_dict(),
        "input": input_spec(model),
        "output": {"name": "logits", "dtype": "float32",
                   "shape": ["batch", model.config.n_classes]},
        "exporter": {"name": EXPORTER, "opset": opset, "simplified": simplify},
        "levels": [],
    }


def _export_level(model, name: str, level: int | Spec, items, out: Path, named: dict[str, str],
                  opset, simplify, atol, rtol, x, y, ck_sha) -> dict:
    spec = model.config.spec(level)
    small = extract_level(model, spec).eval()
    tmp = temp_path(out, level_file(name))
    meta = {"matryoshka.level": [n for n, _ in items].index(name), "matryoshka.dim": spec.dim,
            "matryoshka.name": name, "matryoshka.spec": str(spec),
            "matryoshka.levels": ",".join(n for n, _ in items),
            "matryoshka.model": model.config.name, "matryoshka.checkpoint_sha256": ck_sha,
            "matryoshka.schema_version": SCHEMA_VERSION}
    to_onnx(small, tmp, opset, simplify, meta)
    parity, ort_logits, torch_logits = validate_level(model, spec, tmp, x, atol, rtol, name)
    same = float((ort_logits.argmax(-1) == torch_logits.argmax(-1)).mean())
    return {
        "name": name, "dim": spec.dim, "spec": spec.to_dict(),
        **install(out, tmp, level_file(name), named), "params": count_params(small),
        "flops_per_sample": flops_per_sample(model.config, spec),
        "flops": flops_terms(model.config, spec), "opset": opset,
        "parity": parity,
        "accuracy": {"onnx": _acc(ort_logits, y), "torch": _acc(torch_logits, y),
                     "same_argmax": same, "split": "test", "n": int(len(y))},
    }


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(-1) == y).mean())


def _quantize(out: Path, src: str, name: str, named: dict[str, str], x: np.ndarray,
              y: np.ndarray, method: str) -> dict:
    """The level's INT8 graph by `method` (matryoshka.quantize), with its test accuracy (and,
    once every INT8 graph is final, its check against exact arithmetic: check_int8_levels)."""
    tmp = temp_path(out, level_file(name, "int8"))
    with writing(out / level_file(name, "int8")):
        quantize_level(out / src, tmp, method)
    logits = run_graph(cpu_session(tmp), x)
    return {**install(out, tmp, level_file(name, "int8"), named), "method": method,
            "accuracy": _acc(logits, y)}


def export_table(manifest: dict) -> str:
    """The closing table: level, params, MFLOPs, size, parity error, ONNX and torch accuracy."""
    int8 = any("int8" in lv for lv in manifest["levels"])
    width = max(6, *(len(level_name(lv)) for lv in manifest["levels"]))
    head = (f"{'level':>{width}} {'params':>10} {'MFLOPs':>8} {'size KB':>9} {'max|err|':>9} "
            f"{'acc onnx':>9} {'acc torch':>9}")
    if int8:
        head += f" {'int8 acc':>9} {'int8 KB':>8} {'kernels':>8} {'twin':>8}"
    rows = [head]
    for lv in manifest["levels"]:
        row = (f"{level_name(lv):>{width}} {lv['params']:>10,} "
               f"{lv['flops_per_sample'] / 1e6:>8.2f} "
               f"{lv['bytes'] / 1024:>9.1f} {lv['parity']['max_abs']:>9.1e} "
               f"{lv['accuracy']['onnx']:>9.4f} {lv['accuracy']['torch']:>9.4f}")
        if "int8" in lv:
            check = lv["int8"].get("check") or {}
            row += (f" {lv['int8']['accuracy']:>9.4f} {lv['int8']['bytes'] / 1024:>8.1f}"
                    f" {check.get('kernel_max_abs', float('nan')):>8.1e}"
                    f" {check.get('max_abs', float('nan')):>8.1e}")
        rows.append(row)
    checked = [lv["int8"]["check"] for lv in manifest["levels"] if "check" in lv.get("int8", {})]
    if checked:
        rows.append(f"(the INT8 graph's largest logit difference on {checked[0]['rows']} "
                    "rows of the validation split, on this CPU's kernels, from onnxruntime's "
                    f"exact integer kernels and from the graph's exact twin; {checked[0]['cpu']})")
    return "\n".join(rows)
