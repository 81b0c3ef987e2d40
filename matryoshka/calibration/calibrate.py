"""`matryoshka calibrate`: temperatures and certified thresholds written into manifest.json,
and optional INT8 static quantization. DESIGN.md, "Escalation and calibration".

Everything is computed through the runtime (onnxruntime), on the graphs that will be deployed.
The export folder is written in place under its writer lock ("How the folder is written"):
new INT8 graphs get names the committed manifest does not use, and the new manifest.json is
the commit, so a crash leaves the old calibration or the new one, whole.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from matryoshka.calibration.thresholds import (
    TARGETS,
    fit_temperature,
    learn_then_test,
    nll,
    simulate,
)
from matryoshka.data.source import for_export
from matryoshka.errors import ConfigError, DataError
from matryoshka.exporter.cascades import refresh_cascades, settle_names
from matryoshka.io import temp_path, writing
from matryoshka.quantize import STATIC_CALIBRATION as INT8_METHODS
from matryoshka.quantize import quantize_level
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import (
    commit_manifest,
    install,
    level_file,
    level_name,
    manifest_writer,
    named_files,
    read_manifest,
)
from matryoshka.runtime.runtime import VARIANTS

log = logging.getLogger(__name__)
# static: each level quantized on its own; static-shared: then every smaller level takes the
# corners of the largest level's quantized weights (exporter/shared_int8.py), stored once in
# cascade.int8.onnx
INT8_STATIC = ("static", "static-shared")


def check_args(target: str, epsilon: float, delta: float, split: str, variant: str,
               int8: str | None, method: str) -> None:
    if target not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}")
    for name, v in (("--epsilon", epsilon), ("--delta", delta)):
        if not 0.0 < v < 1.0:
            raise ConfigError(f"{name} must lie strictly between 0 and 1; got {v}")
    if split not in ("train", "val"):
        raise ConfigError(f"--split must be train or val (test is kept for the report); "
                          f"got {split!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if int8 not in (None, *INT8_STATIC):
        raise ConfigError(f"--int8 must be one of {', '.join(INT8_STATIC)}; got {int8!r}")
    if method not in INT8_METHODS:
        raise ConfigError(f"--method must be one of {', '.join(INT8_METHODS)}; got {method!r}")


def calibrate(export_dir: str | Path, data: str | None = None, split: str = "val",
              target: str = "agreement", epsilon: float = 0.02, delta: float = 0.1,
              variant: str = "fp32", int8: str | None = None, method: str = "minmax",
              progress: bool = True, cascade: str = "all") -> dict:
    """Calibrate an export folder in place (atomically); returns the calibration record.

    data: 'demo', a .npz or a text file [the data the export was made from].
    cascade: the levels the cascade escalates through: "all", "trained" (the levels named by
    their width, without the Mix'n'Match sub-models) or comma-separated names. Temperatures
    are fitted for every level.

    >>> rec = calibrate("artifacts/demo/export", epsilon=0.02, delta=0.1)  # doctest: +SKIP
    >>> rec["thresholds"], rec["test"]["relative_cost"]                    # doctest: +SKIP
    """
    check_args(target, epsilon, delta, split, variant, int8, method)
    export_dir = Path(export_dir)
    # a missing or broken folder is reported before the data loads
    dataset, data_record = for_export(export_dir, read_manifest(export_dir), data)
    cascade_of([level_name(lv) for lv in read_manifest(export_dir)["levels"]], cascade)
    with manifest_writer(export_dir) as manifest:
        committed = named_files(manifest)
        spec = manifest["input"]
        x_cal, y_cal = check_input(dataset[split][0], spec), dataset[split][1]
        x_test, y_test = check_input(dataset["test"][0], spec), dataset["test"][1]
        check_labels(dataset, manifest["output"]["shape"][-1], data or "the export's data")
        if variant == "int8" and int8 is None and any("int8" not in lv
                                                      for lv in manifest["levels"]):
            raise ConfigError("--variant int8 needs int8 graphs: add --int8 static, or export "
                              "with --quantize dynamic")
        if variant == "auto" and not manifest.get("plan"):
            raise ConfigError(f"--variant auto needs a precision plan; make one with: "
                              f"matryoshka tune {export_dir}")
        if int8 in INT8_STATIC:
            _quantize_static(export_dir, manifest, x_cal, x_test, y_test, method, progress)
            if int8 == "static-shared":
                _share_static(export_dir, manifest, committed, x_test, y_test)
            # the int8 and auto calibrations, and the plan, measured the graphs just replaced
            for stale in ("int8", "auto"):
                (manifest.get("calibration") or {}).pop(stale, None)
            if manifest.pop("plan", None) is not None:
                log.warning("the precision plan measured the INT8 graphs just replaced and "
                            "was dropped; run matryoshka tune %s again", export_dir)
        rt = Runtime.from_manifest(export_dir, manifest, device="cpu", variant=variant)
        record = _calibrate_thresholds(rt, cascade_of(rt.levels, cascade), x_cal, y_cal,
                                       x_test, y_test, target, epsilon, delta, progress)
        record.update(variant=variant, split=split, data=data_record,
                      precisions=[rt.precision(d) for d in rt.levels],
                      graphs=[rt.entry(d)["sha256"] for d in rt.levels],
                      data_sha256=data_record.get("sha256"),
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        manifest.setdefault("calibration", {})[variant] = record
        refresh_cascades(export_dir, manifest, committed, x_cal)
        commit_manifest(export_dir, manifest)
        settle_names(export_dir, manifest)
    return record


def check_labels(dataset: dict, n_classes: int, data) -> None:
    """Every label of every split must be a class of the exported model."""
    for split, (_, y) in dataset.items():
        if len(y) and int(y.max()) >= n_classes:
            raise DataError(f"{data}: {split} labels go up to {int(y.max())} but the export has "
                            f"{n_classes} classes (0 to {n_classes - 1})")


def level_logits(rt: Runtime, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """The logits of every level of `rt` on x, in chunks of `batch` rows."""
    return [np.concatenate([rt.run_level(d, x[i:i + batch]) for i in range(0, len(x), batch)])
            for d in rt.levels]


def cascade_of(levels: list[str], cascade: str) -> list[str]:
    """The levels of `calibrate --cascade`, in the export's order (of FLOPs)."""
    if cascade == "all":
        return list(levels)
    if cascade == "trained":
        chosen = [n for n in levels if n.isdigit()]
    else:
        wanted = [c.strip() for c in str(cascade).split(",") if c.strip()]
        unknown = [c for c in wanted if c not in levels]
        if unknown or not wanted:
            raise ConfigError(f"--cascade must be all, trained or level names of the export "
                              f"({', '.join(levels)}); got {cascade!r}")
        chosen = [n for n in levels if n in wanted]
    if not chosen:
        raise ConfigError(f"--cascade {cascade!r} names no level of the export")
    return chosen


def _calibrate_thresholds(rt: Runtime, cascade: list[str], x_cal, y_cal, x_test, y_test,
                          target, epsilon, delta, progress) -> dict:
    names = rt.levels
    bar = tqdm(total=3, desc="calibrate", disable=None if progress else True, leave=False)
    cal_all = level_logits(rt, x_cal)
    test_all = level_logits(rt, x_test)
    bar.update(1)
    temps_all = [fit_temperature(z, y_cal) for z in cal_all]
    bar.update(1)
    pick = [names.index(n) for n in cascade]
    dims = cascade
    cal, test = [cal_all[i] for i in pick], [test_all[i] for i in pick]
    temps = [temps_all[i] for i in pick]
    flops = [float(rt.manifest["levels"][i]["flops_per_sample"]) for i in pick]
    cert = learn_then_test(cal, y_cal, dims, temps, flops, epsilon, delta, target)
    bar.update(1)
    bar.close()
    if cert.thresholds is None:
        log.warning("no thresholds could be certified for %s <= %g at delta %g on %d samples; "
                    "the runtime will use the largest level alone", target, epsilon, delta,
                    len(y_cal))
    report = _test_report(test, y_test, dims, temps, cert, flops, target)
    record = {
        "levels": list(cascade),
        "temperatures": temps_all,
        "nll": {"before": [nll(z, y_cal) for z in cal_all],
                "after": [nll(z, y_cal, t) for z, t in zip(cal_all, temps_all)]},
        "thresholds": cert.thresholds,
        "target": target, "epsilon": epsilon, "delta": delta, "n": int(len(y_cal)),
        "guarantee": (f"P({target} risk > {epsilon:g}) <= {delta:g} over the calibration draw"
                      if cert.thresholds is not None else "none certified: largest level only"),
        "method": "learn-then-test, fixed-sequence, exact binomial p-values, shared threshold",
        "empirical_risk": cert.empirical_risk, "risk_bound": cert.risk_bound,
        "p_value": cert.p_value, "n_certified": cert.n_certified,
        "expected_relative_cost": cert.expected_relative_cost,
        "exit_fractions": cert.exit_fractions,
        "test": report,
    }
    trained = [i for i, name in enumerate(dims) if name.isdigit()]
    if cascade == names and 1 < len(trained) < len(dims) and trained[-1] == len(dims) - 1:
        record["trained_only"] = _trained_only(trained, cal, y_cal, test, y_test, dims, temps,
                                               flops, epsilon, delta, target)
    return record


def _test_report(test, y_test, dims, temps, cert, flops, target) -> dict:
    """The certified cascade replayed on the test split."""
    thr = cert.thresholds if cert.thresholds is not None else [1.0] * (len(dims) - 1)
    out = simulate(test, dims, temps, thr, y_test, flops, target)
    largest = test[-1].argmax(axis=1)
    return {
        "n": int(len(y_test)),
        "risk": float(out.loss.mean()),
        "disagreement": float((out.labels != largest).mean()),
        "accuracy": float((out.labels == y_test).mean()),
        "accuracy_largest": float((largest == y_test).mean()),
        "relative_cost": float(out.cost.mean()),
        "exit_fractions": [float((out.levels == d).mean()) for d in dims],
    }


def _trained_only(keep: list[int], cal, y_cal, test, y_test, dims, temps, flops, epsilon,
                  delta, target) -> dict:
    """For comparison: the cascade over the trained levels alone, certified at the same
    target, epsilon and delta on the same calibration draw (its cost is relative to the same
    largest level)."""
    pick = [dims[i] for i in keep]
    sub = ([cal[i] for i in keep], [test[i] for i in keep], [temps[i] for i in keep],
           [flops[i] for i in keep])
    cert = learn_then_test(sub[0], y_cal, pick, sub[2], sub[3], epsilon, delta, target)
    return {"levels": pick, "thresholds": cert.thresholds,
            "expected_relative_cost": cert.expected_relative_cost,
            "test": _test_report(sub[1], y_test, pick, sub[2], cert, sub[3], target)}


def _quantize_static(folder: Path, manifest: dict, x_cal, x_test, y_test, method: str,
                     progress: bool) -> None:
    """INT8 QDQ quantization of every level's MatMul/Gemm, calibrated on the calibration split
    (`matryoshka.quantize`, method static), each validated for accuracy against fp32 on the
    test split. Each new graph gets a name the committed manifest does not use; `manifest`
    (in memory) is updated."""
    name = manifest["input"]["name"]
    named = named_files(manifest)
    fp32 = Runtime.from_manifest(folder, manifest, device="cpu")
    for lv in tqdm(manifest["levels"], desc="int8", disable=None if progress else True,
                   leave=False):
        level = level_name(lv)
        tmp = temp_path(folder, level_file(level, "int8"))
        with writing(folder / level_file(level, "int8")):
            quantize_level(folder / lv["file"], tmp, "static", (name, x_cal), method)
        acc_fp32 = accuracy_of(fp32.run_level(level, x_test), y_test)
        acc = _graph_accuracy(tmp, name, x_test, y_test)
        lv["int8"] = {**install(folder, tmp, level_file(level, "int8"), named),
                      "method": f"static-{method}", "accuracy": acc, "accuracy_fp32": acc_fp32,
                      "accuracy_change": acc - acc_fp32}


def _share_static(folder: Path, manifest: dict, committed: dict[str, str], x_test,
                  y_test) -> None:
    from matryoshka.exporter.shared_int8 import share_from_largest

    name = manifest["input"]["name"]
    share_from_largest(folder, manifest["levels"], committed,
                       lambda path: _graph_accuracy(path, name, x_test, y_test))
    for lv in manifest["levels"]:
        q = lv["int8"]
        q["accuracy_change"] = q["accuracy"] - q["accuracy_fp32"]


def _graph_accuracy(path: Path, input_name: str, x: np.ndarray, y: np.ndarray) -> float:
    """The accuracy of the graph file at `path` on (x, y), on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return accuracy_of(sess.run(None, {input_name: x})[0], y)


def accuracy_of(logits: np.ndarray, y: np.ndarray) -> float:
    """The share of rows whose argmax is the label."""
    return float((logits.argmax(axis=1) == y).mean())


def calibration_table(record: dict, manifest: dict) -> str:
    """The closing report of `matryoshka calibrate`, on the test split."""
    t = record["test"]
    names = [level_name(lv) for lv in manifest["levels"]]
    dims = record.get("levels", names)
    lines = [
        f"calibration ({record['variant']}, target {record['target']}, "
        f"epsilon {record['epsilon']:g}, delta {record['delta']:g}, n {record['n']})",
        "  cascade:      " + ", ".join(dims),
        "  temperatures: " + ", ".join(f"{d}: {x:.3f}" for d, x in
                                        zip(names, record["temperatures"])),
        "  thresholds:   " + (", ".join(f"{x:.4f}" for x in record["thresholds"])
                              if record["thresholds"] is not None else
                              "none certified (largest level only)"),
        f"  guarantee:    {record['guarantee']}",
        "  graphs:       " + ", ".join(f"{d}: {p}" for d, p in zip(names,
                                                                     record["precisions"])),
        f"  calibration split: empirical risk {record['empirical_risk']:.4f}, expected "
        f"relative cost {record['expected_relative_cost']:.3f}",
        f"test split (n {t['n']}, never used to fit):",
        f"  {record['target']} risk {t['risk']:.4f}; disagreement with level {dims[-1]} "
        f"{t['disagreement']:.4f}",
        f"  accuracy {t['accuracy']:.4f} (level {dims[-1]} alone: {t['accuracy_largest']:.4f})",
        f"  relative FLOPs cost {t['relative_cost']:.3f}; answered per level: "
        + ", ".join(f"{d}: {f:.1%}" for d, f in zip(dims, t["exit_fractions"])),
    ]
    if "trained_only" in record:
        o = record["trained_only"]
        lines.append(f"  trained levels alone ({', '.join(o['levels'])}), same epsilon and "
                     f"delta: relative FLOPs cost {o['test']['relative_cost']:.3f} on test "
                     f"(calibration split {o['expected_relative_cost']:.3f}), accuracy "
                     f"{o['test']['accuracy']:.4f}")
    int8 = [lv for lv in manifest["levels"] if "int8" in lv and "accuracy_fp32" in lv["int8"]]
    for lv in int8:
        q = lv["int8"]
        own = (f", own quantization {q['accuracy_own']:.4f} before sharing"
               if "accuracy_own" in q else "")
        lines.append(f"  int8 level {level_name(lv)}: accuracy {q['accuracy']:.4f} "
                     f"(fp32 {q['accuracy_fp32']:.4f}, change {q['accuracy_change']:+.4f}"
                     f"{own}), {q['bytes'] / 1024:.0f} KB vs {lv['bytes'] / 1024:.0f} KB")
    return "\n".join(lines)
