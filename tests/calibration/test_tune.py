"""`matryoshka tune` and the variant "auto": the plan written from measurements, calibration on
exactly the planned graphs, and the runtime's refusal of a calibration fitted on others."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.calibration import tune as tune_module
from matryoshka.calibration.calibrate import level_logits
from matryoshka.calibration.thresholds import nll
from matryoshka.cli import cli, mexport
from matryoshka.errors import ArtifactError
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import commit_manifest, manifest_writer
from matryoshka.runtime.plan import choose_precisions

LEVELS = ["16", "32", "64"]


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _one_error_line(r, fragment):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def _set_plan(folder, precisions):
    with manifest_writer(folder) as m:
        m["plan"] = {**m.get("plan", {}), "precisions": precisions}
        commit_manifest(folder, m)


@pytest.fixture
def export(tiny_export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    return out


def test_tune_writes_a_plan_from_its_own_measurements(export):
    r = _run("tune", export, "--batch", "1,4", "--for-batch", "4", "--iters", "6",
             "--warmup", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    plan = json.loads((export / "manifest.json").read_text())["plan"]
    assert plan["batch"] == 4 and plan["max_loss"] == pytest.approx(0.005)
    assert plan["split"] == "val" and plan["n"] == 360
    assert {(t["level"], t["batch"], t["precision"]) for t in plan["timings"]} == {
        (d, b, p) for d in LEVELS for b in (1, 4) for p in ("fp32", "int8")}
    for b in (1, 4):
        assert plan["by_batch"][str(b)] == choose_precisions(plan["timings"], plan["accuracy"],
                                                             LEVELS, b, 0.005)
    assert plan["precisions"] == plan["by_batch"]["4"]
    assert plan["int8_methods"] == ["dynamic"] * 3
    assert "planned precisions: 16:" in r.stdout and "(plan)" in r.stdout
    # INT8 only where its slowest round of alternating blocks was still faster
    low = {(t["level"], t["batch"]): t["speedup_low"] for t in plan["timings"]
           if t["precision"] == "int8"}
    assert all(t["rounds"] >= 3 for t in plan["timings"] if t["precision"] == "int8")
    for b in (1, 4):
        for d, choice in zip(LEVELS, plan["by_batch"][str(b)]):
            assert choice == "fp32" or low[(d, b)] > 1.0
    assert "lowest" in r.stdout


def test_calibration_is_fitted_on_the_planned_graphs(export, demo_data):
    planned = ["int8", "fp32", "int8"]
    _set_plan(export, planned)
    r = _run("calibrate", export, "--variant", "auto", "--epsilon", "0.1", "--no-progress")
    assert r.exit_code == 0, r.output
    m = json.loads((export / "manifest.json").read_text())
    rec = m["calibration"]["auto"]
    assert rec["precisions"] == planned
    assert rec["graphs"] == [(lv["int8"] if p == "int8" else lv)["sha256"]
                             for lv, p in zip(m["levels"], planned)]
    # the record's NLLs are those of the planned graphs' logits, not of the other precision
    x_val, y_val = demo_data["val"]
    x_val = x_val.astype(np.float32)
    # (in calibrate's own chunks: dynamic INT8 scales its activations per call)
    runs = {p: Runtime.open(export, device="cpu", variant=p) for p in ("fp32", "int8")}
    logits = {p: level_logits(rt, x_val) for p, rt in runs.items()}
    for i, (p, before) in enumerate(zip(planned, rec["nll"]["before"])):
        assert before == pytest.approx(nll(logits[p][i], y_val), abs=1e-12)
    other = {"int8": "fp32", "fp32": "int8"}
    assert any(before != pytest.approx(nll(logits[other[p]][i], y_val), abs=1e-12)
               for i, (p, before) in enumerate(zip(planned, rec["nll"]["before"])))
    # the runtime runs exactly those graphs, with that calibration
    auto = Runtime.open(export, device="cpu", variant="auto")
    x = demo_data["test"][0].astype(np.float32)
    for d, p in zip(LEVELS, planned):
        assert np.array_equal(auto.run_level(d, x), runs[p].run_level(d, x))
    assert auto.temperatures() == rec["temperatures"]
    r = _run("predict", export, "--variant", "auto", "--device", "cpu", "--json",
             _save(export.parent / "x.npy", x[:5]))
    assert r.exit_code == 0, r.output


def _save(path, x):
    np.save(path, x)
    return path


def test_a_changed_plan_is_refused_until_recalibrated(export):
    _set_plan(export, ["int8", "fp32", "int8"])
    assert _run("calibrate", export, "--variant", "auto", "--epsilon", "0.1",
                "--no-progress").exit_code == 0
    _set_plan(export, ["fp32", "fp32", "int8"])  # by hand: the calibration is now stale
    with pytest.raises(ArtifactError, match=r"fitted on other graphs .*level\(s\) 16 changed"):
        Runtime.open(export, device="cpu", variant="auto")
    np.save(export.parent / "x.npy", np.zeros((2, 8, 8), np.float32))
    _one_error_line(_run("predict", export, export.parent / "x.npy", "--variant", "auto",
                         "--device", "cpu"), "matryoshka calibrate")
    Runtime.open(export, device="cpu", variant="fp32")  # the other variants are untouched
    assert _run("calibrate", export, "--variant", "auto", "--epsilon", "0.1",
                "--no-progress").exit_code == 0
    Runtime.open(export, device="cpu", variant="auto")


def test_a_new_plan_or_new_int8_graphs_drop_what_measured_the_old(export):
    _set_plan(export, ["int8", "fp32", "int8"])
    assert _run("calibrate", export, "--variant", "auto", "--no-progress").exit_code == 0
    r = _run("tune", export, "--batch", "1", "--iters", "2", "--warmup", "0", "--no-progress")
    assert r.exit_code == 0, r.output
    m = json.loads((export / "manifest.json").read_text())
    assert "auto" not in m.get("calibration", {}) and "plan" in m
    r = _run("calibrate", export, "--int8", "static", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "plan" not in json.loads((export / "manifest.json").read_text())


def test_tune_and_auto_errors(export, tmp_path):
    _one_error_line(_run("calibrate", export, "--variant", "auto"), "matryoshka tune")
    with pytest.raises(ArtifactError, match="no precision plan"):
        Runtime.open(export, device="cpu", variant="auto")
    _one_error_line(_run("tune", export, "--batch", "1,4", "--for-batch", "8"),
                    "--for-batch 8 must be one of the measured --batch sizes (1, 4)")
    _one_error_line(_run("tune", export, "--max-loss", "-1"), "--max-loss")
    _one_error_line(_run("tune", export, "--iters", "0"), "--iters must be at least 1")
    _one_error_line(_run("tune", export, "--split", "test"), "test is kept for the report")
    m = json.loads((export / "manifest.json").read_text())
    for lv in m["levels"]:
        del lv["int8"]
    (export / "manifest.json").write_text(json.dumps(m))
    _one_error_line(_run("tune", export), "no INT8 graph for every level")
    m["plan"] = {"precisions": ["fp32", "int8", "fp32"]}
    (export / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="int8 for a level without an int8 graph"):
        Runtime.open(export, device="cpu")


def test_the_margin_is_a_lower_bound_of_the_median_that_one_slow_round_does_not_sink():
    from matryoshka.calibration.tune import median_lower_bound

    rounds = [0.81, 3.1, 3.2, 3.3, 3.3, 3.4, 3.4, 3.5, 3.5, 3.6]  # one hiccup
    assert median_lower_bound(rounds) == 3.1  # 10 rounds: the 2nd smallest
    assert median_lower_bound([0.9, 0.95, 1.0, 1.02, 1.05, 1.06, 1.08, 1.1, 1.1, 1.2]) == 0.95
    assert median_lower_bound([1.5, 2.0]) == 1.5  # too few rounds: the minimum
    assert median_lower_bound(list(range(1, 21))) == 6  # P(Bin(20, 1/2) <= 5) = 2.1%


@pytest.mark.parametrize("quantize", ["weight8-shared", "dynamic-pc-shared", "weight4"])
def test_tune_certifies_a_plan_that_mixes_precisions_on_every_export_kind(
        width_checkpoint, tmp_path, monkeypatch, quantize):
    """INT8 for the smaller levels, fp32 for the largest: cascade.auto.onnx holds both, and
    must answer as the levels engine, each level loaded as the runtime loads it (a weight8
    level with its DequantizeLinear folded; a weight4 level at opset 21 beside fp32 ones at
    17). Each run times the levels anew; none may fail."""
    out = tmp_path / "export"
    r = CliRunner().invoke(mexport, ["--checkpoint", str(width_checkpoint), "--out", str(out),
                                     "--quantize", quantize, "--no-progress"])
    assert r.exit_code == 0, r.output
    mixed = ["int8", "int8", "fp32"]
    monkeypatch.setattr(tune_module, "plan_by_batch",
                        lambda timings, accuracy, levels, max_loss: {"1": mixed})
    for _ in range(4):
        r = _run("tune", out, "--batch", "1", "--for-batch", "1", "--warmup", "0", "--iters",
                 "1", "--no-progress")
        assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["plan"]["precisions"] == mixed and m["cascade"]["auto"]["levels"] == ["8", "16",
                                                                                   "32"]
    assert set(m["plan"]["int8_check"]) == {"8", "16", "32"}
    assert m["plan"]["cpu"]["arch"]
    r = _run("calibrate", out, "--variant", "auto", "--epsilon", "0.3", "--no-progress")
    assert r.exit_code == 0, r.output
    rt = Runtime.open(out, device="cpu", variant="auto", engine="graph")
    assert [rt.precision(n) for n in rt.levels] == mixed
