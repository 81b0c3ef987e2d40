"""`matryoshka bundle`: the levels a device can afford, in a folder of their own, with a
cascade certified for exactly those levels (matryoshka/bundle.py)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.bundle import MB, bundle
from matryoshka.calibration import calibrate
from matryoshka.cli import cli
from matryoshka.io import sha256_file
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import named_files, read_manifest
from tests.conftest import tree_bytes


@pytest.fixture(scope="module")
def export(tiny_export_dir, tmp_path_factory):
    """The tiny export (levels 16, 32, 64, fp32 and dynamic INT8), calibrated in both."""
    out = tmp_path_factory.mktemp("bundle-src") / "export"
    shutil.copytree(tiny_export_dir, out)
    for variant in ("fp32", "int8"):
        calibrate(out, epsilon=0.1, delta=0.2, variant=variant, progress=False)
    return out


def run(*args):
    return CliRunner().invoke(cli, ["bundle", *map(str, args), "--no-progress"])


def one_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_max_mb_takes_the_longest_prefix_of_levels_that_fits(export, tmp_path):
    names = [lv["name"] for lv in read_manifest(export)["levels"]]
    totals = []
    for k in range(1, len(names) + 1):
        b = bundle(export, tmp_path / f"prefix{k}", levels=names[:k], progress=False)
        assert b.levels == names[:k]
        totals.append(b.total_bytes)
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    budgets = [(a + b) / 2 for a, b in zip(totals, totals[1:])] + [totals[-1] * 1.5]
    for k, budget in enumerate(budgets, start=1):
        b = bundle(export, tmp_path / f"fit{k}", max_mb=budget / MB, progress=False)
        assert b.levels == names[:k], (budget, totals)
        assert b.total_bytes <= budget
        on_disk = sum(p.stat().st_size for p in (tmp_path / f"fit{k}").iterdir()
                      if p.name != ".lock")
        assert on_disk == b.total_bytes
    r = run(export, "--out", tmp_path / "small", "--max-mb", totals[0] * 0.9 / MB)
    one_error(r, "below the smallest bundle")
    assert not (tmp_path / "small").exists()


def test_a_bundle_is_an_export_that_holds_only_its_levels(export, tmp_path):
    out = tmp_path / "phone"
    r = run(export, "--out", out, "--levels", "16,32", "--variant", "int8")
    assert r.exit_code == 0, r.output
    assert "levels 16, 32 from the int8 graphs" in r.stdout
    m = read_manifest(out)
    src = read_manifest(export)
    assert [lv["name"] for lv in m["levels"]] == ["16", "32"]
    assert [lv["precision"] for lv in m["levels"]] == ["int8", "int8"]
    # only its own files, each hashing as its manifest says; the tokenless digits have none
    files = {p.name for p in out.iterdir() if p.name != ".lock"}
    assert files == set(named_files(m)) | {"manifest.json"}
    assert files == {"level-0016.int8.onnx", "level-0032.int8.onnx", "cascade.onnx",
                     "manifest.json"}
    for name, sha in named_files(m).items():
        assert sha256_file(out / name) == sha
    for lv, s in zip(m["levels"], src["levels"]):  # the very graphs of the export
        assert lv["sha256"] == s["int8"]["sha256"]
    assert m["cascade"]["fp32"]["levels"] == ["16", "32"] and set(m["cascade"]) == {"fp32"}
    assert m["bundle"]["variant"] == "int8" and m["bundle"]["levels"] == ["16", "32"]
    assert "plan" not in m
    rt = Runtime.open(out, device="cpu")
    assert rt.levels == ["16", "32"] and rt.engine == "graph"
    assert [rt.precision(n) for n in rt.levels] == ["int8", "int8"]


def test_a_bundle_of_an_int8_bundle_keeps_each_graphs_true_precision(export, tmp_path):
    """Re-bundling keeps every level's graph and its precision, however many times, and an
    INT8 bundle can be asked for as INT8 again (each bundle checks its INT8 graphs against
    exact integer arithmetic on this machine)."""
    first = bundle(export, tmp_path / "b1", variant="int8", progress=False)
    src = {lv["name"]: lv["int8"]["sha256"] for lv in read_manifest(export)["levels"]}
    r = run(tmp_path / "b1", "--out", tmp_path / "b2", "--levels", "16,32")
    assert r.exit_code == 0, r.output
    assert "levels 16, 32 from the int8 graphs" in r.stdout
    second = read_manifest(tmp_path / "b2")
    assert [(lv["name"], lv["precision"], lv["file"]) for lv in second["levels"]] == [
        ("16", "int8", "level-0016.int8.onnx"), ("32", "int8", "level-0032.int8.onnx")]
    r = run(tmp_path / "b2", "--out", tmp_path / "b3", "--levels", "16", "--variant", "int8")
    assert r.exit_code == 0, r.output
    for folder in (tmp_path / "b1", tmp_path / "b2", tmp_path / "b3"):
        m = read_manifest(folder)
        for lv in m["levels"]:  # the export's very INT8 graph, named and loaded as INT8
            assert lv["sha256"] == src[lv["name"]] and lv["precision"] == "int8"
            assert lv["int8_method"] == "dynamic" and lv["int8_check"]["rows_over"] == 0
        rt = Runtime.open(folder, device="cpu")
        assert all(rt.precision(n) == "int8" for n in rt.levels)
    assert first.precisions == ["int8"] * 3
    one_error(run(tmp_path / "b2", "--out", tmp_path / "b4", "--variant", "fp32"),
              "holds level(s) 16, 32 in int8 only")
    assert not (tmp_path / "b4").exists()


def test_a_one_level_bundle_says_it_has_no_thresholds_to_certify(export, tmp_path):
    r = run(export, "--out", tmp_path / "one", "--levels", "16")
    assert r.exit_code == 0, r.output
    assert "cascade: one level, every row answers at 16 (no thresholds to certify)" in r.stdout
    assert "matryoshka calibrate" not in r.stdout
    assert read_manifest(tmp_path / "one")["cascade"]["fp32"]["levels"] == ["16"]


def test_the_bundles_guarantee_is_certified_again_and_holds_on_its_test_split(export,
                                                                              tmp_path,
                                                                              demo_data):
    # fp32: the replay is exact (dynamic INT8's activation scales depend on the rows a batch
    # holds, so an INT8 cascade's rows can differ from the record's replay at full batches)
    out = tmp_path / "two"
    b = bundle(export, out, levels="16,32", variant="fp32", progress=False)
    assert b.recertified
    src_cal = read_manifest(export)["calibration"]["fp32"]
    rec = read_manifest(out)["calibration"]["fp32"]
    assert (rec["target"], rec["epsilon"], rec["delta"]) == (
        src_cal["target"], src_cal["epsilon"], src_cal["delta"])
    assert rec["levels"][-1] == "32" and rec["thresholds"] is not None
    # re-checked here: the bundle's cascade on the test split, against its own largest level
    x, y = demo_data["test"][0].astype(np.float32), demo_data["test"][1]
    graph = Runtime.open(out, device="cpu", engine="graph").predict(x)
    levels = Runtime.open(out, device="cpu", engine="levels").predict(x)
    np.testing.assert_array_equal(graph.labels, levels.labels)
    np.testing.assert_array_equal(graph.levels, levels.levels)
    largest = Runtime.open(out, device="cpu").run_level("32", x).argmax(axis=1)
    risk = float((graph.labels != largest).mean())
    assert risk == pytest.approx(rec["test"]["risk"])  # the record's replay, reproduced
    # certified on the bundle's own calibration rows (the test split can exceed epsilon with
    # probability delta, and this tiny model at epsilon 0.1 does: no assertion on that)
    assert rec["empirical_risk"] <= rec["epsilon"] and rec["p_value"] <= rec["delta"]
    assert float((graph.labels == y).mean()) == pytest.approx(rec["test"]["accuracy"])
    # every level kept: the export's own certificate travels, not a new one
    whole = bundle(export, tmp_path / "all", variant="int8", progress=False)
    assert not whole.recertified
    assert read_manifest(tmp_path / "all")["calibration"]["fp32"] == \
        read_manifest(export)["calibration"]["int8"]


def test_fp32_bundle_with_the_mobile_format(export, tmp_path):
    out = tmp_path / "fp32"
    b = bundle(export, out, levels=["32", "64"], variant="fp32", ort_format=True,
               progress=False)
    m = read_manifest(out)
    assert b.precisions == ["fp32", "fp32"]
    assert {lv["file"] for lv in m["levels"]} == {"level-0032.onnx", "level-0064.onnx"}
    assert (out / "cascade.ort").is_file() and m["cascade"]["fp32"]["ort"]["file"] == \
        "cascade.ort"
    for lv, s in zip(m["levels"], read_manifest(export)["levels"][1:]):
        assert lv["sha256"] == s["sha256"]


@pytest.mark.parametrize("args, fragment", [
    (["--levels", "16,48"], "no level 48 in this export"),
    (["--levels", "16", "--max-mb", "3"], "not both"),
    (["--max-mb", "0"], "--max-mb must be a positive number"),
    (["--max-mb", "0.001"], "below the smallest bundle"),
    (["--levels", "16", "--data", "/nonexistent/spam.csv"], "certified again"),
])
def test_a_bad_request_is_one_error_and_writes_nothing(export, tmp_path, args, fragment):
    before = tree_bytes(export)
    r = run(export, "--out", tmp_path / "b", *args)
    one_error(r, fragment)
    assert siblings(tmp_path) == []
    assert tree_bytes(export) == before


def test_a_missing_export_an_existing_out_and_an_overlap_are_refused(export, tmp_path):
    one_error(run(tmp_path / "nothing", "--out", tmp_path / "b"), "nothing")
    assert siblings(tmp_path) == []
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    one_error(run(export, "--out", tmp_path / "b", "--levels", "16"), "--force")
    assert siblings(tmp_path / "b") == ["notes.txt"]
    one_error(run(export, "--out", export / "inner", "--force"), "overlaps the export")
    one_error(run(export, "--out", export.parent, "--force"), "overlaps the export")
    assert (export / "manifest.json").is_file()


def _killed_at(export, out, moment, extra=()):
    """Start `matryoshka bundle` in its own process and kill -9 it at `moment`: once the
    temporary folder beside `out` holds a file whose name starts with it."""
    p = subprocess.Popen([sys.executable, "-m", "matryoshka", "bundle", str(export), "--out",
                          str(out), "--levels", "16,32", "--no-progress", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and p.poll() is None:
            tmps = list(out.parent.glob(f".{out.name}.*.tmp"))
            if any(f.name.startswith(moment) for t in tmps for f in t.iterdir()):
                break
            time.sleep(0.002)
        killed = p.poll() is None
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    return killed


@pytest.mark.parametrize("moment", ["level-0016", "manifest.json"])
def test_a_bundle_killed_part_way_is_absent_and_the_next_one_is_whole(export, tmp_path,
                                                                      moment):
    out = tmp_path / "phone"
    assert _killed_at(export, out, moment)  # the cascade and certification take seconds
    assert not out.exists()  # killed while writing: no bundle, only a dead writer's temp
    assert [p.name.endswith(".tmp") for p in tmp_path.iterdir()] == [True]
    r = run(export, "--out", out, "--levels", "16,32", "--force")
    assert r.exit_code == 0, r.output
    assert siblings(tmp_path) == ["phone"]  # the dead writer's temp folder is gone
    Runtime.open(out, device="cpu")


def test_a_force_over_a_bundle_killed_part_way_leaves_the_old_one_whole(export, tmp_path):
    out = tmp_path / "phone"
    assert run(export, "--out", out, "--levels", "16").exit_code == 0
    before = tree_bytes(out)
    assert _killed_at(export, out, "manifest.json", extra=("--force",))
    assert tree_bytes(out) == before  # killed while certifying: the old bundle, untouched
    Runtime.open(out, device="cpu")
    assert json.loads((out / "manifest.json").read_text())["bundle"]["levels"] == ["16"]
