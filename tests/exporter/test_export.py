"""mexport: standalone graphs that match torch, a manifest, atomic writes, clear errors."""

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator

from matryoshka.cli import cli, mexport
from matryoshka.errors import ValidationError
from matryoshka.exporter import export
from matryoshka.model import count_params, extract_level
from matryoshka.model.checkpoint import load_checkpoint
from tests.conftest import tree_bytes


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    """A private export: some tests here replace it."""
    out = tmp_path_factory.mktemp("exp") / "export"
    manifest = export(tiny_checkpoint, out, quantize="dynamic", progress=False)
    return out, manifest


def test_manifest_describes_every_level(tiny_export, tiny_checkpoint):
    out, manifest = tiny_export
    model, metrics = load_checkpoint(tiny_checkpoint)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["schema_version"] == 2
    assert manifest["input"]["shape"] == ["batch", 8, 8]
    assert [lv["dim"] for lv in manifest["levels"]] == [16, 32, 64]
    assert [lv["name"] for lv in manifest["levels"]] == ["16", "32", "64"]
    for lv in manifest["levels"]:
        assert lv["file"] == f"level-{lv['dim']:04d}.onnx"
        assert lv["bytes"] == (out / lv["file"]).stat().st_size
        assert lv["params"] == count_params(extract_level(model, lv["dim"]))
        assert lv["spec"] == model.config.spec(lv["dim"]).to_dict() and lv["trained"]
        assert lv["parity"]["max_abs"] <= 1e-4 and lv["parity"]["n"] >= 64
        assert lv["accuracy"]["onnx"] == pytest.approx(metrics["test_accuracy"][str(lv["dim"])],
                                                       abs=0.002)
        assert lv["accuracy"]["same_argmax"] >= 0.998
        assert (out / lv["int8"]["file"]).stat().st_size < lv["bytes"]
        assert 0.0 <= lv["int8"]["accuracy"] <= 1.0


def test_graph_metadata_and_dynamic_batch(tiny_export, tiny_checkpoint):
    out, manifest = tiny_export
    g = onnx.load(str(out / "level-0032.onnx"))
    meta = {p.key: p.value for p in g.metadata_props}
    assert meta["matryoshka.dim"] == "32" and meta["matryoshka.levels"] == "16,32,64"
    assert meta["matryoshka.name"] == "32" and meta["matryoshka.spec"] == "32:ffn=48,48:heads=4,4"
    assert meta["matryoshka.checkpoint_sha256"] == manifest["checkpoint"]["sha256"]
    assert meta["matryoshka.schema_version"] == "2"
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {n.domain for n in g.graph.node} <= {""}, "graphs must be standard ONNX"
    assert g.opset_import[0].version == 17


def test_slicing_is_real(tiny_export):
    out, manifest = tiny_export
    small, big = manifest["levels"][0], manifest["levels"][-1]
    assert small["bytes"] * 8 < big["bytes"]
    assert small["flops_per_sample"] * 8 < big["flops_per_sample"]


def test_reference_evaluator_agrees_with_onnxruntime(tiny_export, demo_data):
    import onnxruntime as ort

    out, manifest = tiny_export
    x = demo_data["test"][0][:16].astype(np.float32)
    for lv in manifest["levels"]:
        path = str(out / lv["file"])
        ref = ReferenceEvaluator(path).run(None, {"x": x})[0]
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        np.testing.assert_allclose(ref, got, atol=1e-4, rtol=0)


def _one_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("levels,fragment", [
    ("32,16", "strictly increasing"),
    ("16,16", "strictly increasing; got 16 before 16"),
    ("12", "level 12 is not a multiple of head_dim 8"),
    ("128", "level 128 is larger than d_model 64"),
    ("abc", "comma-separated integers"),
])
def test_bad_levels(tiny_checkpoint, tmp_path, levels, fragment):
    out = tmp_path / "exp"
    r = CliRunner().invoke(mexport, ["--levels", levels, "--checkpoint", str(tiny_checkpoint),
                                     "--out", str(out)])
    _one_error(r, fragment)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_names_the_command_that_makes_it(tmp_path):
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tmp_path / "nope"),
                                     "--out", str(tmp_path / "exp")])
    _one_error(r, "matryoshka train --preset demo --data demo")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weights(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"{}" * 10)
    before = tree_bytes(tmp_path)
    r = CliRunner().invoke(mexport, ["--checkpoint", str(bad), "--out", str(tmp_path / "e")])
    _one_error(r, "model.safetensors is corrupt")
    assert tree_bytes(tmp_path) == before and not (tmp_path / "e").exists()


def test_existing_out_needs_force(tiny_export, tiny_checkpoint):
    out, _ = tiny_export
    before = tree_bytes(out)
    r = CliRunner().invoke(cli, ["export", "--checkpoint", str(tiny_checkpoint),
                                 "--out", str(out)])
    _one_error(r, "pass --force")
    assert tree_bytes(out) == before


def test_validation_miss_at_third_level_leaves_old_export_untouched(
        tiny_export, tiny_checkpoint, monkeypatch):
    out, _ = tiny_export
    before = tree_bytes(out)
    import matryoshka.exporter.validate as validate

    real = validate.compare

    def miss_on_third_level(got, ref, atol, rtol):
        result = real(got, ref, atol, rtol)
        if ref.shape[0] > 1 and miss_on_third_level.calls >= 2 * 3:  # 3 compares per level
            result["ok"] = False
        miss_on_third_level.calls += 1
        return result

    miss_on_third_level.calls = 0
    monkeypatch.setattr(validate, "compare", miss_on_third_level)
    with pytest.raises(ValidationError, match="level 64: ONNX output differs"):
        export(tiny_checkpoint, out, force=True, progress=False)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["export"], "temp folder left"

    miss_on_third_level.calls = 0
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                     "--force", "--no-progress"])
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith("error: level 64: ONNX output differs")
    assert tree_bytes(out) == before


def test_force_replaces_and_untrained_level_warns(tiny_checkpoint, tmp_path, caplog):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    manifest = export(tiny_checkpoint, out, levels=(16, 24, 64), force=True, progress=False)
    assert (out / "old.txt").read_text() == "old"  # a user's own file survives --force
    assert [lv["trained"] for lv in manifest["levels"]] == [True, False, True]
    assert "level 24 was not trained" in caplog.text
    assert (out / "level-0024.onnx").is_file()
