"""`matryoshka calibrate` on a real (tiny) export: the record, the runtime default, errors."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli
from matryoshka.runtime import Runtime
from tests.conftest import tree_bytes


@pytest.fixture(scope="module")
def calibrated(tiny_export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "export"
    shutil.copytree(tiny_export_dir, out)
    r = CliRunner().invoke(cli, ["calibrate", str(out), "--epsilon", "0.1", "--delta", "0.1",
                                 "--no-progress", "--int8", "static"])
    assert r.exit_code == 0, r.output
    return out, r.stdout


def test_record_is_complete_and_used_by_default(calibrated, demo_data):
    out, stdout = calibrated
    m = json.loads((out / "manifest.json").read_text())
    rec = m["calibration"]["fp32"]
    for key in ("temperatures", "thresholds", "target", "epsilon", "delta", "n",
                "empirical_risk", "risk_bound", "expected_relative_cost", "exit_fractions",
                "data_sha256", "variant", "test"):
        assert key in rec, key
    assert rec["n"] == 360 and rec["variant"] == "fp32" and len(rec["temperatures"]) == 3
    assert all(a <= b + 1e-9 for a, b in zip(rec["nll"]["after"], rec["nll"]["before"]))
    assert "test split" in stdout and "thresholds" in stdout
    rt = Runtime.open(out, device="cpu")
    x, y = demo_data["test"]
    default = rt.predict(x)
    if rec["thresholds"] is None:
        assert (default.levels == "64").all()
    else:
        explicit = rt.predict(x, thresholds=rec["thresholds"])
        np.testing.assert_array_equal(default.levels, explicit.levels)
        assert (default.labels == y).mean() == pytest.approx(rec["test"]["accuracy"])
        fractions = [float((default.levels == d).mean()) for d in rt.levels]
        assert fractions == pytest.approx(rec["test"]["exit_fractions"])


def test_int8_static_graphs(calibrated):
    out, _ = calibrated
    m = json.loads((out / "manifest.json").read_text())
    for lv in m["levels"]:
        q = lv["int8"]
        assert q["method"] == "static-minmax" and (out / q["file"]).is_file()
        assert q["accuracy_change"] == pytest.approx(q["accuracy"] - q["accuracy_fp32"])
    rt8 = Runtime.open(out, device="cpu", variant="int8")
    # The dynamic INT8 graph was named by the committed manifest, so the static one got a
    # new name, and the dynamic one was deleted after the commit.
    assert rt8.file(16).name == f"level-0016-{m['levels'][0]['int8']['sha256'][:8]}.int8.onnx"
    assert not (out / "level-0016.int8.onnx").exists()
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(
        [lv["file"] for lv in m["levels"]] + [lv["int8"]["file"] for lv in m["levels"]]
        + [c["file"] for c in m["cascade"].values()])


def _error(args, fragment, folder):
    before = tree_bytes(folder)
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--no-progress", *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert tree_bytes(folder) == before


@pytest.mark.parametrize("args,fragment", [
    (["--target", "speed"], "--target must be one of agreement, accuracy"),
    (["--epsilon", "0"], "--epsilon must lie strictly between 0 and 1"),
    (["--epsilon", "1.5"], "--epsilon must lie strictly between 0 and 1"),
    (["--delta", "1"], "--delta must lie strictly between 0 and 1"),
    (["--split", "test"], "test is kept for the report"),
])
def test_bad_arguments(tiny_export_dir, tmp_path, args, fragment):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    _error(args, fragment, folder)


def test_data_of_the_wrong_shape(tiny_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    keys = {f"{p}_{s}": (np.zeros((70, 7, 7), np.float32) if p == "x" else np.zeros(70, int))
            for s in ("train", "val", "test") for p in ("x", "y")}
    np.savez(tmp_path / "bad.npz", **keys)
    _error(["--data", str(tmp_path / "bad.npz")], "axis 1 must be 8", folder)


def test_unreadable_manifest(tiny_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    (folder / "manifest.json").write_text("{not json")
    _error([], "manifest.json cannot be read as JSON", folder)
