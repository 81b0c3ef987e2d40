"""`matryoshka calibrate`: temperatures and certified thresholds written into manifest.json,
and optional INT8 static quantization, each new INT8 graph checked against exact integer
arithmetic (matryoshka/int8_check.py). docs/design.md, "Escalation and calibration".

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
import onnx
from tqdm import tqdm

from matryoshka.calibration.thresholds import (
    TARGETS,
    certify_cheapest,
    fit_temperature,
    nll,
    simulate,
)
from matryoshka.data.source import for_export
from matryoshka.errors import ConfigError, DataError
from matryoshka.folder.cascades import commit
from matryoshka.int8_check import check_int8_levels, check_pair_sums
from matryoshka.io import temp_path, writing
from matryoshka.quantize import STATIC_CALIBRATION as INT8_METHODS
from matryoshka.quantize import quantize_level
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import (
    VARIANTS,
    install,
    level_file,
    level_name,
    manifest_writer,
    named_files,
    read_manifest,
)

log = logging.getLogger(__name__)
# static: each level quantized on its own; static-shared: then every smaller level takes the
# corners of the largest level's quantized weights (folder/shared_int8.py), stored once in
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
              progress: bool = True, cascade: str = "cheapest") -> dict:
    """Calibrate an export folder in place (atomically); returns the calibration record.

    data: 'demo', a .npz or a text file [the data the export was made from].
    cascade: the levels the cascade escalates through: "cheapest" (the default: every level,
    or the trained levels alone, whichever certified set costs less on the calibration split;
    each is certified at delta / 2, so the choice keeps the guarantee), "all", "trained" (the
    trained levels, without the Mix'n'Match sub-models) or comma-separated names.
    Temperatures are fitted for every level.

    >>> rec = calibrate("artifacts/demo/export", epsilon=0.02, delta=0.1)  # doctest: +SKIP
    >>> rec["thresholds"], rec["test"]["relative_cost"]                    # doctest: +SKIP
    """
    check_args(target, epsilon, delta, split, variant, int8, method)
    export_dir = Path(export_dir)
    # a missing or broken folder is reported before the data loads
    dataset, data_record = for_export(export_dir, read_manifest(export_dir), data)
    level_sets(read_manifest(export_dir)["levels"], cascade)
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
            check_int8_levels(export_dir, manifest["levels"], x_cal)
            # the int8 and auto calibrations, and the plan, measured the graphs just replaced
            for stale in ("int8", "auto"):
                (manifest.get("calibration") or {}).pop(stale, None)
            if manifest.pop("plan", None) is not None:
                log.warning("the precision plan measured the INT8 graphs just replaced and "
                            "was dropped; run matryoshka tune %s again", export_dir)
        rt = Runtime.from_manifest(export_dir, manifest, device="cpu", variant=variant)
        for d in rt.levels:  # graphs made before 7-bit weights answer by the CPU: refused
            if rt.precision(d) == "int8":
                check_pair_sums(onnx.load_from_string(rt.graph_bytes(d)),
                                f"the INT8 graph of level {d}")
        record = _calibrate_thresholds(rt, level_sets(manifest["levels"], cascade), x_cal,
                                       y_cal, x_test, y_test, target, epsilon, delta, progress)
        graphs = [rt.entry(d)["sha256"] for d in rt.levels]
        _check_certified(record, manifest, variant, graphs)
        record.update(variant=variant, split=split, data=data_record,
                      precisions=[rt.precision(d) for d in rt.levels], graphs=graphs,
                      data_sha256=data_record.get("sha256"),
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        del rt  # its sessions (every level's weights) are not held while the cascade is built
        manifest.setdefault("calibration", {})[variant] = record
        commit(export_dir, manifest, committed, x_cal)
    return record


def _check_certified(record: dict, manifest: dict, variant: str, graphs: list[str]) -> None:
    """Nothing certified is a valid outcome (the runtime then runs the largest level alone),
    with a warning; but it never replaces a calibration that certified thresholds for these
    very graphs: that would silently make a working cascade run its largest level on every
    row. Then nothing is written, and the user is told what would certify."""
    if record["thresholds"] is not None:
        return
    what = (f"no thresholds could be certified for {record['target']} <= "
            f"{record['epsilon']:g} at delta {record['delta']:g} on {record['n']} samples")
    old = (manifest.get("calibration") or {}).get(variant) or {}
    if old.get("thresholds") is not None and old.get("graphs") in (None, graphs):
        raise ConfigError(
            f"{what}; the export keeps its {variant} calibration ({old['target']} <= "
            f"{old['epsilon']:g} at delta {old['delta']:g}) and nothing was written. A larger "
            "--epsilon or --delta, or more calibration rows, would certify thresholds")
    log.warning("%s; the runtime will use the largest level alone", what)


def check_labels(dataset: dict, n_classes: int, data) -> None:
    """Every label of every split must be a class of the exported model."""
    for split, (_, y) in dataset.items():
        if len(y) and int(y.max()) >= n_classes:
            raise DataError(f"{data}: {split} labels go up to {int(y.max())} but the export has "
                            f"{n_classes} classes (0 to {n_classes - 1})")


def level_logits(rt: Runtime, x: np.ndarray) -> list[np.ndarray]:
    """The logits of every level of `rt` on x, in chunks (memory flat in the rows: only the
    logits, a few numbers a row, are kept)."""
    return [rt.run_level_in_chunks(d, x) for d in rt.levels]


def level_sets(entries: list[dict], cascade: str) -> list[list[str]]:
    """The candidate level sets of `calibrate --cascade`, each in the export's order (of
    FLOPs): "cheapest" gives every level and, where they differ and the largest level is a
    trained one, the trained levels alone; any other value gives its one set."""
    levels = [level_name(lv) for lv in entries]
    if cascade != "cheapest":
        return [cascade_of(levels, cascade, trained_levels(entries))]
    trained = trained_levels(entries)
    sets = [levels]
    if 1 < len(trained) < len(levels) and trained[-1] == levels[-1]:
        sets.append(trained)
    return sets


def trained_levels(entries: list[dict]) -> list[str]:
    """The levels the model was trained at (not Mix'n'Match sub-models), by their names."""
    return [level_name(lv) for lv in entries
            if lv.get("trained", level_name(lv).isdigit())]


def cascade_of(levels: list[str], cascade: str, trained: list[str] | None = None) -> list[str]:
    """The levels of `calibrate --cascade`, in the export's order (of FLOPs)."""
    if cascade == "all":
        return list(levels)
    if cascade == "trained":
        trained = [n for n in levels if n.isdigit()] if trained is None else trained
        chosen = [n for n in levels if n in trained]
    else:
        wanted = [c.strip() for c in str(cascade).split(",") if c.strip()]
        unknown = [c for c in wanted if c not in levels]
        if unknown or not wanted:
            raise ConfigError(f"--cascade must be cheapest, all, trained or level names of the "
                              f"export ({', '.join(levels)}); got {cascade!r}")
        chosen = [n for n in levels if n in wanted]
    if not chosen:
        raise ConfigError(f"--cascade {cascade!r} names no level of the export")
    return chosen


def _calibrate_thresholds(rt: Runtime, sets: list[list[str]], x_cal, y_cal, x_test, y_test,
                          target, epsilon, delta, progress) -> dict:
    """Temperatures for every level; thresholds certified for each candidate level set at
    delta / len(sets), the cheapest certified set kept (thresholds.certify_cheapest)."""
    names = rt.levels
    bar = tqdm(total=3, desc="calibrate", disable=None if progress else True, leave=False)
    cal_all = level_logits(rt, x_cal)
    test_all = level_logits(rt, x_test)
    bar.update(1)
    temps_all = [fit_temperature(z, y_cal) for z in cal_all]
    bar.update(1)
    flops_all = [float(lv["flops_per_sample"]) for lv in rt.manifest["levels"]]
    picks = [[names.index(n) for n in cascade] for cascade in sets]
    cands = [([cal_all[i] for i in pick], cascade, [temps_all[i] for i in pick],
              [flops_all[i] for i in pick]) for pick, cascade in zip(picks, sets)]
    chosen, certs = certify_cheapest(cands, y_cal, epsilon, delta, target)
    bar.update(1)
    bar.close()
    k = 0 if chosen is None else chosen
    cascade, cert = sets[k], certs[k]
    reports = [_test_report([test_all[i] for i in pick], y_test, levels, temps, ce, flops,
                            target)
               for pick, (_, levels, temps, flops), ce in zip(picks, cands, certs)]
    m = len(sets)
    record = {
        "levels": list(cascade),
        "temperatures": temps_all,
        "nll": {"before": [nll(z, y_cal) for z in cal_all],
                "after": [nll(z, y_cal, t) for z, t in zip(cal_all, temps_all)]},
        "thresholds": cert.thresholds,
        "target": target, "epsilon": epsilon, "delta": delta, "n": int(len(y_cal)),
        "guarantee": (f"P({target} risk > {epsilon:g}) <= {delta:g} over the calibration draw"
                      if cert.thresholds is not None else "none certified: largest level only"),
        "method": "learn-then-test, fixed-sequence, exact binomial p-values, shared threshold"
                  + (f"; the cheapest certified of {m} level sets, each at delta/{m} "
                     "(Bonferroni)" if m > 1 else ""),
        "empirical_risk": cert.empirical_risk, "risk_bound": cert.risk_bound,
        "p_value": cert.p_value, "n_certified": cert.n_certified,
        "expected_relative_cost": cert.expected_relative_cost,
        "exit_fractions": cert.exit_fractions,
        "test": reports[k],
    }
    if m > 1:
        record["candidates"] = [
            {"levels": list(levels), "thresholds": ce.thresholds, "delta": delta / m,
             "expected_relative_cost": ce.expected_relative_cost, "test": report}
            for levels, ce, report in zip(sets, certs, reports)]
        record["chosen"] = chosen
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
    from matryoshka.folder.shared_int8 import share_from_largest

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
    if record.get("candidates"):
        m = len(record["candidates"])
        lines.append(f"  level sets certified, each at delta/{m} = {record['delta'] / m:g} "
                     "(Bonferroni), the cheaper on the calibration split kept:")
        for i, c in enumerate(record["candidates"]):
            what = "every level" if i == 0 else "the trained levels"
            mark = "  <- chosen" if i == record.get("chosen") else ""
            cost = (f"cost {c['expected_relative_cost']:.3f} on the calibration split, "
                    f"{c['test']['relative_cost']:.3f} on test, accuracy "
                    f"{c['test']['accuracy']:.4f}" if c["thresholds"] is not None
                    else "none certified")
            lines.append(f"    {what} ({', '.join(c['levels'])}): {cost}{mark}")
    int8 = [lv for lv in manifest["levels"] if "int8" in lv and "accuracy_fp32" in lv["int8"]]
    for lv in int8:
        q = lv["int8"]
        own = (f", own quantization {q['accuracy_own']:.4f} before sharing"
               if "accuracy_own" in q else "")
        exact = (f"; max |logit diff| from exact kernels {q['check']['kernel_max_abs']:.2g}, "
                 f"from its exact twin {q['check']['max_abs']:.2g}" if "check" in q else "")
        lines.append(f"  int8 level {level_name(lv)}: accuracy {q['accuracy']:.4f} "
                     f"(fp32 {q['accuracy_fp32']:.4f}, change {q['accuracy_change']:+.4f}"
                     f"{own}), {q['bytes'] / 1024:.0f} KB vs {lv['bytes'] / 1024:.0f} KB{exact}")
    return "\n".join(lines)
